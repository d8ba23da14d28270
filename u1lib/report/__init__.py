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
from collections.abc import Mapping
from pathlib import Path

from u1lib.io import read_json, write_text
from u1lib.report import html, plots, ranking, sections, tables
from u1lib.report.artifacts import ArtifactFolders, write_artifacts
from u1lib.report.collect import read_run
from u1lib.report.colors import BASE_COLOR, variant_styles


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
        raise ValueError("provenance: expected an object {git_commit, model, versions}")
    for key in ("model", "versions"):
        if not isinstance(provenance.get(key) or {}, dict):
            raise ValueError(f"provenance: '{key}' must be an object, got {provenance[key]!r}")


def _variant_order(run_dirs: dict, knobs: dict, base: str) -> list[str]:
    """Base first (the reference column), then the declared order, then any extra run folders."""
    declared = [base, *(name for name in knobs if name != base)]
    return [name for name in declared if name in run_dirs] + [n for n in run_dirs if n not in declared]


TINY_BANNERS = {  # by the weights the tiny model's revision names (u1lib/snapshot_record.py)
    "random": "The embedded tiny model has random weights: samples show noise; "
    "this report demonstrates the pipeline, not a style.",
    "pretrained": "The embedded tiny model was pretrained for a few CPU minutes on generated shapes "
    "(u1lib/tiny_pretrain.py): its samples show the colours a caption names, in coarse tiles, and training "
    "moves them towards the training photos; this report demonstrates the pipeline, not a style.",
}


def tiny_banner(model: dict) -> str:
    """The banner for the embedded tiny model ('' for any other), saying what its samples can show."""
    if model.get("source") != "tiny":
        return ""
    pretrained = str(model.get("revision", "")).endswith("-pretrained")
    return html.banner(TINY_BANNERS["pretrained" if pretrained else "random"])


def build_report(
    run_dirs: dict[str, Path],
    out_html: Path,
    *,
    variants: dict,
    provenance: dict,
    prompt_set: str,
    benchmarks: Mapping[str, Path] | None = None,
    job_logs: Mapping[str, Path] | None = None,
    artifacts: ArtifactFolders | None = None,
) -> None:
    """Write the report for ``run_dirs`` (variant -> run folder) to ``out_html``, atomically.

    ``benchmarks`` maps a trained variant to its train job's Snakemake benchmark file (job wall time)
    and ``job_logs`` to its job log; either may be left out, a missing file is a note. Links are relative to
    ``out_html``'s folder, so the results folder can be moved or served as a whole.
    ``artifacts``, when given, names the folders that also receive the page's tables, figures and
    images as files (report/artifacts.py).
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
            benchmark=Path(benchmarks[name]) if benchmarks and name in benchmarks else None,
            job_log=Path(job_logs[name]) if job_logs and name in job_logs else None,
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

    dots = plots.best_validation(standings, base_value, styles)
    curves = {
        "validation loss": plots.validation_loss(trained, styles, base_value),
        "validation loss per t": plots.per_t_relative(trained, {s.name: s for s in standings}, styles),
        "training loss (x0-MSE)": plots.training_loss(trained, styles),
        "sampled training t": plots.t_densities(trained, styles),
    }
    table_parts = {
        "leaderboard": tables.leaderboard_table(standings, base_value, knobs, labels, styles),
        "axis effects": tables.effects_table(effects) if effects else None,
        "runs": tables.runs_table(trained, page_dir, styles),
        "job phases": tables.phases_table(trained, styles),
    }
    leaderboard_part = sections.leaderboard_section(
        table_parts["leaderboard"], table_parts["axis effects"], dots, definition
    )
    curves_part = html.section("curves", "Curves", html.figures(curves))
    ranks = {s.name: f"#{position} {s.name}" for position, s in enumerate(standings, 1) if s.best is not None}
    row_labels = {**{run.name: f"{run.name} (untrained)" for run in runs if not run.trained}, **ranks}
    previews_part = sections.previews_section(shown, page_dir, colors, row_labels, notes)
    samples_part = sections.samples_section(shown, prompt_set, page_dir, colors, row_labels, notes)
    datasets = {run.name: run.metrics["dataset"] for run in trained if isinstance(run.metrics.get("dataset"), dict)}
    settings_part = html.section(
        "settings",
        "Data and training settings",
        sections.settings_block("Data (files, rows, fingerprints)", datasets, colors),
        sections.settings_block(
            "Training settings (config.json)", {r.name: r.config for r in trained if r.config}, colors
        ),
    )
    runs_part = html.section(
        "runs",
        "Runs: speed, memory, files",
        html.paragraph(
            "s/step and images/s: median over the steps after the warm-up (the first tenth of the run, at least 3 "
            "steps: compilation and autotuning). Training time: the sum of step times (metrics.json wall_time_s); "
            "job wall time: the whole Snakemake job (its benchmark file), with loading and validation."
        ),
        html.table(table_parts["runs"], "runs"),
        sections.phases_block(table_parts["job phases"]),
    )
    provenance_part = html.section(
        "provenance", "Provenance", html.table(tables.provenance_table(provenance, trained), "provenance")
    )
    page = html.page(
        "LoRA ablation report",
        f"{len(trained)} trained variants against {base!r}; prompt set {prompt_set!r}",
        tiny_banner(provenance.get("model") or {}),
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
        sections.verdict(standings, base_value, effects, labels),
        leaderboard_part,
        html.notes_box(notes),  # after every part that adds notes
        curves_part,
        previews_part,
        samples_part,
        settings_part,
        runs_part,
        provenance_part,
    )
    if artifacts is not None:  # first: a folder it refuses stops the report before the page is written
        write_artifacts(
            artifacts,
            figures={sections.BEST_VALIDATION_FIGURE: dots, **curves},
            tables={name: table for name, table in table_parts.items() if table is not None},
            runs=shown,
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
    parser.add_argument("--files", type=Path, help="also write the figures, tables and images as files here")
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
            benchmarks={name: args.benchmarks / f"{name}.tsv" for name in knobs} if args.benchmarks else None,
            job_logs={name: args.logs / f"{name}.log" for name in knobs} if args.logs else None,
            artifacts=ArtifactFolders.under(args.files) if args.files else None,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"u1lib {verb}: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0
