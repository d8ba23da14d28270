"""Parameter names, shapes and groups of a SenseNova-U1 checkpoint, from the config alone.

Groups are what a stage loads: ``und`` (understanding tower + its final norm), ``gen`` (the
``_mot_gen`` tower + ``norm_mot_gen``), ``fm`` (generation vision embedding, both embedders,
fm_head), ``embed`` (token embeddings), ``lm_head`` and ``vision_und`` (understanding vision).
"""

from __future__ import annotations

import math
import re

from u1lib.model.config import U1Config

GROUPS = ("und", "gen", "fm", "embed", "lm_head", "vision_und")

LAYER_PREFIX = "language_model.model.layers."
GEN_SUFFIX = "_mot_gen"

_ATTN_NORMS = ("q_norm", "q_norm_hw", "k_norm", "k_norm_hw")


def _mlp_shapes(prefix: str, hidden: int, width: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.gate_proj.weight": (width, hidden),
        f"{prefix}.up_proj.weight": (width, hidden),
        f"{prefix}.down_proj.weight": (hidden, width),
    }


def _layer_shapes(cfg: U1Config, layer: int, suffix: str) -> dict[str, tuple[int, ...]]:
    h, d = cfg.hidden_size, cfg.head_dim
    q_out, kv_out = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    mlp = "mlp" + suffix
    shapes = {
        f"input_layernorm{suffix}.weight": (h,),
        f"post_attention_layernorm{suffix}.weight": (h,),
        f"self_attn.q_proj{suffix}.weight": (q_out, h),
        f"self_attn.k_proj{suffix}.weight": (kv_out, h),
        f"self_attn.v_proj{suffix}.weight": (kv_out, h),
        f"self_attn.o_proj{suffix}.weight": (h, q_out),
    }
    tower = "gen" if suffix else "und"
    if cfg.sparse_mlp(layer, tower):
        experts = cfg.gen_num_experts if suffix else cfg.num_experts
        width = cfg.gen_moe_intermediate_size if suffix else cfg.moe_intermediate_size
        shapes[f"{mlp}.gate.weight"] = (experts, h)  # the router
        for e in range(experts):
            shapes.update(_mlp_shapes(f"{mlp}.experts.{e}", h, width))
    else:
        shapes.update(_mlp_shapes(mlp, h, cfg.intermediate_size))
    for norm in _ATTN_NORMS:
        shapes[f"self_attn.{norm}{suffix}.weight"] = (d // 2,)
    return shapes


def _vision_shapes(cfg: U1Config, prefix: str) -> dict[str, tuple[int, ...]]:
    c, p, m = cfg.vision_hidden_size, cfg.patch_size, cfg.merge_size
    return {
        f"{prefix}.embeddings.patch_embedding.weight": (c, 3, p, p),
        f"{prefix}.embeddings.patch_embedding.bias": (c,),
        f"{prefix}.embeddings.dense_embedding.weight": (cfg.hidden_size, c, m, m),
        f"{prefix}.embeddings.dense_embedding.bias": (cfg.hidden_size,),
    }


def _embedder_shapes(cfg: U1Config, prefix: str) -> dict[str, tuple[int, ...]]:
    h = cfg.hidden_size
    return {
        f"{prefix}.mlp.0.weight": (h, cfg.frequency_embedding_size),
        f"{prefix}.mlp.0.bias": (h,),
        f"{prefix}.mlp.2.weight": (h, h),
        f"{prefix}.mlp.2.bias": (h,),
    }


def parameter_shapes(cfg: U1Config) -> dict[str, tuple[int, ...]]:
    """Every tensor a full checkpoint holds, in sorted key order."""
    h = cfg.hidden_size
    shapes: dict[str, tuple[int, ...]] = {
        "language_model.model.embed_tokens.weight": (cfg.vocab_size, h),
        "language_model.model.norm.weight": (h,),
        "language_model.model.norm_mot_gen.weight": (h,),
    }
    if not cfg.tie_word_embeddings:
        shapes["language_model.lm_head.weight"] = (cfg.vocab_size, h)
    for i in range(cfg.num_hidden_layers):
        for suffix in ("", GEN_SUFFIX):
            for name, shape in _layer_shapes(cfg, i, suffix).items():
                shapes[f"{LAYER_PREFIX}{i}.{name}"] = shape
    shapes.update(_vision_shapes(cfg, "vision_model"))
    shapes.update(_vision_shapes(cfg, "fm_modules.vision_model_mot_gen"))
    shapes.update(_embedder_shapes(cfg, "fm_modules.timestep_embedder"))
    if cfg.add_noise_scale_embedding:
        shapes.update(_embedder_shapes(cfg, "fm_modules.noise_scale_embedder"))
    shapes.update(_head_shapes(cfg))
    return dict(sorted(shapes.items()))


def _head_shapes(cfg: U1Config) -> dict[str, tuple[int, ...]]:
    """fm_head: U1's two linears, or U1.5's two 3x3 convolutions (see heads.PixelHead)."""
    if cfg.use_pixel_head:
        width, out = cfg.pixel_head_width, 3 * (cfg.token_size // 4) ** 2
        return {
            "fm_modules.fm_head.conv1.weight": (width, cfg.hidden_size // 4, 3, 3),
            "fm_modules.fm_head.conv1.bias": (width,),
            "fm_modules.fm_head.conv2.weight": (out, width // 4, 3, 3),
            "fm_modules.fm_head.conv2.bias": (out,),
        }
    return {
        "fm_modules.fm_head.0.weight": (cfg.fm_head_hidden_size, cfg.hidden_size),
        "fm_modules.fm_head.0.bias": (cfg.fm_head_hidden_size,),
        "fm_modules.fm_head.2.weight": (cfg.fm_out_dim, cfg.fm_head_hidden_size),
        "fm_modules.fm_head.2.bias": (cfg.fm_out_dim,),
    }


_LAYER_KEY = re.compile(r"^language_model\.model\.layers\.\d+\.(.+)$")


def group_of(key: str) -> str:
    """The loading group a checkpoint key belongs to (ValueError for a key no group claims)."""
    layer = _LAYER_KEY.match(key)
    if layer:
        return "gen" if GEN_SUFFIX in layer.group(1) else "und"
    if key == "language_model.model.norm.weight":
        return "und"
    if key == "language_model.model.norm_mot_gen.weight":
        return "gen"
    if key.startswith("language_model.model.embed_tokens."):
        return "embed"
    if key.startswith("language_model.lm_head."):
        return "lm_head"
    if key.startswith("vision_model."):
        return "vision_und"
    if key.startswith("fm_modules."):
        return "fm"
    raise ValueError(f"checkpoint key {key!r} belongs to no known parameter group")


def group_counts(cfg: U1Config) -> dict[str, int]:
    """Parameter count per loading group, from the config alone."""
    counts = dict.fromkeys(GROUPS, 0)
    for key, shape in parameter_shapes(cfg).items():
        counts[group_of(key)] += math.prod(shape)
    return counts
