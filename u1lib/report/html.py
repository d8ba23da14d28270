"""Page assembly: every piece of text passes through html.escape here and nowhere else needs to.

The page is one file with inline CSS and no script. Figures and thumbnails are data: URIs; the
only links are relative ones to files beside the report (full-size samples, adapters, logs) and
anchors within the page, so nothing reaches outside the results folder.
"""

from __future__ import annotations

import base64
from html import escape

from u1lib.report.sheets import Grid
from u1lib.report.tables import Link, Table

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 24px auto; max-width: 1500px; padding: 0 16px; color: #1d1d1f; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 4px; }
.subtitle { color: #555; margin-top: 0; }
nav { font-size: 0.9em; margin: 4px 0 12px; }
nav a { margin-right: 12px; }
h2 { font-size: 1.25em; margin-top: 32px; border-bottom: 1px solid #ccc; padding-bottom: 4px; }
h3 { font-size: 1.05em; margin: 18px 0 2px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 4px 8px; text-align: left; vertical-align: top;
         white-space: pre-line; }
th { background: #eef0f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: pre; }
td.best { background: #d6f5d6; font-weight: bold; }
tr.base td { background: #f3f3f3; font-style: italic; }
.sw { display: inline-block; width: 0.9em; height: 0.9em; border-radius: 2px; margin-right: 6px;
      vertical-align: -0.1em; }
table.provenance td:first-child { color: #555; }
table.provenance td, table.settings td { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
.verdict { font-size: 1.1em; background: #eef6ff; border: 1px solid #9cc3ea; padding: 8px 14px; }
.definition { color: #333; }
.banner { background: #ffe1e1; border: 2px solid #d04040; padding: 8px 14px; font-weight: bold; }
.figures { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.figures figure { margin: 0; flex: 1 1 600px; max-width: 740px; }
.figures img { width: 100%; height: auto; border: 1px solid #ddd; }
.gridwrap, .tablewrap { overflow-x: auto; }
table.runs td:last-child { min-width: 17em; }
table.grid th, table.grid td { padding: 2px; text-align: center; vertical-align: middle; }
table.grid th.row { text-align: left; padding: 2px 8px; max-width: 12em; }
table.grid th .prompt { font-weight: normal; font-size: 0.85em; color: #444; display: block;
                        max-width: 290px; margin: 0 auto; white-space: normal; }
table.grid img { display: block; object-fit: contain; background: #fafafa; }
table.grid img.px { image-rendering: pixelated; }
table.grid td.missing { background: #ddd; color: #555; font-size: 0.85em; }
table.grid td.blank { background: #f7f7f7; }
.previews { display: flex; flex-wrap: wrap; gap: 8px 32px; }
table.grid caption { caption-side: top; text-align: left; color: #333; padding: 2px 0 6px; }
table.runs td:first-child, table.leaderboard td:nth-child(2) { white-space: pre; }
td a { white-space: nowrap; }
details.notes { background: #fff6d6; border: 1px solid #e0c060; padding: 6px 16px; margin: 12px 0; }
details.notes summary { font-weight: bold; cursor: pointer; }
.empty { color: #777; font-style: italic; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image(png: bytes, alt: str) -> str:
    return f'<img src="{data_uri(png)}" alt="{escape(alt)}">'


def figures(pngs: dict[str, bytes | None]) -> str:
    """Figures side by side; a figure without data becomes a line saying so."""
    parts = []
    for caption, png in pngs.items():
        body = image(png, caption) if png else f'<p class="empty">{escape(caption)}: no data yet</p>'
        parts.append(f"<figure>{body}</figure>")
    return f'<div class="figures">{"".join(parts)}</div>'


def swatch(color: str) -> str:
    return f'<span class="sw" style="background:{escape(color)}"></span>'


def _cell(value) -> str:
    if isinstance(value, Link):
        return f'<a href="{escape(value.href)}">{escape(value.text)}</a>'
    if isinstance(value, tuple):
        return " · ".join(map(_cell, value))
    return escape(value)


def table(data: Table, css_class: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in data.headers)
    body = []
    for r, row in enumerate(data.rows):
        cells = []
        for c, value in enumerate(row):
            classes = ["num"] * (c in data.numeric_columns) + ["best"] * ((r, c) in data.highlight)
            attr = f' class="{" ".join(classes)}"' if classes else ""
            color = data.swatches[r] if c == 0 and r < len(data.swatches) else None
            cells.append(f"<td{attr}>{swatch(color) if color else ''}{_cell(value)}</td>")
        row_class = data.row_classes[r] if r < len(data.row_classes) else ""
        row_attr = f' class="{row_class}"' if row_class else ""
        body.append(f"<tr{row_attr}>{''.join(cells)}</tr>")
    attr = f' class="{css_class}"' if css_class else ""
    head_row = f"<thead><tr>{head}</tr></thead>" if any(data.headers) else ""
    return f'<div class="tablewrap"><table{attr}>{head_row}<tbody>{"".join(body)}</tbody></table></div>'


def _grid_head(grid: Grid) -> str:
    """One header row of column titles, under a row of group headers when the columns are grouped."""
    titles = "".join(f"<th>{escape(title)}</th>" for _, _, title in grid.columns)
    if not any(group for group, _, _ in grid.columns):
        return f"<tr><th></th>{titles}</tr>"
    spans: list[list] = []
    for group, text, _ in grid.columns:
        if spans and spans[-1][0] == group:
            spans[-1][2] += 1
        else:
            spans.append([group, text, 1])
    groups = "".join(
        f'<th colspan="{span}">{escape(group)}<span class="prompt">{escape(text)}</span></th>'
        for group, text, span in spans
    )
    return f'<tr><th rowspan="2"></th>{groups}</tr><tr>{titles}</tr>'


def image_grid(grid: Grid, colors: dict[str, str], row_labels: dict[str, str], caption: str = "") -> str:
    """A table of thumbnails, each a link to its full-size image; rows start with the variant's colour.
    The caption wraps to the table's width, so grids can sit side by side."""
    size = f'width="{grid.box}" height="{grid.box}"'
    body = []
    for name, cells in grid.rows:
        label = escape(row_labels.get(name, name)).replace("_", "_<wbr>")  # long names break at their parts
        color = colors.get(name)  # rows that are no variant (the real image) have none
        parts = [f'<th class="row">{swatch(color) if color else ""}{label}</th>']
        for cell in cells:
            if cell.thumb is None:
                css = "missing" if cell.problem else "blank"
                text = "missing" if cell.problem else ""
                parts.append(f'<td class="{css}" title="{escape(cell.problem)}">{text}</td>')
                continue
            css = ' class="px"' if cell.thumb.pixelated else ""
            img = f'<img src="{cell.thumb.uri}" alt="{escape(cell.alt)}" title="{escape(cell.alt)}" {size}{css}>'
            parts.append(f'<td><a href="{escape(cell.href)}">{img}</a></td>')
        body.append(f"<tr>{''.join(parts)}</tr>")
    caption_html = f"<caption>{escape(caption)}</caption>" if caption else ""
    return (
        f'<div class="gridwrap"><table class="grid">{caption_html}<thead>{_grid_head(grid)}</thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def side_by_side(blocks: list[str]) -> str:
    """Blocks that sit next to each other while the window is wide enough, else below each other."""
    return '<div class="previews">' + "".join(f"<div>{block}</div>" for block in blocks) + "</div>"


def paragraph(text: str, css_class: str = "") -> str:
    attr = f' class="{css_class}"' if css_class else ""
    return f"<p{attr}>{escape(text)}</p>"


def rich(parts: list[tuple[str, bool]], css_class: str) -> str:
    """A paragraph of (text, bold) runs: the verdict names the best variant in bold."""
    text = "".join(f"<strong>{escape(t)}</strong>" if bold else escape(t) for t, bold in parts)
    return f'<p class="{css_class}">{text}</p>'


def heading(text: str) -> str:
    return f"<h3>{escape(text)}</h3>"


def notes_box(notes: list[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{escape(note)}</li>" for note in notes)
    return f'<details class="notes" open><summary>Notes ({len(notes)})</summary><ul>{items}</ul></details>'


def banner(text: str) -> str:
    return f'<div class="banner">{escape(text)}</div>'


def section(anchor: str, title: str, *parts: str) -> str:
    return f'<section id="{escape(anchor)}"><h2>{escape(title)}</h2>{"".join(parts)}</section>'


def nav(entries: dict[str, str]) -> str:
    return "<nav>" + "".join(f'<a href="#{escape(a)}">{escape(t)}</a>' for a, t in entries.items()) + "</nav>"


def page(title: str, subtitle: str, *parts: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n"
        f"<body><h1>{escape(title)}</h1>{paragraph(subtitle, 'subtitle')}\n"
        + "\n".join(part for part in parts if part)
        + "\n</body></html>\n"
    )
