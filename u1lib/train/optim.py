"""How the trainable tensors move: the optimizer, the learning-rate schedule and the weights' EMA."""

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


def set_lr(optimizer: torch.optim.Optimizer, step: int, s: TrainSettings) -> None:
    """The schedule's learning rate for the step after ``step`` steps, in every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = s.lr * lr_factor(step, s)


def make_optimizer(params: list[torch.nn.Parameter], s: TrainSettings, device: torch.device):
    if s.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise RuntimeError("train.optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    fused = device.type == "cuda"
    return torch.optim.AdamW(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay, fused=fused)


class WeightEma:
    """An exponential moving average of the trainable tensors (``train.ema``: its decay; null: off).

    ``tensors`` is empty when off, so a checkpoint's EMA file is empty too.
    """

    def __init__(self, trainable: dict[str, torch.nn.Parameter], decay: float | None):
        self.decay = decay
        self.tensors = {n: p.detach().clone() for n, p in trainable.items()} if decay else {}

    @torch.no_grad()
    def update(self, trainable: dict[str, torch.nn.Parameter]) -> None:
        for name, average in self.tensors.items():
            average.lerp_(trainable[name].detach(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, trainable: dict[str, torch.nn.Parameter]) -> None:
        """The deliverable when EMA is on: the averages replace the live weights."""
        for name, average in self.tensors.items():
            trainable[name].copy_(average)
