"""The A3B (MoE) layout from config.json alone: keys, parameter counts, LoRA targets, presets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CONFIG_8B
from u1lib.lora.spec import SpecError, TrainableSurface, resolve_spec
from u1lib.model.config import ConfigError, U1Config
from u1lib.model.keys import group_counts, parameter_shapes
from u1lib.model.loading import meta_model

A3B_CONFIG = Path(__file__).parents[3] / "u1lib" / "model" / "a3b_config.json"


@pytest.fixture(scope="module")
def a3b_config() -> U1Config:
    """The shipped A3B shapes (bench --config, no download), as docs/MODEL.md section 9 gives them:
    hidden 2048, 48 layers, 32/4 heads, 128 und experts and 32 gen experts of width 768, top-8."""
    cfg = U1Config.from_file(A3B_CONFIG)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        2048,
        48,
        32,
        4,
    )
    assert (cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size) == (128, 8, 768)
    assert (cfg.gen_num_experts, cfg.gen_num_experts_per_tok, cfg.gen_moe_intermediate_size) == (32, 8, 768)
    return cfg


def test_expert_keys_and_shapes(a3b_config):
    shapes = parameter_shapes(a3b_config)
    layer = "language_model.model.layers.47."
    assert shapes[layer + "mlp_mot_gen.gate.weight"] == (32, 2048)
    assert shapes[layer + "mlp_mot_gen.experts.31.down_proj.weight"] == (2048, 768)
    assert shapes[layer + "mlp.experts.127.gate_proj.weight"] == (768, 2048)
    assert layer + "mlp_mot_gen.experts.32.up_proj.weight" not in shapes
    assert layer + "mlp.down_proj.weight" not in shapes  # no dense MLP left
    # q/o are sized by heads x head_dim (4096), not by hidden_size (2048)
    assert shapes[layer + "self_attn.q_proj_mot_gen.weight"] == (4096, 2048)


def test_moe_lora_targets_and_counts(a3b_config):
    experts = resolve_spec("gen_moe_mlp=r16a16", a3b_config)
    assert len(experts) == 48 * 32 * 3
    assert len(resolve_spec("gen_moe_router=r4", a3b_config)) == 48
    assert len(resolve_spec("mlp_mot_gen.experts.*.gate_proj=r8", a3b_config)) == 48 * 32
    counts = TrainableSurface.resolve("attn=r16a16;gen_moe_mlp=r16a16", [], a3b_config).counts()
    attn = 48 * 16 * ((2048 + 4096) * 2 + (2048 + 512) * 2)
    mlp = 48 * 32 * 16 * 3 * (2048 + 768)
    assert counts["lora_params"] == attn + mlp
    with pytest.raises(SpecError, match="matches no module"):
        resolve_spec("mlp=r8", a3b_config)  # the dense alias has nothing to adapt on MoE layers


def test_parameter_counts_match_the_published_sizes(a3b_config):
    """docs/UPSTREAM_NOW.md section 4, bf16: understanding tower 59.8 GB, generation tower 16.3 GB,
    embeddings + lm_head 1.25 GB, about 38.7 B parameters in all."""
    counts = group_counts(a3b_config)
    gb = {group: 2 * n / 1e9 for group, n in counts.items()}
    assert (round(gb["und"], 1), round(gb["gen"], 1)) == (59.8, 16.3)
    assert abs(gb["embed"] + gb["lm_head"] - 1.25) < 0.01
    assert round(sum(counts.values()) / 1e9, 1) == 38.7


def test_router_stays_frozen_unless_named(a3b_config):
    everything = resolve_spec("all=r16", a3b_config)
    assert not any(m.endswith("mlp_mot_gen.gate") for m in everything)
    assert len(everything) == 48 * (4 + 32 * 3) + 2  # attention, every expert, the linear head
    attn_only = TrainableSurface.resolve("moe_attn", [], a3b_config).counts()
    assert round(attn_only["lora_params"] / 1e6, 1) == 13.4  # section 4: attention-only at r16
    experts = TrainableSurface.resolve("moe_attn_experts", [], a3b_config).counts()
    assert round((experts["lora_params"] - attn_only["lora_params"]) / 1e6) == 208  # every expert at r16


def test_config_refuses_impossible_routing():
    raw = json.loads(CONFIG_8B.read_text())
    raw["llm_config"].update(num_experts=4, num_experts_per_tok=6, moe_intermediate_size=8)
    with pytest.raises(ConfigError, match=r"understanding MoE: 4 experts need 0 < experts per token \(6\) <= 4"):
        U1Config.from_upstream_dict(raw)


def test_the_engine_builds_the_moe_layout(a3b_config):
    model = meta_model(a3b_config)
    names = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert names == parameter_shapes(a3b_config)
