"""`python -m u1lib export`: every file a consumer loads, checked by loading it back on the tiny model."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from u1lib.cli import main
from u1lib.io import sha256_file
from u1lib.lora import export as export_module
from u1lib.lora.adapter import adapters_of, make_trainable
from u1lib.lora.export import export_adapter
from u1lib.lora.io import adapter_metadata, bake_lora, read_lora_file, save_adapter
from u1lib.lora.peft import PEFT_PREFIX, read_peft
from u1lib.lora.spec import TrainableSurface
from u1lib.model.config import U1Config
from u1lib.model.keys import GROUPS
from u1lib.model.loading import INDEX_FILE, load_model
from u1lib.tiny import build_tiny_snapshot

SPEC = "attn=r4a8;layers.0.mlp_mot_gen.down_proj=r2a3"  # two ranks and alphas: rank/alpha_pattern needed
ODD = "language_model.model.layers.0.mlp_mot_gen.down_proj"
FULL_FT = [r"fm_modules\.timestep_embedder\..*"]
FULL_NAMES = [f"fm_modules.timestep_embedder.mlp.{i}.{p}" for i in (0, 2) for p in ("bias", "weight")]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return build_tiny_snapshot(tmp_path_factory.mktemp("snapshot"), seed=0)


def make_adapter(path, snapshot, *, full_ft=(), factor_dtype="float32"):
    """A trained-looking adapter: random non-zero up matrices, perturbed fully fine-tuned tensors."""
    surface = TrainableSurface.resolve(SPEC, list(full_ft), U1Config.from_file(snapshot))
    model = load_model(snapshot, ["gen", "fm"])
    make_trainable(model, surface)
    generator = torch.Generator().manual_seed(1)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for adapter in adapters_of(model).values():
            adapter.lora_up.weight.copy_(torch.randn(adapter.lora_up.weight.shape, generator=generator))
        for name in surface.full_ft:
            params[name].add_(0.5)
    meta = adapter_metadata(config={}, spec=SPEC, base_revision="tiny-seed-0", step=3)
    save_adapter(model, path, sorted(surface.full_ft), meta, factor_dtype=factor_dtype)
    return path


@pytest.fixture(scope="module")
def lora_only(snapshot, tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("a") / "adapter.safetensors", snapshot)


@pytest.fixture(scope="module")
def with_full(snapshot, tmp_path_factory):
    path = tmp_path_factory.mktemp("b") / "adapter.safetensors"
    return make_adapter(path, snapshot, full_ft=FULL_FT, factor_dtype="bfloat16")


def upstream_merge(model, path) -> None:
    """Upstream's loader as its utils/lora.py reads (facts, not its code): for each parameter P.weight it
    looks up P.lora_down.weight, P.lora_up.weight and P.alpha, adds alpha/r * up @ down in fp32 and
    ignores every other key."""
    state = load_file(path)
    with torch.no_grad():
        for name, param in model.named_parameters():
            module = name.removesuffix(".weight")
            if name.endswith(".weight") and f"{module}.lora_down.weight" in state:
                down, up = state[f"{module}.lora_down.weight"].float(), state[f"{module}.lora_up.weight"].float()
                param.copy_(param.float() + float(state[f"{module}.alpha"]) / down.shape[0] * (up @ down))


def params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if not p.is_meta}


def files_under(folder) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_lora_only_adapter_every_file_merges_like_bake_lora(snapshot, lora_only, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(lora_only), "--out", str(out), "--merged", "--snapshot", str(snapshot)]) == 0
    printed = capsys.readouterr().out
    assert (
        "lora_upstream.safetensors: upstream's LoRA loader" in printed
        and "merged/: upstream's from_pretrained" in printed
    )
    snapshot_files = {f"merged/{rel}" for rel in files_under(snapshot)}
    assert files_under(out) == {"lora_upstream.safetensors", "peft/adapter_model.safetensors",
                                "peft/adapter_config.json", "export.json"} | snapshot_files  # fmt: skip
    source = read_lora_file(lora_only)
    with safe_open(out / "lora_upstream.safetensors", framework="pt") as handle:
        assert set(handle.keys()) == set(load_file(lora_only))  # every key, nothing upstream would drop
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"F32"}

    expected = load_model(snapshot, GROUPS)
    bake_lora(expected, source)
    via_upstream = load_model(snapshot, GROUPS)
    upstream_merge(via_upstream, out / "lora_upstream.safetensors")
    merged = params(load_model(out / "merged", GROUPS))
    base = params(load_model(snapshot, GROUPS))
    for name, tensor in params(expected).items():
        assert torch.equal(params(via_upstream)[name], tensor), name
        assert torch.equal(merged[name], tensor), name
        assert torch.equal(base[name], tensor) == (name.removesuffix(".weight") not in source.triples), name


def test_full_tensors_are_split_out_with_a_message(with_full, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        report = export_adapter(with_full, out)
    message = caplog.text
    assert all(name in message for name in FULL_NAMES), message
    assert "Upstream's LoRA loader ignores such tensors" in message and "full_ft.safetensors carries" in message
    assert "--merged --snapshot" in message  # no merged/ here: it says how to get one
    source = read_lora_file(with_full)
    upstream = read_lora_file(out / "lora_upstream.safetensors")
    assert upstream.full == {} and upstream.triples.keys() == source.triples.keys()
    full = load_file(out / "full_ft.safetensors")
    assert sorted(full) == FULL_NAMES  # plain parameter names, biases included
    assert all(torch.equal(full[n], source.full[n]) and full[n].dtype == torch.float32 for n in FULL_NAMES)
    with safe_open(out / "peft/adapter_model.safetensors", framework="pt") as handle:
        assert all(re.fullmatch(r"base_model\.model\..+\.lora_[AB]\.weight", k) for k in handle.keys())
    assert report["full_ft_tensors"] == FULL_NAMES and "full_ft.safetensors" in report["split"]
    assert "full_ft.safetensors" in report["files"]


def test_merged_carries_the_full_tensors_in_the_base_dtype(snapshot, with_full, tmp_path):
    export_adapter(with_full, tmp_path / "out", snapshot=snapshot, merged=True)
    expected = load_model(snapshot, GROUPS)
    report = bake_lora(expected, read_lora_file(with_full))
    assert sorted(report["replaced"]) == FULL_NAMES
    merged, base = params(load_model(tmp_path / "out" / "merged", GROUPS)), params(load_model(snapshot, GROUPS))
    for name, tensor in params(expected).items():
        assert torch.equal(merged[name], tensor), name
    assert not any(torch.equal(merged[n], base[n]) for n in FULL_NAMES)


def test_strict_upstream_refuses_full_tensors_by_name(snapshot, with_full, lora_only, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(with_full), "--out", str(out), "--strict-upstream"]) == 1
    err = capsys.readouterr().err
    assert "--strict-upstream" in err and all(name in err for name in FULL_NAMES), err
    assert not out.exists()
    assert main(["export", str(lora_only), "--out", str(out), "--strict-upstream"]) == 0  # nothing to drop


def test_peft_folder_round_trips_with_per_module_rank_and_alpha(with_full, tmp_path):
    out = tmp_path / "out"
    export_adapter(with_full, out)
    config = json.loads((out / "peft/adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and (config["r"], config["lora_alpha"]) == (4, 8)
    assert config["rank_pattern"] == {ODD: 2} and config["alpha_pattern"] == {ODD: 3}
    assert config["modules_to_save"] is None  # the full tensors are not PEFT's to carry (see export.py)
    source = read_lora_file(with_full)
    assert config["target_modules"] == sorted(source.triples)
    stored = load_file(out / "peft/adapter_model.safetensors")
    assert stored[f"{PEFT_PREFIX}{ODD}.lora_A.weight"].shape == (2, 192)  # lora_A = down [r, in]
    assert stored[f"{PEFT_PREFIX}{ODD}.lora_B.weight"].shape == (64, 2)  # lora_B = up [out, r]
    peft = read_peft(out / "peft")
    assert peft.keys() == source.triples.keys()
    for module, (down, up, alpha) in source.triples.items():
        a, b, peft_alpha = peft[module]
        assert torch.equal(a, down) and torch.equal(b, up) and a.dtype == torch.bfloat16 and peft_alpha == alpha

    del config["rank_pattern"][ODD]  # a reader that applies the config refuses what PEFT could not load
    (out / "peft/adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape(f"{ODD}: no lora_B, factors not of rank 4")):
        read_peft(out / "peft")


def test_export_json_says_what_was_written_and_verified(snapshot, with_full, tmp_path):
    out = tmp_path / "out"
    report = export_adapter(with_full, out, snapshot=snapshot, merged=True)
    assert json.loads((out / "export.json").read_text()) == report
    assert set(report["files"]) == files_under(out) - {"export.json"}
    for rel, entry in report["files"].items():
        assert entry["sha256"] == sha256_file(out / rel) and entry["bytes"] == (out / rel).stat().st_size
    consumers = {rel: entry["consumer"] for rel, entry in report["files"].items()}
    assert "utils/lora.py" in consumers["lora_upstream.safetensors"]
    assert (
        "from_pretrained" in consumers["merged/model.safetensors"] and "PEFT" in consumers["peft/adapter_config.json"]
    )
    assert report["source"] == {"adapter": str(with_full), "sha256": sha256_file(with_full), "lora_modules": 9}
    checks = report["verification"]
    assert set(checks) == {"tolerance", "lora_upstream.safetensors", "peft/adapter_model.safetensors",
                           "full_ft.safetensors", "merged/"}  # fmt: skip
    assert all(checks[k] == {"max_abs_diff": 0.0, "ok": True} for k in checks if k != "tolerance")
    assert "eps_fp32" in checks["tolerance"] and "bit-identical" in checks["tolerance"]


def shard(snapshot, folder):
    """The tiny snapshot as two shards with an index, the generation tower in bf16 (as U1-8B ships)."""
    shutil.copytree(snapshot, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    tensors = load_file(snapshot / "model.safetensors")
    names = {
        k: "model-00001-of-00002.safetensors" if "layers" in k else "model-00002-of-00002.safetensors" for k in tensors
    }
    for file in set(names.values()):
        part = {k: t.bfloat16() if "_mot_gen" in k else t for k, t in tensors.items() if names[k] == file}
        save_file(part, folder / file, {"format": "pt"})
    (folder / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": names}))
    return folder


def test_merged_keeps_a_sharded_layout_and_each_dtype(snapshot, lora_only, tmp_path):
    base = shard(snapshot, tmp_path / "sharded")
    export_adapter(lora_only, tmp_path / "out", snapshot=base, merged=True)
    merged = tmp_path / "out" / "merged"
    assert files_under(merged) == files_under(base)
    assert (merged / INDEX_FILE).read_bytes() == (base / INDEX_FILE).read_bytes()
    source, wanted = read_lora_file(lora_only), {}
    for file in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        got, was = load_file(merged / file), load_file(base / file)
        assert {k: t.dtype for k, t in got.items()} == {k: t.dtype for k, t in was.items()}
        for key, tensor in was.items():
            down, up, alpha = source.triples.get(key.removesuffix(".weight"), (None, None, None))
            want = tensor if down is None else (tensor.float() + alpha / down.shape[0] * (up @ down)).to(tensor.dtype)
            assert torch.equal(got[key], want), key
            wanted[key] = want
    assert wanted[f"{ODD}.weight"].dtype == torch.bfloat16  # merged in fp32, stored back in the base's dtype
    for name, tensor in params(load_model(merged, GROUPS)).items():  # and our loader reads it
        assert torch.equal(tensor, wanted[name].float()), name


def test_verification_catches_a_file_that_does_not_load_back_right(snapshot, lora_only, tmp_path, monkeypatch):
    real_save = export_module.save_safetensors

    def corrupting_save(path, tensors, metadata=None):
        if "/merged/" in str(path):
            tensors = {k: t + 1e-3 if ODD in k else t for k, t in tensors.items()}
        real_save(path, tensors, metadata)

    monkeypatch.setattr(export_module, "save_safetensors", corrupting_save)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=re.escape(f"merged/: model.safetensors: {ODD}.weight differs from the merge")):
        export_adapter(lora_only, out, snapshot=snapshot, merged=True)
    assert files_under(out) == set()  # nothing unverified is left for a consumer to pick up


def test_refusals_name_the_file_and_the_fix(snapshot, lora_only, with_full, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"nope\.safetensors: no such file"):
        export_adapter(tmp_path / "nope.safetensors", out)
    (tmp_path / "notes.safetensors").write_text("not tensors")
    with pytest.raises(ValueError, match=r"notes\.safetensors: not a safetensors file"):
        export_adapter(tmp_path / "notes.safetensors", out)
    with pytest.raises(ValueError, match="--merged needs --snapshot"):
        export_adapter(lora_only, out, merged=True)

    other = tmp_path / "other"  # a base whose q_proj has another shape and whose embedder is gone
    shutil.copytree(snapshot, other)
    tensors = load_file(other / "model.safetensors")
    q_proj = "language_model.model.layers.1.self_attn.q_proj_mot_gen.weight"
    tensors[q_proj] = tensors[q_proj][:8]
    del tensors[FULL_NAMES[1]]
    save_file(tensors, other / "model.safetensors")
    with pytest.raises(ValueError, match="does not fit the snapshot") as err:
        export_adapter(with_full, out, snapshot=other, merged=True)
    assert f"{q_proj}: snapshot (8, 64) != adapter (64, 64)" in str(err.value)
    assert f"{FULL_NAMES[1]}: not in the snapshot" in str(err.value) and "tiny-seed-0" in str(err.value)
    with pytest.raises(ValueError, match="overlap"):
        export_adapter(lora_only, snapshot / "exports", snapshot=snapshot)
    assert not out.exists()

    export_adapter(with_full, out)
    with pytest.raises(ValueError, match=r"already holds lora_upstream\.safetensors, .*--overwrite"):
        export_adapter(lora_only, out)
    export_adapter(lora_only, out, overwrite=True)  # and the earlier export's full_ft.safetensors goes with it
    assert files_under(out) == {"lora_upstream.safetensors", "peft/adapter_model.safetensors",
                                "peft/adapter_config.json", "export.json"}  # fmt: skip
    assert read_lora_file(out / "lora_upstream.safetensors").triples.keys() == read_lora_file(lora_only).triples.keys()
