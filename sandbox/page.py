"""The HTML shell the sandbox's pages share: one small stylesheet, no build step, phone-friendly."""

from __future__ import annotations

import html
from html.parser import HTMLParser

STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#21232c}
header{background:#fff;border-bottom:1px solid #dde;padding:.5rem 1rem}
header h1{font-size:1.1rem;margin:0} header p{margin:.2rem 0;color:#666}
main{display:flex;flex-wrap:wrap;gap:1rem;padding:1rem}
nav{flex:1 1 14rem;background:#fff;border-radius:6px;padding:.5rem}
section{flex:3 1 22rem;background:#fff;border-radius:6px;padding:.5rem}
nav a{display:block;padding:.3rem;color:#21232c;text-decoration:none;border-radius:4px}
nav a.on{background:#e0ebff} h2{font-size:1rem;margin:.4rem 0}
.messages{list-style:none;margin:0;padding:.5rem;display:flex;flex-direction:column;gap:.4rem}
.messages li{max-width:80%;padding:.4rem .6rem;border-radius:10px;background:#fff;
  box-shadow:0 1px 1px #0002;white-space:pre-wrap}
.messages li.me{align-self:flex-end;background:#dcf8c6} .messages li.hint{color:#888}
.messages img{max-width:14rem;display:block;margin-top:.3rem}
.ticks,.status{font-size:.75rem;color:#4a90e2;margin-left:.5rem}
.reply{display:flex;flex-wrap:wrap;gap:.4rem;padding:.5rem}
.reply textarea{flex:1 1 100%;font:inherit} .error{color:#b00020}
.note{border-left:3px solid #f5c542;padding:.3rem .6rem;margin:.3rem 0;background:#fffbea}
"""


def page(title: str, body: str, script: str = "") -> str:
    """A whole document around already-escaped `body` HTML."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{body}{script}</body></html>"
    )


#: Tags a note may keep when shown (Pipedrive notes are HTML); every attribute is dropped.
NOTE_TAGS = frozenset({"p", "b", "strong", "i", "em", "u", "small", "br", "ul", "ol", "li", "div"})


class _NoteCleaner(HTMLParser):
    """Rebuild a note's HTML from allowed tags without attributes and escaped text, so a note
    shows formatted but can never carry script, links or styles into the inbox."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in NOTE_TAGS:
            self.out.append(f"<{tag}>")

    def handle_endtag(self, tag: str) -> None:
        if tag in NOTE_TAGS and tag != "br":
            self.out.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        self.out.append(html.escape(data))


def note_html(content: str) -> str:
    """A note's HTML with only harmless formatting left."""
    cleaner = _NoteCleaner()
    cleaner.feed(content)
    cleaner.close()
    return "".join(cleaner.out)
