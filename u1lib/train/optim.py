"""The optimizer and the learning-rate schedule of a run."""

from __future__ import annotations

import math

import torch

from u1lib.train.settings import TrainSettings


def lr_factor(step: int, s: TrainSettings) -> float:
    """Linear warm-up, then constant or cosine down to ``min_lr_ratio`` at ``s.steps``."""
    if step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    if s.schedule == "constant":
        return 1.0
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(params: list[torch.nn.Parameter], s: TrainSettings, device: torch.device):
    if s.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise RuntimeError("train.optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    fused = device.type == "cuda"
    return torch.optim.AdamW(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay, fused=fused)
