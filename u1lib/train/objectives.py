"""Flow-matching losses on x-predictions: x0-MSE, v-MSE (upstream's), and Huber variants of both.

z_t = t * x0 + (1 - t) * ns * eps with the resolution-dependent noise scale ns (clamped at the
model's maximum as upstream's sampler does, or unclamped as upstream's training code does); the
model predicts x0; v = (x - z) / max(1 - t, t_eps) on both sides, as upstream's training code. Each
image's loss is the mean over its tokens' values; the batch loss is their mean, optionally weighted
per image (:func:`image_weights`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from u1lib.model.embedders import patchify
from u1lib.model.u1 import PrefixKV, U1Model

LOSS_TYPES = ("x0", "v", "huber_x0", "huber_v")
TOKEN_WEIGHTINGS = ("none", "sqrt")
NOISE_SCALES = ("clamped", "unclamped")


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar used for backward
    x0_mse: torch.Tensor  # per-sample [B], detached, for logging
    v_mse: torch.Tensor


def noisy_images(images: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, noise_scale: float) -> torch.Tensor:
    """Pixel-space interpolation between noise (t = 0) and clean images (t = 1)."""
    t = t.to(images.dtype)[:, None, None, None]
    return t * images + (1 - t) * (noise_scale * noise)


def image_weights(
    widths: Sequence[int], heights: Sequence[int], token_size: int, weighting: str
) -> torch.Tensor | None:
    """The loss weight of every training image (indexed as the dataset), or None for equal weights.

    ``sqrt``: image i of N_i tokens weighs w_i = sqrt(N_i) / mean_j sqrt(N_j), the mean over every
    image j of the training set. Upstream weighs each image by sqrt(N_i) and divides by the sum of
    those weights over its step (docs/UPSTREAM_NOW.md §2), a packed sequence that mixes many
    resolutions; here a batch holds one bucket, so dividing by the batch's own sum would make every
    weight 1. Dividing by the training set's mean instead gives each resolution the weight relative
    to the others that it has on average in upstream's mixed steps, right also for a batch that
    mixes sizes, and keeps the mean weight over the data 1, so train.lr keeps its meaning. A training
    set of one resolution gets weights of exactly 1 (the loss of ``none``).
    """
    if weighting not in TOKEN_WEIGHTINGS:
        raise ValueError(f"token weighting {weighting!r} is not one of {TOKEN_WEIGHTINGS}")
    if weighting == "none":
        return None
    roots = torch.tensor(
        [math.sqrt((w // token_size) * (h // token_size)) for w, h in zip(widths, heights)], dtype=torch.float64
    )
    return (roots / roots.mean()).float()  # float64 first: one resolution gives exactly 1.0


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
    weights: torch.Tensor | None = None,
    clamp_noise_scale: bool = True,
) -> LossOutput:
    """One batch of same-size images [B, 3, H, W] in [-1, 1] with their prefixes, times and noise.

    ``weights`` [B] scales each image's loss (:func:`image_weights`); None weighs them equally.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r} is not one of {LOSS_TYPES}")
    cfg = model.config
    p = cfg.token_size
    noise_scale = cfg.noise_scale_for((images.shape[2] // p) * (images.shape[3] // p), clamp=clamp_noise_scale)
    z_images = noisy_images(images, t, noise, noise_scale)
    x_pred = model.denoise(z_images, t, prefix, noise_scale)[0].float()
    target = patchify(images, p).float()
    inv = 1.0 / (1 - t.float()).clamp_min(t_eps)[:, None, None]
    x_err = x_pred - target
    v_err = x_err * inv  # (x_pred - z) / c - (x - z) / c
    per_sample = lambda e: e.pow(2).mean(dim=(1, 2))  # noqa: E731
    x0_mse, v_mse = per_sample(x_err), per_sample(v_err)
    if loss_type in ("x0", "v"):
        per_image = x0_mse if loss_type == "x0" else v_mse
        loss = per_image.mean() if weights is None else (weights.to(per_image) * per_image).mean()
    else:
        err = x_err if loss_type == "huber_x0" else v_err
        if weights is None:
            loss = F.huber_loss(err, torch.zeros_like(err), delta=huber_delta)
        else:
            per_image = F.huber_loss(err, torch.zeros_like(err), delta=huber_delta, reduction="none").mean(dim=(1, 2))
            loss = (weights.to(per_image) * per_image).mean()
    return LossOutput(loss, x0_mse.detach(), v_mse.detach())
