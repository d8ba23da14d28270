"""The report's sections between the page frame and the tables: the verdict line, the leaderboard with
its effects, previews, samples with their thoughts, and the differing/shared settings blocks."""

from __future__ import annotations

from pathlib import Path

from u1lib.report import formats, html, tables
from u1lib.report.collect import Run, sample_rows
from u1lib.report.ranking import Standing
from u1lib.report.sheets import contact_grid, preview_grids
from u1lib.report.tables import Table

BEST_VALIDATION_FIGURE = "best validation loss per variant"


def verdict(standings: list[Standing], base: float | None, effects: dict, labels: dict[str, str]) -> str:
    """One sentence a reader can act on: the best variant, by how much, and which knob value helps most."""
    ranked = [s for s in standings if s.best is not None]
    if not ranked:
        return html.paragraph("No run has a validation loss yet: nothing to rank.", "verdict")
    decimals = formats.loss_decimals([s.best for s in ranked] + [base])
    best = ranked[0]
    label = f" ({labels[best.name]})" if labels.get(best.name) else ""
    loss = formats.fmt_loss(best.best, decimals)
    parts = [("Best: ", False), (best.name, True)]
    parts.append((f"{label}, validation loss {loss} at step {best.best_step:,}", False))
    if best.vs_base is not None:
        relative = f" ({formats.fmt_percent(100 * best.vs_base / best.base)})" if best.base else ""
        parts.append((f", {formats.fmt_delta(best.vs_base, decimals)}{relative} against the base model", False))
        if best.vs_base >= 0:
            parts.append((" (no variant improves on the base model)", True))
    if not best.finished:
        parts.append((" (still training)", True))
    if len(ranked) > 1:
        parts.append((f"; next: {ranked[1].name}, {formats.fmt_delta(ranked[1].best - best.best, decimals)}.", False))
    values = [value for _, axis_values in effects.values() for value in axis_values]
    if values:
        strongest = min(values, key=lambda v: v.effect)
        parts += [
            (" Largest average gain: ", False),
            (f"{strongest.axis} = {formats.fmt_value(strongest.value)}", True),
            (f" ({formats.fmt_delta(strongest.effect, decimals)} against the mean over its axis).", False),
        ]
    return html.rich(parts, "verdict")


def leaderboard_section(leaderboard: Table, effects: Table | None, dots: bytes | None, definition: str) -> str:
    """What the loss is, the ranked table, the same as dots on one axis, then each axis value's effect."""
    if effects is not None:
        effect_part = (
            html.heading("Average effect of each grid axis value")
            + html.paragraph(
                "For each axis: the mean best validation loss of the variants with that value, against the mean "
                "over all variants that set the axis (negative: the value helps). On a full grid this averages "
                "over the other axes; highlighted: the best value of each axis."
            )
            + html.table(effects)
        )
    else:
        effect_part = html.paragraph("No grid axis has two values with a validation loss yet.", "empty")
    return html.section(
        "leaderboard",
        "Leaderboard",
        html.paragraph(definition[0].upper() + definition[1:] + ".", "definition"),
        html.paragraph(
            "Ranked by each run's best validation loss; 'vs base model' is that loss minus the run's own step-0 "
            "validation (the untrained model on the same images, t grid and noise), 'vs best' minus the leader's. "
            "adapter.safetensors holds the last step's weights (its loss: 'last validation'); "
            "adapter_best.safetensors those of the best validation step after step 0 (runs table, files)."
        ),
        html.table(leaderboard, "leaderboard"),
        html.figures({BEST_VALIDATION_FIGURE: dots}),
        effect_part,
    )


def phases_block(phases: Table | None) -> str:
    """Where each train job's time went, or nothing for runs that did not record it."""
    if phases is None:
        return ""
    return (
        html.heading("Inside each train job")
        + html.paragraph(
            "metrics.json job_seconds, each phase counted once: opening the data and cache (inputs), loading "
            "the weights, the trainable surface and optimizer, the batches, the prefixes, the lineage, the "
            "monitor (trackers, previewer), the first step (compilation and autotuning), the other steps, "
            "validation, previews, logs, copying adapters and checkpoints off the device (their files are "
            "written in the background) and the final save; other: the rest. The job wall time above adds "
            "starting Python and the imports."
        )
        + html.table(phases)
    )


def previews_section(runs: list[Run], page_dir: Path, colors: dict, row_labels: dict, notes: list[str]) -> str:
    grids = preview_grids(runs, page_dir, notes)
    if not grids:
        body = html.paragraph(
            "No previews: no run folder has previews/step-*/index.json (the trainer writes them during training "
            "when previews are on).",
            "empty",
        )
        return html.section("previews", "Previews across training steps", body)
    parts = [
        html.paragraph(
            "Per held-out caption: its real image first, then a row per variant and a column per training step; "
            "click an image for full size."
        )
    ]
    blocks = [
        html.heading(title) + html.image_grid(grid, colors, row_labels, caption=prompt) for title, prompt, grid in grids
    ]
    return html.section("previews", "Previews across training steps", *parts, html.side_by_side(blocks))


def samples_section(
    runs: list[Run], prompt_set: str, page_dir: Path, colors: dict, row_labels: dict, notes: list[str]
) -> str:
    rows = sample_rows(runs)
    if not rows:
        body = html.paragraph(f"No samples found for prompt set {prompt_set!r}.", "empty")
        return html.section("samples", "Samples", body)
    return html.section(
        "samples",
        f"Samples (prompt set {prompt_set!r})",
        html.paragraph("A row per variant (base model first, then by rank); click an image for full size."),
        html.image_grid(contact_grid(runs, rows, page_dir, notes), colors, row_labels),
        thoughts_block(runs, rows),
        settings_block("Sampler settings", {run.name: run.sampler for run in runs if run.sampler}, colors),
    )


def thoughts_block(runs: list[Run], rows) -> str:
    """Think mode: the text the understanding tower wrote before each prompt (the same for every
    variant, since adapters change only the generation tower)."""
    thoughts = {}
    for run in runs:
        for prompt_id, thought in run.thoughts.items():
            thoughts.setdefault(prompt_id, thought)
    if not thoughts:
        return ""
    prompts = {row.prompt_id: row.prompt for row in rows}
    table = tables.Table(
        ["prompt id", "prompt", "thought (think mode)", "stopped by", "tokens"],
        [
            [pid, prompts.get(pid, ""), str(t.get("text", "")), str(t.get("stop", "")), str(t.get("tokens", ""))]
            for pid, t in thoughts.items()
        ],
        numeric_columns={4},
    )
    return html.heading("Think mode: the thought written before each prompt") + html.table(table, "thoughts")


def settings_block(title: str, per_run: dict[str, dict], colors: dict[str, str]) -> str:
    """Only the keys that differ, with each run's value, then the shared settings as one list."""
    split = tables.settings_tables(per_run, colors)
    if split is None:
        return html.heading(title) + html.paragraph("Not recorded by any run yet.", "empty")
    shared, differing = split
    parts = [html.heading(f"{title}: differing")]
    if differing.rows:
        parts.append(html.table(differing, "settings"))
    else:
        parts.append(html.paragraph(f"None: all {len(per_run)} runs that recorded them agree.", "empty"))
    parts += [html.heading(f"{title}: shared by all {len(per_run)}"), html.table(shared, "settings")]
    return "".join(parts)
