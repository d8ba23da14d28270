"""The LoRA spec mini-language: which generation-tower linears get an adapter, with which rank/alpha.

A spec is a preset name or ``;``-separated clauses ``TARGET=SETTING`` applied left to right
(a later clause overrides an earlier one on the modules both match):

* TARGET: a group alias (``attn``, ``mlp``, ``fm_head``, ``embedders``, ``all``, ``gen_moe_mlp``,
  ``gen_moe_router``) or a dotted module pattern matched against the end of module paths, with
  ``*`` standing for one path segment (``mlp_mot_gen.down_proj``, ``layers.3.self_attn.q_proj_mot_gen``,
  ``mlp_mot_gen.experts.*.gate_proj``).
* SETTING: ``r64a64``, ``r=64,a=32`` (alpha defaults to the rank: ``r16``), or ``off`` / ``disable``.

Everything resolves from parameter names and shapes alone, so counts need no weights.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from u1lib.model.config import U1Config
from u1lib.model.keys import group_of, parameter_shapes


class SpecError(ValueError):
    """A LoRA spec or full fine-tune pattern that cannot be applied; the message names the culprit."""


_GEN_LINEAR = r"language_model\.model\.layers\.\d+\."
ALIASES: dict[str, str] = {
    "attn": _GEN_LINEAR + r"self_attn\.[qkvo]_proj_mot_gen",
    "mlp": _GEN_LINEAR + r"mlp_mot_gen\.(gate|up|down)_proj",
    "fm_head": r"fm_modules\.fm_head\.[02]",
    "embedders": r"fm_modules\.(timestep|noise_scale)_embedder\.mlp\.[02]",
    "gen_moe_mlp": _GEN_LINEAR + r"mlp_mot_gen\.experts\.\d+\.(gate|up|down)_proj",
    "gen_moe_router": _GEN_LINEAR + r"mlp_mot_gen\.gate",
}
# every generation linear but the MoE router, which stays frozen unless named (routing then drifts)
ALIASES["all"] = "|".join(f"(?:{ALIASES[k]})" for k in ("attn", "mlp", "gen_moe_mlp", "fm_head"))

_FT_WITH_HEAD = (r"fm_modules\.(timestep_embedder|noise_scale_embedder|vision_model_mot_gen|fm_head)\..*",)
_FT_NO_HEAD = (r"fm_modules\.(timestep_embedder|noise_scale_embedder|vision_model_mot_gen)\..*",)

# preset -> (lora spec, full fine-tune regexes). "default" is the peer trainer's default surface
# (286,289,920 trainable on the 8B model); "attn_mlp_head" adapts the 294 generation linears and
# trains the head in full (either head: U1's linears or U1.5's convolutions, which LoRA cannot
# reach); "official_r128" / "official_u15_r128" cover the official 8-step LoRAs' modules (U1: 296 with
# the linear head, alpha 128; U1.5: the 294 linears, alpha 8). A preset whose clause names a module
# family a model lacks (a dense MLP on A3B, a linear head on U1.5) is refused there by name.
PRESETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "default": ("attn=r64a64;mlp=r64a64", _FT_WITH_HEAD),
    "default_no_head": ("attn=r64a64;mlp=r64a64", _FT_NO_HEAD),
    "attn_only": ("attn=r64a64", _FT_WITH_HEAD),
    "attn_only_no_head": ("attn=r64a64", _FT_NO_HEAD),
    "attn_mlp": ("attn=r64a64;mlp=r64a64", ()),
    "attn_mlp_head": ("attn=r64a64;mlp=r64a64", (r"fm_modules\.fm_head\..*",)),
    "official_r128": ("attn=r128a128;mlp=r128a128;fm_head=r128a128", ()),
    "official_u15_r128": ("attn=r128a8;mlp=r128a8", ()),
    # A3B (MoE): attention only, as upstream's LoRA branch; or attention and every generation expert.
    # The router stays frozen (no balancing loss needed).
    "moe_attn": ("attn=r16a16", _FT_WITH_HEAD),
    "moe_attn_experts": ("attn=r16a16;gen_moe_mlp=r16a16", _FT_WITH_HEAD),
}

_SETTING = re.compile(r"^r(\d+)(?:a(\d+(?:\.\d+)?))?$")
_SETTING_KV = re.compile(r"^r=(\d+)(?:,a=(\d+(?:\.\d+)?))?$")


@dataclass(frozen=True)
class LoraTarget:
    module: str
    in_features: int
    out_features: int
    rank: int
    alpha: float

    @property
    def num_params(self) -> int:
        return self.rank * (self.in_features + self.out_features)


def linear_modules(cfg: U1Config) -> dict[str, tuple[int, int]]:
    """Every 2-D ``*.weight`` in the checkpoint: module path -> (in_features, out_features)."""
    return {
        key[: -len(".weight")]: (shape[1], shape[0])
        for key, shape in parameter_shapes(cfg).items()
        if key.endswith(".weight") and len(shape) == 2
    }


def _parse_setting(text: str, clause: str) -> tuple[int, float] | None:
    text = text.strip().lower()
    if text in ("off", "disable", "disabled", "none"):
        return None
    match = _SETTING.match(text) or _SETTING_KV.match(text)
    if not match:
        raise SpecError(f"LoRA clause {clause!r}: setting {text!r} is not rNaM, r=N,a=M or off")
    rank = int(match.group(1))
    if rank <= 0:
        raise SpecError(f"LoRA clause {clause!r}: rank must be positive")
    alpha = float(match.group(2)) if match.group(2) else float(rank)
    return rank, alpha


def _pattern(target: str) -> re.Pattern:
    if target in ALIASES:
        return re.compile(rf"^(?:{ALIASES[target]})$")
    if not re.fullmatch(r"[A-Za-z0-9_*]+(\.[A-Za-z0-9_*]+)*", target):
        raise SpecError(f"LoRA target {target!r} is neither an alias ({', '.join(ALIASES)}) nor a dotted module path")
    body = r"\.".join("[^.]+" if seg == "*" else re.escape(seg) for seg in target.split("."))
    return re.compile(rf"(?:^|\.){body}$")


def expand_preset(spec: str) -> tuple[str, tuple[str, ...]]:
    """A preset name -> (clauses, full fine-tune patterns); any other spec passes through."""
    return PRESETS.get(spec.strip(), (spec, ()))


def resolve_spec(
    spec: str, cfg: U1Config, *, modules: dict[str, tuple[int, int]] | None = None
) -> dict[str, LoraTarget]:
    """Module path -> LoraTarget for every module the spec turns on.

    ``modules`` (path -> (in, out)) replaces ``linear_modules(cfg)`` for layouts the key table does not
    describe, such as the A3B model's experts.
    """
    clauses_text, _ = expand_preset(spec)
    modules = linear_modules(cfg) if modules is None else modules
    chosen: dict[str, tuple[int, float] | None] = {}
    for clause in filter(None, (c.strip() for c in clauses_text.split(";"))):
        target, sep, setting_text = clause.partition("=")
        if not sep:
            raise SpecError(f"LoRA clause {clause!r} has no '=' (expected TARGET=rNaM or TARGET=off)")
        target = target.strip()
        setting = _parse_setting(setting_text, clause)
        pattern = _pattern(target)
        hits = [m for m in modules if pattern.search(m)]
        if not hits:
            raise SpecError(f"LoRA target {target!r} (clause {clause!r}) matches no module of this model")
        refused = [m for m in hits if group_of(m + ".weight") not in ("gen", "fm")]
        if refused:
            raise SpecError(
                f"LoRA target {target!r} matches understanding-tower or unused modules "
                f"(e.g. {refused[0]}); only generation-tower and fm modules can be adapted"
            )
        for module in hits:
            chosen[module] = setting
    return {
        module: LoraTarget(module, *modules[module], rank=setting[0], alpha=setting[1])
        for module, setting in sorted(chosen.items())
        if setting is not None
    }


def resolve_full_ft(patterns: list[str] | tuple[str, ...], cfg: U1Config) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape for every parameter the full fine-tune regexes unfreeze.

    A pattern that matches nothing, or any understanding-tower / unused parameter, is refused by name.
    """
    shapes = parameter_shapes(cfg)
    chosen: dict[str, tuple[int, ...]] = {}
    for text in patterns:
        try:
            pattern = re.compile(text)
        except re.error as err:
            raise SpecError(f"full fine-tune pattern {text!r} is not a valid regex ({err})") from None
        hits = [k for k in shapes if pattern.fullmatch(k)]
        if not hits:
            raise SpecError(f"full fine-tune pattern {text!r} matches no parameter of this model")
        refused = [k for k in hits if group_of(k) not in ("gen", "fm")]
        if refused:
            raise SpecError(
                f"full fine-tune pattern {text!r} matches {len(refused)} understanding-tower or unused "
                f"parameter(s), e.g. {refused[0]}; training only updates the generation side"
            )
        chosen.update({k: shapes[k] for k in hits})
    return dict(sorted(chosen.items()))


