"""Flow-matching losses on x-predictions: x0-MSE, v-MSE (upstream's), and Huber variants of both.

z_t = t * x0 + (1 - t) * ns * eps with the resolution-dependent noise scale ns; the model predicts
x0; v = (x - z) / max(1 - t, t_eps) on both sides, as upstream's training code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from u1lib.model.embedders import patchify
from u1lib.model.u1 import PrefixKV, U1Model

LOSS_TYPES = ("x0", "v", "huber_x0", "huber_v")


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar used for backward
    x0_mse: torch.Tensor  # per-sample [B], detached, for logging
    v_mse: torch.Tensor


def noisy_images(images: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, noise_scale: float) -> torch.Tensor:
    """Pixel-space interpolation between noise (t = 0) and clean images (t = 1)."""
    t = t.to(images.dtype)[:, None, None, None]
    return t * images + (1 - t) * (noise_scale * noise)


def flow_loss(
    model: U1Model,
    images: torch.Tensor,
    prefix: PrefixKV,
    t: torch.Tensor,
    noise: torch.Tensor,
    *,
    loss_type: str = "x0",
    t_eps: float = 0.05,
    huber_delta: float = 1.0,
) -> LossOutput:
    """One batch of same-size images [B, 3, H, W] in [-1, 1] with their prefixes, times and noise."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r} is not one of {LOSS_TYPES}")
    cfg = model.config
    p = cfg.token_size
    noise_scale = cfg.noise_scale_for((images.shape[2] // p) * (images.shape[3] // p))
    z_images = noisy_images(images, t, noise, noise_scale)
    x_pred = model.denoise(z_images, t, prefix, noise_scale)[0].float()
    target = patchify(images, p).float()
    inv = 1.0 / (1 - t.float()).clamp_min(t_eps)[:, None, None]
    x_err = x_pred - target
    v_err = x_err * inv  # (x_pred - z) / c - (x - z) / c
    per_sample = lambda e: e.pow(2).mean(dim=(1, 2))  # noqa: E731
    x0_mse, v_mse = per_sample(x_err), per_sample(v_err)
    if loss_type == "x0":
        loss = x0_mse.mean()
    elif loss_type == "v":
        loss = v_mse.mean()
    else:
        err = x_err if loss_type == "huber_x0" else v_err
        loss = F.huber_loss(err, torch.zeros_like(err), delta=huber_delta)
    return LossOutput(loss, x0_mse.detach(), v_mse.detach())
