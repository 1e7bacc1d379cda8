"""A small reader of the report's HTML for the tests: sections, index links, token cells, images."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"meta", "br", "img", "hr", "input", "link", "col", "wbr"}


@dataclass
class Section:
    id: str
    title: str
    what: str = ""
    text: str = ""
    images: list[str] = field(default_factory=list)
    """alt texts of the section's images."""


class Page(HTMLParser):
    """Parses a report: `sections` in order, `index` (link targets of the table of
    contents), `tokens` (text of every token cell), `cells` (text of every table cell)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.sections: list[Section] = []
        self.index: list[str] = []
        self.tokens: list[str] = []
        self.cells: list[str] = []
        self._stack: list[tuple[str, dict]] = []
        self._buffers: dict[str, list[str]] = {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img" and self.sections:
            self.sections[-1].images.append(a.get("alt") or "")
        if tag in VOID:
            return
        self._stack.append((tag, a))
        if tag == "a" and any(t == "nav" for t, _ in self._stack):
            self.index.append((a.get("href") or "").removeprefix("#"))
        if tag == "h2":
            self.sections.append(Section(a.get("id") or "", ""))
        for key in ("h2", "what", "tok", "td"):
            if self._is(key, tag, a):
                self._buffers[key] = []

    @staticmethod
    def _is(key: str, tag: str, a: dict) -> bool:
        classes = (a.get("class") or "").split()
        return {"h2": tag == "h2", "what": tag == "p" and "what" in classes, "td": tag == "td"}.get(
            key, tag == "span" and "tok" in classes
        )

    def handle_endtag(self, tag):
        if not any(t == tag for t, _ in self._stack):
            return
        open_tag, a = self._stack.pop()
        while open_tag != tag:  # an unclosed element inside: close it too
            open_tag, a = self._stack.pop()
        for key in ("h2", "what", "tok", "td"):
            if self._is(key, open_tag, a) and key in self._buffers:
                text = "".join(self._buffers.pop(key))
                if key == "h2":
                    self.sections[-1].title = text
                elif key == "what":
                    self.sections[-1].what = text
                elif key == "tok":
                    self.tokens.append(text)
                else:
                    self.cells.append(text)

    def handle_data(self, data):
        for buffer in self._buffers.values():
            buffer.append(data)
        if self.sections:
            self.sections[-1].text += data

    def section(self, title: str) -> Section:
        found = [s for s in self.sections if s.title == title]
        assert found, f"no section {title!r}: {[s.title for s in self.sections]}"
        return found[0]
