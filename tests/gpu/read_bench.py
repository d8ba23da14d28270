"""How fast the sampler's weights reach the GPU: load_model per thread count, against the old single read.

    python tests/gpu/read_bench.py --snapshot /dev/shm/u1-8b-random --threads 1 4 8

(``python -m u1lib bench --write-snapshot DIR`` writes a random full-size snapshot.) The shard files
are read once first so every row sees them in the page cache, as a warm cold start does; each row
is the best of ``--repeat`` runs. ``safe_open(device=cuda)`` is how load_model read before: one
thread, key by key, each tensor copied from pageable memory.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from safetensors import safe_open

from u1lib.model import loading
from u1lib.model.keys import group_of
from u1lib.model.loading import load_model, weight_files

SAMPLER_GROUPS = ["und", "embed", "gen", "fm"]  # u1lib.sample.Sampler without think mode


def warm_page_cache(snapshot: Path) -> None:
    for name in weight_files(snapshot):
        with open(snapshot / name, "rb") as handle:
            while handle.read(256 << 20):
                pass


def old_read(snapshot: Path, groups: list[str], dtype: torch.dtype) -> list[torch.Tensor]:
    tensors = []
    for name, keys in weight_files(snapshot).items():
        with safe_open(snapshot / name, framework="pt", device="cuda") as handle:
            tensors += [handle.get_tensor(k).to(dtype) for k in keys if group_of(k) in groups]
    return tensors


def timed(read, repeat: int) -> tuple[float, int]:
    """Best seconds over ``repeat`` reads and the bytes one read puts on the GPU."""
    best, nbytes = float("inf"), 0
    for _ in range(repeat):
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        start = time.perf_counter()
        tensors = read()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        del tensors
    return best, nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", type=Path, required=True)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--groups", nargs="+", default=SAMPLER_GROUPS)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--staging-mib", type=int, help=f"pinned buffer size (default {loading.STAGING_BYTES >> 20})")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if args.staging_mib:
        loading.STAGING_BYTES = args.staging_mib << 20
    dtype = getattr(torch, args.dtype)
    warm_page_cache(args.snapshot)
    rows = [("safe_open(device=cuda)", lambda: old_read(args.snapshot, args.groups, dtype))]
    for n in args.threads:
        rows.append((f"load_model threads={n}", lambda n=n: _parameters(args, dtype, n)))
    print(f"{args.snapshot}: groups {' '.join(args.groups)} to cuda as {args.dtype}")
    for label, read in rows:
        seconds, nbytes = timed(read, args.repeat)
        print(f"{label:28s} {seconds:7.2f} s  {nbytes / seconds / 1e9:6.1f} GB/s  ({nbytes / 1e9:.1f} GB)", flush=True)


def _parameters(args, dtype: torch.dtype, threads: int) -> list[torch.Tensor]:
    model = load_model(args.snapshot, args.groups, device="cuda", dtype=dtype, threads=threads)
    return [p for p in model.parameters() if not p.is_meta]


if __name__ == "__main__":
    main()
