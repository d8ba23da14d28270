"""The embedded tiny model's config.json for each architecture it stands in for (u1, u15, a3b): the
upstream NEOChatConfig layout and field set at toy sizes, so the engine reads it exactly as it reads
a released checkpoint's."""

from __future__ import annotations

VARIANTS = ("u1", "u15", "a3b")


def tiny_config_dict(vocab_size: int, variant: str = "u1") -> dict:
    """The tiny model's config.json in upstream NEOChatConfig layout (field set as upstream writes it).

    ``variant``: ``u1`` (SenseNova-U1 8B-MoT layout), ``u15`` (U1.5: the convolutional pixel head,
    noise_scale_max_value 16, 32-px tokens as upstream's head requires, U1.5's extra config keys) or
    ``a3b`` (U1-A3B: Qwen3-MoE backbone, sparse MLPs in both towers, attention width != hidden).
    """
    if variant not in VARIANTS:
        raise ValueError(f"tiny model variant {variant!r} is not one of {', '.join(VARIANTS)}")
    config = _u1_config_dict(vocab_size)
    if variant == "u15":
        _make_u15(config)
    elif variant == "a3b":
        _make_a3b(config)
    return config


def _make_a3b(config: dict) -> None:
    """A3B's llm_config (docs/UPSTREAM_NOW.md section 4) at tiny sizes: hidden 32 under a 4 x 16 attention
    width, 8 understanding / 6 generation experts, top-2, expert width 16, every layer sparse."""
    llm = config["llm_config"]
    hidden = 32
    llm.pop("max_window_layers")
    llm.update(
        architectures=["Qwen3MoeForCausalLM"],
        model_type="qwen3_moe",
        hidden_size=hidden,
        intermediate_size=96,
        rope_theta=1e7,
        num_experts=8,
        gen_num_experts=6,
        num_experts_per_tok=2,
        gen_num_experts_per_tok=2,
        moe_intermediate_size=16,
        gen_moe_intermediate_size=16,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        output_router_logits=False,
        router_aux_loss_coef=0.001,
    )
    config["vision_config"]["llm_hidden_size"] = hidden


def _make_u15(config: dict) -> None:
    """U1.5 differs from U1 in two forward-relevant keys, plus keys its modeling code never reads."""
    llm, vision = config["llm_config"], config["vision_config"]
    config.update(
        use_pixel_head=True,
        noise_scale_max_value=16.0,
        extra_num_layers_post=0,
        patch_size=16,
        min_pixels=65536,
        max_pixels=16777216,
    )
    llm.update(pure_llm=False, use_deepep=False, max_window_layers=llm["num_hidden_layers"])
    vision["patch_size"] = 16  # x merge 2 = the 32-px token the pixel head's shuffles produce


def _u1_config_dict(vocab_size: int) -> dict:
    num_layers = 2
    hidden = 64
    return {
        "P_mean": -0.8,
        "P_std": 0.8,
        "add_noise_scale_embedding": True,
        "architectures": ["NEOChatModel"],
        "base_image_seq_len": 64,
        "base_shift": 0.5,
        "concat_time_token_num": 0,
        "downsample_ratio": 0.5,
        "dtype": "float32",
        "fm_head_dim": 1536,
        "fm_head_layers": 2,
        "fm_head_mlp_ratio": 1,
        "llm_config": {
            "architectures": ["Qwen3ForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "dtype": "float32",
            "head_dim": 16,
            "hidden_act": "silu",
            "hidden_size": hidden,
            "initializer_range": 0.02,
            "intermediate_size": 192,
            "layer_types": ["full_attention"] * num_layers,
            "max_position_embeddings": 262144,
            "max_position_embeddings_hw": 10000,
            "max_window_layers": 28,
            "model_type": "qwen3",
            "num_attention_heads": 4,
            "num_hidden_layers": num_layers,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-6,
            "rope_scaling": None,
            "rope_theta": 5000000.0,
            "rope_theta_hw": 10000.0,
            "sliding_window": None,
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": vocab_size,
        },
        "max_image_seq_len": 4096,
        "max_shift": 1.15,
        "model_type": "neo_chat",
        "noise_scale": 1.0,
        "noise_scale_base_image_seq_len": 64,
        "noise_scale_max_value": 8.0,
        "noise_scale_mode": "resolution",
        "output_attentions": False,
        "t_eps": 0.05,
        "template": "neo1_0",
        "tie_word_embeddings": False,
        "time_schedule": "standard",
        "time_shift_type": "exponential",
        "timestep_shift": 1.0,
        "transformers_version": None,
        "use_adaLN": False,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_pixel_head": False,
        "vision_config": {
            "architectures": ["NEOVisionModel"],
            "downsample_ratio": 0.5,  # plain numbers, as the released checkpoint stores them
            "hidden_size": 32,
            "llm_hidden_size": hidden,
            "max_pixels": 16777216,
            "max_position_embeddings_vision": 10000,
            "min_pixels": 65536,
            "model_type": "neo_vision",
            "num_channels": 3,
            "patch_size": 4,
            "rope_theta_vision": 10000.0,
        },
    }
