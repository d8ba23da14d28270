"""The ablation report: one self-contained HTML page comparing every variant's run folder.

Reads only files (metrics, logs, configs, sample PNGs), never a model, and imports no torch.
The page has no script and no external URL; figures and the contact sheet are data: URIs.

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
from u1lib.report import html, plots, tables
from u1lib.report.collect import Run, read_run, sample_rows
from u1lib.report.sheets import contact_sheet


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


def _samples_section(runs: list[Run], prompt_set: str, notes: list[str]) -> str:
    rows = sample_rows(runs)
    if not rows:
        return html.section("Samples", html.paragraph(f"No samples found for prompt set {prompt_set!r}.", "empty"))
    sheet = html.image(contact_sheet(runs, rows, notes), f"contact sheet, prompt set {prompt_set}")
    return html.section(
        f"Samples (prompt set {prompt_set!r})",
        f'<div class="sheet">{sheet}</div>',
        html.table(tables.prompt_table(rows)),
    )


def _config_diff_section(runs: list[Run]) -> str:
    diff = tables.config_diff_table(runs)
    if diff is None:
        body = html.paragraph("Fewer than two runs have a config.json; nothing to compare.", "empty")
    elif not diff.rows:
        body = html.paragraph("All configs are identical.", "empty")
    else:
        body = html.table(diff)
    return html.section("Config differences (only keys whose values differ)", body)


def build_report(
    run_dirs: dict[str, Path], out_html: Path, *, variants: dict, provenance: dict, prompt_set: str
) -> None:
    """Write the report for ``run_dirs`` (variant -> run folder) to ``out_html``, atomically."""
    base, knobs, labels = _parse_variants(variants)
    _check_provenance(provenance)
    notes = [
        f"{name}: declared in variants.json but no run folder given" for name in [base, *knobs] if name not in run_dirs
    ]
    runs = [
        read_run(name, Path(run_dirs[name]), prompt_set, trained=name != base, notes=notes)
        for name in _variant_order(run_dirs, knobs, base)
    ]
    trained = [run for run in runs if run.trained]
    colors = plots.variant_colors([run.name for run in trained])

    runs_part = html.section(
        "Runs",
        html.table(tables.run_table(trained, knobs, labels), "runs"),
        html.paragraph("Best validation loss highlighted. A dash: not measured, or the run is still in progress."),
    )
    curves_part = html.section(
        "Loss curves",
        html.figures({
            "training loss": plots.training_loss(trained, colors),
            "validation loss": plots.validation_loss(trained, colors),
        }),
    )
    t_part = html.section(
        "Timesteps and condition dropout",
        html.figures({
            "validation loss per t": plots.per_t_validation(trained, colors),
            "t histogram": plots.t_histogram(trained, colors),
        }),
        html.table(tables.dropout_table(trained)),
    )
    samples_part = _samples_section(runs, prompt_set, notes)  # before the notes box: it adds notes
    page = html.page(
        "LoRA ablation report",
        f"{len(trained)} trained variants against {base!r}; prompt set {prompt_set!r}",
        html.table(tables.provenance_table(provenance), "provenance"),
        html.notes_box(notes),
        runs_part, curves_part, t_part, samples_part, _config_diff_section(trained),
    )
    write_text(out_html, page)


def cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m u1lib {verb}", description="Build the HTML ablation report.")
    parser.add_argument("--runs-root", type=Path, required=True, help="folder holding one run folder per variant")
    parser.add_argument("--variants", type=Path, required=True, help="variants.json written by the workflow")
    parser.add_argument("--provenance", type=Path, required=True, help="provenance JSON (git commit, model, versions)")
    parser.add_argument("--prompt-set", required=True, help="which samples/{prompt_set}/ to show")
    parser.add_argument("--out", type=Path, required=True, help="HTML file to write")
    args = parser.parse_args(argv)
    try:
        variants = read_json(args.variants)
        base, knobs, _ = _parse_variants(variants)
        run_dirs = {name: args.runs_root / name for name in [base, *knobs]}
        build_report(
            run_dirs, args.out, variants=variants, provenance=read_json(args.provenance), prompt_set=args.prompt_set
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"u1lib {verb}: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0
