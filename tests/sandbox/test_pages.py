"""What the inbox shows of a note: Pipedrive notes are HTML, and the inbox must never run one."""

from __future__ import annotations

from sandbox.page import note_html


def test_a_note_keeps_its_formatting() -> None:
    assert note_html("<p><b>Jane</b>: hi<br>there</p>") == "<p><b>Jane</b>: hi<br>there</p>"


def test_a_note_cannot_carry_script_links_or_attributes() -> None:
    shown = note_html(
        '<p onclick="x()">a<script>alert(1)</script>'
        '<a href="javascript:y()">b</a><img src=z onerror="w()">&lt;i&gt;</p>'
    )
    assert shown == "<p>aalert(1)b&lt;i&gt;</p>"
