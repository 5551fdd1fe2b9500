"""The fault suite's one judge: what the senders had acknowledged against what reached the other
side, as the stand-ins saw it.

Every fault test drives traffic through a `Ledger` (which plays the senders: Telegram posting
updates, an agent posting replies, each retrying a non-2xx as they do) and ends with
`Ledger.check(fault)`. That computes one `Row` per direction, records it for the table that
`tests/faults/conftest.py` prints, and asserts the promise: nothing lost, nothing twice, nothing
out of order, no status moving backwards. A reply may instead end `failed` (reported to
Pipedrive, with its reason in our logs), never sent twice.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx2

from tests.faults.processes import Running, wait_until

#: `PDBRIDGE_FAULTS=full` (what `make test-faults` sets): more messages, longer outages.
FULL = os.environ.get("PDBRIDGE_FAULTS", "").lower() == "full"

RECEIVE = "/v1/channels/messages/receive"
#: Pipedrive's status order; `failed` may only follow a status below `delivered`.
_RANK = {"sent": 1, "delivered": 2, "read": 3}


def size(short: int, full: int) -> int:
    """How many messages (or seconds) a fault uses: few in `make test`, more in the full run."""
    return full if FULL else short


@dataclass
class Row:
    """One line of the table: a fault, one direction."""

    fault: str
    direction: str  # "in": customer → Pipedrive; "out": agent → provider
    messages: int  # acknowledged by the service (2xx)
    exactly_once: int
    duplicated: int
    lost: int
    out_of_order: int
    backwards: int
    failed: int = 0  # replies reported `failed` with a reason instead of sent (allowed)
    unreported: int = 0  # replies sent but never reported to Pipedrive

    def problems(self) -> dict[str, int]:
        columns = ("duplicated", "lost", "out_of_order", "backwards", "unreported")
        return {name: value for name in columns if (value := asdict(self)[name])}


#: Every row computed in this test session, in order; conftest.py prints them.
RESULTS: list[Row] = []

COLUMNS = (
    "fault",
    "direction",
    "messages",
    "exactly_once",
    "duplicated",
    "lost",
    "out_of_order",
    "backwards",
    "failed",
)


def table(rows: list[Row]) -> str:
    """The rows as a fixed-width text table."""
    header = ["fault", "dir", "in", "once", "dup", "lost", "order", "back", "failed"]
    lines = [[str(asdict(row)[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(x) for x in column) for column in zip(header, *lines, strict=False)]
    out = []
    for cells in [header, *lines]:
        padded = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        out.append("  ".join(padded))
    return "\n".join(out)


@dataclass
class Ledger:
    """The senders' side of a fault test: what the service acknowledged, in order."""

    service: Running
    inbound: list[tuple[int, str]] = field(default_factory=list)  # (chat, text), acknowledged
    outbound: list[tuple[int, str, str]] = field(default_factory=list)  # (chat, text, our id)
    message_ids: dict[int, int] = field(default_factory=dict)
    refused: int = 0  # non-2xx answers (or none) the senders got
    unacknowledged: list[tuple[str, Any]] = field(default_factory=list)  # to send again

    # ---------------------------------------------------------------- the senders

    def customer(self, chat: int, text: str, *, retry_for: float = 0.0) -> bool:
        """A customer's message, posted as Telegram does; a non-2xx is delivered again (same
        update) until acknowledged or `retry_for` seconds passed. True when acknowledged."""
        self.message_ids[chat] = self.message_ids.get(chat, 0) + 1
        update = self.service.text_update(chat, text, self.message_ids[chat])
        return self.deliver(update, retry_for=retry_for)

    def deliver(self, update: dict[str, Any], *, retry_for: float = 0.0) -> bool:
        """POST one update (again); records it as acknowledged the first time it gets a 2xx."""
        deadline = time.monotonic() + retry_for
        while True:
            status = self.service.post_update(update)
            if 200 <= status < 300:
                entry = (int(update["message"]["chat"]["id"]), str(update["message"]["text"]))
                if entry not in self.inbound:
                    self.inbound.append(entry)
                return True
            self.refused += 1
            if time.monotonic() >= deadline:
                self.unacknowledged.append(("update", update))
                return False
            time.sleep(0.2)

    def agent(self, chat: int, text: str, *, retry_for: float = 0.0) -> bool:
        """An agent's reply through postMessage; a non-2xx (or no answer) is posted again until
        acknowledged or `retry_for` seconds passed, as the agent would press send again."""
        deadline = time.monotonic() + retry_for
        while True:
            try:
                response = self.service.agent_says(chat, text)
                status = response.status_code
            except httpx2.TransportError:
                status = 599
            if 200 <= status < 300:
                self.outbound.append((chat, text, str(response.json()["data"]["id"])))
                return True
            self.refused += 1
            if time.monotonic() >= deadline:
                self.unacknowledged.append(("reply", (chat, text)))
                return False
            time.sleep(0.2)

    def send_again(self, retry_for: float = 60.0) -> None:
        """The senders try again what was refused: Telegram redelivers the same update, the
        agent presses send again. Each must be acknowledged within `retry_for` seconds."""
        waiting, self.unacknowledged = self.unacknowledged, []
        for kind, item in waiting:
            if kind == "update":
                assert self.deliver(item, retry_for=retry_for), f"refused for good: {item}"
            else:
                assert self.agent(*item, retry_for=retry_for), f"refused for good: {item}"

    def open(self, chats: list[int]) -> None:
        """Each chat's customer writes first (an agent can only answer a known conversation);
        waits until Pipedrive has them."""
        for chat in chats:
            assert self.customer(chat, f"hello from {chat}", retry_for=30)
        wait_until(self.settled, "the conversations are open at Pipedrive", timeout=60)

    def exchange(self, chats: list[int], n: int, tag: str, *, retry_for: float = 0.0) -> None:
        """`n` messages each way in every chat, interleaved: customers write, agents answer."""
        for i in range(1, n + 1):
            for chat in chats:
                self.customer(chat, f"{tag} in {chat} #{i}", retry_for=retry_for)
                self.agent(chat, f"{tag} out {chat} #{i}", retry_for=retry_for)

    # ---------------------------------------------------------------- what arrived

    def _inbound_at_pipedrive(self) -> dict[str, list[str]]:
        """Message ids Pipedrive accepted per text, in first-arrival order."""
        by_text: dict[str, list[str]] = defaultdict(list)
        for r in self.service.pd.requests:
            if r.api_path != RECEIVE or r.status != 200 or not isinstance(r.json, dict):
                continue
            mid = str(r.json.get("id", ""))
            if mid.startswith("tg:") and mid not in by_text[str(r.json["message"])]:
                by_text[str(r.json["message"])].append(mid)
        return by_text

    def _first_arrivals(self) -> list[str]:
        seen: list[str] = []
        for r in self.service.pd.requests:
            if r.api_path == RECEIVE and r.status == 200 and isinstance(r.json, dict):
                text = str(r.json.get("message"))
                if str(r.json.get("id", "")).startswith("tg:") and text not in seen:
                    seen.append(text)
        return seen

    def _statuses(self) -> dict[str, list[str]]:
        """The statuses Pipedrive accepted for each of our replies, in order."""
        ours = {mid for _, _, mid in self.outbound}
        statuses: dict[str, list[str]] = defaultdict(list)
        for r in self.service.pd.requests:
            if r.api_path == RECEIVE and r.status == 200 and isinstance(r.json, dict):
                mid = str(r.json.get("id", ""))
                if mid in ours:
                    statuses[mid].append(str(r.json.get("status")))
        return statuses

    def settled(self) -> bool:
        """Every acknowledged message has reached the other side (or ended `failed`)."""
        arrived = self._inbound_at_pipedrive()
        if any(not arrived.get(text) for _, text in self.inbound):
            return False
        sent = {str(m.get("text")) for m in self.service.tg.sent}
        statuses = self._statuses()
        return all(
            (text in sent and "sent" in statuses.get(mid, [])) or "failed" in statuses.get(mid, [])
            for _, text, mid in self.outbound
        )

    def wait_settled(self, timeout: float = 120.0) -> None:
        """Poll until everything acknowledged arrived, then give a straggler (a duplicate that
        would follow) a moment before anything is counted."""
        try:
            wait_until(self.settled, "every acknowledged message delivered", timeout=timeout)
        except AssertionError as error:
            raise AssertionError(f"{error}; missing: {self.missing()}") from None
        time.sleep(1.0)  # not a decision: only lets a late duplicate show in the count

    def missing(self) -> dict[str, list[str]]:
        """What has not arrived yet, for a failure message."""
        arrived = self._inbound_at_pipedrive()
        sent = {str(m.get("text")) for m in self.service.tg.sent}
        statuses = self._statuses()
        return {
            "inbound": [text for _, text in self.inbound if not arrived.get(text)],
            "outbound": [
                f"{text} (at provider: {text in sent}, reported: {statuses.get(mid, [])})"
                for _, text, mid in self.outbound
                if not (
                    (text in sent and "sent" in statuses.get(mid, []))
                    or "failed" in statuses.get(mid, [])
                )
            ],
        }

    # ---------------------------------------------------------------- the verdict

    def rows(self, fault: str) -> list[Row]:
        return [self._inbound_row(fault), self._outbound_row(fault)]

    def _inbound_row(self, fault: str) -> Row:
        arrived = self._inbound_at_pipedrive()
        counts = [len(arrived.get(text, [])) for _, text in self.inbound]
        return Row(
            fault=fault,
            direction="in",
            messages=len(self.inbound),
            exactly_once=counts.count(1),
            duplicated=sum(c > 1 for c in counts),
            lost=counts.count(0),
            out_of_order=_out_of_order(self.inbound, self._first_arrivals()),
            backwards=0,
        )

    def _outbound_row(self, fault: str) -> Row:
        sent = [(int(m["chat_id"]), str(m.get("text"))) for m in self.service.tg.sent]
        statuses = self._statuses()
        once = dup = lost = failed = unreported = backwards = 0
        for chat, text, mid in self.outbound:
            n = sent.count((chat, text))
            reported = statuses.get(mid, [])
            if n == 1:
                once += 1
                unreported += "sent" not in reported and "failed" not in reported
            elif n > 1:
                dup += 1
            elif "failed" in reported:
                failed += 1
            else:
                lost += 1
            backwards += _moved_backwards(reported)
        first = [f"{chat}\n{text}" for chat, text in dict.fromkeys(sent)]
        expected = [(chat, f"{chat}\n{text}") for chat, text, _ in self.outbound]
        return Row(
            fault=fault,
            direction="out",
            messages=len(self.outbound),
            exactly_once=once,
            duplicated=dup,
            lost=lost,
            out_of_order=_out_of_order(expected, first),
            backwards=backwards,
            failed=failed,
            unreported=unreported,
        )

    def check(self, fault: str) -> list[Row]:
        """Record this fault's rows for the table and assert the promise for each."""
        rows = self.rows(fault)
        RESULTS.extend(rows)
        for row in rows:
            assert row.messages > 0, f"{fault} {row.direction}: no traffic acknowledged"
            assert row.problems() == {}, f"{fault} {row.direction}: {row}"
        return rows


def _out_of_order(expected: list[tuple[int, str]], arrivals: list[str]) -> int:
    """Messages that arrived before one their conversation's sender had acknowledged earlier."""
    position = {text: i for i, text in enumerate(arrivals)}
    count = 0
    by_chat: dict[int, list[str]] = defaultdict(list)
    for chat, text in expected:
        by_chat[chat].append(text)
    for texts in by_chat.values():
        got = [position[t] for t in texts if t in position]
        count += sum(any(earlier > p for earlier in got[:i]) for i, p in enumerate(got))
    return count


def _moved_backwards(statuses: list[str]) -> int:
    """1 when the reported statuses of one reply ever moved backwards, else 0."""
    current: str | None = None
    for status in statuses:
        if current is not None and status != current:
            if current == "failed":
                return 1
            if status == "failed":
                if _RANK.get(current, 0) > _RANK["sent"]:
                    return 1
            elif _RANK.get(status, 0) < _RANK.get(current, 0):
                return 1
        current = status
    return 0
