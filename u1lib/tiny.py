"""The embedded tiny model: a complete snapshot (config, weights, tokenizer) built with no network.

Same architecture and file layout as the real checkpoint, small enough that the whole pipeline runs
on a laptop CPU. Same settings, byte-identical files.

Weights (``weights``, the workflow's ``model.tiny_weights``):

- ``pretrained``: the u1 weights stored in the package (:data:`PRETRAINED_FILE`), pretrained for a
  few CPU minutes on generated shape images (u1lib/tiny_pretrain.py says how and why), so that base
  samples show structure and a LoRA's effect is visible. They grew from the seed-0 random draw, so
  they exist for ``variant`` u1 and ``seed`` 0 only; anything else asked of them is an error.
- ``random``: every weight drawn from ``seed`` (tiny_weights.random_weights), as before the pretrained
  weights existed; the golden parity data use this recipe.
- ``auto`` (the default): ``pretrained`` where it exists (u1 at seed 0), else ``random``. So the
  default model is the pretrained one, the u15 and a3b variants stay random, and another seed is
  another random model.

The pretrained file's sha256 is recorded here (:data:`PRETRAINED_SHA256`), so a rebuilt file
changes this module's code hash, which names the tiny model in the workflow (a rebuild reruns
what reads the model), and a changed or damaged file is refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from u1lib.io import atomic_folder, refuse_foreign, save_safetensors, sha256_file, write_json, write_text
from u1lib.model.config import U1Config
from u1lib.model.keys import parameter_shapes
from u1lib.tiny_config import VARIANTS, tiny_config_dict
from u1lib.tiny_tokenizer import tokenizer_config_dict, train_tokenizer, vocab_size_of
from u1lib.tiny_weights import SEED_KEY, file_metadata, random_weights

WEIGHTS = ("auto", "pretrained", "random")

PRETRAINED_FILE = Path(__file__).resolve().parent / "model" / "tiny_u1_pretrained.safetensors"
# sha256 of PRETRAINED_FILE, copied here from its sidecar (tiny_u1_pretrained.json) after a rebuild:
# `python -m u1lib tiny --pretrain u1lib/model/tiny_u1_pretrained.safetensors`
PRETRAINED_SHA256 = "9ff52c66efb549bc60c4390aad61ba7523ac95d17b47a139769652b1070b9727"
PRETRAINED_SEED = 0  # the random draw the pretraining started from


def resolve_weights(weights: str, variant: str, seed: int) -> str:
    """``pretrained`` or ``random``: what ``weights`` (:data:`WEIGHTS`) means for this variant and seed."""
    if weights not in WEIGHTS:
        raise ValueError(f"tiny model weights {weights!r} (model.tiny_weights) is not one of {', '.join(WEIGHTS)}")
    has_pretrained = variant == "u1" and seed == PRETRAINED_SEED
    if weights == "auto":
        return "pretrained" if has_pretrained else "random"
    if weights == "pretrained" and not has_pretrained:
        raise ValueError(
            f"tiny model: pretrained weights exist for variant u1 at seed {PRETRAINED_SEED} only, not for variant "
            f"{variant!r} at seed {seed} (model.tiny_variant, model.tiny_seed); set model.tiny_weights: random "
            "for random weights from that seed"
        )
    return weights


def pretrained_weights(cfg: U1Config) -> dict[str, torch.Tensor]:
    """The packaged pretrained u1 weights as float32, checked against :data:`PRETRAINED_SHA256` and ``cfg``."""
    if not PRETRAINED_FILE.is_file():
        raise FileNotFoundError(
            f"{PRETRAINED_FILE}: missing from the installed package; reinstall u1lib, or rebuild it with "
            f"`python -m u1lib tiny --pretrain {PRETRAINED_FILE}` (or set model.tiny_weights: random)"
        )
    digest = sha256_file(PRETRAINED_FILE)
    if digest != PRETRAINED_SHA256:
        raise ValueError(
            f"{PRETRAINED_FILE}: sha256 {digest}, but u1lib/tiny.py records {PRETRAINED_SHA256} "
            "(PRETRAINED_SHA256): restore the file, or after a deliberate rebuild copy the sha256 from "
            "its sidecar tiny_u1_pretrained.json into PRETRAINED_SHA256"
        )
    with safe_open(PRETRAINED_FILE, framework="pt") as handle:
        weights = {key: handle.get_tensor(key).to(torch.float32) for key in handle.keys()}
    expected = parameter_shapes(cfg)
    shapes = {key: tuple(value.shape) for key, value in weights.items()}
    if shapes != expected:
        raise ValueError(
            f"{PRETRAINED_FILE}: its tensors do not fit the tiny u1 config (keys or shapes differ: "
            f"{sorted(set(shapes.items()) ^ set(expected.items()))[:4]}); rebuild it with "
            f"`python -m u1lib tiny --pretrain {PRETRAINED_FILE}`"
        )
    return dict(sorted(weights.items()))


def build_tiny_snapshot(out_dir: str | Path, seed: int = 0, variant: str = "u1", weights: str = "auto") -> Path:
    """Write config.json, model.safetensors and the tokenizer files of the tiny model into ``out_dir``.

    ``variant`` picks the architecture (:data:`VARIANTS`), ``weights`` pretrained or random weights
    (:data:`WEIGHTS`, the module docstring); the tokenizer is the same for all. The folder is
    replaced whole, and one holding anything but an earlier tiny build is refused untouched: a model
    folder given by mistake keeps its weights.
    """
    out_dir = Path(out_dir)
    refuse_foreign(out_dir, lambda name: is_tiny_file(out_dir, name), "`u1lib tiny`")
    kind = resolve_weights(weights, variant, seed)
    tokenizer = train_tokenizer()
    config = tiny_config_dict(vocab_size_of(tokenizer), variant)
    cfg = U1Config.from_upstream_dict(config, source=f"tiny_config_dict(variant={variant!r})")
    tensors = pretrained_weights(cfg) if kind == "pretrained" else random_weights(cfg, seed)
    with atomic_folder(out_dir) as folder:
        write_json(folder / "config.json", config)
        save_safetensors(folder / "model.safetensors", tensors, file_metadata(seed, kind))
        write_text(folder / "tokenizer.json", tokenizer.to_str(pretty=True) + "\n")
        write_json(folder / "tokenizer_config.json", tokenizer_config_dict(tokenizer))
    return out_dir


TINY_FILES = frozenset({"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"})


def is_tiny_file(folder: Path, name: str) -> bool:
    """Whether ``folder/name`` is a file a tiny build writes; weights count only when their metadata
    names the tiny builder (a real model's single-file weights bear the same name)."""
    path = folder / name
    if name not in TINY_FILES or path.is_symlink():
        return False
    if name != "model.safetensors":
        return True
    try:
        with safe_open(str(path), "pt") as handle:
            return SEED_KEY in (handle.metadata() or {})
    except (OSError, SafetensorError):  # unreadable or not safetensors: not ours either
        return False


def cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m u1lib {verb}",
        description="Build the embedded tiny model snapshot, or (--pretrain) rebuild its packaged pretrained weights.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", type=Path, help="snapshot folder to write")
    action.add_argument(
        "--pretrain",
        type=Path,
        metavar="FILE",
        help="pretrain the u1 weights on generated shapes (minutes on a CPU) and write them to FILE with its "
        f"sidecar .json; the packaged file is {PRETRAINED_FILE.relative_to(PRETRAINED_FILE.parents[2])}",
    )
    parser.add_argument("--seed", type=int, default=0, help="weight seed (same seed, byte-identical files)")
    parser.add_argument("--variant", choices=VARIANTS, default="u1", help="architecture (default: u1)")
    parser.add_argument(
        "--weights",
        choices=WEIGHTS,
        default="auto",
        help="auto (default: pretrained for u1 at seed 0), pretrained, random",
    )
    parser.add_argument("--steps", type=int, help="--pretrain: optimizer steps (default: the recorded build's)")
    args = parser.parse_args(argv)
    if args.pretrain is None:
        if args.steps is not None:
            parser.error("--steps: only with --pretrain")
        out = build_tiny_snapshot(args.out, seed=args.seed, variant=args.variant, weights=args.weights)
        kind = resolve_weights(args.weights, args.variant, args.seed)
        print(f"tiny snapshot ({args.variant}, {kind} weights, seed {args.seed}) written to {out}")
        return 0
    if args.variant != "u1" or args.seed != PRETRAINED_SEED or args.weights != "auto":
        parser.error(
            f"--pretrain builds the u1 weights from seed {PRETRAINED_SEED}: leave --variant, --seed, --weights out"
        )
    from u1lib.tiny_pretrain import write_pretrained  # torch training code: only for a rebuild

    record = write_pretrained(args.pretrain, steps=args.steps)
    print(
        f"{args.pretrain}: {record['bytes']} bytes, sha256 {record['sha256']}, {record['wall_s']} s; record that "
        "sha256 as PRETRAINED_SHA256 in u1lib/tiny.py"
    )
    return 0
