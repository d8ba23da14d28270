"""What goes in each table of the report, as plain text cells and links; the HTML layer escapes and lays out.

Numbers read as ``u1lib.report.formats`` writes them, the same on the page and in the tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from u1lib.report.collect import Run, flatten, is_number, relative_href, series
from u1lib.report.colors import BASE_COLOR, Style
from u1lib.report.formats import (
    MISSING,
    fmt_bytes,
    fmt_delta,
    fmt_duration,
    fmt_loss,
    fmt_number,
    fmt_percent,
    fmt_value,
    loss_decimals,
)
from u1lib.report.ranking import BASE_ROW, AxisValue, Standing, steady_median

_ABSENT = object()


@dataclass(frozen=True)
class Link:
    text: str
    href: str  # relative to the page


Cell = str | Link | tuple[Link, ...]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]
    numeric_columns: set[int] = field(default_factory=set)  # right-aligned
    highlight: set[tuple[int, int]] = field(default_factory=set)  # (row, column) cells to emphasise
    swatches: list[str | None] = field(default_factory=list)  # per row: a colour shown before the first cell
    row_classes: list[str] = field(default_factory=list)  # per row: a CSS class ("" for none)


def _status(s: Standing) -> str:
    if s.finished:
        return f"finished, {fmt_number(s.steps)} steps"
    return f"training: step {fmt_number(s.steps)}" if s.steps else "not started"


def leaderboard_table(
    standings: list[Standing],
    base: float | None,
    knobs: dict[str, dict],
    labels: dict[str, str],
    styles: dict[str, Style],
) -> Table:
    """Ranked runs, a column per grid knob, the base model's row in its place; differences are the
    run's best loss minus the reference (its own step-0 loss, or the leader's)."""
    best = next((s.best for s in standings if s.best is not None), None)
    decimals = loss_decimals([s.best for s in standings] + [s.final for s in standings] + [base])
    axes = list(dict.fromkeys(key for s in standings for key in knobs.get(s.name, {})))
    headers = [
        "#",
        "variant",
        *axes,
        "validation loss (best, step)",
        "vs base model",
        "vs best",
        "last validation",
        "status",
    ]
    loss_column = 2 + len(axes)
    rows, swatches, classes, highlight = [], [], [], set()
    placed_base = base is None

    def base_row() -> None:
        vs_best = fmt_delta(base - best, decimals) if best is not None else MISSING
        blank = [""] * len(axes)
        rows.append(["ref", BASE_ROW, *blank, fmt_loss(base, decimals), "0", vs_best, MISSING, "reference"])
        swatches.append(BASE_COLOR)
        classes.append("base")

    rank = 0
    for s in standings:
        if not placed_base and (s.best is None or s.best > base):
            base_row()
            placed_base = True
        rank += s.best is not None
        vs_base = MISSING
        if s.vs_base is not None:
            vs_base = fmt_delta(s.vs_base, decimals) + (f" ({fmt_percent(100 * s.vs_base / s.base)})" if s.base else "")
        if s.best is not None and s.best == best:
            highlight.add((len(rows), loss_column))
        own = knobs.get(s.name, {})
        rows.append(
            [
                str(rank) if s.best is not None else MISSING,
                s.name + (f"\n{labels[s.name]}" if labels.get(s.name) else ""),
                *(fmt_value(own[axis]) if axis in own else "" for axis in axes),
                f"{fmt_loss(s.best, decimals)} (step {s.best_step:,})" if s.best is not None else MISSING,
                vs_base,
                ("best" if s.best == best else fmt_delta(s.best - best, decimals)) if s.best is not None else MISSING,
                fmt_loss(s.final, decimals),
                _status(s),
            ]
        )
        swatches.append(styles[s.name].color)
        classes.append("")
    if not placed_base:
        base_row()
    numeric = set(range(loss_column, loss_column + 4))
    return Table(headers, rows, numeric, highlight, swatches, classes)


def effects_table(effects: dict[str, tuple[float, list[AxisValue]]]) -> Table:
    """One row per axis value: its variants' mean best loss against the axis mean (negative helps)."""
    means = [v.mean for _, values in effects.values() for v in values] + [m for m, _ in effects.values()]
    decimals = loss_decimals(means)
    rows, highlight = [], set()
    for axis, (axis_mean, values) in effects.items():
        for position, v in enumerate(values):
            if position == 0:
                highlight.add((len(rows), 1))
            rows.append(
                [
                    axis if position == 0 else "",
                    fmt_value(v.value),
                    str(len(v.variants)),
                    fmt_loss(v.mean, decimals),
                    fmt_loss(axis_mean, decimals) if position == 0 else "",
                    fmt_delta(v.effect, decimals)
                    + (f" ({fmt_percent(100 * v.effect / axis_mean)})" if axis_mean else ""),
                ]
            )
    headers = ["axis", "value", "variants", "mean validation loss", "axis mean", "effect (value − axis mean)"]
    return Table(headers, rows, numeric_columns={2, 3, 4, 5}, highlight=highlight)


def _link(text: str, path: Path | None, page_dir: Path) -> Link | None:
    return Link(text, relative_href(path, page_dir)) if path is not None and path.is_file() else None


