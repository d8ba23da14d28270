"""Report figures as PNG bytes, drawn with matplotlib's Agg canvas (no pyplot, no display, no global state).

About 300 lines, one job: a list of similar figure builders, one per figure of the page, and the few
axis helpers they share.

Honest axes: one metric per axis, linear scales zoomed to where the variants are (never from 0),
and tick labels written out in full (matplotlib's offset notation made every tick of an 8B run read
2.53795e-1). Each variant keeps one colour and marker on every figure (``colors.variant_styles``).
Runs come in leaderboard order, so legends list the best first. A figure without data is None.
"""

from __future__ import annotations

import io
import math
import textwrap

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from u1lib.report.collect import Run, is_number, series
from u1lib.report.colors import BASE_COLOR, Style
from u1lib.report.ranking import Standing

_WIDTH = 7.2  # inches; at _DPI 1080 px, shown at about 720 css px
_DPI = 150


def _figure(height: float = 4.2, width: float = _WIDTH) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plot_series(
    ax, series: dict[str, tuple[list[float], list[float]]], styles: dict[str, Style], *, markersize, linewidth
) -> None:
    """One line per variant in its colour and marker, dashed where it would hide another."""
    linestyles = overlap_styles(series, styles)
    for name, (xs, ys) in series.items():
        style = styles[name]
        ax.plot(
            xs,
            ys,
            color=style.color,
            marker=style.marker,
            markersize=markersize,
            linewidth=linewidth,
            linestyle=linestyles[name],
            label=name,
        )


