"""The notes sink's pure parts: the batching window, a reply's text, a note's escaped line."""

from __future__ import annotations

import pytest

from service.pipedrive.errors import InvalidPayload, NotFound, ServerError
from service.sinks import channels_api_gone
from service.sinks.notes import notes_window, plain_text
from service.sinks.replies import reply_text


def test_window_is_the_base_without_a_budget_figure() -> None:
    """Until the cost ledger feeds a budget, the window is NOTES_WINDOW_SECONDS."""
    assert notes_window(600.0, None) == 600.0


@pytest.mark.parametrize(
    ("left", "expected"),
    [(1.0, 300.0), (0.75, 450.0), (0.5, 600.0), (0.25, 1500.0), (0.0, 2400.0)],
)
def test_window_shrinks_with_plenty_of_budget_and_grows_when_short(
    left: float, expected: float
) -> None:
    """A plentiful budget halves the window at most; a spent one stretches it to four times."""
    assert notes_window(600.0, left) == pytest.approx(expected)


def test_window_clamps_a_fraction_out_of_range() -> None:
    """A budget figure below 0 or above 1 (a header glitch) is read as 0 or 1."""
    assert notes_window(600.0, -3.0) == notes_window(600.0, 0.0)
    assert notes_window(600.0, 7.0) == notes_window(600.0, 1.0)


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
