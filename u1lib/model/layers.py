"""Decoder layer of the Mixture-of-Transformers: two parameter sets, one shared attention.

Every understanding module has a ``_mot_gen`` twin of identical shape. A call runs one tower:
``und`` for the text prefix (causal), ``gen`` for image tokens (attending to [prefix K/V ; own K/V]).
Attribute names mirror upstream so ``state_dict()`` keys are the checkpoint's keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from u1lib.model.config import U1Config
from u1lib.model.mlp import mlp_block
from u1lib.model.rope import AxisAngles

SUFFIX = {"und": "", "gen": "_mot_gen"}


class RMSNorm(nn.Module):
    """Qwen3 RMSNorm: normalise in float32, cast back, then scale (one fused kernel for the first part)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * normalize(x, self.eps)


def normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) over the last dim, returned in x's dtype.

    rms_norm accumulates reduced-precision inputs in float32 and rounds once, which is upstream's
    upcast-normalise-cast without materialising a float32 copy.
    """
    return F.rms_norm(x, (x.shape[-1],), eps=eps).to(x.dtype)


def attend(q, k, v, *, causal: bool = False) -> torch.Tensor:
    """SDPA with grouped KV heads (query head h reads KV head h // groups), no mask: the flash path."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])


def attend_after(q, k, v, past_k, past_v):
    """New text tokens over [cached K/V ; their own K/V]: causal among themselves, all of the cache visible.

    Returns (attention output, the extended K, the extended V). One token needs no mask.
    """
    keys, values = torch.cat((past_k.to(k.dtype), k), dim=2), torch.cat((past_v.to(v.dtype), v), dim=2)
    n, total = q.shape[2], keys.shape[2]
    mask = None if n == 1 else torch.ones(n, total, dtype=torch.bool, device=q.device).tril(total - n)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
    return out, keys, values


Runs = list[tuple[int, int, int]]  # (first row, end row, prefix length) of rows sharing one prefix length


def attend_prefixed(q, k, v, prefix_k, prefix_v, runs: Runs | None) -> torch.Tensor:
    """Image queries over [prefix K/V ; own K/V], with no padding mask.

    Rows whose prefixes are right-padded are attended in runs of equal prefix length, each run's
    prefix trimmed to its length, so every call stays on the unmasked (flash) kernel; ``runs`` None
    means every row's prefix fills the full width.
    """
    if runs is None:
        return attend(q, torch.cat((prefix_k.to(k.dtype), k), dim=2), torch.cat((prefix_v.to(v.dtype), v), dim=2))
    parts = []
    for first, end, length in runs:
        rows = slice(first, end)
        keys = torch.cat((prefix_k[rows, :, :length].to(k.dtype), k[rows]), dim=2)
        values = torch.cat((prefix_v[rows, :, :length].to(v.dtype), v[rows]), dim=2)
        parts.append(attend(q[rows], keys, values))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


class TwinAttention(nn.Module):
    """q/k/v/o projections and the four per-half q/k norms, once per tower."""

    def __init__(self, cfg: U1Config):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, d
        self.eps = cfg.rms_norm_eps
        for sfx in SUFFIX.values():
            setattr(self, f"q_proj{sfx}", nn.Linear(h, self.num_heads * d, bias=False))
            setattr(self, f"k_proj{sfx}", nn.Linear(h, self.num_kv_heads * d, bias=False))
            setattr(self, f"v_proj{sfx}", nn.Linear(h, self.num_kv_heads * d, bias=False))
            setattr(self, f"o_proj{sfx}", nn.Linear(self.num_heads * d, h, bias=False))
            for norm in ("q_norm", "q_norm_hw", "k_norm", "k_norm_hw"):
                setattr(self, f"{norm}{sfx}", RMSNorm(d // 2, cfg.rms_norm_eps))

    def _part(self, name: str, tower: str) -> nn.Module:
        return getattr(self, name + SUFFIX[tower])

    def _normed_heads(self, x, which: str, heads: int, tower: str, angles: AxisAngles) -> torch.Tensor:
        """Project, RMS-normalise each half of each head with its own weight (t half, hw half), rotate."""
        b, s, _ = x.shape
        x = self._part(f"{which}_proj", tower)(x).view(b, s, heads, 2, self.head_dim // 2)
        weight = torch.stack((self._part(f"{which}_norm", tower).weight, self._part(f"{which}_norm_hw", tower).weight))
        x = (weight * normalize(x, self.eps)).view(b, s, heads, self.head_dim).transpose(1, 2)  # [B, heads, S, D]
        return angles.rotate(x)

    def qkv(self, x: torch.Tensor, tower: str, angles: AxisAngles):
        """x: [B, S, hidden] -> q [B, H, S, D], k and v [B, H_kv, S, D] (k after norms + RoPE)."""
        return self._normed_heads(x, "q", self.num_heads, tower, angles), *self.kv(x, tower, angles)

    def kv(self, x: torch.Tensor, tower: str, angles: AxisAngles):
        """x: [B, S, hidden] -> k and v [B, H_kv, S, D] alone (what a prefix cache keeps)."""
        b, s, _ = x.shape
        k = self._normed_heads(x, "k", self.num_kv_heads, tower, angles)
        v = self._part("v_proj", tower)(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return k, v

    def output(self, attn: torch.Tensor, tower: str) -> torch.Tensor:
        b, _, s, _ = attn.shape
        return self._part("o_proj", tower)(attn.transpose(1, 2).reshape(b, s, -1))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: U1Config, index: int):
        super().__init__()
        for tower, sfx in SUFFIX.items():
            setattr(self, f"input_layernorm{sfx}", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps))
            setattr(self, f"post_attention_layernorm{sfx}", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps))
            setattr(self, f"mlp{sfx}", mlp_block(cfg, index, tower))
        self.self_attn = TwinAttention(cfg)

    def _tower(self, name: str, tower: str) -> nn.Module:
        return getattr(self, name + SUFFIX[tower])

    def _mlp_block(self, h: torch.Tensor, tower: str) -> torch.Tensor:
        return h + self._tower("mlp", tower)(self._tower("post_attention_layernorm", tower)(h))

    def forward_und(self, h: torch.Tensor, angles: AxisAngles):
        """Causal prefix step. Returns the new hidden state and this layer's (K, V) for the cache."""
        q, k, v = self.self_attn.qkv(self.input_layernorm(h), "und", angles)
        h = h + self.self_attn.output(attend(q, k, v, causal=True), "und")
        return self._mlp_block(h, "und"), k, v

    def kv_und(self, h: torch.Tensor, angles: AxisAngles):
        """The layer's prefix (K, V) alone: for the last layer, whose output no cache needs."""
        return self.self_attn.kv(self.input_layernorm(h), "und", angles)

    def forward_und_after(self, h: torch.Tensor, angles: AxisAngles, past_k, past_v):
        """Understanding step for tokens that follow a cached prefix (think decoding): returns the new
        hidden state and the layer's extended (K, V)."""
        q, k, v = self.self_attn.qkv(self.input_layernorm(h), "und", angles)
        attn, keys, values = attend_after(q, k, v, past_k, past_v)
        h = h + self.self_attn.output(attn, "und")
        return self._mlp_block(h, "und"), keys, values

    def gen_qkv(self, h: torch.Tensor, angles: AxisAngles):
        """Generation tower up to attention: normed, projected, q/k-normed and rotated heads."""
        return self.self_attn.qkv(self.input_layernorm_mot_gen(h), "gen", angles)

    def gen_out(self, h: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Generation tower after attention: o_proj + residual, then the MLP block."""
        return self._mlp_block(h + self.self_attn.output(attn, "gen"), "gen")

    def forward_gen(self, h, angles: AxisAngles, prefix_k, prefix_v, runs: Runs | None = None) -> torch.Tensor:
        """Image tokens attend to [prefix K/V ; their own K/V] with no causal mask."""
        q, k, v = self.gen_qkv(h, angles)
        return self.gen_out(h, attend_prefixed(q, k, v, prefix_k, prefix_v, runs))
