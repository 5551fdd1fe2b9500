"""The customer's side of the sandbox: a chat page served by the Telegram simulator.

What the customer types is turned into the Update Telegram would POST, signed with the webhook's
secret token, and delivered to the service's webhook, as Telegram does. The bot's answers are what
the service sent through the simulator's sendMessage/sendPhoto/sendDocument.
"""

from __future__ import annotations

import html
import itertools
import threading
import time
from typing import Any

import httpx2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from sandbox.page import page
from sandbox.telegram import SECRET_HEADER, TelegramStandin

#: Largest image the customer page takes (Telegram's own photo limit is 10 MB).
MAX_IMAGE_BYTES = 10 * 1024 * 1024
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

SCRIPT = """
<script>
setInterval(async () => {
  const r = await fetch("/chat/messages");
  if (r.ok) document.getElementById("messages").innerHTML = await r.text();
}, 1000);
</script>
"""


class CustomerChat:
    """One customer (a private chat with the bot) on the simulator's /chat page."""

    def __init__(
        self, tg: TelegramStandin, *, chat_id: int = 4242, first_name: str = "Jane"
    ) -> None:
        self.tg = tg
        self.chat_id = chat_id
        self.first_name = first_name
        self._lock = threading.Lock()
        self._said: list[dict[str, Any]] = []  # the customer's messages, with delivery status
        self._update_ids = itertools.count(int(time.time()))

    def mount(self) -> None:
        """Serve the page on the simulator, ahead of its catch-all 404 route."""
        self.tg.app.router.routes[0:0] = [
            Route("/chat", self._page, methods=["GET"]),
            Route("/chat/messages", self._messages, methods=["GET"]),
            Route("/chat/send", self._send, methods=["POST"]),
            Route("/chat/files/{file_id}", self._file, methods=["GET"]),
        ]

    # ------------------------------------------------------------------ what the page shows

    def transcript(self) -> list[dict[str, Any]]:
        """Both sides in Telegram's order (message ids are shared by both directions)."""
        with self._lock:
            lines = [dict(m) for m in self._said]
        for sent in self.tg.sent:
            if str(sent["chat_id"]) != str(self.chat_id):
                continue
            result = sent.get("result") or {}
            file_id = None
            if result.get("photo"):
                file_id = result["photo"][-1]["file_id"]
            elif result.get("document"):
                file_id = result["document"]["file_id"]
            lines.append(
                {
                    "message_id": sent["message_id"],
                    "from": "agent",
                    "text": sent.get("text") or sent.get("caption") or "",
                    "file_id": file_id,
                    "file_name": sent.get("file_name"),
                    "status": "delivered",
                }
            )
        return sorted(lines, key=lambda m: int(m["message_id"]))

    def _render_messages(self) -> str:
        rows = []
        for m in self.transcript():
            who = "me" if m["from"] == "customer" else "them"
            ticks = {"delivered": "✓✓", "sent": "✓", "failed": "! not delivered"}[m["status"]]
            body = html.escape(m["text"])
            if m.get("file_id"):
                src = f"/chat/files/{html.escape(m['file_id'])}"
                if m.get("file_name") and not str(m["file_name"]).lower().endswith(
                    (".jpg", ".jpeg", ".png", ".gif", ".webp")
                ):
                    body += f'<br><a href="{src}">{html.escape(str(m["file_name"]))}</a>'
                else:
                    body += f'<br><img src="{src}" alt="attachment">'
            rows.append(
                f'<li class="{who}" data-status="{m["status"]}">{body}'
                f'<span class="ticks" title="{m["status"]}">{ticks}</span></li>'
            )
        if not rows:
            rows.append(
                '<li class="hint">Say hello: the agent sees it in the Pipedrive inbox.</li>'
            )
        return "\n".join(rows)

    async def _page(self, request: Request) -> Response:
        form = (
            '<form method="post" action="/chat/send" enctype="multipart/form-data" class="reply">'
            '<textarea name="text" rows="2" placeholder="Write a message" autofocus></textarea>'
            '<label>Image <input type="file" name="image" accept="image/*"></label>'
            '<button type="submit">Send</button></form>'
        )
        error = request.query_params.get("error")
        notice = f'<p class="error">{html.escape(error)}</p>' if error else ""
        body = (
            f"<header><h1>@{html.escape(self.tg.bot_username)}</h1>"
            f"<p>You are {html.escape(self.first_name)}, a customer on Telegram.</p></header>"
            f'{notice}<ul id="messages" class="messages">{self._render_messages()}</ul>{form}'
        )
        return HTMLResponse(page("Telegram: chat with the bot", body, SCRIPT))

    async def _messages(self, request: Request) -> Response:
        return HTMLResponse(self._render_messages())

    async def _file(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        try:
            content = self.tg.file_content(file_id)
        except KeyError:
            return Response("no such file", status_code=404, media_type="text/plain")
        return Response(content, media_type=_sniff(content))

    # ------------------------------------------------------------------ writing as the customer

    async def _send(self, request: Request) -> Response:
        """The form POST: build the Update, deliver it to the webhook, back to the page."""
        async with request.form(max_files=1, max_fields=4, max_part_size=MAX_IMAGE_BYTES) as form:
            text = str(form.get("text") or "").strip()
            upload = form.get("image")
            image: bytes | None = None
            if upload is not None and not isinstance(upload, str) and upload.filename:
                image = await upload.read(MAX_IMAGE_BYTES + 1)
                if len(image) > MAX_IMAGE_BYTES:
                    return _refuse(413, "The image is over 10 MB.")
                if _sniff(image) not in IMAGE_TYPES:
                    return _refuse(400, "That file is not a JPEG, PNG, GIF or WebP image.")
        if not text and image is None:
            return _refuse(400, "Write something or attach an image.")
        if len(text) > 4096:
            return _refuse(400, "Telegram messages are at most 4096 characters.")
        update = self._update(text, image)
        status = await self._deliver(update)
        with self._lock:
            self._said.append(
                {
                    "message_id": update["message"]["message_id"],
                    "from": "customer",
                    "text": text,
                    "file_id": (update["message"].get("photo") or [{}])[-1].get("file_id"),
                    "file_name": None,
                    "status": "sent" if status == 200 else "failed",
                }
            )
        return RedirectResponse("/chat", status_code=303)

    def _update(self, text: str, image: bytes | None) -> dict[str, Any]:
        with self.tg._lock:  # the simulator's per-chat counter: ids are shared both ways
            message_id = self.tg._last_message_id.get(self.chat_id, 0) + 1
        common: dict[str, Any] = {
            "update_id": next(self._update_ids),
            "chat_id": self.chat_id,
            "message_id": message_id,
            "first_name": self.first_name,
        }
        if image is None:
            return self.tg.text_update(text=text, **common)
        file = self.tg.add_file(image, mime_type=_sniff(image))
        return self.tg.photo_update(file=file, caption=text or None, **common)

    async def _deliver(self, update: dict[str, Any]) -> int:
        """POST the update to the webhook as Telegram does; the answer's status (599: none)."""
        webhook = self.tg.webhook
        if not webhook or not webhook.get("url"):
            return 599
        headers = {"Content-Type": "application/json"}
        if webhook.get("secret_token"):
            headers[SECRET_HEADER] = str(webhook["secret_token"])
        try:
            async with httpx2.AsyncClient(timeout=30, trust_env=False) as client:
                answer = await client.post(str(webhook["url"]), json=update, headers=headers)
        except httpx2.TransportError:
            return 599
        return answer.status_code


def _refuse(status: int, reason: str) -> Response:
    return HTMLResponse(
        page("Not sent", f'<p class="error">{html.escape(reason)}</p><a href="/chat">Back</a>'),
        status_code=status,
    )


def _sniff(content: bytes) -> str:
    """The image type from the first bytes (what a browser's upload claims is not trusted)."""
    if content.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if content.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if content[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"
