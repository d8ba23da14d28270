"""Contact sheet: one PNG, a row per (prompt, seed), a column per variant, labelled with Pillow.

Composing one image (rather than one <img> per cell) keeps the page light and the grid aligned;
a missing or unreadable sample becomes a grey "missing" cell, never an exception.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from u1lib.report.collect import Run, SampleRow

CELL = 256  # thumbnail box in pixels
_PAD = 6
_HEADER = 30
_ROW_LABEL = 150
_BACKGROUND = (255, 255, 255)
_PLACEHOLDER = (200, 200, 200)
_TEXT = (20, 20, 20)


def _font(size: int = 15) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
    """``text`` cut with '...' so it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _thumbnail(path: Path | None) -> tuple[Image.Image | None, str]:
    """(thumbnail, problem); problem is '' when the image loaded."""
    if path is None:
        return None, "not in index.json"
    if not path.is_file():
        return None, f"{path} not found"
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        return None, f"{path} unreadable ({err})"
    scale = CELL // max(image.size)
    if scale > 1:  # small samples (the tiny model's) are enlarged with visible pixels, not blurred
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    image.thumbnail((CELL, CELL))
    return image, ""


def _placeholder(draw: ImageDraw.ImageDraw, left: int, top: int, font) -> None:
    draw.rectangle([left, top, left + CELL - 1, top + CELL - 1], fill=_PLACEHOLDER)
    draw.text((left + CELL // 2, top + CELL // 2), "missing", fill=_TEXT, font=font, anchor="mm")


def contact_sheet(runs: list[Run], rows: list[SampleRow], notes: list[str]) -> bytes:
    """PNG bytes of the grid; a missing or unreadable cell of a run that has samples adds a note."""
    font = _font()
    width = _ROW_LABEL + len(runs) * (CELL + _PAD) + _PAD
    height = _HEADER + len(rows) * (CELL + _PAD) + _PAD
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for column, run in enumerate(runs):
        left = _ROW_LABEL + column * (CELL + _PAD) + _PAD
        header = _fit(draw, run.name, CELL, font)
        draw.text((left + CELL // 2, _HEADER // 2), header, fill=_TEXT, font=font, anchor="mm")
    for row_index, row in enumerate(rows):
        top = _HEADER + row_index * (CELL + _PAD) + _PAD
        for offset, label in enumerate((row.prompt_id, f"seed {row.seed}")):
            text = _fit(draw, label, _ROW_LABEL - 2 * _PAD, font)
            draw.text((_PAD, top + CELL // 2 + (offset - 1) * 20), text, fill=_TEXT, font=font)
        for column, run in enumerate(runs):
            left = _ROW_LABEL + column * (CELL + _PAD) + _PAD
            image, problem = _thumbnail(run.samples.get((row.prompt_id, row.seed)))
            if image is None:
                _placeholder(draw, left, top, font)
                if run.samples:  # a run with no samples at all already has its own note
                    notes.append(f"{run.name}: sample {row.prompt_id!r} seed {row.seed}: {problem}")
                continue
            sheet.paste(image, (left + (CELL - image.width) // 2, top + (CELL - image.height) // 2))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
