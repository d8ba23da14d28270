"""The ablation report: one self-contained HTML page for choosing among the variants' run folders.

Reads only files (metrics, logs, configs, sample and preview PNGs), never a model, and imports no
torch. Top to bottom: a verdict line, the leaderboard with each grid axis value's average effect,
the curves, previews across steps, the contact sheet and sampler settings, data and training
settings, speed and files per run, and provenance last. The page has no script and no external
URL: figures and thumbnails are data: URIs, and full-size images, adapters and logs are links
relative to the report's folder (the report sits in results/ beside runs/, so the links hold when
that folder is copied or served as a whole).

To look at a built page the way a browser shows it (Debian: ``apt-get install -y chromium``)::

    chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \\
        --disable-background-networking --disable-component-update --disable-sync \\
        --user-data-dir=$(mktemp -d) --screenshot=/tmp/report.png --window-size=1400,3000 \\
        file://$PWD/results/report.html
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from u1lib.io import read_json, write_text
from u1lib.report import html, plots, ranking, tables
from u1lib.report.collect import Run, read_run, sample_rows
from u1lib.report.colors import BASE_COLOR, variant_styles
from u1lib.report.ranking import Standing
from u1lib.report.sheets import contact_grid, preview_grids


def _parse_variants(variants: dict) -> tuple[str, dict[str, dict], dict[str, str]]:
    """(base name, knobs per variant, label per variant); every problem reported in one error."""
    problems = []
    described = variants.get("variants") if isinstance(variants, dict) else None
    if not isinstance(described, dict):
        raise ValueError("variants description (variants.json): needs a 'variants' object of {name: {knobs, label}}")
    base = variants.get("base", "base")
    if not isinstance(base, str):
        problems.append(f"'base' must be a variant name, got {base!r}")
    knobs, labels = {}, {}
    for name, entry in described.items():
        if not isinstance(entry, dict):
            problems.append(f"variants.{name} must be an object {{knobs, label}}, got {entry!r}")
            entry = {}
        knobs[name] = entry.get("knobs", {})
        labels[name] = entry.get("label", "")
        if not isinstance(knobs[name], dict):
            problems.append(f"variants.{name}.knobs must be an object of dotted key -> value")
        if not isinstance(labels[name], str):
            problems.append(f"variants.{name}.label must be a string")
    if problems:
        raise ValueError("variants description (variants.json): " + "; ".join(problems))
    return base, knobs, labels


def _check_provenance(provenance: dict) -> None:
    if not isinstance(provenance, dict):
        raise ValueError("provenance: expected an object {git_commit, model, versions, device}")
    for key in ("model", "versions"):
        if not isinstance(provenance.get(key) or {}, dict):
            raise ValueError(f"provenance: '{key}' must be an object, got {provenance[key]!r}")


def _variant_order(run_dirs: dict, knobs: dict, base: str) -> list[str]:
    """Base first (the reference column), then the declared order, then any extra run folders."""
    declared = [base, *(name for name in knobs if name != base)]
    return [name for name in declared if name in run_dirs] + [n for n in run_dirs if n not in declared]


TINY_BANNER = (
    "The embedded tiny model has random weights: samples show noise; "
    "this report demonstrates the pipeline, not a style."
)


def _verdict(standings: list[Standing], base: float | None, effects: dict, labels: dict[str, str]) -> str:
    """One sentence a reader can act on: the best variant, by how much, and which knob value helps most."""
    ranked = [s for s in standings if s.best is not None]
    if not ranked:
        return html.paragraph("No run has a validation loss yet: nothing to rank.", "verdict")
    decimals = tables.loss_decimals([s.best for s in ranked] + [base])
    best = ranked[0]
    label = f" ({labels[best.name]})" if labels.get(best.name) else ""
    loss = tables.fmt_loss(best.best, decimals)
    parts = [("Best: ", False), (best.name, True)]
    parts.append((f"{label}, validation loss {loss} at step {best.best_step:,}", False))
    if best.vs_base is not None:
        relative = f" ({tables.fmt_percent(100 * best.vs_base / best.base)})" if best.base else ""
        parts.append((f", {tables.fmt_delta(best.vs_base, decimals)}{relative} against the base model", False))
        if best.vs_base >= 0:
            parts.append((" (no variant improves on the base model)", True))
    if not best.finished:
        parts.append((" (still training)", True))
    if len(ranked) > 1:
        parts.append((f"; next: {ranked[1].name}, {tables.fmt_delta(ranked[1].best - best.best, decimals)}.", False))
    values = [value for _, axis_values in effects.values() for value in axis_values]
    if values:
        strongest = min(values, key=lambda v: v.effect)
        parts += [
            (" Largest average gain: ", False),
            (f"{strongest.axis} = {tables.fmt_value(strongest.value)}", True),
            (f" ({tables.fmt_delta(strongest.effect, decimals)} against the mean over its axis).", False),
        ]
    return html.rich(parts, "verdict")


def _leaderboard_section(standings, base_value, knobs, labels, styles, effects, definition: str) -> str:
    """What the loss is, the ranked table, the same as dots on one axis, then each axis value's effect."""
    dots = plots.best_validation(standings, base_value, styles)
    if effects:
        effect_part = (
            html.heading("Average effect of each grid axis value")
            + html.paragraph(
                "For each axis: the mean best validation loss of the variants with that value, against the mean "
                "over all variants that set the axis (negative: the value helps). On a full grid this averages "
                "over the other axes; highlighted: the best value of each axis."
            )
            + html.table(tables.effects_table(effects))
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
        html.table(tables.leaderboard_table(standings, base_value, knobs, labels, styles), "leaderboard"),
        html.figures({"best validation loss per variant": dots}),
        effect_part,
    )


