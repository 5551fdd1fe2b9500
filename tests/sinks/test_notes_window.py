"""The notes sink's pure parts: a reply's text, a note's escaped line (the window: test_ledger)."""

from __future__ import annotations

from service.pipedrive.errors import InvalidPayload, NotFound, ServerError
from service.sinks import channels_api_gone
from service.sinks.notes import plain_text
from service.sinks.replies import reply_text


def test_reply_text_needs_the_marker_at_the_start_of_the_first_line() -> None:
    """`/reply` opens a reply; the rest of the note (HTML) becomes plain text."""
    html = "<p>/reply Thanks &amp; see you<br>at 10:00</p><p>Bye</p>"
    assert reply_text(html, "/reply") == "Thanks & see you\nat 10:00\nBye"
    assert reply_text("<p>Called, no answer. /reply later</p>", "/reply") is None
    assert reply_text("<div>/REPLY ok</div>", "/reply") == "ok"
    assert reply_text("<p>/reply</p>", "/reply") == ""


def test_plain_text_decodes_entities_and_drops_tags() -> None:
    """What an agent typed, not the HTML Pipedrive stores."""
    assert plain_text("<b>a</b>&nbsp;&lt;b&gt;<br/>c") == "a <b>\nc"


def test_only_gone_answers_count_as_the_channels_api_gone() -> None:
    """404/410, or a refusal that says deprecated/removed; a 5xx or a plain 400 is not."""
    assert channels_api_gone(NotFound("gone", status=410))
    assert channels_api_gone(NotFound("Channel not found.", status=404))
    assert channels_api_gone(InvalidPayload("This endpoint is deprecated", status=400))
    assert not channels_api_gone(InvalidPayload("message is required", status=400))
    assert not channels_api_gone(ServerError("boom", status=503))
    assert not channels_api_gone(None)
