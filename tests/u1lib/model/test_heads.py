"""SenseNova-U1.5: the pixel head, its config, counts, trainable surfaces, LoRA files, fp32-shard loading."""

from __future__ import annotations

import copy
import json
import math
import shutil
import weakref

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import CONFIG_8B, DATA
from u1lib.lora.adapter import adapters_of, wrap
from u1lib.lora.io import bake_lora, read_lora_file, save_adapter, wrap_from_file
from u1lib.lora.spec import SpecError, TrainableSurface, resolve_spec
from u1lib.model import loading
from u1lib.model.config import ConfigError, U1Config
from u1lib.model.keys import group_counts, parameter_shapes
from u1lib.model.loading import load_model
from u1lib.model.u1 import image_indexes
from u1lib.parity import run_parity

GOLDEN = DATA / "golden_u15_tiny_a"
HEAD = "fm_modules.fm_head."


def u15_8b_raw() -> dict:
    """docs/UPSTREAM_NOW.md section 3: U1's config with the pixel head and noise_scale_max_value 16."""
    raw = json.loads(CONFIG_8B.read_text())
    raw.update(use_pixel_head=True, noise_scale_max_value=16.0, extra_num_layers_post=0)
    return raw


@pytest.fixture(scope="module")
def u15_8b() -> U1Config:
    return U1Config.from_upstream_dict(u15_8b_raw())