def _previews_section(runs: list[Run], page_dir: Path, colors: dict, row_labels: dict, notes: list[str]) -> str:
    grids = preview_grids(runs, page_dir, notes)
    if not grids:
        body = html.paragraph(
            "No previews: no run folder has previews/step-*/index.json (the trainer writes them during training "
            "when previews are on).",
            "empty",
        )
        return html.section("previews", "Previews across training steps", body)
    parts = [html.paragraph("Per prompt: a row per variant, a column per training step; click an image for full size.")]
    blocks = [
        html.heading(title) + html.image_grid(grid, colors, row_labels, caption=prompt) for title, prompt, grid in grids
    ]
    return html.section("previews", "Previews across training steps", *parts, html.side_by_side(blocks))


def _samples_section(
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
        _thoughts_block(runs, rows),
        _settings_block("Sampler settings", {run.name: run.sampler for run in runs if run.sampler}, colors),
    )


def _thoughts_block(runs: list[Run], rows) -> str:
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


def _settings_block(title: str, per_run: dict[str, dict], colors: dict[str, str]) -> str:
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


def build_report(
    run_dirs: dict[str, Path],
    out_html: Path,
    *,
    variants: dict,
    provenance: dict,
    prompt_set: str,
    benchmarks_dir: Path | None = None,
    logs_dir: Path | None = None,
) -> None:
    """Write the report for ``run_dirs`` (variant -> run folder) to ``out_html``, atomically.

    ``benchmarks_dir`` holds Snakemake's ``{variant}.tsv`` train benchmarks (job wall time) and
    ``logs_dir`` the ``{variant}.log`` job logs; either may be left out. Links are relative to
    ``out_html``'s folder, so the results folder can be moved or served as a whole.
    """
    base, knobs, labels = _parse_variants(variants)
    _check_provenance(provenance)
    out_html = Path(out_html)
    page_dir = out_html.parent
    notes = [
        f"{name}: declared in variants.json but no run folder given" for name in [base, *knobs] if name not in run_dirs
    ]
    runs = [
        read_run(
            name,
            Path(run_dirs[name]),
            prompt_set,
            trained=name != base,
            notes=notes,
            benchmarks_dir=benchmarks_dir and Path(benchmarks_dir),
            logs_dir=logs_dir and Path(logs_dir),
        )
        for name in _variant_order(run_dirs, knobs, base)
    ]
    standings = ranking.leaderboard([run for run in runs if run.trained])
    order = {s.name: position for position, s in enumerate(standings)}
    trained = sorted((run for run in runs if run.trained), key=lambda run: order[run.name])
    shown = [run for run in runs if not run.trained] + trained  # the base model first, then by rank
    styles = variant_styles([run.name for run in trained])
    colors = {**{run.name: BASE_COLOR for run in runs}, **{name: style.color for name, style in styles.items()}}
    base_value = ranking.base_loss(standings, notes)
    effects = ranking.axis_effects(standings, knobs)
    definition = ranking.validation_description(trained, notes)

    leaderboard_part = _leaderboard_section(standings, base_value, knobs, labels, styles, effects, definition)
    curves_part = html.section(
        "curves",
        "Curves",
        html.figures(
            {
                "validation loss": plots.validation_loss(trained, styles, base_value),
                "validation loss per t": plots.per_t_relative(trained, {s.name: s for s in standings}, styles),
                "training loss (x0-MSE)": plots.training_loss(trained, styles),
                "sampled training t": plots.t_densities(trained, styles),
            }
        ),
    )
    ranks = {s.name: f"#{position} {s.name}" for position, s in enumerate(standings, 1) if s.best is not None}
    row_labels = {**{run.name: f"{run.name} (untrained)" for run in runs if not run.trained}, **ranks}
    previews_part = _previews_section(shown, page_dir, colors, row_labels, notes)
    samples_part = _samples_section(shown, prompt_set, page_dir, colors, row_labels, notes)
    datasets = {run.name: run.metrics["dataset"] for run in trained if isinstance(run.metrics.get("dataset"), dict)}
    settings_part = html.section(
        "settings",
        "Data and training settings",
        _settings_block("Data (files, rows, fingerprints)", datasets, colors),
        _settings_block("Training settings (config.json)", {r.name: r.config for r in trained if r.config}, colors),
    )
    runs_part = html.section(
        "runs",
        "Runs: speed, memory, files",
        html.paragraph(
            "s/step and images/s: median over the steps after the warm-up (the first tenth of the run, at least 3 "
            "steps: compilation and autotuning). Training time: the sum of step times (metrics.json wall_time_s); "
            "job wall time: the whole Snakemake job (its benchmark file), with loading and validation."
        ),
        html.table(tables.runs_table(trained, page_dir, styles), "runs"),
    )
    provenance_part = html.section(
        "provenance", "Provenance", html.table(tables.provenance_table(provenance), "provenance")
    )
    tiny = (provenance.get("model") or {}).get("source") == "tiny"
    page = html.page(
        "LoRA ablation report",
        f"{len(trained)} trained variants against {base!r}; prompt set {prompt_set!r}",
        html.banner(TINY_BANNER) if tiny else "",
        html.nav(
            {
                "leaderboard": "Leaderboard",
                "curves": "Curves",
                "previews": "Previews",
                "samples": "Samples",
                "settings": "Settings",
                "runs": "Runs",
                "provenance": "Provenance",
            }
        ),
        _verdict(standings, base_value, effects, labels),
        leaderboard_part,
        html.notes_box(notes),  # after every part that adds notes
        curves_part,
        previews_part,
        samples_part,
        settings_part,
        runs_part,
        provenance_part,
    )
    write_text(out_html, page)


def cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m u1lib {verb}", description="Build the HTML ablation report.")
    parser.add_argument("--runs-root", type=Path, required=True, help="folder holding one run folder per variant")
    parser.add_argument("--variants", type=Path, required=True, help="variants.json written by the workflow")
    parser.add_argument("--provenance", type=Path, required=True, help="provenance JSON (git commit, model, versions)")
    parser.add_argument("--prompt-set", required=True, help="which samples/{prompt_set}/ to show")
    parser.add_argument("--out", type=Path, required=True, help="HTML file to write")
    parser.add_argument("--benchmarks", type=Path, help="folder of Snakemake train benchmarks, {variant}.tsv")
    parser.add_argument("--logs", type=Path, help="folder of the train jobs' logs, {variant}.log")
    args = parser.parse_args(argv)
    try:
        variants = read_json(args.variants)
        base, knobs, _ = _parse_variants(variants)
        run_dirs = {name: args.runs_root / name for name in [base, *knobs]}
        build_report(
            run_dirs,
            args.out,
            variants=variants,
            provenance=read_json(args.provenance),
            prompt_set=args.prompt_set,
            benchmarks_dir=args.benchmarks,
            logs_dir=args.logs,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"u1lib {verb}: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0
