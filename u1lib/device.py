"""Where and in which dtype a stage computes: one rule for ``device: auto`` and ``dtype: auto``."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ALIASES = {"fp32": "float32", "bf16": "bfloat16"}  # the train section's precision names


def resolve_device(device: str) -> torch.device:
    """``auto``: the current CUDA device when there is one, else the CPU; anything else as torch reads it."""
    if device == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on CUDA (the model's own dtype), float32 on the CPU (where bf16 matmuls crawl)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    name = ALIASES.get(dtype, dtype)
    if name not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join([*DTYPES, *ALIASES])}")
    return DTYPES[name]
