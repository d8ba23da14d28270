"""``python -m u1lib train CONFIG.yaml --snapshot ... --run-dir DIR [--gpus N]``: the train rule's entry
point (``run_training``) with the same arguments; with ``--gpus N`` each of torchrun's ranks runs this
verb again with one GPU."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from pathlib import Path

import yaml

from u1lib.device import use_compile_cache
from u1lib.train.inputs import RunFiles
from u1lib.train.launch import FILE_FLAGS, run_training
from u1lib.train.resume import ON_INCOMPATIBLE


def cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m u1lib {verb}", description="Train (or resume) one LoRA run.")
    parser.add_argument("config", type=Path, help="YAML with a `train` section (and optionally `prompt`)")
    required = {field.name for field in fields(RunFiles) if field.default is MISSING}
    for name, (flag, help_text) in FILE_FLAGS.items():
        parser.add_argument(flag, dest=name, metavar="PATH", type=Path, required=name in required, help=help_text)
    parser.add_argument(
        "--gpus", type=int, default=1, help="data-parallel ranks, one per GPU (torchrun on this host; default 1)"
    )
    parser.add_argument(
        "--on-incompatible",
        choices=ON_INCOMPATIBLE,
        default="refuse",
        help="checkpoints this run cannot continue from: refuse (default) or restart from scratch",
    )
    parser.add_argument("--compile-cache", type=Path, help="torch.compile's caches; jobs sharing it compile once")
    args = parser.parse_args(argv)
    if args.gpus < 1:
        parser.error(f"--gpus {args.gpus}: give 1 or more")
    if args.compile_cache:
        use_compile_cache(args.compile_cache)
    try:
        raw = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{args.config}: cannot read the training config ({err})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("train", {}), dict):
        raise ValueError(f"{args.config}: expected a mapping with a `train:` section, e.g. `train: {{steps: 200}}`")
    files = RunFiles(**{name: getattr(args, name) for name in FILE_FLAGS})
    run_training(
        raw.get("train", {}), files, gpus=args.gpus, prompt=raw.get("prompt"), on_incompatible=args.on_incompatible
    )
    return 0
