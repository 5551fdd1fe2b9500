"""The agent's side of the sandbox: an inbox page served by the Pipedrive emulator, shaped like
Pipedrive's Messaging inbox.

It shows what the service delivered through the Channels API (channels, conversations, messages
with their statuses and attachments) and, for the notes sink, the persons' notes. The reply box
calls the service's postMessage exactly as Pipedrive does (``PipedriveStandin.post_message``).
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from sandbox.page import note_html, page
from sandbox.pipedrive import PipedriveStandin

#: The largest file the reply box sends (the service refuses more than 20 MB itself).
MAX_REPLY_FILE_BYTES = 20 * 1024 * 1024
STATUS_MARKS = {"sent": "✓", "delivered": "✓✓", "read": "✓✓ read", "failed": "! failed"}

SCRIPT = """
<script>
setInterval(async () => {
  const r = await fetch("/inbox/live" + location.search);
  if (!r.ok) return;
  const live = await r.json();
  document.getElementById("sidebar").innerHTML = live.sidebar;
  document.getElementById("messages").innerHTML = live.messages;
}, 1000);
</script>
"""


class Inbox:
    """The /inbox pages on the emulator."""

    def __init__(
        self,
        pd: PipedriveStandin,
        *,
        chat_url: str,
        service_url: str,
        set_sink: Callable[[str, str], int] | None = None,
    ) -> None:
        self.pd = pd
        self.chat_url = chat_url
        self.service_url = service_url
        #: Moves a channel to a sink at the service (the admin API); (pcid, sink) → HTTP status.
        self.set_sink = set_sink
        self._sinks: dict[str, str] = {}  # what the inbox last set, per provider_channel_id

    def mount(self) -> None:
        """Serve the pages on the emulator, ahead of its API routes."""
        self.pd.app.router.routes[0:0] = [
            Route("/inbox", self._page, methods=["GET"]),
            Route("/inbox/live", self._live, methods=["GET"]),
            Route("/inbox/reply", self._reply, methods=["POST"]),
            Route("/inbox/sink", self._sink, methods=["POST"]),
            Route("/inbox/note", self._note, methods=["POST"]),
        ]

    # ------------------------------------------------------------------ the model

    def conversations(self) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """(provider_channel_id, conversation id) → its messages, oldest first."""
        grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for message in self.pd.messages:
            grouped[(message["channel_id"], message["conversation_id"])].append(message)
        for messages in grouped.values():
            messages.sort(key=lambda m: str(m.get("created_at", "")))
        return dict(grouped)

    def participants(self) -> dict[str, dict[str, str]]:
        """conversation id → {role: participant id, "name": the customer's name}, from the app's
        answers to Pipedrive."""
        found: dict[str, dict[str, str]] = {}
        for callback in self.pd.callbacks:
            data = callback.body.get("data") if isinstance(callback.body, dict) else None
            for conversation in data if isinstance(data, list) else [data]:
                if isinstance(conversation, dict) and "participants" in conversation:
                    roles = {p["role"]: p["id"] for p in conversation["participants"]}
                    for p in conversation["participants"]:
                        if p["role"] == "end_user" and p.get("name"):
                            roles["name"] = p["name"]
                    found[str(conversation["id"])] = roles
        return found

    # ------------------------------------------------------------------ rendering

    def _selected(self, request: Request) -> tuple[str | None, str | None]:
        conversations = self.conversations()
        channel = request.query_params.get("channel")
        conversation = request.query_params.get("conversation")
        if (channel, conversation) not in conversations and conversations:
            channel, conversation = max(
                conversations, key=lambda k: str(conversations[k][-1].get("created_at", ""))
            )
        return channel, conversation

    def _sidebar(self, channel: str | None, conversation: str | None) -> str:
        parts = ["<h2>Channels</h2>"]
        channels = self.pd.channels
        if not channels:
            parts.append("<p>No channel connected yet.</p>")
        for c in channels:
            parts.append(f"<p>{html.escape(c['name'])} <small>({c['provider_type']})</small></p>")
            if self.set_sink is not None:
                pcid = html.escape(c["provider_channel_id"])
                sink = self._sinks.get(c["provider_channel_id"], "channels")
                other = "notes" if sink == "channels" else "channels"
                parts.append(
                    '<form method="post" action="/inbox/sink">'
                    f'<input type="hidden" name="channel" value="{pcid}">'
                    f"<small>Sink: {sink}</small> "
                    f'<button name="sink" value="{other}">Switch to {other}</button></form>'
                )
        parts.append("<h2>Conversations</h2>")
        conversations = self.conversations()
        names = self.participants()
        if not conversations:
            parts.append(
                f'<p>None yet: <a href="{html.escape(self.chat_url)}" target="_blank">'
                "write as the customer</a>.</p>"
            )
        for (ch, conv), messages in conversations.items():
            query = urlencode({"channel": ch, "conversation": conv})
            on = ' class="on"' if (ch, conv) == (channel, conversation) else ""
            last = html.escape(str(messages[-1].get("message") or "(attachment)"))[:60]
            title = html.escape(names.get(conv, {}).get("name", conv))
            parts.append(f'<a{on} href="/inbox?{query}"><b>{title}</b><br>{last}</a>')
        if self.pd.persons:
            parts.append("<h2>Persons (notes sink)</h2>")
            for person in self.pd.persons:
                count = len(self.pd.notes_of(person["id"]))
                name = html.escape(str(person.get("name")))
                parts.append(f'<a href="/inbox?person={person["id"]}">{name} · {count} notes</a>')
        return "\n".join(parts)

    def _notes(self, person_id: int) -> str:
        notes = self.pd.notes_of(person_id)
        if not notes:
            return '<li class="hint">No notes yet.</li>'
        return "\n".join(
            f'<li class="note">{note_html(str(n.get("content", "")))}'
            f"<br><small>{html.escape(str(n.get('add_time')))}</small></li>"
            for n in notes
        )

    def _person(self, request: Request) -> int | None:
        raw = request.query_params.get("person")
        if raw is None or not raw.isdigit():
            return None
        return int(raw) if any(p["id"] == int(raw) for p in self.pd.persons) else None

    def _messages(self, channel: str | None, conversation: str | None) -> str:
        messages = self.conversations().get((channel or "", conversation or ""), [])
        if not messages:
            return '<li class="hint">Pick a conversation.</li>'
        agent = self.participants().get(conversation or "", {}).get("source_user")
        rows = []
        for m in messages:
            who = "me" if agent is not None and m["sender_id"] == agent else "them"
            body = html.escape(str(m.get("message") or ""))
            for a in m.get("attachments") or []:
                url, name = html.escape(str(a["url"])), html.escape(str(a.get("name") or "file"))
                if str(a.get("type", "")).startswith("image/"):
                    body += f'<br><img src="{url}" alt="{name}">'
                else:
                    body += f'<br><a href="{url}">{name}</a>'
            status = str(m.get("status"))
            mark = html.escape(STATUS_MARKS.get(status, status))
            rows.append(
                f'<li class="{who}" data-status="{html.escape(status)}">{body}'
                f'<span class="status" title="{html.escape(status)}">{mark}</span></li>'
            )
        return "\n".join(rows)

    async def _page(self, request: Request) -> Response:
        channel, conversation = self._selected(request)
        person = self._person(request)
        error = request.query_params.get("error")
        form = ""
        if person is not None:
            channel = conversation = None
            form = (
                '<form method="post" action="/inbox/note" class="reply">'
                f'<input type="hidden" name="person" value="{person}">'
                '<textarea name="content" rows="3" required placeholder="Write a note; start it '
                'with /reply to send it to the customer"></textarea>'
                '<button type="submit">Add note</button></form>'
            )
        elif channel and conversation:
            form = (
                '<form method="post" action="/inbox/reply" enctype="multipart/form-data" '
                'class="reply">'
                f'<input type="hidden" name="channel" value="{html.escape(channel)}">'
                f'<input type="hidden" name="conversation" value="{html.escape(conversation)}">'
                '<textarea name="message" rows="3" placeholder="Reply" required></textarea>'
                '<label>File <input type="file" name="file"></label>'
                '<button type="submit">Send</button></form>'
            )
        body = (
            "<header><h1>Pipedrive · Messaging inbox (sandbox)</h1>"
            f'<p>The customer\'s side: <a href="{html.escape(self.chat_url)}" target="_blank">'
            f"{html.escape(self.chat_url)}</a> · the operator console: "
            f'<a href="{html.escape(self.service_url)}/admin/ui" target="_blank">'
            f"{html.escape(self.service_url)}/admin/ui</a> (the printed ADMIN_TOKEN logs in)</p>"
            "</header>"
            + (f'<p class="error">{html.escape(error)}</p>' if error else "")
            + f'<main><nav id="sidebar">{self._sidebar(channel, conversation)}</nav>'
            f'<section><ul id="messages" class="messages">'
            f"{self._main(channel, conversation, person)}</ul>{form}</section></main>"
        )
        return HTMLResponse(page("Pipedrive inbox (sandbox)", body, SCRIPT))

    async def _live(self, request: Request) -> Response:
        channel, conversation = self._selected(request)
        person = self._person(request)
        return JSONResponse(
            {
                "sidebar": self._sidebar(channel, conversation),
                "messages": self._main(channel, conversation, person),
            }
        )

    def _main(self, channel: str | None, conversation: str | None, person: int | None) -> str:
        if person is not None:
            return self._notes(person)
        return self._messages(channel, conversation)

    # ------------------------------------------------------------------ notes mode

    async def _sink(self, request: Request) -> Response:
        """Move a channel between the Messaging inbox and notes (the service's admin API)."""
        async with request.form(max_files=0, max_fields=2) as form:
            channel = str(form.get("channel") or "")
            sink = str(form.get("sink") or "")
        if sink not in ("channels", "notes") or self.set_sink is None:
            return _page_error("The sink is channels or notes.", 400)
        if channel not in {c["provider_channel_id"] for c in self.pd.channels}:
            return _page_error("No such channel.", 404)
        status = await run_in_threadpool(self.set_sink, channel, sink)
        if status != 200:
            return _page_error(f"The service answered {status}.", 502)
        self._sinks[channel] = sink
        return RedirectResponse("/inbox", status_code=303)

    async def _note(self, request: Request) -> Response:
        """An agent writes a note in Pipedrive; Pipedrive's note webhook tells the service."""
        async with request.form(max_files=0, max_fields=2) as form:
            raw = str(form.get("person") or "")
            content = str(form.get("content") or "").strip()
        person = int(raw) if raw.isdigit() else None
        if person is None or all(p["id"] != person for p in self.pd.persons):
            return _page_error("No such person.", 404)
        if not content:
            return _page_error("Write a note.", 400)
        note = self.pd.add_user_note(content, person_id=person)
        try:
            await run_in_threadpool(self.pd.deliver_note_webhooks, self.service_url, note["id"])
        except AssertionError:
            return _page_error("The app registered no note webhook.", 409)
        return RedirectResponse(f"/inbox?person={person}", status_code=303)

    # ------------------------------------------------------------------ replying

    async def _reply(self, request: Request) -> Response:
        """The reply box: postMessage to the service as Pipedrive sends it (multipart)."""
        async with request.form(max_files=1, max_fields=4, max_part_size=MAX_REPLY_FILE_BYTES) as f:
            channel = str(f.get("channel") or "")
            conversation = str(f.get("conversation") or "")
            text = str(f.get("message") or "").strip()
            upload = f.get("file")
            files: list[tuple[str, bytes, str]] = []
            if upload is not None and not isinstance(upload, str) and upload.filename:
                content = await upload.read(MAX_REPLY_FILE_BYTES + 1)
                if len(content) > MAX_REPLY_FILE_BYTES:
                    return _back(channel, conversation, "The file is over 20 MB.", 413)
                kind = upload.content_type or "application/octet-stream"
                files.append((upload.filename, content, kind))
        if (channel, conversation) not in self.conversations():
            return _back(channel, conversation, "No such conversation.", 404)
        if not text and not files:
            return _back(channel, conversation, "Write a reply or attach a file.", 400)
        roles = self.participants().get(conversation, {})
        if "source_user" not in roles or "end_user" not in roles:
            return _back(channel, conversation, "The app has not described this chat yet.", 409)
        answer = await run_in_threadpool(
            self.pd.post_message,
            channel,
            conversation_id=conversation,
            sender_id=roles["source_user"],
            recipient_ids=[roles["end_user"]],
            message=text,
            files=files,
        )
        if answer.status_code != 200:
            reason = f"postMessage answered {answer.status_code}: {answer.text[:300]}"
            return _back(channel, conversation, reason, 502)
        return _back(channel, conversation, None, 303)


def _page_error(reason: str, status: int) -> Response:
    body = f'<p class="error">{html.escape(reason)}</p><a href="/inbox">Back</a>'
    return HTMLResponse(page("Not done", body), status_code=status)


def _back(channel: str, conversation: str, error: str | None, status: int) -> Response:
    """Back to the conversation (303), or an error page that links back to it."""
    query = urlencode({"channel": channel, "conversation": conversation})
    if error is None:
        return RedirectResponse(f"/inbox?{query}", status_code=status)
    body = f'<p class="error">{html.escape(error)}</p><a href="/inbox?{query}">Back</a>'
    return HTMLResponse(page("Not sent", body), status_code=status)
