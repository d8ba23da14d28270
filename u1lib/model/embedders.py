"""Image-side modules: vision patch embedding, timestep/noise-scale embedders, patch layouts."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from u1lib.model.config import U1Config
from u1lib.model.rope import vision_rope_2d


class VisionEmbeddings(nn.Module):
    """Patch conv + exact GELU + 2D feature RoPE + 2x2 merge conv: [B,3,H,W] -> [B, N_tokens, hidden]."""

    def __init__(self, cfg: U1Config):
        super().__init__()
        c, p, m = cfg.vision_hidden_size, cfg.patch_size, cfg.merge_size
        self.patch_embedding = nn.Conv2d(3, c, kernel_size=p, stride=p)
        self.dense_embedding = nn.Conv2d(c, cfg.hidden_size, kernel_size=m, stride=m)
        self.rope_theta = cfg.rope_theta_vision

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = F.gelu(self.patch_embedding(images.to(self.patch_embedding.weight.dtype)))  # [B, C, H/p, W/p]
        features = vision_rope_2d(features, self.rope_theta)
        merged = self.dense_embedding(features)  # [B, hidden, H/P, W/P]
        return merged.flatten(2).transpose(1, 2)  # raster order over the token grid


class VisionModel(nn.Module):
    """Holds ``embeddings`` only, so keys read ``<tower>.embeddings.*`` as upstream's."""

    def __init__(self, cfg: U1Config):
        super().__init__()
        self.embeddings = VisionEmbeddings(cfg)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embeddings(images)


def sinusoid(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[B] float values (raw t in [0, 1], not scaled) -> [B, dim] as [cos | sin], float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    args = values.float()[:, None] * freqs[None]
    emb = torch.cat((torch.cos(args), torch.sin(args)), dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    def __init__(self, cfg: U1Config):
        super().__init__()
        self.frequency_dim = cfg.frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(self.frequency_dim, cfg.hidden_size),
            nn.SiLU(),
            nn.Linear(cfg.hidden_size, cfg.hidden_size),
        )

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """values: [B] float32 -> [B, hidden]."""
        return self.mlp(sinusoid(values, self.frequency_dim).to(self.mlp[0].weight.dtype))


def patchify(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, (H/size)(W/size), size*size*3], patches raster order, inner order (row, col, channel)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // size, size, w // size, size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // size) * (w // size), size * size * c)


def unpatchify(tokens: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """Exact inverse of :func:`patchify`."""
    b = tokens.shape[0]
    x = tokens.reshape(b, height // size, width // size, size, size, 3)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, 3, height, width)