@dataclass(frozen=True)
class TrainableSurface:
    """Everything a run trains: LoRA targets and fully fine-tuned tensors, resolved once from the config.

    The trainer, the bench and ``inspect`` all build it here, so they accept (and count) the same
    surfaces and refuse the same overlaps.
    """

    targets: dict[str, LoraTarget]
    full_ft: dict[str, tuple[int, ...]]  # parameter name -> shape

    @classmethod
    def resolve(cls, spec: str, full_ft: list[str] | tuple[str, ...], cfg: U1Config) -> "TrainableSurface":
        """``spec`` (a preset brings its own full fine-tune regexes) plus the extra regexes ``full_ft``."""
        _, preset_ft = expand_preset(spec)
        targets = resolve_spec(spec, cfg)
        ft = resolve_full_ft(tuple(preset_ft) + tuple(full_ft), cfg)
        overlap = [k for k in ft if k.endswith(".weight") and k[: -len(".weight")] in targets]
        if overlap:
            raise SpecError(f"{overlap[0]} is both LoRA-adapted and fully fine-tuned; choose one")
        return cls(targets, ft)

    def counts(self) -> dict[str, int]:
        """Exact trainable parameter counts: LoRA, full fine-tune and total."""
        lora = sum(t.num_params for t in self.targets.values())
        full = sum(math.prod(s) for s in self.full_ft.values())
        return {"lora_modules": len(self.targets), "lora_params": lora, "full_ft_params": full, "total": lora + full}
