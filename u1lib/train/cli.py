"""``python -m u1lib train CONFIG.yaml --snapshot ... --run-dir DIR``: the verb the train rule's function serves."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from pathlib import Path

import yaml

from u1lib.device import use_compile_cache
from u1lib.train.inputs import RunFiles
from u1lib.train.loop import train
from u1lib.train.resume import ON_INCOMPATIBLE

# each RunFiles field's flag: (flag, help); the fields without a default are required
FILE_FLAGS = {
    "snapshot_dir": ("--snapshot", "the model snapshot folder"),
    "manifest_path": ("--manifest", "the snapshot's manifest.json"),
    "train_parquet": ("--train-data", "train.parquet"),
    "val_parquet": ("--val-data", "val.parquet (default: the loss on a fixed subset of train)"),
    "cache_dir": ("--cache", "prefix cache dir (not needed with memory_mode online_prefix)"),
    "run_dir": ("--run-dir", "the run folder (checkpoints, logs, adapters)"),
}


def file_arguments(files: RunFiles) -> list[str]:
    """``files`` as this verb's flags, for a launcher that starts it in other processes."""
    values = {field.name: getattr(files, field.name) for field in fields(RunFiles)}
    return [str(a) for name, (flag, _) in FILE_FLAGS.items() if values[name] is not None for a in (flag, values[name])]


def cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m u1lib {verb}", description="Train (or resume) one LoRA run.")
    parser.add_argument("config", type=Path, help="YAML with a `train` section (and optionally `prompt`)")
    required = {field.name for field in fields(RunFiles) if field.default is MISSING}
    for name, (flag, help_text) in FILE_FLAGS.items():
        parser.add_argument(flag, dest=name, metavar="PATH", type=Path, required=name in required, help=help_text)
    parser.add_argument(
        "--on-incompatible",
        choices=ON_INCOMPATIBLE,
        default="refuse",
        help="checkpoints this run cannot continue from: refuse (default) or restart from scratch",
    )
    parser.add_argument("--compile-cache", type=Path, help="torch.compile's caches; jobs sharing it compile once")
    args = parser.parse_args(argv)
    if args.compile_cache:
        use_compile_cache(args.compile_cache)
    try:
        raw = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{args.config}: cannot read the training config ({err})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("train", {}), dict):
        raise ValueError(f"{args.config}: expected a mapping with a `train:` section, e.g. `train: {{steps: 200}}`")
    paths = {name: getattr(args, name) for name in FILE_FLAGS}
    train(raw.get("train", {}), prompt=raw.get("prompt"), on_incompatible=args.on_incompatible, **paths)
    return 0
