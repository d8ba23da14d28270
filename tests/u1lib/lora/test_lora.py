"""LoRA package: spec grammar and counts, the module swap, the upstream file format, bake-in, inspect CLI."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tests.conftest import CONFIG_8B
from u1lib.lora import spec as spec_module
from u1lib.lora.adapter import LoRALinear, adapters_of, set_enabled, unwrap, wrap
from u1lib.lora.inspect import cli as inspect_cli
from u1lib.lora.io import (
    FT_BIAS_SUFFIX,
    adapter_metadata,
    bake_lora,
    load_adapter_weights,
    read_lora_file,
    save_adapter,
)
from u1lib.lora.spec import PRESETS, LoraTarget, SpecError, TrainableSurface, resolve_full_ft, resolve_spec
from u1lib.model.config import U1Config
from u1lib.model.loading import load_model, random_model

L0 = "language_model.model.layers.0."
L1 = "language_model.model.layers.1."
TINY = U1Config(
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
    vocab_size=32,
    vision_hidden_size=8,
    patch_size=2,
    fm_head_hidden_size=40,
    frequency_embedding_size=16,
)


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    return random_model(TINY, ["gen", "fm"], dtype=dtype, seed=seed)


def loaded_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers that hold data (groups not loaded stay on the meta device)."""
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    return {n: t.detach() for n, t in tensors.items() if not t.is_meta}


