"""Read run folders into plain Python objects, turning gaps into notes and bad JSON into errors.

A run that is still training (no val_log yet, no metrics.json) must not stop the report; a file
that exists but cannot be parsed is a bug upstream and stops it with the file's name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from u1lib.io import read_json, read_jsonl


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
    samples: dict[tuple[str, int], Path] = field(default_factory=dict)
    prompts: dict[tuple[str, int], str] = field(default_factory=dict)


@dataclass(frozen=True)
class SampleRow:
    prompt_id: str
    seed: int
    prompt: str


def read_run(name: str, folder: Path, prompt_set: str, *, trained: bool, notes: list[str]) -> Run:
    """Read one run folder; append a note for every missing or empty part."""
    run = Run(name=name, folder=folder, trained=trained)
    if not folder.is_dir():
        notes.append(f"{name}: run folder {folder} not found")
        return run
    if trained:
        run.metrics = _optional_json(folder / "metrics.json", name, notes) or {}
        _check_t_hist(run.metrics, folder / "metrics.json")
        run.config = _optional_json(folder / "config.json", name, notes)
        run.train_log = _optional_jsonl(folder / "train_log.jsonl", name, notes)
        _note_non_finite(run.train_log, "loss", f"{name}: train_log.jsonl", notes)
        run.val_log = _optional_jsonl(folder / "val_log.jsonl", name, notes)
        _note_non_finite(run.val_log, "val_loss", f"{name}: val_log.jsonl", notes)
    _read_samples(run, folder / "samples" / prompt_set, notes)
    return run


def _optional_json(path: Path, name: str, notes: list[str]) -> dict | None:
    if not path.is_file():
        notes.append(f"{name}: {path.name} not found (run unfinished?)")
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _optional_jsonl(path: Path, name: str, notes: list[str]) -> list[dict]:
    if not path.is_file():
        notes.append(f"{name}: {path.name} not found")
        return []
    records = read_jsonl(path)  # a bad line raises naming the file
    if not records:
        notes.append(f"{name}: {path.name} has no complete lines yet")
    return [record for record in records if isinstance(record, dict)]


def _note_non_finite(records: list[dict], key: str, where: str, notes: list[str]) -> None:
    """A diverged run logs NaN/inf; the curves skip those points, so say how many were skipped."""
    bad = [r.get("step") for r in records if is_number(r.get(key)) and not math.isfinite(r[key])]
    if bad:
        notes.append(f"{where}: {len(bad)} non-finite '{key}' values (first at step {bad[0]}) not plotted")


def _check_t_hist(metrics: dict, path: Path) -> None:
    hist = metrics.get("t_hist")
    if hist is None:
        return
    edges = hist.get("edges") if isinstance(hist, dict) else None
    counts = hist.get("counts") if isinstance(hist, dict) else None
    if not (isinstance(edges, list) and isinstance(counts, list) and len(edges) == len(counts) + 1):
        raise ValueError(
            f"{path}: 't_hist' must be {{'edges': [...], 'counts': [...]}} with one more edge than "
            f"counts; got {hist!r:.200}"
        )


def _read_samples(run: Run, folder: Path, notes: list[str]) -> None:
    index_path = folder / "index.json"
    if not index_path.is_file():
        notes.append(f"{run.name}: no samples for this prompt set ({index_path} not found)")
        return
    index = read_json(index_path)
    images = index.get("images") if isinstance(index, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{index_path}: expected an object with an 'images' list")
    for position, entry in enumerate(images):
        if not (
            isinstance(entry, dict)
            and {"prompt_id", "seed", "file"} <= entry.keys()
            and isinstance(entry["seed"], int)
        ):
            raise ValueError(
                f"{index_path}: images[{position}] needs 'prompt_id', an integer 'seed' and 'file'; got {entry!r:.200}"
            )
        key = (str(entry["prompt_id"]), int(entry["seed"]))
        run.samples[key] = folder / str(entry["file"])
        run.prompts[key] = str(entry.get("prompt", ""))


def sample_rows(runs: list[Run]) -> list[SampleRow]:
    """Every (prompt_id, seed) any run sampled, in the order the first runs list them."""
    rows: dict[tuple[str, int], SampleRow] = {}
    for run in runs:
        for key, prompt in run.prompts.items():
            rows.setdefault(key, SampleRow(prompt_id=key[0], seed=key[1], prompt=prompt))
    return list(rows.values())


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records that carry a finite number under both ``step`` and ``key``."""
    steps, values = [], []
    for record in records:
        step, value = record.get("step"), record.get(key)
        if is_number(step) and is_number(value) and math.isfinite(value):
            steps.append(float(step))
            values.append(float(value))
    return steps, values
