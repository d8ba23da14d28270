"""Concurrent shard reads: the same tensors as one thread, the same errors, nothing unrequested read."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from u1lib.model import loading
from u1lib.model.keys import group_of
from u1lib.model.loading import CheckpointError, load_model

SAMPLER_GROUPS = ["und", "embed", "gen", "fm"]


def _shard(golden_dir, folder, parts: int, dtype=None, edit=None):
    """``golden_dir``'s weights split round-robin over ``parts`` shards with an index (optionally cast/edited)."""
    folder.mkdir()
    shutil.copy(golden_dir / "config.json", folder)
    weights = load_file(golden_dir / "model.safetensors")
    if dtype is not None:
        weights = {k: v.to(dtype) for k, v in weights.items()}
    if edit is not None:
        edit(weights)
    keys = sorted(weights)
    weight_map = {}
    for i in range(parts):
        name = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        save_file({k: weights[k] for k in keys[i::parts]}, str(folder / name))
        weight_map.update(dict.fromkeys(keys[i::parts], name))
    (folder / loading.INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def _loaded(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not v.is_meta}


@pytest.mark.parametrize(
    ("source", "target"),
    [(None, torch.float32), (None, torch.bfloat16), (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32)],
)
def test_threads_read_bit_identical_tensors(golden_dir, tmp_path, source, target):
    folder = _shard(golden_dir, tmp_path / "sharded", parts=5, dtype=source)
    one = _loaded(load_model(folder, SAMPLER_GROUPS, dtype=target, threads=1))
    many = _loaded(load_model(folder, SAMPLER_GROUPS, dtype=target, threads=4))
    assert one.keys() == many.keys() and one
    assert all(many[k].dtype == target and torch.equal(one[k], many[k]) for k in one)


def test_threads_report_every_problem_across_shards(golden_dir, tmp_path):
    def edit(weights):
        del weights["fm_modules.fm_head.2.bias"]
        weights["language_model.model.norm_mot_gen.weight"] = torch.ones(63)

    folder = _shard(golden_dir, tmp_path / "broken", parts=3, edit=edit)
    with pytest.raises(CheckpointError) as err:
        load_model(folder, ["gen", "fm"], threads=3)
    assert "missing key fm_modules.fm_head.2.bias" in str(err.value)
    assert "norm_mot_gen.weight: checkpoint shape (63,) != config shape (64,)" in str(err.value)


def test_a_shard_of_unrequested_groups_is_never_opened(golden_dir, tmp_path, monkeypatch):
    folder = tmp_path / "by_group"
    folder.mkdir()
    shutil.copy(golden_dir / "config.json", folder)
    weights = load_file(golden_dir / "model.safetensors")
    weight_map = {k: "gen.safetensors" if group_of(k) == "gen" else "rest.safetensors" for k in weights}
    for name in set(weight_map.values()):
        save_file({k: weights[k] for k, n in weight_map.items() if n == name}, str(folder / name))
    (folder / loading.INDEX_FILE).write_text(json.dumps({"weight_map": weight_map}))
    opened, real_open = [], loading.safe_open

    def recording_open(path, *args, **kwargs):
        opened.append(path.name)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(loading, "safe_open", recording_open)
    load_model(folder, ["gen"], threads=4)
    assert opened == ["gen.safetensors"]


@pytest.mark.parametrize("target", [torch.float32, torch.bfloat16])
def test_stager_copies_through_buffers_smaller_than_a_tensor(monkeypatch, target):
    """The staged copy a GPU target takes, on the CPU: chunks that straddle elements, both buffers in turn."""
    monkeypatch.setattr(loading, "STAGING_BYTES", 7)
    stager = loading._Stager(torch.device("cpu"))
    tensors = [torch.randn(5, 13), torch.randn(()), torch.empty(0, 3), torch.randn(3).to(torch.bfloat16)]
    copies = [stager.copy(t, target) for t in tensors]
    stager.finish()
    for tensor, copy in zip(tensors, copies):
        assert copy.dtype == target and copy.shape == tensor.shape
        assert torch.equal(copy, tensor.to(target))
        assert copy.data_ptr() != tensor.data_ptr() or tensor.numel() == 0
