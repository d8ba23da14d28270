"""Where packing gets its items: a folder of ``<id>.<image>`` + ``<id>.txt``, or a parquet file.

Both yield the same things in the same shape, so every item goes through one conversion path:
a :class:`Candidate` (an id plus a ``load()`` that returns the caption, think text and image bytes or
raises :class:`BadItem`) or a :class:`Skipped` record for problems visible before loading
(duplicate ids, a missing caption file, ...).

Ids are Unicode NFC: a folder's file stems and a parquet's ``sample_id`` values are normalised, so
an image and a caption whose names differ only in normalisation (macOS writes NFD) pair up, and
the id that names cache entries and files downstream has one spelling.

Caption files are UTF-8 (a byte-order mark is tolerated; other encodings are refused, never
guessed). A line ``---think---`` splits the file: the caption comes before it, the think text
(used only with think labels on) after it.
"""

from __future__ import annotations

import itertools
import os
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq

from u1lib.data.images import BadItem, read_file_bytes
from u1lib.data.prompts import TEMPLATE_TOKENS, UNCOND_ID
from u1lib.data.schema import SOURCE_OPTIONAL, SOURCE_REQUIRED, read_schema, schema_problems

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CAPTION_SUFFIX = ".txt"
_EXPECTED_FILES = "<id>.jpg|jpeg|png|webp images with <id>.txt captions"
THINK_MARKER = "---think---"
RESERVED_SAMPLE_IDS = (UNCOND_ID,)
PARQUET_BATCH_ROWS = 16
# control, lone surrogate, line and paragraph separator
_REFUSED_ID_CATEGORIES = ("Cc", "Cs", "Zl", "Zp")


@dataclass(frozen=True)
class SourceItem:
    caption: str
    think: str | None
    image_bytes: bytes


@dataclass(frozen=True)
class Candidate:
    sample_id: str
    origin: str  # what to show the user: a file name or "<file>.parquet row N"
    load: Callable[[], SourceItem]


@dataclass(frozen=True)
class Skipped:
    origin: str
    reason: str
    detail: str = ""

    def to_dict(self) -> dict:
        return {"file": self.origin, "reason": self.reason, "detail": self.detail}


@dataclass
class Source:
    description: str
    items: Iterable[Candidate | Skipped]
    ignored: list[str] = field(default_factory=list)  # files that are neither images nor captions


class SourceError(ValueError):
    """A source that cannot be read at all (not one bad item)."""


def clean_texts(caption: str | None, think: str | None) -> tuple[str, str | None]:
    """Strip both texts; refuse an empty caption or one that would inject template tokens."""
    caption = (caption or "").strip()
    think = (think or "").strip() or None
    if not caption:
        raise BadItem("empty caption")
    for text, what in ((caption, "caption"), (think or "", "think text")):
        found = [token for token in TEMPLATE_TOKENS if token in text]
        if found:
            raise BadItem("template token in caption", f"{what} contains {', '.join(found)}")
    return caption, think


def parse_caption_bytes(data: bytes) -> tuple[str, str | None]:
    """Caption and think text of one ``.txt`` file (see the module docstring)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BadItem(
            "caption is not UTF-8",
            f"byte 0x{data[err.start]:02x} at offset {err.start}; re-save the file as UTF-8",
        ) from None
    lines = text.splitlines()
    markers = [i for i, line in enumerate(lines) if line.strip() == THINK_MARKER]
    if len(markers) > 1:
        raise BadItem("caption has several think markers", f"{len(markers)} lines read {THINK_MARKER}")
    if not markers:
        return clean_texts(text, None)
    cut = markers[0]
    return clean_texts("\n".join(lines[:cut]), "\n".join(lines[cut + 1 :]))


def sample_id_problem(sample_id: str | None) -> str | None:
    """Why an id cannot be used (it names cache entries and files downstream), or None.

    Any script, emoji or space inside is fine; refused are path separators, surrounding whitespace,
    control characters, line breaks and lone surrogates (which UTF-8 cannot store). Format
    characters such as the zero-width joiner stay allowed: emoji sequences and some scripts need them.
    """
    if not sample_id:
        return "missing sample_id"
    if sample_id in RESERVED_SAMPLE_IDS:
        return "reserved sample_id"
    if (
        sample_id != sample_id.strip()
        or any(ch in sample_id for ch in "/\\")
        or any(unicodedata.category(ch) in _REFUSED_ID_CATEGORIES for ch in sample_id)
    ):
        return "invalid sample_id"
    return None


def nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _nfc_id(value: str | None) -> str | None:
    return None if value is None else nfc(value)


def folder_source(src_dir: str | os.PathLike) -> Source:
    """Items of a folder (not recursive; hidden files and sub-folders are left out), sorted by id."""
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        what = "a file, not a folder" if src_dir.exists() else "no such folder"
        raise SourceError(f"{src_dir}: {what}; give a folder of {_EXPECTED_FILES} or a .parquet file")
    images: dict[str, list[str]] = defaultdict(list)
    captions: dict[str, list[str]] = defaultdict(list)
    ignored = []
    not_utf8: list[Skipped] = []
    sub_folders = 0
    for name in sorted(os.listdir(src_dir)):
        path = src_dir / name
        if name.startswith(".") or not path.is_file():
            sub_folders += path.is_dir() and not name.startswith(".")
            continue
        if (shown := shown_name(name)) != name:  # bytes that are not UTF-8 arrive as lone surrogates
            not_utf8.append(Skipped(shown, "file name is not UTF-8", "rename the file; ids and captions are UTF-8"))
            continue
        stem, suffix = nfc(path.stem), path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            images[stem].append(name)
        elif suffix == CAPTION_SUFFIX:
            captions[stem].append(name)
        else:
            ignored.append(name)
    if not images and not not_utf8:
        raise SourceError(_no_images_message(src_dir, sum(map(len, captions.values())), ignored, sub_folders))
    items = itertools.chain(not_utf8, _folder_items(src_dir, images, captions))
    return Source(f"folder {shown_name(str(src_dir))}", items, ignored)


def shown_name(name: str) -> str:
    """A file name as text that can be printed and stored: undecodable bytes become ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _no_images_message(src_dir: Path, caption_count: int, ignored: list[str], sub_folders: int) -> str:
    """What the folder holds instead of images, so a wrong path or file type is plain to see."""
    found = [f"{caption_count} caption file(s)"] if caption_count else []
    if ignored:
        found.append(f"{len(ignored)} other file(s): {', '.join(ignored[:5])}" + (", ..." if len(ignored) > 5 else ""))
    if sub_folders:
        found.append(f"{sub_folders} sub-folder(s), which are not searched")
    return (
        f"{src_dir}: no usable items: the folder holds no .jpg, .jpeg, .png or .webp image "
        f"({'; '.join(found) or 'nothing but hidden files'}); expected {_EXPECTED_FILES}"
    )


