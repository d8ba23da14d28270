"""Full-size random-weight benchmarks: ``python -m u1lib bench --measure train --size 2048 ...``.

The model is built with random bf16 weights straight on the device (no download), so every number
depends on shapes alone. Each measure warms up, times with CUDA events, and reports the median,
the FLOPs the shape needs (formulas below and in docs/BENCHMARKS.md), the achieved rate against a
bf16 matmul rate measured in the same process, and peak device / host memory. Several measures run
in one process (``--plan``), each on a freshly built model.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from u1lib.bench.coldstart import coldstart_child
from u1lib.bench.measure import DEFAULT_CONFIG, MEASURES, Measure
from u1lib.bench.measures import RUNNERS
from u1lib.bench.random_snapshot import write_random_snapshot
from u1lib.bench.timing import Recorder, matmul_tflops
from u1lib.device import resolve_device
from u1lib.io import read_json, write_json
from u1lib.model.config import U1Config
from u1lib.provenance import git_commit, versions
from u1lib.train.distributed import init_from_env
from u1lib.train.metrics import device_name
from u1lib.typed_config import from_section


def run_bench(settings: dict, out_json: Path) -> dict:
    """Run ``settings["measures"]`` (dicts of :class:`Measure` fields) and write one JSON record.

    ``settings`` may also name ``config`` (an upstream config.json; default the 8B one) and ``device``.
    A failing measure is recorded with its error and the others still run.
    """
    unknown = sorted(set(settings) - {"config", "device", "measures"})
    if unknown:
        raise ValueError(f"bench settings: unknown key(s) {unknown}; expected config, device, measures")
    measures = [from_section(Measure, raw, "bench.measures[]") for raw in settings.get("measures", [])]
    if not measures:
        raise ValueError("bench settings: 'measures' lists no measure")
    cfg = U1Config.from_file(settings.get("config") or DEFAULT_CONFIG)
    dist = init_from_env()  # under torchrun: one rank per GPU, rank 0 reports
    device = resolve_device(settings.get("device") or "auto")
    rec = Recorder(device)
    record = {
        "device": device_name(device),
        "versions": versions(),
        "git_commit": git_commit(),
        "config": cfg.to_dict(),
        "matmul_tflops": matmul_tflops(device),
        "results": [],
    }
    for m in measures:
        rec.reset()
        started = time.perf_counter()
        try:
            result = RUNNERS[m.measure](cfg, device, m, rec)
            result["ratio_to_matmul"] = result.get("useful_tflops", 0.0) / record["matmul_tflops"]
        except Exception as err:  # noqa: BLE001 - one broken measure must not lose the others' numbers
            result = {"error": f"{type(err).__name__}: {str(err)[:400]}"}
        result.update(settings=asdict(m), wall_s=time.perf_counter() - started)
        record["results"].append(result)
        if dist.is_main:
            print(summary_line(result), flush=True)
        if m.compile:
            torch.compiler.reset()  # the next measure compiles from scratch, as in a process of its own
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            getattr(torch._C, "_host_emptyCache", lambda: None)()  # cached pinned blocks inflate the next host peak
        if dist.is_main:
            write_json(out_json, record)
    return record


def summary_line(r: dict) -> str:
    s = r["settings"]
    shape = f"L{s['prefix']}" if s["measure"] == "prefix" else f"{s['size']}px"
    name = s["label"] or f"{s['measure']} {shape} b{s['batch']}"
    if "error" in r:
        return f"{name:<40} ERROR {r['error']}"
    if "s_per_step" not in r:
        return f"{name:<40} " + json.dumps({k: v for k, v in r.items() if k not in ("settings",)})[:400]
    rate = r.get("captions_per_s", r.get("images_per_s"))
    return (
        f"{name:<40} {r['s_per_step']:8.4f} s  {rate:7.2f}/s  {r['useful_tflops']:6.1f} TF/s "
        f"({100 * r['ratio_to_matmul']:4.1f}%)  gpu {r.get('gpu_peak_allocated_gib', 0):6.2f}/"
        f"{r.get('gpu_peak_reserved_gib', 0):6.2f} GiB  host {r.get('host_rss_peak_gib', 0):5.2f} GiB"
    )


def _parser(verb: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m u1lib {verb}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--measure", choices=MEASURES, help="one measure from the flags below")
    parser.add_argument("--plan", type=Path, help="JSON file: a list of measure dicts (or {config, device, measures})")
    parser.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON record to write")
    parser.add_argument("--config", type=Path, help="upstream config.json (default: the 8B config)")
    parser.add_argument("--device", help="cuda (default when present) or cpu")
    parser.add_argument("--coldstart-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--write-snapshot",
        type=Path,
        metavar="DIR",
        help="write a full-size random-weight snapshot (sharded safetensors) to DIR and exit",
    )
    defaults = Measure("train")
    for name, value in asdict(defaults).items():
        if name == "measure":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=type(value), default=value)
    return parser


def cli(verb: str, argv: list[str]) -> int:
    parser = _parser(verb)
    args = parser.parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k in Measure.__dataclass_fields__ and k != "measure"}
    if args.write_snapshot:
        write_random_snapshot(args.write_snapshot, args.config or DEFAULT_CONFIG)
        return 0
    if args.coldstart_child:
        coldstart_child(args.coldstart_child, Measure("coldstart", **fields))
        return 0
    if bool(args.plan) == bool(args.measure):
        parser.error("give exactly one of --measure or --plan")
    if args.plan:
        raw = read_json(args.plan)
        settings = raw if isinstance(raw, dict) else {"measures": raw}
    else:
        settings = {"measures": [{"measure": args.measure, **fields}]}
    settings.update({k: str(v) for k, v in (("config", args.config), ("device", args.device)) if v})
    try:
        record = run_bench(settings, args.out)
    except ValueError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    return 1 if any("error" in r for r in record["results"]) else 0