def _style_axes(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    for axis in (ax.xaxis, ax.yaxis):
        formatter = ScalarFormatter(useOffset=False)
        formatter.set_scientific(False)
        axis.set_major_formatter(formatter)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def zoom_limits(values: list[float], pad: float = 0.08) -> tuple[float, float]:
    """The data range with a margin; a single value gets a small window around it."""
    low, high = min(values), max(values)
    span = high - low or max(abs(high) * 0.01, 1e-9)
    return low - pad * span, high + pad * span


def _legend(ax, count: int) -> None:
    """Beside the axes: with 12 variants a legend inside would cover the curves."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, ncols=1 if count <= 14 else 2)


def overlap_styles(curves: dict[str, tuple[list[float], list[float]]], styles: dict[str, Style]) -> dict[str, object]:
    """Line style per curve: a curve identical to one drawn before it (a grid axis that only changes
    sampling trains identical runs) is dashed, with a longer gap for each further copy, so that
    every colour still shows instead of the last one hiding the others."""
    seen: dict[tuple, int] = {}
    result = {}
    for name, (steps, values) in curves.items():
        key = (tuple(steps), tuple(values))
        copies = seen.get(key, 0)
        seen[key] = copies + 1
        result[name] = styles[name].linestyle if copies == 0 else (3 * copies, (3, 3 * copies))
    return result


def moving_average(values: list[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` points; the first ``window - 1`` points have no value."""
    return np.convolve(np.asarray(values, dtype=float), np.ones(window) / window, mode="valid")


def smoothing_window(lengths: list[int]) -> int:
    """One window for every variant (a tenth of the longest run, at most 100) so curves compare."""
    return max(1, min(100, max(lengths, default=0) // 10))


def best_validation(standings: list[Standing], base: float | None, styles: dict[str, Style]) -> bytes | None:
    """The leaderboard as dots on one zoomed axis: how far apart the variants are, best on top."""
    ranked = [s for s in standings if s.best is not None]
    if not ranked:
        return None
    fig = _figure(height=1.1 + 0.27 * len(ranked))
    ax = fig.add_subplot()
    _style_axes(ax, "best validation loss per variant (lower is better)", "validation loss", "")
    positions = np.arange(len(ranked))[::-1]
    for y, s in zip(positions, ranked):
        style = styles[s.name]
        ax.plot([s.best], [y], marker=style.marker, color=style.color, markersize=8, linestyle="none")
    values = [s.best for s in ranked]
    if base is not None:
        ax.axvline(base, color=BASE_COLOR, linestyle="--", linewidth=1.2)
        ax.annotate(
            "base model",
            (base, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize="small",
            ha="center",
            va="bottom",
            color=BASE_COLOR,
        )
        values.append(base)
    ax.set_xlim(*zoom_limits(values, pad=0.12))
    ax.set_yticks(positions, [s.name for s in ranked], fontsize="small")
    ax.set_ylim(-0.7, len(ranked) - 0.3)
    ax.grid(False, axis="y")
    return _png(fig)


def training_loss(runs: list[Run], styles: dict[str, Style]) -> bytes | None:
    """Every run's training x0-MSE: every train_log record has it whatever loss the run optimises
    (v-MSE is on another scale), and it is the quantity the validation loss measures."""
    curves = {run.name: series(run.train_log, "x0_mse") for run in runs}
    curves = {name: curve for name, curve in curves.items() if curve[0]}
    if not curves:
        return None
    window = smoothing_window([len(steps) for steps, _ in curves.values()])
    fig = _figure()
    ax = fig.add_subplot()
    title = "training loss as x0-MSE, whatever loss the run optimises"
    if window > 1:
        title += f"\nthin: per step, thick: mean of {window} steps; y zoomed to the means"
    _style_axes(ax, title, "step", "training x0-MSE")
    shown = []
    linestyles = overlap_styles(curves, styles)
    for name, (steps, losses) in curves.items():
        style = styles[name]
        if window > 1 and len(losses) >= window:
            smooth = moving_average(losses, window)
            ax.plot(steps, losses, color=style.color, alpha=0.15, linewidth=0.6)
            ax.plot(
                steps[window - 1 :],
                smooth,
                color=style.color,
                linewidth=1.8,
                linestyle=linestyles[name],
                marker=style.marker,
                markevery=max(1, len(smooth) // 6),
                markersize=5,
                label=name,
            )
            shown += smooth.tolist()
        else:
            ax.plot(
                steps,
                losses,
                color=style.color,
                linewidth=1.4,
                linestyle=linestyles[name],
                marker=style.marker,
                markevery=max(1, len(losses) // 6),
                markersize=5,
                label=name,
            )
            shown += losses
    ax.set_ylim(*zoom_limits(shown))
    _legend(ax, len(curves))
    return _png(fig)


def validation_loss(runs: list[Run], styles: dict[str, Style], base: float | None) -> bytes | None:
    """Validation curves zoomed to the trained steps; the base model is a reference line there, or a
    label when it lies far off the zoomed range."""
    curves = {run.name: series(run.val_log, "val_loss") for run in runs}
    curves = {name: curve for name, curve in curves.items() if curve[0]}
    if not curves:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    _style_axes(
        ax, "validation loss (x0-MSE; the same images, t grid and noise at every validation)", "step", "validation loss"
    )
    _plot_series(ax, curves, styles, markersize=4, linewidth=1.4)
    trained = [v for steps, losses in curves.values() for s, v in zip(steps, losses) if s > 0]
    shown = trained or [v for _, losses in curves.values() for v in losses]
    low, high = zoom_limits(shown)
    if base is not None:
        span = high - low
        if low - span <= base <= high + span:  # near enough: widen the view to show it
            low, high = zoom_limits(shown + [base])
            ax.axhline(base, color=BASE_COLOR, linestyle="--", linewidth=1.0, label="base model (step 0)")
        else:
            where = "above" if base > high else "below"
            ax.annotate(
                f"base model (step 0): {base:.5g}, {where} this range",
                (0.01, 0.98 if base > high else 0.02),
                xycoords="axes fraction",
                fontsize="small",
                va="top" if base > high else "bottom",
                color=BASE_COLOR,
            )
    ax.set_ylim(low, high)
    _legend(ax, len(curves) + 1)
    return _png(fig)


def _per_t(record: dict) -> dict[float, float]:
    parsed = {}
    per_t = record.get("per_t")
    for key, value in per_t.items() if isinstance(per_t, dict) else ():
        try:
            t = float(key)
        except ValueError:
            continue
        if is_number(value) and math.isfinite(value) and value != 0:
            parsed[t] = float(value)
    return parsed


def per_t_relative(runs: list[Run], standings: dict[str, Standing], styles: dict[str, Style]) -> bytes | None:
    """Per t, the change of each run's validation loss at its best step against its own step 0, in %:
    the loss level differs ten-fold across t, so absolute bars from 0 hid the differences."""
    found = {}
    for run in runs:
        s = standings.get(run.name)
        by_step = {r.get("step"): _per_t(r) for r in run.val_log}
        if s is None or s.best_step is None or not by_step.get(0) or not by_step.get(s.best_step):
            continue
        base, best = by_step[0], by_step[s.best_step]
        ts = sorted(set(base) & set(best))
        if ts:
            found[run.name] = (ts, [100 * (best[t] - base[t]) / base[t] for t in ts])
    if not found:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    _style_axes(
        ax,
        "validation loss per t at each run's best step, change from the base model",
        "t",
        "change from base model (%)",
    )
    ax.axhline(0, color=BASE_COLOR, linestyle="--", linewidth=1.0, label="base model")
    _plot_series(ax, found, styles, markersize=6, linewidth=1.3)
    all_ts = sorted({t for ts, _ in found.values() for t in ts})
    ax.set_xticks(all_ts, [f"{t:g}" for t in all_ts])
    ax.set_ylim(*zoom_limits([c for _, change in found.values() for c in change]))
    _legend(ax, len(found) + 1)
    return _png(fig)


def t_densities(runs: list[Run], styles: dict[str, Style]) -> bytes | None:
    """Sampled training t as small multiples, one panel per distinct histogram listing the variants
    that share it: identical densities drawn on one axis hid all but one line."""
    groups: dict[tuple, list[str]] = {}
    for run in runs:
        hist = run.metrics.get("t_hist")
        if hist and sum(hist["counts"]) > 0:
            groups.setdefault((tuple(hist["edges"]), tuple(hist["counts"])), []).append(run.name)
    if not groups:
        return None
    columns = min(len(groups), 3)
    rows = math.ceil(len(groups) / columns)
    fig = _figure(height=0.6 + 2.3 * rows)
    axes = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()
    for ax, ((edges, counts), names) in zip(axes, groups.items()):
        edges, counts = np.asarray(edges, dtype=float), np.asarray(counts, dtype=float)
        density = counts / (counts.sum() * np.diff(edges))
        color = styles[names[0]].color if len(names) == 1 else BASE_COLOR
        ax.stairs(density, edges, color=color, linewidth=1.6, fill=True, alpha=0.35)
        ax.stairs(density, edges, color=color, linewidth=1.6)
        ax.axhline(1 / (edges[-1] - edges[0]), color="#999999", linestyle=":", linewidth=1.0)
        title = textwrap.fill(", ".join(names), 44)
        _style_axes(ax, title, "t", "density")
        ax.title.set_fontsize(8)
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    fig.suptitle("sampled training t (density; dotted: uniform); one panel per distinct histogram", fontsize=10)
    return _png(fig)
