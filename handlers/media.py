"""GET/HEAD `/media/{signed}`: serve a re-hosted attachment through its signed, expiring link.

Pipedrive HEADs the link before using it (contract §4.5) and, on failure, calls
`getMessageById` for a fresh one, so HEAD answers exactly the headers GET would.

Dependencies: the store is `request.app.state.media_store` (set by the app factory), the signing
keys are `services(request).crypto`, the same `Crypto` every other handler uses. The handler
reads nothing else from `Services`, so a test can put any object with a `crypto` attribute there.
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from handlers import error_response, services
from service.crypto import BadSignature
from service.media import (
    MediaLink,
    MediaNotFound,
    MediaStore,
    MediaUnavailable,
    read_media_token,
)

#: Shown for every failure: whether the link was forged, expired or its file is gone stays ours.
NOT_FOUND_MESSAGE = "no such media, or the link has expired"

#: Types a browser shows without running anything; anything else (HTML, SVG, XML, scripts...) is
#: sent as a download so a customer's file can never run as a page on our origin.
_INLINE_PREFIXES = ("image/", "audio/", "video/")
_INLINE_TYPES = frozenset({"application/pdf", "text/plain"})
_NEVER_INLINE = frozenset({"image/svg+xml"})


def media_store(request: Request) -> MediaStore:
    """The store of re-hosted files, put on the app by the app factory."""
    found: MediaStore = request.app.state.media_store
    return found


def _disposition(ref: MediaLink) -> str:
    essence = ref.mime_type.split(";", 1)[0].strip()
    inline = essence not in _NEVER_INLINE and (
        essence.startswith(_INLINE_PREFIXES) or essence in _INLINE_TYPES
    )
    kind = "inline" if inline else "attachment"
    if ref.name is None:
        return kind
    return f"{kind}; filename*=UTF-8''{quote(ref.name, safe='')}"


async def serve(request: Request) -> Response:
    """The file's bytes (GET) or only its headers (HEAD); 404 for any bad link or missing file.
    GET streams the file in chunks from the store, with its length known up front."""
    store = media_store(request)
    try:
        ref = read_media_token(services(request).crypto, request.path_params["signed"])
        if request.method == "HEAD":
            length = await store.size(ref.key)
        else:
            body = await store.open(ref.key)
            length = body.size
    except (BadSignature, MediaNotFound):
        return error_response(404, "NOT_FOUND", NOT_FOUND_MESSAGE)
    except MediaUnavailable:  # Pipedrive tries again, or asks getMessageById for a fresh link
        return error_response(503, "UNAVAILABLE", "the media store did not answer; try again")
    headers = {
        "Content-Type": ref.mime_type,
        "Content-Length": str(length),
        "Content-Disposition": _disposition(ref),
        "Cache-Control": "private, max-age=300",
        "X-Content-Type-Options": "nosniff",
    }
    if request.method == "HEAD":
        return Response(b"", headers=headers)
    # The background task closes what the store holds open even when the client goes away.
    return StreamingResponse(body.chunks, headers=headers, background=BackgroundTask(body.aclose))


routes = [Route("/media/{signed}", serve, methods=["GET", "HEAD"])]
