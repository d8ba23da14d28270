"""The report's parts as plain files, for Snakemake's own report (``snakemake --report``) and for
anyone who wants a figure or a table without the page: figures as PNG, tables as TSV, and each
variant's samples and previews under one folder per kind (hard links to the run folders' PNGs where
the file system allows, else copies). The workflow declares each kind with ``report()``."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

from u1lib.io import atomic_folder, refuse_foreign, write_bytes, write_text
from u1lib.report.collect import Key, Run
from u1lib.report.tables import Cell, Link, Table


def slug(title: str) -> str:
    """'validation loss per t' -> 'validation_loss_per_t' (file names Snakemake's patterns can match)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", title).strip("_").lower()


def _text(cell: Cell) -> str:
    if isinstance(cell, Link):
        return cell.text
    if isinstance(cell, tuple):
        return " · ".join(map(_text, cell))
    return " ".join(str(cell).split())  # a TSV cell holds no tab or newline


def table_tsv(table: Table) -> str:
    lines = ["\t".join(map(_text, table.headers))] + ["\t".join(map(_text, row)) for row in table.rows]
    return "\n".join(lines) + "\n"


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, target)


def _images(images: dict[Key, Path], folder: Path) -> None:
    for (prompt_id, seed), source in images.items():
        if source.is_file():
            _place(source, folder / f"{prompt_id}_seed{seed}.png")


@dataclass(frozen=True)
class ArtifactFolders:
    """Where each kind of part goes; the workflow declares each folder as an output of its own."""

    tables: Path
    figures: Path
    samples: Path
    previews: Path

    @classmethod
    def under(cls, root: Path) -> ArtifactFolders:
        """``root/{tables,figures,samples,previews}`` (the CLI's ``--files``)."""
        return cls(**{kind.name: Path(root) / kind.name for kind in fields(cls)})


# what each folder holds, by path relative to it (anything else there is a user's: refused)
_WRITES = {
    "tables": re.compile(r"[a-z0-9_]+\.tsv"),  # slug() names
    "figures": re.compile(r"[a-z0-9_]+\.png"),
    "samples": re.compile(r"[^/]+/[^/]+_seed\d+\.png"),
    "previews": re.compile(r"[^/]+/step-\d{8}/[^/]+_seed\d+\.png"),
}


def write_artifacts(
    folders: ArtifactFolders, *, figures: dict[str, bytes | None], tables: dict[str, Table], runs: list[Run]
) -> None:
    """Each folder replaced as a whole: ``tables/<name>.tsv``, ``figures/<title>.png`` (figures with
    nothing to show are left out), ``samples/<variant>/`` and ``previews/<variant>/step-<8-digit N>/``
    holding ``<prompt_id>_seed<seed>.png``. A folder holding any other file is refused before any
    folder changes."""
    for kind in fields(folders):
        refuse_foreign(getattr(folders, kind.name), _WRITES[kind.name].fullmatch, "`u1lib report`")
    with atomic_folder(folders.tables) as folder:
        for name, table in tables.items():
            write_text(folder / f"{slug(name)}.tsv", table_tsv(table))
    with atomic_folder(folders.figures) as folder:
        for title, png in figures.items():
            if png is not None:
                write_bytes(folder / f"{slug(title)}.png", png)
    with atomic_folder(folders.samples) as folder:
        for run in runs:
            _images(run.samples, folder / run.name)
    with atomic_folder(folders.previews) as folder:
        for run in runs:
            for step, images in run.previews.items():
                _images(images, folder / run.name / f"step-{step:08d}")
