"""FLOP counts of the generation pass, a training step and the prefix forward (docs/BENCHMARKS.md)."""

from __future__ import annotations

from u1lib.lora.spec import resolve_spec
from u1lib.model.config import U1Config


def layer_linear_params(cfg: U1Config) -> int:
    """Weights of one tower's seven projections (q, k, v, o, gate, up, down)."""
    h, d = cfg.hidden_size, cfg.head_dim
    attn = h * d * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads)
    return attn + 3 * h * cfg.intermediate_size


def lora_flops_per_token(cfg: U1Config, spec: str) -> int:
    """2 * r * (in + out) per adapted linear, summed over the spec's targets (all layers)."""
    return sum(2 * t.rank * (t.in_features + t.out_features) for t in resolve_spec(spec, cfg).values())


def attention_flops(cfg: U1Config, queries: int, keys: int) -> int:
    """Q K^T and P V of one row through every layer: 2 matmuls x 2 FLOP per multiply-add."""
    return 4 * queries * keys * cfg.head_dim * cfg.num_attention_heads * cfg.num_hidden_layers


def fm_flops_per_token(cfg: U1Config) -> int:
    """Generation vision embedding (patch conv for m^2 patches + merge conv) and fm_head, per image token."""
    m, p, c, h = cfg.merge_size, cfg.patch_size, cfg.vision_hidden_size, cfg.hidden_size
    embed = 2 * m * m * (3 * p * p) * c + 2 * (c * m * m) * h
    head = 2 * (h * cfg.fm_head_hidden_size + cfg.fm_head_hidden_size * cfg.fm_out_dim)
    return embed + head


def gen_forward_flops(cfg: U1Config, tokens: int, prefix_lengths: list[int], lora: str | None = None) -> dict:
    """One generation pass over len(prefix_lengths) rows of ``tokens`` image tokens, split by kind."""
    rows = len(prefix_lengths)
    linear = 2 * layer_linear_params(cfg) * cfg.num_hidden_layers * tokens * rows
    attn = sum(attention_flops(cfg, tokens, tokens + n) for n in prefix_lengths)
    adapters = lora_flops_per_token(cfg, lora) * tokens * rows if lora else 0
    return {"linear": linear, "attention": attn, "lora": adapters, "fm": fm_flops_per_token(cfg) * tokens * rows}


def train_flops(
    cfg: U1Config, tokens: int, prefix_lengths: list[int], lora: str, recomputed: int, keep_attention: bool = False
) -> dict:
    """Useful FLOPs of one step (forward + backward) and those executed (plus the recompute of recomputed layers).

    Backward: frozen linears need only dX (1x forward), LoRA and trainable fm modules dX + dW (2x),
    flash attention 2.5x its forward (five matmuls against two). With ``keep_attention`` the
    recompute skips attention.
    """
    f = gen_forward_flops(cfg, tokens, prefix_lengths, lora)
    backward = f["linear"] + 2.5 * f["attention"] + 2 * f["lora"] + 2 * f["fm"]
    useful = sum(f.values()) + backward
    layer_share = recomputed / cfg.num_hidden_layers
    recompute = layer_share * (f["linear"] + (0 if keep_attention else f["attention"]) + f["lora"])
    return {"useful": int(useful), "executed": int(useful + recompute), "forward": f}


def prefix_flops(cfg: U1Config, length: int) -> int:
    """Understanding tower over one caption: linears + causal attention (half the square)."""
    linear = 2 * layer_linear_params(cfg) * cfg.num_hidden_layers * length
    return linear + attention_flops(cfg, length, length) // 2
