"""FLOP counts of the generation pass, a training step and the prefix forward (docs/BENCHMARKS.md).

A sparse MoE layer counts what a token computes: the router matmul and its k routed experts (not
all E); an expert's LoRA adapter counts k / E of a token, exact when every expert of the layer
carries the same adapter, an average under uniform routing otherwise. The head is U1's two-linear
MLP or U1.5's convolutional pixel head, whichever the config selects.
"""

from __future__ import annotations

from u1lib.lora.spec import resolve_spec
from u1lib.model.config import U1Config
from u1lib.model.mlp import moe_sizes


def attention_params(cfg: U1Config) -> int:
    """Weights of one layer's q, k, v and o projections."""
    return cfg.hidden_size * cfg.head_dim * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads)


def mlp_params(cfg: U1Config, layer: int, tower: str) -> int:
    """Weights one token multiplies through in ``layer``'s MLP of ``tower`` (und/gen): the dense
    SwiGLU, or on a sparse layer the router [E, hidden] and the k SwiGLU experts it picks."""
    h = cfg.hidden_size
    if not cfg.sparse_mlp(layer, tower):
        return 3 * h * cfg.intermediate_size
    experts, top_k, width = moe_sizes(cfg, tower)
    return h * experts + top_k * 3 * h * width


def tower_linear_params(cfg: U1Config, tower: str) -> int:
    """Weights one token multiplies through in ``tower``'s projections, all layers together."""
    return sum(attention_params(cfg) + mlp_params(cfg, i, tower) for i in range(cfg.num_hidden_layers))


def lora_flops_per_token(cfg: U1Config, spec: str) -> int:
    """2 * r * (in + out) per adapted linear, summed over the spec's targets (all layers); a target
    inside the generation experts counts k / E of that (each token visits k of the E experts)."""
    dense = experts = 0
    for t in resolve_spec(spec, cfg).values():
        flops = 2 * t.rank * (t.in_features + t.out_features)
        if ".experts." in t.module:
            experts += flops
        else:
            dense += flops
    count, top_k, _ = moe_sizes(cfg, "gen")
    return dense + (experts * top_k // count if experts else 0)


def attention_flops(cfg: U1Config, queries: int, keys: int) -> int:
    """Q K^T and P V of one row through every layer: 2 matmuls x 2 FLOP per multiply-add."""
    return 4 * queries * keys * cfg.head_dim * cfg.num_attention_heads * cfg.num_hidden_layers


def head_flops_per_token(cfg: U1Config) -> int:
    """fm_head per image token. U1: Linear(hidden -> fm_head_hidden) and Linear(-> 3 P^2). U1.5's pixel
    head: conv1 (3x3, hidden/4 -> width channels) on the 2 x 2 pixels each token becomes after the
    first shuffle, conv2 (3x3, width/4 -> 3 (P/4)^2) on the 4 x 4 after the second (heads.PixelHead)."""
    h = cfg.hidden_size
    if not cfg.use_pixel_head:
        return 2 * (h * cfg.fm_head_hidden_size + cfg.fm_head_hidden_size * cfg.fm_out_dim)
    width, out = cfg.pixel_head_width, 3 * (cfg.token_size // 4) ** 2
    return 4 * 2 * 9 * (h // 4) * width + 16 * 2 * 9 * (width // 4) * out


def fm_flops_per_token(cfg: U1Config) -> int:
    """Generation vision embedding (patch conv for m^2 patches + merge conv) and fm_head, per image token."""
    m, p, c, h = cfg.merge_size, cfg.patch_size, cfg.vision_hidden_size, cfg.hidden_size
    embed = 2 * m * m * (3 * p * p) * c + 2 * (c * m * m) * h
    return embed + head_flops_per_token(cfg)


def gen_forward_flops(cfg: U1Config, tokens: int, prefix_lengths: list[int], lora: str | None = None) -> dict:
    """One generation pass over len(prefix_lengths) rows of ``tokens`` image tokens, split by kind."""
    rows = len(prefix_lengths)
    linear = 2 * tower_linear_params(cfg, "gen") * tokens * rows
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
    """Understanding tower over one caption: linears + causal attention (half the square), the last
    layer only up to its K and V projections (U1Model.prefix stops there)."""
    last = cfg.num_hidden_layers - 1
    skipped = attention_params(cfg) - 2 * cfg.hidden_size * cfg.head_dim * cfg.num_key_value_heads
    linear = 2 * (tower_linear_params(cfg, "und") - skipped - mlp_params(cfg, last, "und")) * length
    return linear + attention_flops(cfg, length, length) * last // cfg.num_hidden_layers // 2
