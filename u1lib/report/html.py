"""Page assembly: every piece of text passes through html.escape here and nowhere else needs to.

The page is one file: inline CSS, images as data: URIs, no script, no external URL.
"""

from __future__ import annotations

import base64
from html import escape

from u1lib.report.tables import Table

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 24px auto; max-width: 1500px; padding: 0 16px; color: #1d1d1f; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 4px; }
.subtitle { color: #555; margin-top: 0; }
h2 { font-size: 1.25em; margin-top: 32px; border-bottom: 1px solid #ccc; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 4px 8px; text-align: left; vertical-align: top;
         white-space: pre-line; }
th { background: #eef0f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { background: #d6f5d6; font-weight: bold; }
table.runs td:nth-child(-n+2) { white-space: pre; }
table.provenance td:first-child { color: #555; }
table.provenance td { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
.figures { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.figures figure { margin: 0; flex: 1 1 560px; max-width: 720px; }
.figures img { width: 100%; height: auto; border: 1px solid #ddd; }
.sheet { overflow-x: auto; }
.sheet img { border: 1px solid #ddd; max-width: 100%; height: auto; }
.notes { background: #fff6d6; border: 1px solid #e0c060; padding: 8px 16px; }
.empty { color: #777; font-style: italic; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image(png: bytes, alt: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return f'<img src="{data_uri(png)}" alt="{escape(alt)}"{size}>'


def figures(pngs: dict[str, bytes | None]) -> str:
    """Figures side by side; a figure without data becomes a line saying so."""
    parts = []
    for caption, png in pngs.items():
        body = image(png, caption) if png else f'<p class="empty">{escape(caption)}: no data yet</p>'
        parts.append(f"<figure>{body}</figure>")
    return f'<div class="figures">{"".join(parts)}</div>'


def table(data: Table, css_class: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in data.headers)
    body = []
    for r, row in enumerate(data.rows):
        cells = []
        for c, text in enumerate(row):
            classes = ["num"] * (c in data.numeric_columns) + ["best"] * ((r, c) in data.highlight)
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{escape(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    attr = f' class="{css_class}"' if css_class else ""
    head_row = f"<thead><tr>{head}</tr></thead>" if any(data.headers) else ""
    return f"<table{attr}>{head_row}<tbody>{''.join(body)}</tbody></table>"


def paragraph(text: str, css_class: str = "") -> str:
    attr = f' class="{css_class}"' if css_class else ""
    return f"<p{attr}>{escape(text)}</p>"


def notes_box(notes: list[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{escape(note)}</li>" for note in notes)
    return f'<div class="notes"><strong>Notes ({len(notes)})</strong><ul>{items}</ul></div>'


def section(title: str, *parts: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{''.join(parts)}</section>"


def page(title: str, subtitle: str, *parts: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n"
        f"<body><h1>{escape(title)}</h1>{paragraph(subtitle, 'subtitle')}\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