def randomise_adapters(model: nn.Module, seed: int = 1) -> None:
    """Give every adapter a non-zero up matrix, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in adapters_of(model).values():
            adapter.lora_up.weight.copy_(torch.randn(adapter.lora_up.weight.shape, generator=generator))


# spec grammar ----------------------------------------------------------------------------------


def test_aliases_cover_their_generation_modules():
    attn = resolve_spec("attn=r4a8", TINY)
    assert len(attn) == 8 and all(re.search(r"self_attn\.[qkvo]_proj_mot_gen$", m) for m in attn)
    assert {(t.rank, t.alpha) for t in attn.values()} == {(4, 8.0)}
    mlp = resolve_spec("mlp=r4", TINY)
    assert sorted(m.rsplit(".", 1)[1] for m in mlp) == ["down_proj"] * 2 + ["gate_proj"] * 2 + ["up_proj"] * 2
    assert set(resolve_spec("fm_head=r2", TINY)) == {"fm_modules.fm_head.0", "fm_modules.fm_head.2"}
    assert len(resolve_spec("embedders=r2", TINY)) == 4
    assert set(resolve_spec("all=r2", TINY)) == set(attn) | set(mlp) | {"fm_modules.fm_head.0", "fm_modules.fm_head.2"}


def test_target_numbers_follow_module_shapes():
    target = resolve_spec("layers.1.mlp_mot_gen.down_proj=r3", TINY)[L1 + "mlp_mot_gen.down_proj"]
    assert (target.in_features, target.out_features) == (24, 16)
    assert target.num_params == 3 * (24 + 16)


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("layers.1.self_attn.q_proj_mot_gen", {L1 + "self_attn.q_proj_mot_gen"}),
        ("layers.*.self_attn.k_proj_mot_gen", {L0 + "self_attn.k_proj_mot_gen", L1 + "self_attn.k_proj_mot_gen"}),
        ("mlp_mot_gen.down_proj", {L0 + "mlp_mot_gen.down_proj", L1 + "mlp_mot_gen.down_proj"}),
        ("fm_head.*", {"fm_modules.fm_head.0", "fm_modules.fm_head.2"}),
        ("timestep_embedder.mlp.0", {"fm_modules.timestep_embedder.mlp.0"}),
    ],
)
def test_dotted_patterns_match_path_ends(pattern, expected):
    assert set(resolve_spec(f"{pattern}=r2", TINY)) == expected


@pytest.mark.parametrize(
    "setting, rank, alpha",
    [
        ("r64a64", 64, 64.0),
        ("r=64,a=32", 64, 32.0),
        ("r16", 16, 16.0),
        ("r=8", 8, 8.0),
        ("r4a0.5", 4, 0.5),
        ("R8A2", 8, 2.0),
    ],
)
def test_settings(setting, rank, alpha):
    target = resolve_spec(f"layers.0.self_attn.q_proj_mot_gen={setting}", TINY)[L0 + "self_attn.q_proj_mot_gen"]
    assert (target.rank, target.alpha) == (rank, alpha)


def test_later_clauses_override_earlier_ones():
    assert not any("fm_head" in m for m in resolve_spec("all=r8;fm_head=off", TINY))
    assert resolve_spec("mlp=r8;mlp=disable", TINY) == {}
    assert len(resolve_spec("mlp=off;mlp=r8", TINY)) == 6
    q0 = L0 + "self_attn.q_proj_mot_gen"
    specific_last = resolve_spec("attn=r8;layers.0.self_attn.q_proj_mot_gen=r2", TINY)
    assert specific_last[q0].rank == 2 and specific_last[L1 + "self_attn.q_proj_mot_gen"].rank == 8
    assert resolve_spec("layers.0.self_attn.q_proj_mot_gen=r2;attn=r8", TINY)[q0].rank == 8
    assert resolve_spec(" attn = r8 ; ; ", TINY).keys() == resolve_spec("attn=r8", TINY).keys()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("layers.7.self_attn.q_proj_mot_gen=r4", "'layers.7.self_attn.q_proj_mot_gen'.*matches no module"),
        ("gen_moe_mlp=r4", "'gen_moe_mlp'.*matches no module"),
        ("attn=r0", "rank must be positive"),
        ("attn=rank64", "'rank64' is not rNaM"),
        ("attn=r4a", "'r4a' is not rNaM"),
        ("attn=r=4;a=2", "clause 'a=2'"),
        ("attn", "clause 'attn' has no '='"),
        ("q proj=r4", "neither an alias"),
        ("layers..q=r4", "neither an alias"),
    ],
)
def test_bad_specs_name_the_culprit(spec, message):
    with pytest.raises(SpecError, match=message):
        resolve_spec(spec, TINY)


@pytest.mark.parametrize(
    "target, example",
    [
        ("self_attn.q_proj", "self_attn.q_proj"),
        ("mlp.down_proj", "mlp.down_proj"),
        ("*.down_proj", "mlp.down_proj"),
        ("lm_head", "language_model.lm_head"),
        ("embed_tokens", "embed_tokens"),
    ],
)
def test_understanding_side_targets_are_refused(target, example):
    model_cfg = U1Config.from_file(CONFIG_8B)  # tie_word_embeddings false: lm_head exists
    with pytest.raises(SpecError, match=rf"{re.escape(repr(target))}.*understanding.*{re.escape(example)}"):
        resolve_spec(f"{target}=r4", model_cfg)


def test_suffix_pattern_respects_segment_boundaries():
    pattern = spec_module._pattern("mlp.down_proj")
    assert pattern.search(L0 + "mlp.down_proj")
    assert not pattern.search(L0 + "mlp_mot_gen.down_proj")
    assert not spec_module._pattern("q_proj").search(L0 + "self_attn.q_proj_mot_gen")
    assert not spec_module._pattern("proj_mot_gen").search(L0 + "self_attn.q_proj_mot_gen")
    assert not spec_module._pattern("0.self_attn.q_proj_mot_gen").search(
        "language_model.model.layers.10.self_attn.q_proj_mot_gen"
    )


@pytest.mark.parametrize(
    "regex, message",
    [
        (r"language_model\.lm_head\.weight", "language_model.lm_head.weight"),
        (r"language_model\.model\.embed_tokens\..*", "embed_tokens"),
        (r"vision_model\..*", "vision_model.embeddings"),
        (r".*\.self_attn\.q_proj\.weight", "self_attn.q_proj.weight"),
        (r"language_model\.model\.norm\.weight", "language_model.model.norm.weight"),
    ],
)
def test_full_ft_refuses_understanding_parameters_by_name(regex, message):
    with pytest.raises(SpecError, match=rf"understanding.*{re.escape(message)}"):
        resolve_full_ft([regex], TINY)


def test_full_ft_patterns():
    shapes = resolve_full_ft([r"fm_modules\.fm_head\..*", r"fm_modules\.fm_head\.0\.bias"], TINY)
    assert shapes == {
        "fm_modules.fm_head.0.bias": (40,),
        "fm_modules.fm_head.0.weight": (40, 16),
        "fm_modules.fm_head.2.bias": (48,),
        "fm_modules.fm_head.2.weight": (48, 40),
    }
    with pytest.raises(SpecError, match="nope.*matches no parameter"):
        resolve_full_ft([r"fm_modules\.nope.*"], TINY)
    with pytest.raises(SpecError, match="not a valid regex"):
        resolve_full_ft(["fm_modules.(timestep"], TINY)


def test_lora_and_full_ft_of_one_weight_is_refused():
    with pytest.raises(SpecError, match=r"fm_modules\.fm_head\.0\.weight is both"):
        TrainableSurface.resolve("fm_head=r2", [r"fm_modules\.fm_head\.0\.weight"], TINY).counts()
    counts = TrainableSurface.resolve("fm_head=r2", [r"fm_modules\.fm_head\.0\.bias"], TINY).counts()
    assert counts == {
        "lora_modules": 2,
        "lora_params": 2 * (16 + 40) + 2 * (40 + 48),
        "full_ft_params": 40,
        "total": 328,
    }


# 8B counts from config.json alone ------------------------------------------------------------


def test_8b_preset_counts():
    cfg = U1Config.from_file(CONFIG_8B)
    assert TrainableSurface.resolve("default", (), cfg).counts() == {
        "lora_modules": 294,
        "lora_params": 203_685_888,
        "full_ft_params": 82_604_032,
        "total": 286_289_920,
    }
    official = TrainableSurface.resolve("official_r128", (), cfg).counts()
    assert (official["lora_modules"], official["total"]) == (296, 409_337_856)
    # the preset and its spelled-out clauses are the same thing
    clauses, full_ft = PRESETS["default"]
    assert (
        TrainableSurface.resolve(clauses, full_ft, cfg).counts()
        == TrainableSurface.resolve("default", (), cfg).counts()
    )


def architectures() -> dict[str, U1Config]:
    """The 8B-MoT config and, from it, U1.5 (pixel head) and A3B (MoE; docs/UPSTREAM_NOW.md sections 3-4)."""
    raw = json.loads(CONFIG_8B.read_text())
    u15 = copy.deepcopy(raw) | {"use_pixel_head": True, "noise_scale_max_value": 16.0}
    a3b = copy.deepcopy(raw)
    a3b["llm_config"].update(
        hidden_size=2048,
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=4,
        num_experts=128,
        num_experts_per_tok=8,
        moe_intermediate_size=768,
        gen_num_experts=32,
    )
    a3b["vision_config"]["llm_hidden_size"] = 2048
    return {name: U1Config.from_upstream_dict(r) for name, r in (("u1", raw), ("u15", u15), ("a3b", a3b))}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_resolves_to_generation_modules_only(preset):
    fits = 0
    for cfg in architectures().values():
        try:
            targets = resolve_spec(preset, cfg)
        except SpecError as err:
            assert "matches no module" in str(err)  # a module family this architecture lacks
            continue
        counts = TrainableSurface.resolve(preset, (), cfg).counts()
        assert targets and counts["lora_modules"] == len(targets)
        assert counts["total"] == counts["lora_params"] + counts["full_ft_params"]
        assert all("_mot_gen" in m or m.startswith("fm_modules.") for m in targets)
        assert not any(m.endswith(".mlp_mot_gen.gate") for m in targets)  # no preset trains the router
        fits += 1
    assert fits


# A3B (MoE) grammar on a fabricated module table ------------------------------------------------


def moe_modules(layers: int = 2, experts: int = 4) -> dict[str, tuple[int, int]]:
    """The A3B linears (names from docs/MODEL.md section 9) with made-up sizes: both towers sparse."""
    modules = {}
    for i in range(layers):
        prefix = f"language_model.model.layers.{i}."
        for tower in ("", "_mot_gen"):
            modules.update({f"{prefix}self_attn.{p}_proj{tower}": (16, 16) for p in "qkvo"})
            modules[f"{prefix}mlp{tower}.gate"] = (16, experts)
            for e in range(experts):
                modules.update({f"{prefix}mlp{tower}.experts.{e}.{p}_proj": (16, 8) for p in ("gate", "up")})
                modules[f"{prefix}mlp{tower}.experts.{e}.down_proj"] = (8, 16)
    return modules


def test_moe_aliases_and_expert_patterns():
    modules = moe_modules()
    experts = resolve_spec("gen_moe_mlp=r4", TINY, modules=modules)
    assert len(experts) == 2 * 4 * 3 and all(".mlp_mot_gen.experts." in m for m in experts)
    router = resolve_spec("gen_moe_router=r2", TINY, modules=modules)
    assert set(router) == {L0 + "mlp_mot_gen.gate", L1 + "mlp_mot_gen.gate"}
    gates = resolve_spec("mlp_mot_gen.experts.*.gate_proj=r8", TINY, modules=modules)
    assert len(gates) == 8 and all(m.endswith(".gate_proj") for m in gates)
    one = resolve_spec("gen_moe_mlp=r4;layers.1.mlp_mot_gen.experts.3.down_proj=off", TINY, modules=modules)
    assert len(one) == 23 and L1 + "mlp_mot_gen.experts.3.down_proj" not in one
    with pytest.raises(SpecError, match="'mlp' .*matches no module"):  # the dense alias has nothing to match
        resolve_spec("mlp=r4", TINY, modules=modules)
    with pytest.raises(SpecError, match=r"understanding.*layers\.0\.mlp\.experts\.0\.gate_proj"):
        resolve_spec("mlp.experts.*.gate_proj=r4", TINY, modules=modules)


# the module swap -----------------------------------------------------------------------------


def linear_with_adapter(rank: int = 3, alpha: float = 6.0, bias: bool = True) -> tuple[nn.Linear, LoRALinear]:
    torch.manual_seed(0)
    base = nn.Linear(12, 10, bias=bias)
    reference = nn.Linear(12, 10, bias=bias)
    reference.load_state_dict(base.state_dict())
    return reference, LoRALinear(base, rank, alpha)


def test_fresh_adapter_is_exactly_the_base():
    reference, adapter = linear_with_adapter()
    x = torch.randn(5, 12)
    assert adapter.lora_down.weight.abs().sum() > 0 and adapter.lora_up.weight.abs().sum() == 0
    assert torch.equal(adapter(x), reference(x))


def test_disable_gives_the_base_after_training():
    reference, adapter = linear_with_adapter()
    model = nn.Sequential(adapter)
    randomise_adapters(model)
    x = torch.randn(5, 12)
    assert not torch.allclose(adapter(x), reference(x))
    set_enabled(model, False)
    assert torch.equal(adapter(x), reference(x))
    set_enabled(model, True)
    expected = reference(x) + 2.0 * (x @ adapter.lora_down.weight.T @ adapter.lora_up.weight.T)
    assert torch.allclose(adapter(x), expected, atol=1e-5)


def test_merge_matches_unmerged_is_idempotent_and_unmerges():
    reference, adapter = linear_with_adapter()
    randomise_adapters(nn.Sequential(adapter))
    x = torch.randn(5, 12)
    unmerged = adapter(x)
    adapter.merge()
    merged_weight = adapter.weight.detach().clone()
    assert not torch.equal(merged_weight, reference.weight)
    assert torch.allclose(adapter(x), unmerged, atol=1e-5)
    adapter.merge()
    assert torch.equal(adapter.weight, merged_weight)
    adapter.unmerge()
    assert not adapter.merged and torch.allclose(adapter.weight, reference.weight, atol=1e-6)
    assert torch.allclose(adapter(x), unmerged, atol=1e-5)


def test_merged_and_disabled_states_exclude_each_other():
    _, adapter = linear_with_adapter()
    model = nn.Sequential(adapter)
    adapter.merge()
    with pytest.raises(RuntimeError, match="unmerge them first"):
        set_enabled(model, False)
    adapter.unmerge()
    set_enabled(model, False)
    with pytest.raises(RuntimeError, match="disabled"):
        adapter.merge()


def test_adapter_is_float32_inside_a_bfloat16_model():
    base = nn.Linear(12, 10).to(torch.bfloat16)
    wrapped = LoRALinear(base, 2, 2.0)
    assert wrapped.lora_down.weight.dtype == wrapped.lora_up.weight.dtype == torch.float32
    assert wrapped(torch.randn(3, 12, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_wrap_and_unwrap_a_model():
    model = tiny_model()
    before = dict(model.named_parameters())
    targets = resolve_spec("attn=r2;fm_head=r2a4", TINY)
    adapters = wrap(model, targets, dropout=0.1)
    assert set(adapters) == set(targets) == set(adapters_of(model))
    wrapped = model.get_submodule("fm_modules.fm_head.0")
    assert isinstance(wrapped, LoRALinear) and wrapped.rank == 2 and wrapped.scale == 2.0
    assert wrapped.weight is before["fm_modules.fm_head.0.weight"]
    with pytest.raises(ValueError, match="already carries a LoRA adapter"):
        wrap(model, {"fm_modules.fm_head.0": targets["fm_modules.fm_head.0"]})
    norm = L0 + "input_layernorm_mot_gen"
    with pytest.raises(ValueError, match=f"{re.escape(norm)} is a RMSNorm, not a Linear"):
        wrap(model, {norm: LoraTarget(norm, 16, 16, rank=2, alpha=2.0)})
    missing = "language_model.model.layers.9.self_attn.q_proj_mot_gen"
    with pytest.raises(ValueError, match=re.escape(missing)):
        wrap(model, {missing: LoraTarget(missing, 16, 16, rank=2, alpha=2.0)})
    unwrap(model)
    assert not adapters_of(model)
    for path in targets:
        assert type(model.get_submodule(path)) is nn.Linear
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[n] is p for n, p in before.items())  # the very same tensors


# the file format -------------------------------------------------------------------------------

# scales 1.5, 5/3 and 1: a merge that multiplies in another order gives other bits
TRAINED_SPEC = "attn=r2a3;layers.1.mlp_mot_gen.down_proj=r3a5;fm_head.0=r2"
FULL_FT = [
    "fm_modules.fm_head.0.bias",
    "fm_modules.timestep_embedder.mlp.0.weight",
    "fm_modules.timestep_embedder.mlp.0.bias",
]


def trained_adapter(path) -> nn.Module:
    """A tiny model with trained-looking adapters and fully fine-tuned tensors, saved to ``path``."""
    model = tiny_model()
    wrap(model, resolve_spec(TRAINED_SPEC, TINY))
    randomise_adapters(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in FULL_FT:
            params[name].add_(0.5)
    metadata = adapter_metadata(config={"lr": 1e-4}, spec=TRAINED_SPEC, base_revision="tiny-seed-0", step=7)
    save_adapter(model, path, FULL_FT, metadata)
    return model


def test_saved_file_layout(tmp_path):
    model = trained_adapter(tmp_path / "a.safetensors")
    stored = load_file(tmp_path / "a.safetensors")
    adapters = adapters_of(model)
    module = L1 + "mlp_mot_gen.down_proj"
    assert stored[f"{module}.lora_down.weight"].shape == (3, 24)
    assert stored[f"{module}.lora_up.weight"].shape == (16, 3)
    assert stored[f"{module}.alpha"].shape == () and float(stored[f"{module}.alpha"]) == 5.0
    lora_keys = {f"{m}.{s}" for m in adapters for s in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert {k for k in stored if k not in lora_keys} == {
        "fm_modules.fm_head.0" + FT_BIAS_SUFFIX,
        "fm_modules.timestep_embedder.mlp.0" + FT_BIAS_SUFFIX,
        "fm_modules.timestep_embedder.mlp.0.weight",
    }
    assert all(t.dtype == torch.float32 for t in stored.values())
    metadata = read_lora_file(tmp_path / "a.safetensors").metadata
    assert metadata["u1lib.step"] == "7" and metadata["u1lib.spec"] == TRAINED_SPEC


def test_save_read_load_round_trip_is_bit_exact(tmp_path):
    model = trained_adapter(tmp_path / "a.safetensors")
    lora = read_lora_file(tmp_path / "a.safetensors")
    assert set(lora.full) == set(FULL_FT)  # biases are back under their parameter names
    fresh = tiny_model()
    wrap(fresh, resolve_spec(TRAINED_SPEC, TINY))
    load_adapter_weights(fresh, lora)
    expected, got = loaded_tensors(model), loaded_tensors(fresh)
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_prefixed_and_legacy_names_are_accepted(tmp_path):
    trained_adapter(tmp_path / "a.safetensors")
    ours = read_lora_file(tmp_path / "a.safetensors")
    renamed = {}
    for key, tensor in load_file(tmp_path / "a.safetensors").items():
        key = key.replace(".lora_down.weight", ".lora_A.weight").replace(".lora_up.weight", ".lora_B.weight")
        renamed["diffusion_model." + key] = tensor
    save_file(renamed, tmp_path / "b.safetensors")
    theirs = read_lora_file(tmp_path / "b.safetensors")
    assert theirs.triples.keys() == ours.triples.keys() and theirs.full.keys() == ours.full.keys()
    for module, (down, up, alpha) in ours.triples.items():
        other = theirs.triples[module]
        assert torch.equal(other[0], down) and torch.equal(other[1], up) and other[2] == alpha


def write_triple(path, module: str, *, down=(2, 16), up=(16, 2), alpha=True, extra: dict | None = None):
    tensors = {}
    if down:
        tensors[f"{module}.lora_down.weight"] = torch.zeros(down)
    if up:
        tensors[f"{module}.lora_up.weight"] = torch.zeros(up)
    if alpha:
        tensors[f"{module}.alpha"] = torch.tensor(2.0)
    save_file(tensors | (extra or {}), path)
    return path


Q0 = L0 + "self_attn.q_proj_mot_gen"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"up": None}, f"{Q0}: lora_down without lora_up"),
        ({"down": None, "alpha": False}, f"{Q0}.lora_up.weight: no matching lora_down"),
        ({"down": None, "up": None}, f"{Q0}.alpha: no matching lora_down"),
        ({"up": (16, 3)}, f"{Q0}: lora_down \\(2, 16\\) and lora_up \\(16, 3\\)"),
        ({"extra": {f"{Q0}.alpha": torch.ones(2)}}, f"{Q0}: alpha has shape \\(2,\\)"),
    ],
)
def test_malformed_files_name_the_module(tmp_path, kwargs, message):
    path = write_triple(tmp_path / "bad.safetensors", Q0, **kwargs)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: malformed LoRA file:\n  {message}"):
        read_lora_file(path)


def test_missing_alpha_defaults_to_rank(tmp_path):
    lora = read_lora_file(write_triple(tmp_path / "a.safetensors", Q0, alpha=False))
    assert lora.triples[Q0][2] == 2.0


def test_load_names_missing_and_unexpected_modules(tmp_path):
    lora = read_lora_file(write_triple(tmp_path / "a.safetensors", Q0, extra={"fm_modules.nope.weight": torch.ones(1)}))
    model = tiny_model()
    wrap(model, resolve_spec("layers.1.self_attn.q_proj_mot_gen=r2", TINY))
    with pytest.raises(ValueError) as err:
        load_adapter_weights(model, lora)
    text = str(err.value)
    assert f"file has LoRA for {Q0}, model has no adapter there" in text
    assert f"model adapter {L1}self_attn.q_proj_mot_gen missing from file" in text
    assert "file has tensor fm_modules.nope.weight, model has no such parameter" in text
    wrong_rank = tiny_model()
    wrap(wrong_rank, resolve_spec("layers.0.self_attn.q_proj_mot_gen=r4", TINY))
    with pytest.raises(ValueError, match=rf"{Q0}: file down/up \(2, 16\)/\(16, 2\) != adapter \(4, 16\)/\(16, 4\)"):
        load_adapter_weights(wrong_rank, read_lora_file(write_triple(tmp_path / "b.safetensors", Q0)))


def test_save_refuses_unknown_full_ft_names(tmp_path):
    with pytest.raises(ValueError, match="fm_modules.nope.weight"):
        save_adapter(tiny_model(), tmp_path / "a.safetensors", ["fm_modules.nope.weight"], {})
    assert not (tmp_path / "a.safetensors").exists()


# upstream compatibility ------------------------------------------------------------------------


def upstream_merge(model: nn.Module, path) -> None:
    """Emulates upstream's bake-in merge as docs/MODEL.md section 7 describes it (not its code).

    For every model parameter name, the three LoRA names come from replacing ".weight"; a name
    without ".weight" (a bias) is looked up unchanged. Up/down must be float32; the add is in float32.
    """
    state = load_file(path)
    prefix = "diffusion_model." if any("diffusion_model." in k for k in state) else ""
    with torch.no_grad():
        for name, param in model.named_parameters():
            down_key = prefix + name.replace(".weight", ".lora_down.weight")
            if down_key not in state:
                continue
            down = state[down_key]
            up = state[prefix + name.replace(".weight", ".lora_up.weight")]
            alpha = state[prefix + name.replace(".weight", ".alpha")]
            if down.dtype != torch.float32 or up.dtype != torch.float32:
                raise TypeError(f"{name}: LoRA up/down must be float32")
            scale = float(alpha) / down.shape[0]
            param.copy_((param.float() + scale * (up @ down)).to(param.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bf16: the add must happen in float32
def test_our_file_passes_upstream_merge_and_merges_like_bake_lora(tmp_path, dtype):
    trained_adapter(tmp_path / "a.safetensors")
    theirs, ours, base = tiny_model(dtype=dtype), tiny_model(dtype=dtype), loaded_tensors(tiny_model(dtype=dtype))
    upstream_merge(theirs, tmp_path / "a.safetensors")
    lora = read_lora_file(tmp_path / "a.safetensors")
    report = bake_lora(ours, lora)
    assert sorted(report["merged"]) == sorted(lora.triples) and sorted(report["replaced"]) == sorted(FULL_FT)
    theirs_p, ours_p = dict(theirs.named_parameters()), dict(ours.named_parameters())
    for name, tensor in base.items():
        if name in FULL_FT:  # upstream ignores fully fine-tuned tensors; bake_lora applies them
            assert torch.equal(theirs_p[name], tensor) and torch.equal(ours_p[name], lora.full[name].to(dtype))
        else:
            assert torch.equal(theirs_p[name], ours_p[name]), name
            assert torch.equal(ours_p[name], tensor) == (name[: -len(".weight")] not in lora.triples), name


def test_plain_bias_name_breaks_upstream_merge(tmp_path):
    trained_adapter(tmp_path / "a.safetensors")
    state = {k.replace(FT_BIAS_SUFFIX, ".bias"): v for k, v in load_file(tmp_path / "a.safetensors").items()}
    save_file(state, tmp_path / "plain.safetensors")
    with pytest.raises((RuntimeError, ValueError), match="converted to"):  # float(alpha) on a whole bias
        upstream_merge(tiny_model(), tmp_path / "plain.safetensors")


def test_golden_lora_bakes_bit_exact(golden_dir):
    expected = load_file(golden_dir / "lora_merged_expected.safetensors")
    ours = load_model(golden_dir, ["gen", "fm"])
    before = {n: p.clone() for n, p in loaded_tensors(ours).items()}
    report = bake_lora(ours, read_lora_file(golden_dir / "lora.safetensors"))
    assert sorted(f"{m}.weight" for m in report["merged"]) == sorted(expected)
    emulated = load_model(golden_dir, ["gen", "fm"])
    upstream_merge(emulated, golden_dir / "lora.safetensors")
    for model in (ours, emulated):
        params = dict(model.named_parameters())
        for name, tensor in before.items():
            assert torch.equal(params[name], expected.get(name, tensor)), name


# bake-in skip list -------------------------------------------------------------------------------


def test_bake_skip_list_and_errors(tmp_path, golden_dir):
    lora = read_lora_file(golden_dir / "lora.safetensors")
    model = load_model(golden_dir, ["gen", "fm"])
    head = model.get_submodule("fm_modules.fm_head.0").weight.detach().clone()
    report = bake_lora(model, lora, skip=["fm_head"])
    assert report["skipped"] == ["fm_modules.fm_head.0"] and len(report["merged"]) == 3
    assert torch.equal(model.get_submodule("fm_modules.fm_head.0").weight, head)

    gen_only = load_model(golden_dir, ["gen"])
    with pytest.raises(ValueError, match=r"fm_modules\.fm_head\.0\.weight: not loaded"):
        bake_lora(gen_only, lora)
    assert bake_lora(gen_only, lora, skip=["fm_head"])["skipped"] == ["fm_modules.fm_head.0"]

    absent = "language_model.model.layers.5.self_attn.q_proj_mot_gen"
    with pytest.raises(ValueError, match=f"not present in the model:\n  {re.escape(absent)}"):
        bake_lora(model, read_lora_file(write_triple(tmp_path / "a.safetensors", absent, down=(2, 64), up=(64, 2))))
    with pytest.raises(ValueError, match=rf"{re.escape(Q0)}\.weight: model shape \(64, 64\) != LoRA file's \(16, 16\)"):
        bake_lora(model, read_lora_file(write_triple(tmp_path / "b.safetensors", Q0)))


# inspect CLI -------------------------------------------------------------------------------------


def test_inspect_all_presets(capsys):
    assert inspect_cli("inspect", ["--model", str(CONFIG_8B), "--spec", "all-presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == set(PRESETS)
    assert rows["default"].split()[-1] == "286,289,920"
    assert rows["official_r128"].split()[-3:] == ["409,337,856", "0", "409,337,856"]


def test_inspect_spec_with_list(capsys, golden_dir):
    argv = ["--model", str(golden_dir), "--spec", "attn=r4a8;fm_head.0=r2", "--full-ft", r"fm_modules\.fm_head\.2\..*"]
    assert inspect_cli("inspect", argv + ["--list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  attn +8 +4 +8 +3,584$", out, re.MULTILINE)  # 2 layers x 4 x (q,o: 64+64; k,v: 64+32)
    assert re.search(r"^  fm_head +1 +2 +2 +8,320$", out, re.MULTILINE)
    assert re.search(r"^  fm_modules\.fm_head\.\* +2 +196,656$", out, re.MULTILINE)  # full FT: 48 x 4096 + 48
    assert re.search(r"^ +9 +11,904 +196,656 +208,560$", out, re.MULTILINE)
    assert re.search(rf"^  {re.escape(Q0)} +4 +8 +512$", out, re.MULTILINE)
    assert "fm_modules.fm_head.2.bias" in out


def test_inspect_file(capsys, golden_dir):
    assert inspect_cli("inspect", ["--file", str(golden_dir / "lora.safetensors"), "--list"]) == 0
    out = capsys.readouterr().out
    assert "4 LoRA modules, 0 fully fine-tuned tensors" in out and "format = pt" in out
    assert re.search(r"^  fm_head +1 +4 +8 +16,640$", out, re.MULTILINE)
    assert re.search(r"^ +4 +18,304 +0 +18,304$", out, re.MULTILINE)


def test_inspect_errors(capsys, golden_dir, tmp_path):
    assert inspect_cli("inspect", ["--model", str(golden_dir), "--spec", "mlp.down_proj=r4"]) == 1
    assert "'mlp.down_proj'" in capsys.readouterr().err
    bad = write_triple(tmp_path / "bad.safetensors", Q0, up=None)
    assert inspect_cli("inspect", ["--file", str(bad)]) == 1
    assert "lora_down without lora_up" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        inspect_cli("inspect", ["--file", str(bad), "--spec", "attn=r4"])
