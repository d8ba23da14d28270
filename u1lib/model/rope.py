"""Rotary position encodings: 3-axis (t, h, w) RoPE on attention heads, 2D RoPE on vision features."""

from __future__ import annotations

import torch


def _inv_freq(dim: int, theta: float, device) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class AxisAngles:
    """cos/sin tables for the three head parts, computed once per forward and shared by all layers.

    Head layout (head_dim D): [t part D/2 | h part D/4 | w part D/4]; each part uses rotate-half
    pairs inside itself, t with ``theta_t``, h and w with ``theta_hw``.
    """

    def __init__(self, indexes: torch.Tensor, head_dim: int, theta_t: float, theta_hw: float):
        # indexes: [B, 3, S] (rows t, h, w) -> each table [B, 1, S, part_dim] in float32
        positions = indexes.to(torch.float32)
        dims = (head_dim // 2, head_dim // 4, head_dim // 4)
        thetas = (theta_t, theta_hw, theta_hw)
        self.parts = []
        for axis, (dim, theta) in enumerate(zip(dims, thetas)):
            freqs = positions[:, axis, :, None] * _inv_freq(dim, theta, indexes.device)  # [B, S, dim/2]
            angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, S, dim]
            self.parts.append((angles.cos(), angles.sin(), dim))

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, heads, S, D] (already q/k-normed) -> rotated, same dtype."""
        out, start = [], 0
        for cos, sin, dim in self.parts:
            part = x[..., start : start + dim]
            out.append(part * cos.to(x.dtype) + _rotate_half(part) * sin.to(x.dtype))
            start += dim
        return torch.cat(out, dim=-1)


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
