"""The multi-process proof: two `pdbridge web` and two `pdbridge worker` processes, each in its
own working directory, on one PostgreSQL, one Redis and the S3 media store (moto over HTTP).

- inbound photos re-hosted by whichever worker relays them are served by either web;
- a file an agent sends through postMessage at one web is sent by whichever worker drains it;
- a worker killed with SIGKILL in the middle of a burst: every customer message still reaches
  Pipedrive exactly once, in order per conversation (the other worker takes its jobs over once
  their lease lapses);
- the OAuth token, expired under that burst, is refreshed once across all processes.

It prints its figures (messages, duration, refreshes) to the terminal, so CI logs show them.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest
import redis

from tests.faults.processes import wait_until
from tests.multiprocess.cluster import Cluster, running_cluster
from tests.standins.s3 import S3Standin, s3_server  # noqa: F401 -- the session fixture

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CHATS = (7100001, 7100002, 7100003, 7100004)
PER_CHAT = 6
PHOTOS = {
    7100001: b"\xff\xd8\xff\xe0" + b"first photo " * 3000,
    7100002: b"\xff\xd8\xff\xe0" + b"second photo " * 2500,
}
OUTGOING = ("quote.png", b"\x89PNG\r\n\x1a\n" + b"the quote " * 2000, "image/png")


def report(request: pytest.FixtureRequest, line: str) -> None:
    """A line in the test run's output (not captured): the figures CI logs should show."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


def texts_at_pipedrive(cluster: Cluster, chat: int) -> list[str]:
    """The customer's messages Pipedrive holds for `chat`, in order of first arrival."""
    return [
        str(m["message"])
        for m in cluster.pd.received(cluster.pcid, f"tg:777009:{chat}")
        if str(m["id"]).startswith("tg:")
    ]


def receive_calls_per_message(cluster: Cluster) -> Counter[str]:
    return Counter(
        str(r.json["id"])
        for r in cluster.pd.requests
        if r.api_path == "/v1/channels/messages/receive"
        and r.status == 200
        and isinstance(r.json, dict)
    )


def open_jobs(cluster: Cluster, role: str) -> int:
    """Jobs the process's log shows started (arq's `→`) and not finished (`←`)."""
    text = (cluster.logs / f"{role}.log").read_text(errors="replace")
    return text.count("\\u2192 ") - text.count("\\u2190 ")


def poll(condition: Callable[[], bool], seconds: float) -> bool:
    """Whether `condition` comes true within `seconds` (bounded polling, no assertion)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def served_by_every_web(cluster: Cluster, link: str) -> set[bytes]:
    """GET the signed link's path at each web process; the bodies they answered."""
    path = urlsplit(link).path
    bodies = set()
    for web in cluster.webs:
        response = httpx2.get(f"{web}{path}", timeout=30)
        assert response.status_code == 200, (web, response.text)
        assert response.headers["content-length"] == str(len(response.content))
        bodies.add(response.content)
    return bodies


