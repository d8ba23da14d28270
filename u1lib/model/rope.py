"""Rotary position encodings: 3-axis (t, h, w) RoPE on attention heads, 2D RoPE on vision features."""

from __future__ import annotations

import functools

import torch


def _inv_freq(dim: int, theta: float, device) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))


@functools.lru_cache(maxsize=None)
def _part_layout(head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel permutation and sign that apply rotate-half inside each part of a head in one gather.

    Parts are [t: D/2 | h: D/4 | w: D/4]; rotate-half maps a part's halves (a, b) to (-b, a). Made
    once per device, so a forward copies nothing from the host (it did two small copies per pass).
    """
    perm, sign, start = [], [], 0
    for dim in (head_dim // 2, head_dim // 4, head_dim // 4):
        half = dim // 2
        perm += list(range(start + half, start + dim)) + list(range(start, start + half))
        sign += [-1.0] * half + [1.0] * half
        start += dim
    return torch.tensor(perm, device=device), torch.tensor(sign, device=device)


class _SwapHalves(torch.autograd.Function):
    """x[..., perm] for a permutation that is its own inverse: backward is the same gather.

    (index_select's own backward scatters with atomics, several times slower.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(perm)
        return x.index_select(-1, perm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (perm,) = ctx.saved_tensors
        return grad.index_select(-1, perm), None


class AxisAngles:
    """cos/sin tables for the three head parts, computed once per forward and shared by all layers.

    Head layout (head_dim D): [t part D/2 | h part D/4 | w part D/4]; each part uses rotate-half
    pairs inside itself, t with ``theta_t``, h and w with ``theta_hw``. The three parts' tables are
    laid side by side over the full head width, with rotate-half's sign folded into the sin table, so
    a rotation is ``x * cos + x[..., perm] * sin`` (three kernels instead of a dozen per call). Tables
    are computed in float32 and cast once to ``dtype``, the dtype of the rotated heads (upstream
    casts them to the activations' dtype too).
    """

    def __init__(self, indexes: torch.Tensor, head_dim: int, theta_t: float, theta_hw: float, dtype: torch.dtype):
        # indexes: [B, 3, S] (rows t, h, w) -> tables [B, 1, S, D]
        positions = indexes.to(torch.float32)
        dims = (head_dim // 2, head_dim // 4, head_dim // 4)
        thetas = (theta_t, theta_hw, theta_hw)
        angles = []
        for axis, (dim, theta) in enumerate(zip(dims, thetas)):
            freqs = positions[:, axis, :, None] * _inv_freq(dim, theta, indexes.device)  # [B, S, dim/2]
            angles.append(torch.cat((freqs, freqs), dim=-1))
        full = torch.cat(angles, dim=-1)[:, None]  # [B, 1, S, D]
        self.perm, sign = _part_layout(head_dim, indexes.device)
        self.cos, self.sin = full.cos().to(dtype), (full.sin() * sign).to(dtype)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, heads, S, D] (already q/k-normed, in the tables' dtype) -> rotated, same dtype."""
        return torch.addcmul(x * self.cos, _SwapHalves.apply(x, self.perm), self.sin)


def vision_rope_2d(features: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate a feature map by patch position: first half of channels by column, second by row.

    features: [B, C, gh, gw]. Pairs are interleaved (2j, 2j+1) inside each half; done in float32.
    """
    b, c, gh, gw = features.shape
    half = c // 2
    inv = _inv_freq(half, theta, features.device)  # [half/2]
    cols = torch.arange(gw, device=features.device, dtype=torch.float32)
    rows = torch.arange(gh, device=features.device, dtype=torch.float32)
    ang_x = (cols[:, None] * inv)[None, :, :].expand(gh, gw, -1)  # [gh, gw, half/2]
    ang_y = (rows[:, None] * inv)[:, None, :].expand(gh, gw, -1)
    x = features.float().permute(0, 2, 3, 1)  # [B, gh, gw, C]
    out = []
    for part, ang in ((x[..., :half], ang_x), (x[..., half:], ang_y)):
        pairs = part.reshape(b, gh, gw, half // 2, 2)
        a, bb = pairs[..., 0], pairs[..., 1]
        cos, sin = ang.cos(), ang.sin()
        out.append(torch.stack((a * cos - bb * sin, a * sin + bb * cos), dim=-1).reshape(b, gh, gw, half))
    return torch.cat(out, dim=-1).permute(0, 3, 1, 2).to(features.dtype)
