"""End to end on a GPU: random full-size 8B weights through the real workflow, with per-job times.

    python tests/gpu/workflow_8b.py [--snapshot /dev/shm/u1-8b-random] [--steps 40] [--axis train.fp8='[false, true]']

Writes a random full-size snapshot unless one is there (weights drawn like u1lib.tiny_weights.init_like:
norms near 1, so training visibly lowers the loss), then runs, from the repository root,

    snakemake --cores N results/report.html --configfile config/u1-8b.yaml OVERLAY

where the overlay points ``model.source`` at that folder (verified in place, nothing downloaded),
keeps two variants (``--axis``: other grid axes instead) and shortens training and sampling. Prints
every job's wall time (Snakemake's benchmark files) and each variant's validation loss at every
validation, and exits non-zero when the workflow fails or a variant's validation loss did not go down.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


DEFAULT_AXES = {"train.loss_type": ["x0", "v"], "train.t_dist": ["uniform"]}


def overlay(snapshot: Path, steps: int, axes: dict) -> dict:
    return {
        "model": {"name": "u1-8b-random", "source": str(snapshot), "modeling_source": "none"},
        "train": {
            "steps": steps,
            "val_every": max(1, steps // 4),
            "ckpt_every": max(1, steps // 2),
            "save_every": max(1, steps // 2),
            "preview_every": max(1, steps // 2),
            "log_every": 5,
        },
        "sample": {"steps": 8, "width": 1024, "height": 1024, "seeds": [0]},
        "grid": {"axes": axes},
    }


def job_times(results: Path) -> list[tuple[str, float, float]]:
    """(job, wall seconds, peak RSS MiB) from every benchmark file under results/benchmarks."""
    rows = []
    for path in sorted((results / "benchmarks").rglob("*.tsv")):
        with open(path, newline="") as handle:
            record = next(csv.DictReader(handle, delimiter="\t"))
        job = str(path.relative_to(results / "benchmarks").with_suffix(""))
        rows.append((job, float(record["s"]), float(record["max_rss"]) if record["max_rss"] != "NA" else 0.0))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snapshot", type=Path, default=Path("/dev/shm/u1-8b-random"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 8)
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="stop the workflow after this many seconds "
        "(Ctrl-C, as a person would) and still report the jobs that finished",
    )
    parser.add_argument(
        "--axis",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="a grid axis as KEY=[values] (repeatable; the default loss_type x t_dist axes keep one value each)",
    )
    args = parser.parse_args()
    axes = dict(DEFAULT_AXES)
    if args.axis:  # the config's own axes are kept at one value each: the overlay merges into them
        given = {key: json.loads(values) for key, _, values in (a.partition("=") for a in args.axis)}
        axes = {key: values[:1] for key, values in DEFAULT_AXES.items()} | given
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if not (args.snapshot / "model.safetensors.index.json").exists():
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "u1lib", "bench", "--write-snapshot", str(args.snapshot)],
            check=True,
            cwd=REPO,
            env=env,
        )
        print(f"random snapshot written to {args.snapshot} in {time.perf_counter() - started:.0f} s", flush=True)
    overlay_path = REPO / "results" / "gpu-overlay.yaml"
    overlay_path.parent.mkdir(parents=True, exist_ok=True)
    overlay_path.write_text(yaml.safe_dump(overlay(args.snapshot, args.steps, axes), sort_keys=False))
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        str(args.cores),
        "results/report.html",
        "--configfile",
        "config/u1-8b.yaml",
        str(overlay_path.relative_to(REPO)),
    ]
    print("$ " + " ".join(command[2:]), flush=True)
    started = time.perf_counter()
    workflow = subprocess.Popen(command, cwd=REPO, env=env)
    try:
        returncode = workflow.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        workflow.send_signal(signal.SIGINT)
        returncode = workflow.wait(timeout=60)
        print(f"stopped after {args.timeout:.0f} s", flush=True)
    total = time.perf_counter() - started
    results = REPO / "results"
    print(f"\nworkflow exit {returncode} after {total:.0f} s\n\n| job | wall s | peak RSS MiB |\n|---|---|---|")
    for job, seconds, rss in job_times(results):
        print(f"| {job} | {seconds:.1f} | {rss:.0f} |")
    learned = True
    for metrics_path in sorted((results / "runs").glob("*/metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        first, last = metrics.get("initial_val_loss"), metrics.get("final_val_loss")
        learned &= first is not None and last is not None and last < first
        run = metrics_path.parent
        previews_index, export_index = run / "previews" / "index.json", run / "export" / "export.json"
        previews = json.loads(previews_index.read_text())["steps"] if previews_index.is_file() else []
        exported = json.loads(export_index.read_text())["verification"] if export_index.is_file() else {}
        checks = [check["ok"] for check in exported.values() if isinstance(check, dict)]
        complete = bool(previews and checks and all(checks)) and (run / "adapter_best.safetensors").is_file()
        complete &= any((run / "tensorboard").glob("events.*"))
        learned &= complete
        print(
            f"{run.name}: val {first} -> {last}, {metrics.get('s_per_step')} s/step, {metrics.get('device')}; "
            f"previews at steps {[s['step'] for s in previews]}, best adapter step "
            f"{metrics['best_adapter']['step']}, exports verified: {complete}"
        )
        print(f"{run.name}: job seconds {metrics.get('job_seconds')}")
        val_log = run / "val_log.jsonl"
        if val_log.is_file():
            curve = [json.loads(line) for line in val_log.read_text().splitlines() if line.strip()]
            print(f"{run.name}: validation {[(r['step'], round(r['val_loss'], 6)) for r in curve]}")
    return returncode or (0 if learned else 3)


if __name__ == "__main__":
    sys.exit(main())