def test_two_webs_and_two_workers_share_media_survive_a_killed_worker_and_refresh_once(
    tmp_path: Path,
    database_url_postgres: str,
    server_redis_url: str,
    request: pytest.FixtureRequest,
) -> None:
    s3: S3Standin = request.getfixturevalue("s3_server")
    bucket = s3.new_bucket()
    client = redis.Redis.from_url(server_redis_url)
    client.flushdb()
    client.close()
    started = time.monotonic()
    with running_cluster(
        tmp_path,
        database_url=database_url_postgres,
        redis_url=server_redis_url,
        media_env=s3.environment(bucket, prefix="pdbridge"),
    ) as cluster:
        try:
            up = time.monotonic() - started
            web_1, web_2 = cluster.webs

            # Inbound photos, one through each web; re-hosted by some worker into S3.
            for web, (chat, photo) in zip(cluster.webs, PHOTOS.items(), strict=True):
                assert cluster.customer_sends_photo(web, chat, 1, photo, f"photo {chat}") == 200
            wait_until(
                lambda: all(texts_at_pipedrive(cluster, chat) for chat in PHOTOS),
                "both photos relayed",
                timeout=90,
            )
            for chat, photo in PHOTOS.items():
                [message] = cluster.pd.received(cluster.pcid, f"tg:777009:{chat}")
                [attachment] = message["attachments"]
                assert attachment["url"].startswith("https://bridge.example.com/media/")
                assert served_by_every_web(cluster, attachment["url"]) == {photo}
            assert len(s3.objects(bucket)) == len(PHOTOS)

            # An agent's file, posted at each web in turn: stored in S3 by that web, uploaded
            # to Telegram by whichever worker drains the conversation.
            for web in (web_2, web_1):
                reply = cluster.agent_sends_file(web, CHATS[0], f"quote via {web}", OUTGOING)
                assert reply.status_code == 200, reply.text
            wait_until(
                lambda: len([s for s in cluster.tg.sent if s["file_bytes"]]) == 2,
                "both files sent to Telegram",
                timeout=90,
            )
            sent_files = [s for s in cluster.tg.sent if s["file_bytes"]]
            assert [s["file_bytes"] for s in sent_files] == [OUTGOING[1]] * 2
            assert [s["caption"] for s in sent_files] == [
                f"quote via {web_2}",
                f"quote via {web_1}",
            ]

            # A burst in four conversations with the token expired; worker-1 is killed while
            # its log shows a job started and not finished (or, failing that, after the last
            # round), so the other worker must take over what it held.
            refreshes_before = cluster.pd.refresh_calls
            cluster.pd.expire_access_tokens()
            burst_started = time.monotonic()
            killed_at, cut_off = None, 0
            for n in range(1, PER_CHAT + 1):
                for index, chat in enumerate(CHATS):
                    web = cluster.webs[(n + index) % 2]
                    status = cluster.customer_says_to(web, chat, f"{chat}: {n}", message_id=10 + n)
                    assert status == 200
                if (
                    killed_at is None
                    and n >= 2
                    and (poll(lambda: open_jobs(cluster, "worker-1") > 0, 2.0) or n == PER_CHAT)
                ):
                    cluster.kill("worker-1")
                    killed_at = time.monotonic() - burst_started
                    cut_off = open_jobs(cluster, "worker-1")
            expected = {chat: [f"{chat}: {n}" for n in range(1, PER_CHAT + 1)] for chat in CHATS}

            def burst_delivered() -> bool:
                return all(
                    [t for t in texts_at_pipedrive(cluster, c) if t.startswith(f"{c}:")]
                    == expected[c]
                    for c in CHATS
                )

            wait_until(burst_delivered, "every burst message in Pipedrive", timeout=120)
            burst_seconds = time.monotonic() - burst_started

            for chat in CHATS:
                relayed = [t for t in texts_at_pipedrive(cluster, chat) if t.startswith(f"{chat}:")]
                assert relayed == expected[chat], chat  # each once, in order
            refreshes = cluster.pd.refresh_calls - refreshes_before
            assert refreshes == 1, f"{refreshes} token refreshes for one expiry"
            assert cluster.alive() == {
                "web-1": True,
                "web-2": True,
                "worker-1": False,
                "worker-2": True,
            }
            calls = receive_calls_per_message(cluster)
            repeated = sum(count - 1 for count in calls.values())
        except BaseException:
            report(request, cluster.log_tails())
            raise
    total = time.monotonic() - started
    report(
        request,
        f"\nmulti-process proof: 2 web + 2 worker on PostgreSQL, Redis and S3 (moto); "
        f"{len(PHOTOS)} photos in (served by both webs), 2 files out, "
        f"{len(CHATS) * PER_CHAT} messages in {len(CHATS)} conversations "
        f"(worker-1 SIGKILLed at {killed_at:.1f} s with {cut_off} job(s) running): "
        f"all delivered once and in order in {burst_seconds:.1f} s; "
        f"{repeated} repeated receive upserts; token refreshes for one expiry: {refreshes}; "
        f"start-up {up:.1f} s, total {total:.1f} s",
    )
