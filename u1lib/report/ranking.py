"""The numbers a choice rests on: each run's validation loss against the base model and the best
run, the average effect of each grid axis value, what the validation loss measures, and speed.

Every trained run's ``val_log.jsonl`` starts with a step-0 record: the untrained base model on the
same held-out images, t grid and noise as the run's later validations, so a run's own step-0 loss
is the fair reference for its improvement.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass

from u1lib.report.collect import Run, flatten, is_number, series

BASE_ROW = "base model (step 0)"


@dataclass(frozen=True)
class Standing:
    """One leaderboard row; losses are None where the run has not validated yet."""

    name: str
    best: float | None
    best_step: int | None
    final: float | None
    base: float | None  # this run's step-0 validation loss
    steps: int | None
    finished: bool

    @property
    def vs_base(self) -> float | None:
        return self.best - self.base if self.best is not None and self.base is not None else None


def _finite(value) -> bool:
    return is_number(value) and math.isfinite(value)


def standing(run: Run) -> Standing:
    """From val_log (the complete history) rather than metrics.json, so a run in progress ranks too."""
    steps, losses = series(run.val_log, "val_loss")
    trained = [(s, v) for s, v in zip(steps, losses) if s > 0]
    best = min(trained, key=lambda point: point[1]) if trained else None
    base = next((v for s, v in zip(steps, losses) if s == 0), None)
    train_steps, _ = series(run.train_log, "step")
    done = run.metrics.get("steps") if is_number(run.metrics.get("steps")) else None
    if done is None and train_steps:
        done = int(train_steps[-1])
    return Standing(
        name=run.name,
        best=best[1] if best else None,
        best_step=int(best[0]) if best else None,
        final=trained[-1][1] if trained else None,
        base=base,
        steps=done,
        finished=bool(run.metrics),
    )


def leaderboard(runs: list[Run]) -> list[Standing]:
    """Best validation loss first; runs without one last, by name."""
    standings = [standing(run) for run in runs]
    return sorted(standings, key=lambda s: (s.best is None, s.best if s.best is not None else 0.0, s.name))


def base_loss(standings: list[Standing], notes: list[str]) -> float | None:
    """The base model's validation loss; runs that measured it differently get a note."""
    values = {s.name: s.base for s in standings if s.base is not None}
    if not values:
        return None
    reference = statistics.median(values.values())
    off = [name for name, value in values.items() if not math.isclose(value, reference, rel_tol=1e-6, abs_tol=1e-12)]
    if off:
        notes.append(
            f"step-0 (base model) validation losses differ between runs ({', '.join(sorted(off))} differ from the "
            f"median {reference:.6g}): the runs were validated on different images, t grids or noise, so their "
            "losses do not compare directly; each run's difference from base uses its own step-0 loss"
        )
    return reference


@dataclass(frozen=True)
class AxisValue:
    axis: str
    value: object
    variants: tuple[str, ...]
    mean: float
    effect: float  # mean minus the axis mean: negative helps


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True)


def axis_effects(standings: list[Standing], knobs: dict[str, dict]) -> dict[str, tuple[float, list[AxisValue]]]:
    """Per grid axis: (mean best loss over the variants that set it, its values best first).

    An axis counts when at least two of its values have a variant with a validation loss. On a full
    grid product this is the axis's main effect; on a partial grid other axes confound it.
    """
    losses = {s.name: s.best for s in standings if s.best is not None}
    axes = sorted({key for name in losses for key in knobs.get(name, {})})
    effects = {}
    for axis in axes:
        groups: dict[str, list[str]] = {}
        values = {}
        for name in losses:
            if axis in knobs.get(name, {}):
                value = knobs[name][axis]
                groups.setdefault(_canonical(value), []).append(name)
                values[_canonical(value)] = value
        if len(groups) < 2:
            continue
        axis_mean = statistics.fmean(losses[name] for names in groups.values() for name in names)
        rows = [
            AxisValue(axis, values[key], tuple(names), mean, mean - axis_mean)
            for key, names in groups.items()
            for mean in [statistics.fmean(losses[name] for name in names)]
        ]
        effects[axis] = (axis_mean, sorted(rows, key=lambda row: row.mean))
    return effects


def validation_images(run: Run) -> int | None:
    """How many images one validation averages over: the set's rows, capped by val_max_items."""
    validation = (run.metrics.get("dataset") or {}).get("validation") or {}
    rows = validation.get("rows") if is_number(validation.get("rows")) else None
    cap = flatten(run.config or {}).get("train.val_max_items")
    if rows is not None and is_number(cap):
        return int(min(rows, cap))
    return int(rows) if rows is not None else None


def t_grid(run: Run) -> tuple[float, ...]:
    keys = set()
    for record in run.val_log:
        per_t = record.get("per_t")
        if isinstance(per_t, dict):
            for key in per_t:
                try:
                    keys.add(float(key))
                except ValueError:
                    continue
    return tuple(sorted(keys))


def _describe(source, images: int | None, grid: tuple[float, ...]) -> str:
    count = f"{images} " if images is not None else ""
    where = (
        "training images (no held-out set: this measures fit, not generalisation)"
        if source == "train"
        else ("held-out images" if source == "held-out" else "validation images")
    )
    ts = ", ".join(f"{t:g}" for t in grid) if grid else "?"
    return f"validation loss = x0-MSE on {count}{where} over the t grid [{ts}], lower is better"


def validation_description(runs: list[Run], notes: list[str]) -> str:
    """What the validation loss is, in words, from the data; differing runs are named. A run still
    training has no metrics.json to say which images it validates on, so it only counts when no run has."""
    described = [run for run in runs if run.val_log and (run.metrics.get("dataset") or {}).get("validation")]
    by_text: dict[str, list[str]] = {}
    for run in described or [run for run in runs if run.val_log]:
        validation = (run.metrics.get("dataset") or {}).get("validation") or {}
        text = _describe(validation.get("source"), validation_images(run), t_grid(run))
        by_text.setdefault(text, []).append(run.name)
    if not by_text:
        return "validation loss = x0-MSE of the predicted clean image, lower is better (no run has validated yet)"
    if len(by_text) == 1:
        return next(iter(by_text))
    notes.append("runs were validated differently (see the definition above the leaderboard): compare within groups")
    return "; ".join(f"{text} ({', '.join(names)})" for text, names in by_text.items())


def warmup_records(count: int) -> int:
    """Steps left out of the steady state: at least 3 and a tenth of the run (compilation, autotuning)."""
    return max(3, math.ceil(count / 10))


def steady_median(records: list[dict], key: str) -> float | None:
    """Median of ``key`` over the records after the warm-up; None when nothing is left."""
    values = [float(r[key]) for r in records if _finite(r.get(key))]
    steady = values[warmup_records(len(values)) :]
    return statistics.median(steady) if steady else None
