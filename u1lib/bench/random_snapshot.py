"""A full-size snapshot with random weights, for cold-start timing and the GPU workflow run."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from u1lib.bench.measure import DEFAULT_CONFIG
from u1lib.bench.timing import GIB
from u1lib.io import atomic_folder, refuse_foreign, save_safetensors, write_json
from u1lib.model.config import U1Config


def write_random_snapshot(out_dir: Path, config: Path = DEFAULT_CONFIG, shard_gib: float = 4.0) -> Path:
    """A full-size snapshot on disk with random bf16 weights (sharded, indexed) and the tiny tokenizer.

    For timing what a real run pays to read weights (cold start) and for running the real workflow
    on a GPU: weights follow tiny_weights.init_like (norms near 1), so training visibly lowers the loss; the
    tokenizer only has to produce valid ids. Tensors are drawn on the GPU when there is one, so
    writing is bounded by the disk.
    """
    from u1lib.tiny import build_tiny_snapshot, is_tiny_file

    out_dir = Path(out_dir)

    def ours(name: str) -> bool:
        return bool(_RANDOM_FILE.fullmatch(name)) or is_tiny_file(out_dir, name)

    refuse_foreign(out_dir, ours, "`u1lib bench --write-snapshot`")  # a real model folder keeps its weights
    with atomic_folder(out_dir) as folder:
        _write_weights(build_tiny_snapshot(folder), Path(config), shard_gib)
    return out_dir


_RANDOM_FILE = re.compile(r"model-\d{5}\.safetensors|model\.safetensors\.index\.json")


def _write_weights(out_dir: Path, config: Path, shard_gib: float) -> None:
    """The tiny snapshot in ``out_dir`` made full size: ``config``'s shapes, random sharded weights."""
    from u1lib.model.keys import parameter_shapes
    from u1lib.tiny_weights import init_like

    (out_dir / "model.safetensors").unlink()
    (out_dir / "config.json").write_bytes(config.read_bytes())
    cfg = U1Config.from_file(out_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=device).manual_seed(0)
    shard, shard_bytes, weight_map, names = {}, 0, {}, []

    def flush():
        nonlocal shard, shard_bytes
        name = f"model-{len(names) + 1:05d}.safetensors"
        save_safetensors(out_dir / name, shard)
        weight_map.update(dict.fromkeys(shard, name))
        names.append(name)
        shard, shard_bytes = {}, 0

    for key, shape in parameter_shapes(cfg).items():
        shard[key] = init_like(key, torch.randn(shape, device=device, dtype=torch.bfloat16, generator=g)).cpu()
        shard_bytes += shard[key].numel() * 2
        if shard_bytes >= shard_gib * GIB:
            flush()
    if shard:
        flush()
    write_json(out_dir / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
