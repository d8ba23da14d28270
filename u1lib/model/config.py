"""Model configuration, parsed from an upstream-format ``config.json``.

One dataclass serves every size: the tiny model and the 8B model differ only in numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path


class ConfigError(ValueError):
    """A config.json that cannot describe a SenseNova-U1 model."""


def _scalar(value, key: str, path: str):
    """Upstream's save_pretrained writes some vision fields as one-element lists; accept both."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ConfigError(f"{path}: '{key}' must be a number or a one-element list, got {value!r}")
        return value[0]
    return value


@dataclass(frozen=True)
class U1Config:
    """Every number the text-to-image path needs.

    Field names follow upstream's config keys where one exists.
    """

    # language model (one of the two towers; the _mot_gen twin has identical shapes)
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 5e6  # t axis
    rope_theta_hw: float = 1e4  # h and w axes
    tie_word_embeddings: bool = False
    # sparse MoE MLPs (the A3B variant); 0 experts = the dense 8B-MoT
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    gen_num_experts: int = 0
    gen_num_experts_per_tok: int = 0
    gen_moe_intermediate_size: int = 0
    norm_topk_prob: bool = True  # renormalise the chosen experts' weights to sum 1
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    # vision embedding (both towers)
    vision_hidden_size: int = 1024
    patch_size: int = 16
    merge_size: int = 2  # int(1 / downsample_ratio)
    rope_theta_vision: float = 1e4
    # flow matching modules
    use_pixel_head: bool = False  # U1.5: convolutional head instead of the two-linear one
    fm_head_hidden_size: int = 4096  # a literal in upstream, not hidden_size
    pixel_head_width: int = 1024  # conv1's output channels, a literal in upstream
    frequency_embedding_size: int = 256
    add_noise_scale_embedding: bool = True
    noise_scale: float = 1.0
    noise_scale_mode: str = "resolution"
    noise_scale_base_image_seq_len: int = 64
    noise_scale_max_value: float = 8.0
    t_eps: float = 0.05  # training clamp of (1 - t); the sampler uses its own (0.02)
    P_mean: float = -0.8
    P_std: float = 0.8

    def __post_init__(self):
        problems = []
        if self.head_dim % 8:
            problems.append(
                f"head_dim {self.head_dim} must be a multiple of 8 (t half + h/w quarters, rotate-half pairs)"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append(
                f"num_attention_heads {self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.vision_hidden_size % 4:
            problems.append(f"vision hidden_size {self.vision_hidden_size} must be a multiple of 4 (2D feature RoPE)")
        if self.use_pixel_head:
            sizes = (
                ("hidden_size", self.hidden_size),
                ("pixel_head_width", self.pixel_head_width),
                ("token size (patch_size x merge)", self.token_size),
            )
            problems += [
                f"use_pixel_head: {name} {value} must be a multiple of 4 (the head's PixelShuffle stages)"
                for name, value in sizes
                if value % 4
            ]
        for tower, experts, top_k, width in (
            ("understanding", self.num_experts, self.num_experts_per_tok, self.moe_intermediate_size),
            ("generation", self.gen_num_experts, self.gen_num_experts_per_tok, self.gen_moe_intermediate_size),
        ):
            if experts and not (0 < top_k <= experts and width > 0):
                problems.append(
                    f"{tower} MoE: {experts} experts need 0 < experts per token ({top_k}) <= {experts} "
                    f"and a positive expert width ({width})"
                )
        if self.noise_scale_mode not in ("resolution", "dynamic", "dynamic_sqrt"):
            problems.append(
                f"noise_scale_mode {self.noise_scale_mode!r} is not one of resolution, dynamic, dynamic_sqrt"
            )
        if problems:
            raise ConfigError("; ".join(problems))

    def sparse_mlp(self, layer: int, tower: str) -> bool:
        """Whether ``layer``'s MLP in ``tower`` (und/gen) is a mixture of experts (Qwen3-MoE placement rule)."""
        if tower == "gen":
            return self.gen_num_experts > 0
        return (
            self.num_experts > 0 and layer not in self.mlp_only_layers and (layer + 1) % self.decoder_sparse_step == 0
        )

    @property
    def token_size(self) -> int:
        """Pixels per side of one image token (patch_size x merge_size)."""
        return self.patch_size * self.merge_size

    @property
    def fm_out_dim(self) -> int:
        return 3 * self.token_size**2

    def noise_scale_for(self, num_tokens: int, clamp: bool = True) -> float:
        """Noise std for an image of ``num_tokens`` tokens: grows with resolution (docs/MODEL.md §5.3).

        Upstream's sampler clamps it at ``noise_scale_max_value``; upstream's training code does not
        (``clamp=False``, train.noise_scale unclamped). They differ only where the formula passes the
        maximum: above 4096 tokens (2048² px) for U1's 8, above 16384 (4096² px) for U1.5's 16.
        """
        scale = self.noise_scale * math.sqrt(num_tokens / self.noise_scale_base_image_seq_len)
        if self.noise_scale_mode == "dynamic_sqrt":
            scale = math.sqrt(scale)
        return min(scale, self.noise_scale_max_value) if clamp else scale

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_upstream_dict(cls, raw: dict, source: str = "config.json") -> "U1Config":
        """Read upstream's NEOChatConfig layout (top level + llm_config + vision_config)."""
        try:
            llm = raw["llm_config"]
            vision = raw["vision_config"]
        except KeyError as missing:
            raise ConfigError(f"{source}: missing section {missing} (is this a SenseNova-U1 config.json?)") from None
        if not raw.get("use_pixel_head") and int(raw.get("fm_head_layers", 2)) > 2:
            raise ConfigError(
                f"{source}: fm_head_layers {raw['fm_head_layers']} selects upstream's deep head, which is not "
                "implemented; the two-linear head (fm_head_layers <= 2) and the pixel head (use_pixel_head) are"
            )
        if int(raw.get("extra_num_layers_post") or 0):
            raise ConfigError(
                f"{source}: extra_num_layers_post {raw['extra_num_layers_post']} is not supported "
                "(every released checkpoint has 0)"
            )
        ratio = float(
            _scalar(vision.get("downsample_ratio", raw.get("downsample_ratio", 0.5)), "downsample_ratio", source)
        )
        llm_hidden = int(_scalar(vision.get("llm_hidden_size", llm["hidden_size"]), "llm_hidden_size", source))
        if llm_hidden != llm["hidden_size"]:
            raise ConfigError(
                f"{source}: vision_config.llm_hidden_size {llm_hidden} != llm_config.hidden_size {llm['hidden_size']}"
            )
        try:
            return cls(
                hidden_size=int(llm["hidden_size"]),
                intermediate_size=int(llm["intermediate_size"]),
                num_hidden_layers=int(llm["num_hidden_layers"]),
                num_attention_heads=int(llm["num_attention_heads"]),
                num_key_value_heads=int(llm["num_key_value_heads"]),
                head_dim=int(llm.get("head_dim") or llm["hidden_size"] // llm["num_attention_heads"]),
                vocab_size=int(llm["vocab_size"]),
                rms_norm_eps=float(llm.get("rms_norm_eps", 1e-6)),
                rope_theta=float(_rope_theta(llm)),
                rope_theta_hw=float(llm.get("rope_theta_hw", 1e4)),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", llm.get("tie_word_embeddings", False))),
                **_moe_fields(llm),
                vision_hidden_size=int(vision["hidden_size"]),
                patch_size=int(vision["patch_size"]),
                merge_size=int(round(1 / ratio)),
                rope_theta_vision=float(vision.get("rope_theta_vision", 1e4)),
                use_pixel_head=bool(raw.get("use_pixel_head", False)),
                fm_head_hidden_size=int(raw.get("fm_head_hidden_size", 4096)),
                pixel_head_width=int(raw.get("pixel_head_width", 1024)),
                add_noise_scale_embedding=bool(raw.get("add_noise_scale_embedding", True)),
                noise_scale=float(raw.get("noise_scale", 1.0)),
                noise_scale_mode=str(raw.get("noise_scale_mode", "resolution")),
                noise_scale_base_image_seq_len=int(raw.get("noise_scale_base_image_seq_len", 64)),
                noise_scale_max_value=float(raw.get("noise_scale_max_value", 8.0)),
                t_eps=float(raw.get("t_eps", 0.05)),
                P_mean=float(raw.get("P_mean", -0.8)),
                P_std=float(raw.get("P_std", 0.8)),
            )
        except KeyError as missing:
            raise ConfigError(f"{source}: missing key {missing}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "U1Config":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file (expected a model snapshot's config.json)") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        return cls.from_upstream_dict(raw, source=str(path))


def _moe_fields(llm: dict) -> dict:
    """A3B expert counts and widths; the generation branch defaults to the understanding values."""
    experts = int(llm.get("num_experts") or 0)
    top_k = int(llm.get("num_experts_per_tok") or 0)
    width = int(llm.get("moe_intermediate_size") or 0)
    return {
        "num_experts": experts,
        "num_experts_per_tok": top_k,
        "moe_intermediate_size": width,
        "gen_num_experts": int(llm.get("gen_num_experts") or experts),
        "gen_num_experts_per_tok": int(llm.get("gen_num_experts_per_tok") or top_k),
        "gen_moe_intermediate_size": int(llm.get("gen_moe_intermediate_size") or width),
        "norm_topk_prob": bool(llm.get("norm_topk_prob", True)),
        "decoder_sparse_step": int(llm.get("decoder_sparse_step") or 1),
        "mlp_only_layers": tuple(llm.get("mlp_only_layers") or ()),
    }


def _rope_theta(llm: dict) -> float:
    """Transformers 5 moves rope_theta into rope_parameters; read either (docs/MODEL.md section 10.2)."""
    if "rope_theta" in llm:
        return llm["rope_theta"]
    params = llm.get("rope_parameters") or {}
    return params.get("rope_theta", 5e6)
