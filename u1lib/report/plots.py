"""Report figures as PNG bytes, drawn with matplotlib's Agg canvas (no pyplot, no display, no global state).

Each function takes the trained runs and a colour per variant, so one variant has one colour on
every figure, and returns None when no run has the data the figure needs.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from u1lib.report.collect import Run, is_number, series

_SIZE = (6.4, 4.0)  # inches; at _DPI this is 960 x 600 px, shown at half that
_DPI = 150


def variant_colors(names: list[str]) -> dict[str, str]:
    palette = [f"C{i}" for i in range(10)]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _new_axes(title: str, xlabel: str, ylabel: str):
    fig = Figure(figsize=_SIZE, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _use_log_y(ax, values: list[float]) -> None:
    if values and min(values) > 0:
        ax.set_yscale("log")


def moving_average(values: list[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` points; the first ``window - 1`` points have no value."""
    return np.convolve(np.asarray(values, dtype=float), np.ones(window) / window, mode="valid")


def smoothing_window(lengths: list[int]) -> int:
    """One window for every variant (a tenth of the longest run, at most 100) so curves compare."""
    return max(1, min(100, max(lengths, default=0) // 10))


def training_loss(runs: list[Run], colors: dict[str, str]) -> bytes | None:
    curves = {run.name: series(run.train_log, "loss") for run in runs}
    curves = {name: curve for name, curve in curves.items() if curve[0]}
    if not curves:
        return None
    window = smoothing_window([len(steps) for steps, _ in curves.values()])
    title = "training loss" + (f" (thin: raw, thick: mean of {window} steps)" if window > 1 else "")
    fig, ax = _new_axes(title, "step", "loss")
    for name, (steps, losses) in curves.items():
        if window > 1 and len(losses) >= window:
            ax.plot(steps, losses, color=colors[name], alpha=0.3, linewidth=0.8)
            ax.plot(steps[window - 1:], moving_average(losses, window), color=colors[name], linewidth=1.8, label=name)
        else:
            ax.plot(steps, losses, color=colors[name], linewidth=1.2, label=name)
    _use_log_y(ax, [loss for _, losses in curves.values() for loss in losses])
    ax.legend(fontsize="small")
    return _png(fig)


def validation_loss(runs: list[Run], colors: dict[str, str]) -> bytes | None:
    curves = {run.name: series(run.val_log, "val_loss") for run in runs}
    curves = {name: curve for name, curve in curves.items() if curve[0]}
    if not curves:
        return None
    fig, ax = _new_axes("validation loss", "step", "val loss")
    for name, (steps, losses) in curves.items():
        ax.plot(steps, losses, color=colors[name], marker="o", markersize=3, linewidth=1.4, label=name)
    _use_log_y(ax, [loss for _, losses in curves.values() for loss in losses])
    ax.legend(fontsize="small")
    return _png(fig)


def final_per_t(runs: list[Run]) -> dict[str, tuple[float, dict[float, float]]]:
    """Per run: (step, {t: loss}) of the last validation record that has a per_t breakdown."""
    found = {}
    for run in runs:
        for record in reversed(run.val_log):
            per_t = record.get("per_t")
            if isinstance(per_t, dict) and per_t:
                found[run.name] = (record.get("step"), _parse_per_t(per_t))
                break
    return found


def _parse_per_t(per_t: dict) -> dict[float, float]:
    parsed = {}
    for key, value in per_t.items():
        try:
            t = float(key)
        except ValueError:
            continue
        if is_number(value) and math.isfinite(value):
            parsed[t] = float(value)
    return parsed


def per_t_validation(runs: list[Run], colors: dict[str, str]) -> bytes | None:
    found = final_per_t(runs)
    ts = sorted(set().union(*(per_t for _, per_t in found.values()))) if found else []
    if not ts:
        return None
    fig, ax = _new_axes("validation loss per t (last validation)", "t", "val loss")
    width = 0.8 / len(found)
    positions = np.arange(len(ts))
    for i, (name, (step, per_t)) in enumerate(found.items()):
        heights = [per_t.get(t, np.nan) for t in ts]
        label = f"{name} (step {step})" if is_number(step) else name
        ax.bar(positions + (i - (len(found) - 1) / 2) * width, heights, width, color=colors[name], label=label)
    ax.set_xticks(positions, [f"{t:g}" for t in ts])
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # headroom so the legend never covers a bar
    ax.legend(fontsize="small", loc="upper right")
    return _png(fig)


def t_histogram(runs: list[Run], colors: dict[str, str]) -> bytes | None:
    hists = {run.name: run.metrics["t_hist"] for run in runs if run.metrics.get("t_hist")}
    hists = {name: hist for name, hist in hists.items() if sum(hist["counts"]) > 0}
    if not hists:
        return None
    fig, ax = _new_axes("sampled training t (density)", "t", "density")
    for name, hist in hists.items():
        edges = np.asarray(hist["edges"], dtype=float)
        counts = np.asarray(hist["counts"], dtype=float)
        density = counts / (counts.sum() * np.diff(edges))
        ax.stairs(density, edges, color=colors[name], linewidth=1.6, label=name)
    ax.legend(fontsize="small")
    return _png(fig)
