"""``python -m u1lib train CONFIG.yaml --snapshot ... --run-dir DIR``: the verb the train rule's function serves."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from u1lib.device import use_compile_cache
from u1lib.train.loop import train
from u1lib.train.resume import ON_INCOMPATIBLE


def cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m u1lib {verb}", description="Train (or resume) one LoRA run.")
    parser.add_argument("config", type=Path, help="YAML with a `train` section (and optionally `prompt`)")
    parser.add_argument("--snapshot", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--train-data", type=Path, required=True, help="train.parquet")
    parser.add_argument("--val-data", type=Path, help="val.parquet (default: the loss on a fixed subset of train)")
    parser.add_argument("--cache", type=Path, help="prefix cache dir (not needed with memory_mode online_prefix)")
    parser.add_argument("--run-dir", type=Path, required=True)
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
    train(
        raw.get("train", {}),
        snapshot_dir=args.snapshot,
        manifest_path=args.manifest,
        train_parquet=args.train_data,
        val_parquet=args.val_data,
        cache_dir=args.cache,
        run_dir=args.run_dir,
        prompt=raw.get("prompt"),
        on_incompatible=args.on_incompatible,
    )
    return 0