def _folder_items(src_dir: Path, images: dict, captions: dict) -> Iterator[Candidate | Skipped]:
    for stem in sorted(images.keys() | captions.keys()):
        image_files, caption_files = images.get(stem, []), captions.get(stem, [])
        if not image_files:
            yield Skipped(caption_files[0], "caption without image", f"no {stem}.jpg/.jpeg/.png/.webp")
        elif len(image_files) > 1:
            for name in image_files:
                yield Skipped(
                    name, "duplicate id", f"'{stem}' is used by {_name_list(image_files)}; rename all but one"
                )
        elif problem := sample_id_problem(stem):
            yield Skipped(image_files[0], problem, f"id {stem!r}")
        elif not caption_files:
            yield Skipped(image_files[0], "missing caption", f"expected {stem}{CAPTION_SUFFIX}")
        elif len(caption_files) > 1:
            yield Skipped(image_files[0], "duplicate caption files", _name_list(caption_files))
        else:
            load = partial(_load_folder_item, src_dir / image_files[0], src_dir / caption_files[0])
            yield Candidate(stem, image_files[0], load)


def _name_list(names: list[str]) -> str:
    """File names for a message; names that look alike but are spelt in NFC and NFD are flagged."""
    listing = ", ".join(names)
    if len({nfc(name) for name in names}) < len(names):
        listing += " (some differ only in Unicode normalisation, NFC vs NFD: delete or rename the extra copy)"
    return listing


def _load_folder_item(image_path: Path, caption_path: Path) -> SourceItem:
    caption, think = parse_caption_bytes(read_file_bytes(caption_path))
    return SourceItem(caption, think, read_file_bytes(image_path))


def parquet_source(path: str | os.PathLike) -> Source:
    """Rows of a parquet file with columns sample_id, caption, image (encoded bytes), think (optional).

    Rows are streamed in file order; ids that occur more than once (after NFC) are all skipped.
    """
    path = Path(path)
    schema = read_schema(path)
    problems = schema_problems(schema, SOURCE_REQUIRED, SOURCE_OPTIONAL)
    if problems:
        raise SourceError(
            f"{path}: wrong schema for a parquet source: {'; '.join(problems)}. "
            "Needed: sample_id (string), caption (string), image (binary, encoded image file), think (string, optional)"
        )
    ids = pq.read_table(path, columns=["sample_id"]).column("sample_id").to_pylist()
    if not ids:
        raise SourceError(f"{path}: no usable items: the parquet file has no rows; it needs one row per image")
    id_counts = Counter(map(_nfc_id, ids))
    return Source(f"parquet {path}", _parquet_items(path, "think" in schema.names, id_counts))


def _parquet_items(path: Path, has_think: bool, id_counts: Counter) -> Iterator[Candidate | Skipped]:
    columns = ["sample_id", "caption", "image"] + (["think"] if has_think else [])
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
        for record in batch.to_pylist():
            origin = f"{path.name} row {row}"
            sample_id = _nfc_id(record["sample_id"])
            row += 1
            if problem := sample_id_problem(sample_id):
                yield Skipped(origin, problem, f"id {sample_id!r}")
            elif id_counts[sample_id] > 1:
                yield Skipped(origin, "duplicate id", f"'{sample_id}' occurs {id_counts[sample_id]} times")
            else:
                yield Candidate(sample_id, origin, partial(_parquet_item, record))


def _parquet_item(record: dict) -> SourceItem:
    caption, think = clean_texts(record["caption"], record.get("think"))
    if record["image"] is None:
        raise BadItem("missing image", "image is null")
    return SourceItem(caption, think, record["image"])
