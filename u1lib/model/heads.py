"""The x-prediction heads (``fm_modules.fm_head``): U1's per-token MLP and U1.5's convolutional pixel head.

Both map the generation tower's normed hidden states [B, N, hidden] on a (token_h, token_w) grid to
the x-prediction in token layout [B, N, 3 * P * P] (channel-last P x P patches, see ``patchify``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from u1lib.model.config import U1Config
from u1lib.model.embedders import patchify


class MLPHead(nn.Sequential):
    """U1: Linear(hidden -> 4096 literal) -> exact GELU -> Linear(-> 3*P*P); each token on its own.

    A Sequential so the keys read ``fm_head.0`` / ``fm_head.2`` as upstream's.
    """

    def __init__(self, cfg: U1Config):
        super().__init__(
            nn.Linear(cfg.hidden_size, cfg.fm_head_hidden_size),
            nn.GELU(),
            nn.Linear(cfg.fm_head_hidden_size, cfg.fm_out_dim),
        )

    def forward(self, h: torch.Tensor, token_h: int, token_w: int, taps: dict | None = None) -> torch.Tensor:
        for module in self:
            h = module(h)
        return h


class PixelHead(nn.Module):
    """U1.5 (upstream's ConvDecoder): the token map through two 3x3 convolutions between pixel shuffles.

    [hidden, h, w] -> PixelShuffle(2) -> conv1 (-> width) -> exact GELU -> PixelShuffle(2) -> conv2
    (-> 3 * (P/4)^2) -> PixelShuffle(P/4) -> image [3, P*h, P*w]. Neighbouring tokens interact through
    the zero-padded convolutions. Upstream's literals (width 1024, conv2 192, final shuffle 8) are
    these formulas at P = 32.
    """

    def __init__(self, cfg: U1Config):
        super().__init__()
        self.token_size = cfg.token_size
        self.last_shuffle = cfg.token_size // 4
        self.conv1 = nn.Conv2d(cfg.hidden_size // 4, cfg.pixel_head_width, kernel_size=3, padding=1)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(cfg.pixel_head_width // 4, 3 * self.last_shuffle**2, kernel_size=3, padding=1)

    def forward(self, h: torch.Tensor, token_h: int, token_w: int, taps: dict | None = None) -> torch.Tensor:
        b, n, c = h.shape
        if n != token_h * token_w:
            raise ValueError(f"pixel head: {n} tokens do not fill a {token_h} x {token_w} token grid")
        grid = h.transpose(1, 2).reshape(b, c, token_h, token_w)  # token k at (k // token_w, k % token_w)
        inner = self.act(self.conv1(F.pixel_shuffle(grid, 2)))
        out = self.conv2(F.pixel_shuffle(inner, 2))
        if taps is not None:
            taps["fm_head.act1_out"], taps["fm_head.conv2_out"] = inner, out
        image = F.pixel_shuffle(out, self.last_shuffle)  # [B, 3, P*h, P*w]
        return patchify(image, self.token_size)


def make_head(cfg: U1Config) -> nn.Module:
    return PixelHead(cfg) if cfg.use_pixel_head else MLPHead(cfg)
