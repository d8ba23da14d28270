"""Model behaviour beyond the golden set: batching, padding, shapes, config parsing, loading."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import CONFIG_8B
from u1lib.model import loading
from u1lib.model.config import ConfigError, U1Config
from u1lib.model.embedders import patchify, unpatchify
from u1lib.model.keys import group_counts, parameter_shapes
from u1lib.model.loading import CheckpointError, load_model, random_model
from u1lib.model.u1 import PrefixKV


def test_8b_parameter_accounting_from_config_alone():
    cfg = U1Config.from_file(CONFIG_8B)
    counts = group_counts(cfg)
    assert sum(counts.values()) == 17_552_340_992
    assert len(parameter_shapes(cfg)) == 1116
    assert counts["und"] == counts["gen"] == 8_103_750_144 + 4096  # core + its final norm
    assert counts["embed"] == counts["lm_head"] == 622_329_856
    assert counts["vision_und"] == 17_568_768
    # vision_mot_gen + timestep + noise-scale embedders + fm_head
    assert counts["fm"] == 17_568_768 + 2 * 17_833_984 + 29_367_296


def test_config_accepts_list_or_number_vision_fields(golden_dir):
    raw = json.loads((golden_dir / "config.json").read_text())
    assert raw["vision_config"]["llm_hidden_size"] == [64]
    a = U1Config.from_upstream_dict(raw)
    raw["vision_config"]["llm_hidden_size"], raw["vision_config"]["downsample_ratio"] = 64, 0.5
    assert U1Config.from_upstream_dict(raw) == a
    raw["vision_config"]["llm_hidden_size"] = 32
    with pytest.raises(ConfigError, match="llm_hidden_size"):
        U1Config.from_upstream_dict(raw)


def test_patchify_roundtrip_and_layout():
    x = torch.randn(2, 3, 16, 24)
    tokens = patchify(x, 8)
    assert tokens.shape == (2, 6, 192)
    # token 1 is the second patch of the first row; element (py=0, px=1, c=2) sits at index (0*8+1)*3+2
    assert tokens[0, 1, 5] == x[0, 2, 0, 9]
    assert torch.equal(unpatchify(tokens, 8, 16, 24), x)


def test_gen_group_reads_no_understanding_tensor(golden_dir, monkeypatch):
    read = []
    real_open = loading.safe_open

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
            read.append(key)
            return self.inner.get_tensor(key)

    monkeypatch.setattr(loading, "safe_open", Recorder)
    model = load_model(golden_dir, ["gen", "fm"])
    assert read and all("_mot_gen" in k or k.startswith("fm_modules.") for k in read)
    assert model.language_model.model.layers[0].self_attn.q_proj.weight.is_meta
    assert not model.language_model.model.layers[0].self_attn.q_proj_mot_gen.weight.is_meta


def test_missing_and_misshapen_keys_are_named(golden_dir, tmp_path):
    folder = tmp_path / "snap"
    shutil.copytree(golden_dir, folder)
    weights = load_file(folder / "model.safetensors")
    del weights["fm_modules.fm_head.2.bias"]
    weights["language_model.model.norm_mot_gen.weight"] = torch.ones(63)
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_model(folder, ["gen", "fm"])
    assert "missing key fm_modules.fm_head.2.bias" in str(err.value)
    assert "norm_mot_gen.weight: checkpoint shape (63,) != config shape (64,)" in str(err.value)
    load_model(folder, ["und", "embed"])  # the broken groups are not requested: fine


def test_sharded_checkpoint_loads_the_same(golden_dir, tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(golden_dir / "config.json", folder)
    weights = load_file(golden_dir / "model.safetensors")
    keys = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, part in shards.items():
        save_file({k: weights[k] for k in part}, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    a = load_model(folder, ["gen", "fm"]).state_dict()
    b = load_model(golden_dir, ["gen", "fm"]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b if not b[k].is_meta)


def _random_ids(lengths, vocab):
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(0, vocab, (n,), generator=g)
    return ids


def test_padded_prefix_batch_equals_one_by_one(golden_model):
    model = golden_model
    lengths = [7, 12, 3]
    ids = _random_ids(lengths, model.config.vocab_size)
    batched = model.prefix(ids, torch.tensor(lengths))
    for row, n in enumerate(lengths):
        single = model.prefix(ids[row : row + 1, :n])
        for layer in range(model.config.num_hidden_layers):
            torch.testing.assert_close(batched.keys[layer][row : row + 1, :, :n], single.keys[layer])
            torch.testing.assert_close(batched.values[layer][row : row + 1, :, :n], single.values[layer])


def test_a_cache_only_prefix_skips_the_last_layers_attention_and_mlp_and_keeps_the_same_kv(golden_model):
    model = golden_model
    ids = _random_ids([9], model.config.vocab_size)
    last = model.layers[-1]
    calls = []
    hook = last.mlp.register_forward_hook(lambda *_: calls.append("mlp"))
    try:
        with torch.no_grad():
            full, _ = model.prefix(ids, final_norm=True)
            assert calls == ["mlp"]
            cache = model.prefix(ids)
    finally:
        hook.remove()
    assert calls == ["mlp"]  # the cache-only call ran no last-layer MLP
    for layer in range(model.config.num_hidden_layers):
        assert torch.equal(cache.keys[layer], full.keys[layer])
        assert torch.equal(cache.values[layer], full.values[layer])


def test_batched_generation_with_mixed_prefixes_equals_one_by_one(golden_model):
    model = golden_model
    lengths = [9, 4]
    ids = _random_ids(lengths, model.config.vocab_size)
    singles = [model.prefix(ids[r : r + 1, :n]) for r, n in enumerate(lengths)]
    batch = PrefixKV.stack(singles)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 16, 24, generator=g)  # non-square: 4 x 6 tokens
    t = torch.tensor([0.2, 0.7])
    x_batch, _ = model.denoise(images, t, batch, 1.0)
    for r in range(2):
        x_one, _ = model.denoise(images[r : r + 1], t[r : r + 1], singles[r], 1.0)
        torch.testing.assert_close(x_batch[r : r + 1], x_one, rtol=1e-5, atol=1e-5)


def test_random_model_builds_requested_groups_only():
    cfg = U1Config.from_file(CONFIG_8B)
    small = U1Config(
        **{
            **cfg.to_dict(),
            "num_hidden_layers": 1,
            "vocab_size": 64,
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "fm_head_hidden_size": 128,
            "vision_hidden_size": 32,
        }
    )
    model = random_model(small, ["gen", "fm"], dtype=torch.float32)
    assert model.language_model.model.embed_tokens.weight.is_meta
    assert not model.fm_modules["fm_head"][0].weight.is_meta
