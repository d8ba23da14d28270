"""Read run folders into plain Python objects, turning every gap or bad file into a note.

The report is the last step of the pipeline and is rebuilt while runs still train, so nothing a
run folder holds may stop it: a missing file (run unfinished), a torn last line (writer killed) and
an unparsable file (a bug upstream) each become a note naming the file, and the report shows the rest.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from u1lib.io import read_json, read_jsonl

Key = tuple[str, int]  # (prompt_id, seed)
_PREVIEW_FOLDER = re.compile(r"step-(\d+)")


@dataclass
class Run:
    """Everything the report uses from one ``results/runs/{variant}/`` folder; absent parts are empty."""

    name: str
    folder: Path
    trained: bool
    metrics: dict = field(default_factory=dict)
    config: dict | None = None
    train_log: list[dict] = field(default_factory=list)
    val_log: list[dict] = field(default_factory=list)
    samples: dict[Key, Path] = field(default_factory=dict)
    prompts: dict[Key, str] = field(default_factory=dict)
    thoughts: dict[str, dict] = field(default_factory=dict)  # prompt_id -> think-mode record (text, stop, tokens)
    sampler: dict | None = None
    previews: dict[int, dict[Key, Path]] = field(default_factory=dict)  # step -> images
    preview_prompts: dict[Key, str] = field(default_factory=dict)
    preview_references: dict[str, Path] = field(default_factory=dict)  # prompt_id -> its real (held-out) image
    benchmark_s: float | None = None  # the Snakemake job's wall time
    job_log: Path | None = None


@dataclass(frozen=True)
class SampleRow:
    prompt_id: str
    seed: int
    prompt: str


def read_run(
    name: str,
    folder: Path,
    prompt_set: str,
    *,
    trained: bool,
    notes: list[str],
    benchmark: Path | None = None,
    job_log: Path | None = None,
) -> Run:
    """Read one run folder (and its job's Snakemake benchmark file and log, when given)."""
    run = Run(name=name, folder=folder, trained=trained)
    if not folder.is_dir():
        notes.append(f"{name}: run folder {folder} not found")
        return run
    if trained:
        run.metrics = _optional_json(folder / "metrics.json", name, notes) or {}
        _check_t_hist(run, notes)
        run.config = _optional_json(folder / "config.json", name, notes)
        run.train_log = _optional_jsonl(folder / "train_log.jsonl", name, notes)
        _note_non_finite(run.train_log, "x0_mse", f"{name}: train_log.jsonl", notes)
        run.val_log = _optional_jsonl(folder / "val_log.jsonl", name, notes)
        _note_non_finite(run.val_log, "val_loss", f"{name}: val_log.jsonl", notes)
        if benchmark is not None:
            run.benchmark_s = read_benchmark(benchmark, name, notes)
        if job_log is not None and job_log.is_file():
            run.job_log = job_log
    _read_samples(run, folder / "samples" / prompt_set, notes)
    _read_previews(run, folder / "previews", notes)
    return run


def _optional_json(path: Path, name: str, notes: list[str]) -> dict | None:
    if not path.is_file():
        notes.append(f"{name}: {path.name} not found (run unfinished?)")
        return None
    try:
        data = read_json(path)
    except (ValueError, OSError) as err:
        notes.append(f"{name}: {path} unreadable, left out ({err})")
        return None
    if not isinstance(data, dict):
        notes.append(f"{name}: {path} is not a JSON object, left out")
        return None
    return data


def _optional_jsonl(path: Path, name: str, notes: list[str]) -> list[dict]:
    if not path.is_file():
        notes.append(f"{name}: {path.name} not found")
        return []
    try:
        records = read_jsonl(path)  # a torn last line is skipped; a bad line before it raises
    except (ValueError, OSError) as err:
        notes.append(f"{name}: {path} unreadable, left out ({err})")
        return []
    if not records:
        notes.append(f"{name}: {path.name} has no complete lines yet")
    return [record for record in records if isinstance(record, dict)]


def _note_non_finite(records: list[dict], key: str, where: str, notes: list[str]) -> None:
    """A diverged run logs NaN/inf; the curves skip those points, so say how many were skipped."""
    bad = [r.get("step") for r in records if is_number(r.get(key)) and not math.isfinite(r[key])]
    if bad:
        notes.append(f"{where}: {len(bad)} non-finite '{key}' values (first at step {bad[0]}) not plotted")


def _check_t_hist(run: Run, notes: list[str]) -> None:
    hist = run.metrics.get("t_hist")
    if hist is None:
        return
    edges = hist.get("edges") if isinstance(hist, dict) else None
    counts = hist.get("counts") if isinstance(hist, dict) else None
    if not (
        isinstance(edges, list)
        and isinstance(counts, list)
        and len(edges) == len(counts) + 1
        and all(map(is_number, edges + counts))
    ):
        notes.append(f"{run.name}: metrics.json 't_hist' is not {{edges, counts}} with one more edge; not plotted")
        run.metrics.pop("t_hist")


def _read_index(index_path: Path, name: str, notes: list[str]) -> dict | None:
    """An index.json of images (samples or previews), its bad entries dropped with a note."""
    try:
        index = read_json(index_path)
    except (ValueError, OSError) as err:
        notes.append(f"{name}: {index_path} unreadable, left out ({err})")
        return None
    images = index.get("images") if isinstance(index, dict) else None
    if not isinstance(images, list):
        notes.append(f"{name}: {index_path} has no 'images' list, left out")
        return None
    good = []
    for position, entry in enumerate(images):
        if isinstance(entry, dict) and {"prompt_id", "seed", "file"} <= entry.keys() and is_int(entry["seed"]):
            good.append(entry)
        else:
            notes.append(
                f"{name}: {index_path}: images[{position}] needs 'prompt_id', an integer 'seed' and 'file'; "
                f"got {entry!r:.120}"
            )
    index["images"] = good
    return index


def _read_samples(run: Run, folder: Path, notes: list[str]) -> None:
    index_path = folder / "index.json"
    if not index_path.is_file():
        notes.append(f"{run.name}: no samples for this prompt set ({index_path} not found)")
        return
    index = _read_index(index_path, run.name, notes)
    if index is None:
        return
    run.sampler = index.get("sampler") if isinstance(index.get("sampler"), dict) else None
    for entry in index["images"]:
        key = (str(entry["prompt_id"]), int(entry["seed"]))
        run.samples[key] = folder / str(entry["file"])
        run.prompts[key] = str(entry.get("prompt", ""))
        if isinstance(entry.get("think"), dict):
            run.thoughts[key[0]] = entry["think"]


def _read_previews(run: Run, folder: Path, notes: list[str]) -> None:
    """``previews/step-XXXXXXXX/index.json`` written during training; none at all is normal."""
    for index_path in sorted(folder.glob("step-*/index.json")):
        index = _read_index(index_path, run.name, notes)
        if index is None:
            continue
        step = index.get("step")
        if not is_int(step):
            match = _PREVIEW_FOLDER.fullmatch(index_path.parent.name)
            if match is None:
                notes.append(f"{run.name}: {index_path} names no integer 'step', left out")
                continue
            step = int(match.group(1))
        images = run.previews.setdefault(int(step), {})
        for entry in index["images"]:
            key = (str(entry["prompt_id"]), int(entry["seed"]))
            images[key] = index_path.parent / str(entry["file"])
            run.preview_prompts.setdefault(key, str(entry.get("prompt", "")))
    if run.previews:
        _read_preview_references(run, folder / "reference" / "index.json", notes)


def _read_preview_references(run: Run, index_path: Path, notes: list[str]) -> None:
    """``previews/reference/index.json``: the real image of each preview caption ({sample_id, file})."""
    if not index_path.is_file():
        return
    index = _optional_json(index_path, run.name, notes)
    if index is None:  # the note names why
        return
    images = index.get("images")
    if not isinstance(images, list):
        notes.append(f"{run.name}: {index_path} has no 'images' list, the real images are left out")
        return
    for entry in images:
        if isinstance(entry, dict) and isinstance(entry.get("sample_id"), str) and isinstance(entry.get("file"), str):
            run.preview_references[entry["sample_id"]] = index_path.parent / entry["file"]


def read_benchmark(path: Path, name: str, notes: list[str]) -> float | None:
    """The 's' column of a Snakemake benchmark file (mean over its rows: one per repeat)."""
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            values = [float(row["s"]) for row in csv.DictReader(handle, delimiter="\t")]
    except (KeyError, ValueError, TypeError, OSError) as err:
        notes.append(f"{name}: {path} has no readable 's' column ({err})")
        return None
    return sum(values) / len(values) if values else None


def sample_rows(runs: list[Run]) -> list[SampleRow]:
    """Every (prompt_id, seed) any run sampled, in the order the first runs list them."""
    rows: dict[Key, SampleRow] = {}
    for run in runs:
        for key, prompt in run.prompts.items():
            rows.setdefault(key, SampleRow(prompt_id=key[0], seed=key[1], prompt=prompt))
    return list(rows.values())


def relative_href(path: Path, page_dir: Path) -> str:
    """A URL to ``path`` relative to the folder of the page, so the report folder can move as a whole."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(page_dir))
    return quote(Path(relative).as_posix())


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts to dotted keys (the grid's knob names); lists stay whole values."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records that carry a finite number under both ``step`` and ``key``."""
    steps, values = [], []
    for record in records:
        step, value = record.get("step"), record.get(key)
        if is_number(step) and is_number(value) and math.isfinite(value):
            steps.append(float(step))
            values.append(float(value))
    return steps, values
