"""One self-contained HTML page: sections of text, tables and PNG images embedded as data URIs,
so the file opens anywhere (a browser, an artifact viewer) with nothing beside it."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } .note { color: #666; font-style: italic; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; } .grid img { max-width: 590px; }
"""


@dataclass
class Section:
    id: str
    title: str
    parts: list[str] = field(default_factory=list)  # HTML fragments

    def text(self, words: str, note: bool = False) -> Section:
        self.parts.append(f'<p{" class=note" if note else ""}>{html.escape(words)}</p>')
        return self

    def image(self, png: bytes, alt: str) -> Section:
        data = base64.b64encode(png).decode("ascii")
        self.parts.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')
        return self

    def images(self, pngs: list[tuple[bytes, str]]) -> Section:
        inner = "".join(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(p).decode()}">'
                        for p, alt in pngs)
        self.parts.append(f'<div class="grid">{inner}</div>')
        return self

    def table(self, header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> Section:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f'<td{" class=num" if j in numeric else ""}>{html.escape(str(c))}</td>'
                                        for j, c in enumerate(row)) + "</tr>" for row in rows)
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self


def page(title: str, intro: list[str], sections: list[Section]) -> str:
    toc = "".join(f'<li><a href="#{s.id}">{html.escape(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>{"".join(s.parts)}</section>'
                   for s in sections)
    lead = "".join(f"<p>{html.escape(line)}</p>" for line in intro)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{lead}<ul>{toc}</ul>{body}"
            f"</body></html>\n")