def test_8b_head_keys_and_counts_from_config(u15_8b):
    u1 = U1Config.from_file(CONFIG_8B)
    shapes = parameter_shapes(u15_8b)
    head = {k: v for k, v in shapes.items() if k.startswith(HEAD)}
    hidden, token = u15_8b.hidden_size, u15_8b.token_size
    assert head == {
        HEAD + "conv1.weight": (1024, hidden // 4, 3, 3),
        HEAD + "conv1.bias": (1024,),
        HEAD + "conv2.weight": (3 * (token // 4) ** 2, 256, 3, 3),
        HEAD + "conv2.bias": (3 * (token // 4) ** 2,),
    }
    assert head[HEAD + "conv1.weight"] == (1024, 1024, 3, 3) and head[HEAD + "conv2.weight"] == (192, 256, 3, 3)
    head_params = sum(math.prod(s) for s in head.values())
    assert round(head_params / 1e6, 2) == 9.88  # upstream's ConvDecoder, 9.88 M
    u1_head = sum(math.prod(s) for k, s in parameter_shapes(u1).items() if k.startswith(HEAD))
    u1_counts, counts = group_counts(u1), group_counts(u15_8b)
    assert counts["fm"] == u1_counts["fm"] - u1_head + head_params
    assert {g: n for g, n in counts.items() if g != "fm"} == {g: n for g, n in u1_counts.items() if g != "fm"}
    assert u15_8b.noise_scale_max_value == 16.0 and u15_8b.noise_scale_for(4096 * 16) == 16.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"llm_config": {"hidden_size": 66}}, "hidden_size 66 must be a multiple of 4"),
        ({"vision_config": {"patch_size": 3}}, "token size .* 6 must be a multiple of 4"),
        ({"use_pixel_head": False, "fm_head_layers": 3}, "fm_head_layers 3 selects upstream's deep head"),
        ({"extra_num_layers_post": 2}, "extra_num_layers_post 2 is not supported"),
    ],
)
def test_config_problems_are_named(change, message):
    raw = u15_8b_raw()
    for key, value in change.items():
        if isinstance(value, dict):
            raw[key].update(value)
        else:
            raw[key] = value
    if "hidden_size" in change.get("llm_config", {}):
        raw["vision_config"]["llm_hidden_size"] = 66
    with pytest.raises(ConfigError, match=message):
        U1Config.from_upstream_dict(raw)


def test_the_golden_config_parses_with_u15_extras():
    cfg = U1Config.from_file(GOLDEN)
    assert cfg.use_pixel_head and cfg.noise_scale_max_value == 16.0 and cfg.token_size == 32


# trainable surfaces ------------------------------------------------------------------------------


def test_lora_on_the_294_generation_linears(u15_8b):
    h, d, layers = u15_8b.hidden_size, u15_8b.head_dim, u15_8b.num_hidden_layers
    q, kv, mlp = u15_8b.num_attention_heads * d, u15_8b.num_key_value_heads * d, u15_8b.intermediate_size
    surface = TrainableSurface.resolve("official_u15_r128", [], u15_8b)
    assert len(surface.targets) == 294 == layers * 7
    assert {(t.rank, t.alpha) for t in surface.targets.values()} == {(128, 8.0)}
    per_layer = 128 * ((h + q) * 2 + (h + kv) * 2 + (h + mlp) * 2 + (mlp + h))
    assert surface.counts() == {
        "lora_modules": 294,
        "lora_params": layers * per_layer,
        "full_ft_params": 0,
        "total": layers * per_layer,
    }
    with pytest.raises(SpecError, match="'fm_head' .* matches no module"):
        resolve_spec("fm_head=r16", u15_8b)  # a LoRA cannot reach the convolutions (nor can upstream's merge)


def test_the_conv_head_trains_in_full(u15_8b):
    head = {k: math.prod(s) for k, s in parameter_shapes(u15_8b).items() if k.startswith(HEAD)}
    surface = TrainableSurface.resolve("attn_mlp_head", [], u15_8b)
    assert surface.full_ft.keys() == head.keys() and surface.counts()["full_ft_params"] == sum(head.values())
    by_regex = TrainableSurface.resolve("attn=r16", [r"fm_modules\.fm_head\.conv.*"], u15_8b)
    assert by_regex.full_ft == surface.full_ft
    default = TrainableSurface.resolve("default", [], u15_8b)
    assert head.keys() <= default.full_ft.keys()


def test_inspect_all_presets_names_the_misfit(tmp_path, capsys):
    from u1lib.lora.inspect import cli

    (tmp_path / "config.json").write_text(json.dumps(u15_8b_raw()))
    assert cli("inspect", ["--model", str(tmp_path), "--spec", "all-presets"]) == 0
    out = capsys.readouterr().out
    assert "official_u15_r128" in out and "n/a: LoRA target 'fm_head'" in out


# LoRA files ---------------------------------------------------------------------------------------


def emulated_upstream_merge(model, path) -> None:
    """Newer upstream's merge as docs/UPSTREAM_NOW.md section 5 states it: bf16 factors cast to fp32,
    scale alpha / rank, optional ``diffusion_model.`` prefix, add in fp32 (not upstream's code)."""
    state = load_file(path)
    prefix = "diffusion_model." if any(k.startswith("diffusion_model.") for k in state) else ""
    with torch.no_grad():
        for name, param in model.named_parameters():
            down = state.get(prefix + name.replace(".weight", ".lora_down.weight"))
            if down is None:
                continue
            up = state[prefix + name.replace(".weight", ".lora_up.weight")].float()
            scale = float(state[prefix + name.replace(".weight", ".alpha")]) / down.shape[0]
            param.copy_((param.float() + scale * (up @ down.float())).to(param.dtype))


@pytest.fixture(scope="module")
def golden_model():
    return load_model(GOLDEN, ["und", "gen", "fm", "embed"])


def u15_lora_file(golden_model, path, spec="attn=r128a8;mlp=r128a8"):
    trained = copy.deepcopy(golden_model)
    adapters = wrap(trained, resolve_spec(spec, trained.config))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.lora_up.weight.normal_(0, 0.05, generator=generator)
    save_adapter(trained, path, [], {}, factor_dtype="bfloat16")
    return trained


def test_bf16_lora_round_trip_prefixed_keys_and_merge(golden_model, tmp_path):
    trained = u15_lora_file(golden_model, tmp_path / "lora.safetensors")
    stored = load_file(tmp_path / "lora.safetensors")
    downs = {k: v for k, v in stored.items() if k.endswith(".lora_down.weight")}
    assert len(downs) == 2 * 7 and {v.dtype for k, v in stored.items() if ".lora_" in k} == {torch.bfloat16}
    assert {float(v) for k, v in stored.items() if k.endswith(".alpha")} == {8.0}
    save_file({"diffusion_model." + k: v for k, v in stored.items()}, tmp_path / "prefixed.safetensors")
    lora = read_lora_file(tmp_path / "prefixed.safetensors")
    for module, adapter in adapters_of(trained).items():
        down, up, alpha = lora.triples[module]
        assert torch.equal(down, adapter.lora_down.weight.to(torch.bfloat16)) and alpha == 8.0
        assert torch.equal(up, adapter.lora_up.weight.to(torch.bfloat16))
    baked, emulated = copy.deepcopy(golden_model), copy.deepcopy(golden_model)
    bake_lora(baked, lora)
    emulated_upstream_merge(emulated, tmp_path / "prefixed.safetensors")
    theirs, base = dict(emulated.named_parameters()), dict(golden_model.named_parameters())
    changed = 0
    for name, param in baked.named_parameters():
        if param.is_meta:  # the understanding vision tower is not loaded
            continue
        assert torch.equal(param, theirs[name]), name
        changed += not torch.equal(param, base[name])
    assert changed == 14
    # the runtime adapter (scale 8/128 on unmerged weights) predicts what the merged weights predict
    runtime = copy.deepcopy(golden_model)
    wrap_from_file(runtime, lora)
    ids, image = torch.arange(12)[None], torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.4])
    with torch.no_grad():
        x_runtime = runtime.denoise(image, t, runtime.prefix(ids), 0.5)[0]
        x_baked = baked.denoise(image, t, baked.prefix(ids), 0.5)[0]
        x_base = golden_model.denoise(image, t, golden_model.prefix(ids), 0.5)[0]
    torch.testing.assert_close(x_runtime, x_baked, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(x_base, x_baked, rtol=1e-3, atol=1e-4)


def test_bad_factor_dtype_is_named(golden_model, tmp_path):
    with pytest.raises(ValueError, match="'float16' is not one of float32, bfloat16"):
        save_adapter(golden_model, tmp_path / "a.safetensors", [], {}, factor_dtype="float16")


# loading ----------------------------------------------------------------------------------------


def test_fp32_checkpoint_loads_as_bf16_one_tensor_at_a_time(monkeypatch):
    """The U1.5 release stores the generation stream in fp32: each tensor is cast as it is read, so
    host memory never holds a second (fp32) copy of more than one tensor."""
    real_open, alive, peak = loading.safe_open, [], [0]

    class Recorder:
        def __init__(self, *a, **k):
            self.handle = real_open(*a, **k)

        def __enter__(self):
            self.inner = self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def keys(self):
            return self.inner.keys()

        def get_slice(self, key):
            return self.inner.get_slice(key)

        def get_tensor(self, key):
            tensor = self.inner.get_tensor(key)
            alive[:] = [ref for ref in alive if ref() is not None]
            alive.append(weakref.ref(tensor))
            peak[0] = max(peak[0], len(alive))
            return tensor

    monkeypatch.setattr(loading, "safe_open", Recorder)
    model = load_model(GOLDEN, ["und", "gen", "fm", "embed"], dtype=torch.bfloat16)
    assert peak[0] == 1
    dtypes = {p.dtype for p in model.parameters() if not p.is_meta}
    assert dtypes == {torch.bfloat16}


def test_pixel_head_runs_non_square_batched(golden_model):
    """Two images of a 2 x 3 token grid in one batch equal the same images one by one."""
    cfg, p = golden_model.config, golden_model.config.token_size
    images = torch.randn(2, 3, 2 * p, 3 * p, generator=torch.Generator().manual_seed(1))
    prefix = golden_model.prefix(torch.arange(7)[None]).repeat(2)
    t = torch.tensor([0.2, 0.7])
    with torch.no_grad():
        both = golden_model.denoise(images, t, prefix, 0.3)[0]
        one = golden_model.denoise(images[1:], t[1:], prefix.select(1), 0.3)[0]
    assert both.shape == (2, 6, cfg.fm_out_dim)
    assert (both[1:] - one).abs().max() <= 1e-5 * one.abs().max()  # batching changes float32 rounding only
    assert image_indexes(prefix.lengths, 2, 3).shape == (2, 3, 6)


# parity can fail -----------------------------------------------------------------------------------


def test_perturbed_conv_head_fails_parity_only_downstream(tmp_path):
    folder = tmp_path / "golden"
    shutil.copytree(GOLDEN, folder)
    weights = load_file(folder / "model.safetensors")
    weights[HEAD + "conv2.weight"] = weights[HEAD + "conv2.weight"] * 1.01
    save_file(weights, str(folder / "model.safetensors"))
    failed = {r.name for r in run_parity(folder)[0] if not r.ok}
    assert {"gen0.cond.fm_head.conv2_out", "gen0.cond.x_pred", "sample.final_image"} <= failed
    assert not {"gen0.cond.fm_head.act1_out", "gen0.cond.final_hidden", "prefix.cond.layer1.k"} & failed


def test_u1_noise_scale_clamp_fails_u15_parity(tmp_path):
    folder = tmp_path / "golden"
    shutil.copytree(GOLDEN, folder)
    raw = json.loads((folder / "config.json").read_text())
    raw["noise_scale_max_value"] = 8.0
    (folder / "config.json").write_text(json.dumps(raw))
    failed = {r.name for r in run_parity(folder)[0] if not r.ok}
    assert {"gen0.time_plus_noise_embed", "gen0.cond.x_pred"} <= failed
