"""What goes in each table of the report, as plain text cells; the HTML layer escapes and lays out.

Numbers are formatted here once so the page and the tests agree on how a value reads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from u1lib.report.collect import Run, SampleRow, is_number, series

MISSING = "—"
_ABSENT = object()


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    numeric_columns: set[int] = field(default_factory=set)  # right-aligned
    highlight: set[tuple[int, int]] = field(default_factory=set)  # (row, column) cells to emphasise


def fmt_number(value, digits: int = 4) -> str:
    """Ints with thousands separators; floats to ``digits`` significant digits, never in e-notation
    when large (a throughput of 1234.5 images/s reads "1,234", not "1.23e+03")."""
    if value is None:
        return MISSING
    if not is_number(value):
        return str(value)
    if isinstance(value, int) or (math.isfinite(value) and abs(value) >= 10**digits):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def fmt_bytes(value) -> str:
    if not is_number(value):
        return fmt_number(value)
    size, unit = float(value), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"


def fmt_value(value) -> str:
    """A config or knob value as a short literal: strings bare, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def run_summary(run: Run) -> dict:
    """metrics.json, with gaps filled from the logs so a run still in progress shows what it has."""
    summary = dict(run.metrics)
    train_steps, train_losses = series(run.train_log, "loss")
    if train_steps:
        summary.setdefault("steps", int(train_steps[-1]))
        summary.setdefault("final_train_loss", train_losses[-1])
    val_steps, val_losses = series(run.val_log, "val_loss")
    if val_losses and "best_val_loss" not in summary:
        best = min(range(len(val_losses)), key=val_losses.__getitem__)
        summary["best_val_loss"] = val_losses[best]
        summary["best_val_step"] = int(val_steps[best])
    return summary


def data_text(dataset: dict | None) -> str:
    """The training data's fingerprint and row count, and where the validation loss comes from."""
    if not isinstance(dataset, dict) or not isinstance(dataset.get("train"), dict):
        return "-"
    train, val = dataset["train"], dataset.get("validation") or {}
    text = f"{train.get('file')} {train.get('fingerprint')} ({train.get('rows')} rows)"
    if val.get("source") == "train":
        return text + "\nvalidated on training images"
    return text + f"\nval {val.get('file')} {val.get('fingerprint')} ({val.get('rows')} rows)"


def run_table(runs: list[Run], knobs: dict[str, dict], labels: dict[str, str]) -> Table:
    headers = [
        "variant", "knobs", "steps", "trainable params", "s/step", "images/s", "peak GPU mem",
        "peak host RSS", "final train loss", "best val loss (step)", "adapter size", "trained on",
    ]
    rows, best_losses = [], []
    for run in runs:
        summary = run_summary(run)
        best = summary.get("best_val_loss")
        best_text = fmt_number(best)
        if best is not None and summary.get("best_val_step") is not None:
            best_text += f" (step {fmt_number(summary['best_val_step'])})"
        name = run.name + (f"\n{labels[run.name]}" if labels.get(run.name) else "")
        rows.append([
            name,
            "\n".join(f"{key} = {fmt_value(value)}" for key, value in knobs.get(run.name, {}).items()),
            fmt_number(summary.get("steps")),
            fmt_number(summary.get("trainable_params")),
            fmt_number(summary.get("s_per_step"), 3),
            fmt_number(summary.get("images_per_s"), 3),
            fmt_bytes(summary.get("peak_gpu_mem_bytes")),
            fmt_bytes(summary.get("peak_host_rss_bytes")),
            fmt_number(summary.get("final_train_loss")),
            best_text,
            fmt_bytes(summary.get("adapter_bytes")),
            data_text(summary.get("dataset")),
        ])
        best_losses.append(best if is_number(best) and math.isfinite(best) else math.inf)
    table = Table(headers, rows, numeric_columns=set(range(2, len(headers) - 1)))
    if best_losses and min(best_losses) < math.inf:
        lowest = min(best_losses)
        column = headers.index("best val loss (step)")
        table.highlight = {(row, column) for row, loss in enumerate(best_losses) if loss == lowest}
    return table


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts to dotted keys; lists stay whole values."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def config_diff_table(runs: list[Run]) -> Table | None:
    """Only the dotted config keys whose values differ between runs; None if fewer than two configs."""
    flat = {run.name: flatten(run.config) for run in runs if run.config is not None}
    if len(flat) < 2:
        return None
    keys = sorted(set().union(*flat.values()))
    rows = []
    for key in keys:
        values = [config.get(key, _ABSENT) for config in flat.values()]
        if len({_comparable(value) for value in values}) > 1:
            rows.append([key, *("(absent)" if v is _ABSENT else fmt_value(v) for v in values)])
    return Table(["config key", *flat], rows)


def _comparable(value) -> str:
    return "\0absent" if value is _ABSENT else json.dumps(value, sort_keys=True)


def dropout_table(runs: list[Run]) -> Table:
    rows = []
    for run in runs:
        dropped, seen = run.metrics.get("dropout_count"), run.metrics.get("images_seen")
        share = f"{dropped / seen:.1%}" if is_number(dropped) and is_number(seen) and seen else MISSING
        rows.append([run.name, fmt_number(dropped), fmt_number(seen), share])
    return Table(["variant", "condition-dropped items", "images seen", "share"], rows, numeric_columns={1, 2, 3})


def prompt_table(rows: list[SampleRow]) -> Table:
    cells = [[row.prompt_id, str(row.seed), row.prompt] for row in rows]
    return Table(["prompt id", "seed", "prompt"], cells, numeric_columns={1})


def provenance_table(provenance: dict) -> Table:
    model = provenance.get("model") or {}
    rows = [
        ["git commit", provenance.get("git_commit")],
        ["model", model.get("name")],
        ["model source", model.get("source")],
        ["repo id", model.get("repo_id")],
        ["model revision", model.get("revision")],
        ["manifest hash", model.get("manifest_hash")],
        ["device", provenance.get("device")],
    ]
    rows += [[f"version: {name}", value] for name, value in sorted((provenance.get("versions") or {}).items())]
    return Table(["", ""], [[key, MISSING if value in (None, "") else str(value)] for key, value in rows])
