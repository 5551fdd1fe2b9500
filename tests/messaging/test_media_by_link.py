"""A file sent to a provider that fetches it by URL (Twilio's MediaUrl) is never read by the
worker: the S3 stand-in (moto, over HTTP) records no download of it until someone follows the
link, and the link then serves the agent's bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from sandbox.pipedrive import PipedriveStandin
from tests.messaging.harness import connect_channel, served_bridge
from tests.pipedrive.bridge import standin
from tests.standins.s3 import S3Standin, s3_server  # noqa: F401 -- the session fixture
from tests.standins.twilio import TwilioStandin

pytestmark = pytest.mark.anyio

CUSTOMER = "+15551230001"
PICTURE = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 400


@pytest.fixture
def pd() -> Iterator[PipedriveStandin]:
    with standin() as server:
        yield server


@pytest.fixture
def tw() -> Iterator[TwilioStandin]:
    with TwilioStandin() as server:
        yield server


# What is read from the store does not depend on the database: one stack is enough.
@pytest.mark.parametrize("stack", ["sqlite+embedded-redis"], indirect=True)
async def test_a_twilio_send_passes_the_link_and_never_downloads_the_file(
    stack: tuple[str, str],
    pd: PipedriveStandin,
    tw: TwilioStandin,
    request: pytest.FixtureRequest,
) -> None:
    s3: S3Standin = request.getfixturevalue("s3_server")
    bucket = s3.new_bucket()
    overrides = {"twilio_api_url": tw.base_url, **s3.settings(bucket, prefix="att")}
    async with served_bridge(stack, pd, **overrides) as (bridge, _):
        channel = await connect_channel(bridge, "twilio", tw.credentials, name="SMS line")
        pcid = channel["provider_channel_id"]
        form = tw.add_inbound(from_=CUSTOMER, body="question")
        url = f"{bridge.settings.base_url}/webhooks/twilio/{pcid}"
        answer = await bridge.http.post(
            f"/webhooks/twilio/{pcid}",
            content=tw.form_body(form),
            headers=tw.webhook_headers(url, form),
        )
        assert answer.status_code == 200
        await bridge.run_worker()

        s3.start_recording()
        response = await asyncio.to_thread(
            pd.post_message,
            pcid,
            conversation_id=f"tw:{tw.number}:{CUSTOMER}",
            sender_id=f"tw:biz:{tw.number}",
            recipient_ids=[f"tw:{CUSTOMER}"],
            message="the meter",
            files=[("meter.jpg", PICTURE, "image/jpeg")],
        )
        assert response.status_code == 200, response.text
        await bridge.run_worker()
        calls = s3.recorded()

        [sent] = tw.sent[-1:]
        [link] = sent["media_urls"]
        [stored] = s3.objects(bucket)
        assert stored.startswith("att/")
        object_path = f"/{bucket}/{stored}"
        assert ("PUT", object_path) in calls  # postMessage stored it
        assert ("GET", object_path) not in calls  # and the send never read it

        served = await bridge.http.get(urlsplit(link).path)
        assert served.status_code == 200
        assert served.content == PICTURE
        assert served.headers["content-length"] == str(len(PICTURE))
