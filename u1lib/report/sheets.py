"""Image grids as data for the page: the contact sheet (rows = variants, columns = prompt and seed)
and the previews across training steps (per prompt: rows = variants, columns = steps).

Each cell is an embedded thumbnail linking to the full-size PNG beside the report, so the page
stays light and self-contained while every image can be opened at full size. A missing or
unreadable image becomes an empty cell, never an exception.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from u1lib.report.collect import Key, Run, SampleRow, relative_href

SHEET_PX = 136  # contact sheet thumbnail box, css px
PREVIEW_PX = 112


@dataclass(frozen=True)
class Thumb:
    uri: str
    pixelated: bool  # a small original shown enlarged: its pixels should stay visible, not blur


@dataclass(frozen=True)
class GridCell:
    """An image, or why there is none; no thumbnail and no problem: nothing was meant to be here."""

    thumb: Thumb | None
    href: str | None  # the full-size image, relative to the page
    alt: str
    problem: str = ""


@dataclass(frozen=True)
class Grid:
    """Columns as (group, group text, title): consecutive columns of one group share a header (the
    seeds of one prompt); then rows of (variant, cells)."""

    columns: list[tuple[str, str, str]]
    rows: list[tuple[str, list[GridCell]]]
    box: int


def thumbnail(path: Path | None, box: int) -> tuple[Thumb | None, str]:
    """(thumbnail, problem); problem is '' when the image loaded.

    An image that fits the box is embedded as it is, in PNG (the tiny model's 64-px noise); a larger
    one is shrunk to the box and embedded as JPEG, which is a tenth of the PNG size for photographs.
    """
    if path is None:
        return None, "not in index.json"
    if not path.is_file():
        return None, f"{path} not found"
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        return None, f"{path} unreadable ({err})"
    buffer = io.BytesIO()
    if max(image.size) <= box:
        image.save(buffer, format="PNG", optimize=True)
        mime, pixelated = "image/png", True
    else:
        image.thumbnail((box, box), Image.LANCZOS)
        image.save(buffer, format="JPEG", quality=85)
        mime, pixelated = "image/jpeg", False
    return Thumb(f"data:{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), pixelated), ""


def _cell(path: Path | None, box: int, alt: str, page_dir: Path) -> GridCell:
    thumb, problem = thumbnail(path, box)
    href = relative_href(path, page_dir) if thumb is not None else None
    return GridCell(thumb, href, alt, problem)


def contact_grid(runs: list[Run], rows: list[SampleRow], page_dir: Path, notes: list[str]) -> Grid:
    """One row per run; a missing image of a run that has samples adds a note."""
    columns = [(row.prompt_id, row.prompt, f"seed {row.seed}") for row in rows]
    grid_rows = []
    for run in runs:
        cells = []
        for row in rows:
            key = (row.prompt_id, row.seed)
            cell = _cell(run.samples.get(key), SHEET_PX, f"{run.name}: {row.prompt_id} seed {row.seed}", page_dir)
            if cell.thumb is None and run.samples:  # a run with no samples at all already has its own note
                notes.append(f"{run.name}: sample {row.prompt_id!r} seed {row.seed}: {cell.problem}")
            cells.append(cell)
        grid_rows.append((run.name, cells))
    return Grid(columns, grid_rows, SHEET_PX)


REFERENCE_ROW = "real image (held out)"


def preview_grids(runs: list[Run], page_dir: Path, notes: list[str]) -> list[tuple[str, str, Grid]]:
    """Per (prompt, seed): (prompt id and seed, prompt text, grid of runs x steps); runs without
    previews are left out, and a listed image that is missing counts once per run in the notes."""
    with_previews = [run for run in runs if run.previews]
    keys: dict[Key, str] = {}
    for run in with_previews:
        for key, prompt in run.preview_prompts.items():
            keys.setdefault(key, prompt)
    steps = sorted({step for run in with_previews for step in run.previews})
    grids = []
    missing: dict[str, int] = {}
    references = {k: v for run in reversed(with_previews) for k, v in run.preview_references.items()}
    for key, prompt in keys.items():
        grid_rows = []
        if key[0] in references:  # the real image first, so each row reads as "how close to this"
            alt = f"the held-out image of {key[0]}"
            blanks = [GridCell(None, None, alt) for _ in steps[1:]]
            grid_rows.append((REFERENCE_ROW, [_cell(references[key[0]], PREVIEW_PX, alt, page_dir), *blanks]))
        for run in with_previews:
            cells = []
            for step in steps:
                path = run.previews.get(step, {}).get(key)
                alt = f"{run.name}: {key[0]} seed {key[1]} at step {step}"
                if path is None:  # not every run previews every step (the base model: step 0 only)
                    cells.append(GridCell(None, None, alt))
                    continue
                cell = _cell(path, PREVIEW_PX, alt, page_dir)
                if cell.thumb is None:
                    missing[run.name] = missing.get(run.name, 0) + 1
                cells.append(cell)
            grid_rows.append((run.name, cells))
        columns = [("", "", f"step {step:,}") for step in steps]
        grids.append((f"{key[0]} · seed {key[1]}", prompt, Grid(columns, grid_rows, PREVIEW_PX)))
    notes += [f"{name}: {n} preview images listed in an index.json but not readable" for name, n in missing.items()]
    return grids
