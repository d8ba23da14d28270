"""Where and in which dtype a stage computes: one rule for ``device: auto`` and ``dtype: auto``, and
where what torch.compile builds for the device is kept."""

from __future__ import annotations

import os
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ALIASES = {"fp32": "float32", "bf16": "bfloat16"}  # the train section's precision names


def resolve_device(device: str) -> torch.device:
    """``auto``: the current CUDA device when there is one, else the CPU; anything else as torch reads it."""
    if device == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an op such as F.linear computes ``x`` in: autocast's where it is on, else x's."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on CUDA (the model's own dtype), float32 on the CPU (where bf16 matmuls crawl)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    name = ALIASES.get(dtype, dtype)
    if name not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join([*DTYPES, *ALIASES])}")
    return DTYPES[name]


def use_compile_cache(folder: str | Path) -> Path:
    """Keep torch.compile's on-disk caches (inductor's FX graph and AOT autograd caches, with the Triton
    kernels they bundle, and Triton's own) in ``folder``, so a job given the folder an earlier job
    used loads its compiled code instead of compiling again.

    The default, ``$TMPDIR/torchinductor_$USER``, is not shared where each job gets its own
    temporary folder or node (clusters). torch reads these variables when it compiles: call this
    before the first compile.
    """
    folder = Path(folder).resolve()
    (folder / "triton").mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ["TRITON_CACHE_DIR"] = str(folder / "triton")
    return folder