def run_files(run: Run, page_dir: Path) -> tuple[Link, ...]:
    """Links to what the run wrote (only files that exist), relative to the page."""
    names = {
        "adapter": "adapter.safetensors",
        "best adapter": "adapter_best.safetensors",
        "exports": "export/export.json",
        "metrics": "metrics.json",
        "config": "config.json",
        "train log": "train_log.jsonl",
        "val log": "val_log.jsonl",
    }
    links = [_link(text, run.folder / name, page_dir) for text, name in names.items()]
    links.append(_link("job log", run.job_log, page_dir))
    return tuple(link for link in links if link is not None)


def _dropout(metrics: dict) -> str:
    dropped, seen = metrics.get("dropout_count"), metrics.get("images_seen")
    if is_number(dropped) and is_number(seen) and seen:
        return f"{fmt_number(dropped)} of {fmt_number(seen)} ({dropped / seen:.1%})"
    return MISSING


def runs_table(runs: list[Run], page_dir: Path, styles: dict[str, Style]) -> Table:
    """Speed, memory and files per run. s/step is the median after the warm-up (compilation and
    autotuning make the first steps slow, and a mean would charge them to every step)."""
    headers = [
        "variant",
        "steps",
        "s/step (steady)",
        "images/s (steady)",
        "training time",
        "job wall time",
        "peak GPU mem",
        "peak host RSS",
        "trainable params",
        "adapter size",
        "condition-dropped",
        "files",
    ]
    rows = []
    for run in runs:
        metrics = run.metrics
        steps, _ = series(run.train_log, "step")
        seconds = metrics.get("wall_time_s")
        if not is_number(seconds) and run.train_log:
            seconds = sum(r["seconds"] for r in run.train_log if is_number(r.get("seconds")))
        rows.append(
            [
                run.name,
                fmt_number(metrics.get("steps", int(steps[-1]) if steps else None)),
                fmt_number(steady_median(run.train_log, "seconds"), 3),
                fmt_number(steady_median(run.train_log, "images_per_s"), 3),
                fmt_duration(seconds),
                fmt_duration(run.benchmark_s),
                fmt_bytes(metrics.get("peak_gpu_mem_bytes")),
                fmt_bytes(metrics.get("peak_host_rss_bytes")),
                fmt_number(metrics.get("trainable_params")),
                fmt_bytes(metrics.get("adapter_bytes")),
                _dropout(metrics),
                run_files(run, page_dir),
            ]
        )
    return Table(headers, rows, numeric_columns=set(range(1, 10)), swatches=[styles[r.name].color for r in runs])


def phases_table(runs: list[Run], styles: dict[str, Style]) -> Table | None:
    """Each run's time inside its job by phase (metrics.json ``job_seconds``), a column per phase in
    the order the jobs recorded them (the trainer names the phases); None when no run has them (runs
    written before the field existed)."""
    timed = [run for run in runs if isinstance(run.metrics.get("job_seconds"), dict)]
    if not timed:
        return None
    phases = list(dict.fromkeys(k for run in timed for k in run.metrics["job_seconds"] if k != "total"))
    rows = [[run.name, *(fmt_duration(run.metrics["job_seconds"].get(k)) for k in ("total", *phases))] for run in timed]
    headers = ["variant", "total", *(name.replace("_", " ") for name in phases)]
    return Table(
        headers, rows, numeric_columns=set(range(1, len(headers))), swatches=[styles[r.name].color for r in timed]
    )


def settings_tables(per_run: dict[str, dict], colors: dict[str, str]) -> tuple[Table, Table] | None:
    """(keys equal in every run, a row per run with its value of each key that differs); None without
    any settings. The differing table has a row per run so that 12 variants fit the page's width.

    A key that some runs lack counts as differing: a run without it used a different code version.
    """
    flat = {name: flatten(settings) for name, settings in per_run.items()}
    if not flat:
        return None
    keys = sorted(set().union(*flat.values()))
    shared, differing = [], []
    for key in keys:
        values = [settings.get(key, _ABSENT) for settings in flat.values()]
        if len({_comparable(value) for value in values}) == 1:
            shared.append([key, fmt_value(values[0])])
        else:
            differing.append(key)
    rows = [
        [name, *(fmt_value(settings[key]) if key in settings else "(absent)" for key in differing)]
        for name, settings in flat.items()
    ]
    swatches = [colors.get(name) for name in flat]
    return Table(["key", "value"], shared), Table(["variant", *differing], rows if differing else [], swatches=swatches)


def _comparable(value) -> str:
    return "\0absent" if value is _ABSENT else json.dumps(value, sort_keys=True)


def provenance_table(provenance: dict, runs: list[Run]) -> Table:
    """What made the runs: code, model, versions, and the devices the runs' metrics.json name."""
    model = provenance.get("model") or {}
    devices = sorted({str(r.metrics["device"]) for r in runs if r.metrics.get("device")})
    rows = [
        ["git commit", provenance.get("git_commit")],
        ["model", model.get("name")],
        ["model source", model.get("source")],
        ["repo id", model.get("repo_id")],
        ["model revision", model.get("revision")],
        ["manifest hash", model.get("manifest_hash")],
        ["device", ", ".join(devices)],
    ]
    rows += [[f"version: {name}", value] for name, value in sorted((provenance.get("versions") or {}).items())]
    return Table(["", ""], [[key, MISSING if value in (None, "") else str(value)] for key, value in rows])
