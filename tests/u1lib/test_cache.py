"""The prefix cache: exact agreement with the engine, keys that notice changes, size estimate, what it
says when asked for a sample it was not built with, and a folder that is whole or refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import CONFIG_8B
from u1lib.cache import CacheError, PrefixCacheReader, build_cache, bytes_per_token, cache_key, estimate
from u1lib.data.prompts import UNCOND_ID, PromptSpec, load_tokenizer
from u1lib.data.reader import PackedDataset
from u1lib.io import ForeignFilesError
from u1lib.model.config import U1Config
from u1lib.model.loading import load_model
from u1lib.prefix import PrefixEncoder


def _equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.keys + a.values, b.keys + b.values))


def test_cached_prefix_equals_online_prefix_bit_for_bit(tiny_workspace):
    ws = tiny_workspace
    model = load_model(ws["snapshot_dir"], ["und", "embed"])
    encoder = PrefixEncoder(model, load_tokenizer(ws["snapshot_dir"]), PromptSpec())
    reader = PrefixCacheReader(ws["cache_dir"])
    data = PackedDataset(ws["train_parquet"])
    for sample_id, (caption, think) in zip(data.sample_ids, data.texts()):
        assert _equal(reader.one(sample_id), encoder.captions([caption], [think])), sample_id
    assert _equal(reader.one(UNCOND_ID), encoder.uncond())
    # a batch read pads rows to the longest and keeps each row's true length
    batch = reader.get(data.sample_ids[:3])
    for row, sample_id in enumerate(data.sample_ids[:3]):
        assert _equal(batch.select(row), reader.one(sample_id))


def test_key_changes_with_trigger_template_and_dtype(tiny_workspace):
    ws = tiny_workspace
    base = cache_key(ws["snapshot_dir"], ws["manifest_path"], PromptSpec(), "float32")
    assert base == cache_key(ws["snapshot_dir"], ws["manifest_path"], PromptSpec(), "float32")
    others = [
        cache_key(ws["snapshot_dir"], ws["manifest_path"], PromptSpec(trigger="sks style"), "float32"),
        cache_key(ws["snapshot_dir"], ws["manifest_path"], PromptSpec(template="plain"), "float32"),
        cache_key(ws["snapshot_dir"], ws["manifest_path"], PromptSpec(use_think=True), "float32"),
        cache_key(ws["snapshot_dir"], ws["manifest_path"], PromptSpec(), "bfloat16"),
    ]
    assert len({base["key"], *(o["key"] for o in others)}) == 5


def test_trigger_reaches_the_tensors(tiny_workspace, tmp_path):
    ws = tiny_workspace
    data = [ws["train_parquet"]]
    info = build_cache(ws["snapshot_dir"], ws["manifest_path"], data, tmp_path / "c", trigger="in sks style")
    assert info["prompt"]["trigger"] == "in sks style"
    first = PackedDataset(ws["train_parquet"]).sample_ids[0]
    a = PrefixCacheReader(ws["cache_dir"]).one(first)
    b = PrefixCacheReader(tmp_path / "c").one(first)
    assert b.keys[0].shape[2] > a.keys[0].shape[2]  # the trigger adds tokens


def test_estimate_matches_written_cache_and_8b_rate(tiny_workspace):
    ws = tiny_workspace
    est = estimate(ws["snapshot_dir"], [ws["train_parquet"], ws["val_parquet"]], PromptSpec(), "float32")
    info = (ws["cache_dir"] / "cache_info.json").read_text()
    uncond = PrefixEncoder(None, load_tokenizer(ws["snapshot_dir"]), PromptSpec()).uncond_ids()
    assert f'"tokens": {est["tokens"] + len(uncond)}' in info
    # 8B: 42 layers x (K + V) x 8 kv heads x 128 x 2 bytes = 168 KiB per text token in bf16
    assert bytes_per_token(U1Config.from_file(CONFIG_8B), "bfloat16") == 168 * 1024


def test_rows_of_equal_length_batch_without_changing_bits(tiny_workspace):
    """The cache batches captions of one length together; each row must come out as if alone."""
    model = load_model(tiny_workspace["snapshot_dir"], ["und", "embed"])
    encoder = PrefixEncoder(model, load_tokenizer(tiny_workspace["snapshot_dir"]), PromptSpec())
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 900, (40,), generator=g).tolist() for _ in range(5)] + [[5, 6, 7]]
    batch = encoder.encode_ids(rows)
    for index, row in enumerate(rows):
        assert _equal(batch.select(index), encoder.encode_ids([row])), index


def test_a_cache_records_its_data_files_and_names_them_when_a_sample_is_missing(tiny_workspace, tmp_path):
    ws = tiny_workspace
    assert PrefixCacheReader(ws["cache_dir"]).info["data_files"] == ["train.parquet", "val.parquet"]
    build_cache(ws["snapshot_dir"], ws["manifest_path"], [ws["train_parquet"]], tmp_path / "c")  # val left out
    reader = PrefixCacheReader(tmp_path / "c")
    train_ids = PackedDataset(ws["train_parquet"]).sample_ids
    val_ids = PackedDataset(ws["val_parquet"]).sample_ids
    assert reader.missing(train_ids) == []
    assert reader.missing([val_ids[1], train_ids[0], *val_ids]) == [val_ids[1], val_ids[0]]  # in order, each once
    with pytest.raises(KeyError) as err:
        reader.one(val_ids[0])
    message = err.value.args[0]
    assert f"prefix cache {tmp_path / 'c'} was built from train.parquet without sample(s) {val_ids[0]!r}" in message
    assert "--data TRAIN.parquet VAL.parquet" in message
    # names only: the cache says what it was built from without recording this machine's folders
    assert str(ws["train_parquet"].parent) not in (tmp_path / "c" / "cache_info.json").read_text()


def test_the_missing_message_shortens_a_long_list(tiny_workspace):
    reader = PrefixCacheReader(tiny_workspace["cache_dir"])
    ids = [f"gone{i}" for i in range(8)]
    assert reader.missing(ids) == ids
    message = reader.missing_message(ids)
    assert "'gone0', 'gone1', 'gone2', 'gone3', 'gone4' and 3 more" in message and "gone5" not in message


def _copy_cache(ws, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(ws["cache_dir"], copy)  # new mtimes: the reader hashes every file once
    return copy


def test_a_copied_cache_reads_and_a_damaged_file_is_named(tiny_workspace, tmp_path):
    cache = _copy_cache(tiny_workspace, tmp_path)
    first = PackedDataset(tiny_workspace["train_parquet"]).sample_ids[0]
    assert _equal(PrefixCacheReader(cache).one(first), PrefixCacheReader(tiny_workspace["cache_dir"]).one(first))
    shard = cache / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, size unchanged
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError) as err:
        PrefixCacheReader(cache)
    message = str(err.value)
    assert f"{shard}: sha256" in message and f"--out {cache}`" in message and f"remove {cache}" in message
    shard.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(CacheError, match=rf"{shard}: size {len(data) // 3} bytes"):
        PrefixCacheReader(cache)
    shard.unlink()
    with pytest.raises(CacheError, match=rf"{shard}: missing"):
        PrefixCacheReader(cache)


def test_a_cache_without_file_records_asks_for_a_rebuild(tiny_workspace, tmp_path):
    cache = _copy_cache(tiny_workspace, tmp_path)
    info = json.loads((cache / "cache_info.json").read_text())
    del info["files"]
    (cache / "cache_info.json").write_text(json.dumps(info))
    with pytest.raises(CacheError, match="records no file checksums .*python -m u1lib cache"):
        PrefixCacheReader(cache)


def test_a_failed_rebuild_leaves_the_previous_cache_whole(tiny_workspace, tmp_path, monkeypatch):
    ws = tiny_workspace
    cache = _copy_cache(ws, tmp_path)
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    calls = []

    def fail_on_second_batch(self, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise RuntimeError("killed mid-build")
        return real_encode(self, rows)

    real_encode = PrefixEncoder.encode_ids
    monkeypatch.setattr(PrefixEncoder, "encode_ids", fail_on_second_batch)
    data = [ws["train_parquet"], ws["val_parquet"]]
    with pytest.raises(RuntimeError, match="killed mid-build"):
        build_cache(ws["snapshot_dir"], ws["manifest_path"], data, cache, trigger="new trigger", batch_size=1)
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no temporary folder left
    monkeypatch.setattr(PrefixEncoder, "encode_ids", real_encode)
    info = build_cache(ws["snapshot_dir"], ws["manifest_path"], data, cache, trigger="new trigger", shard_mb=0)
    assert PrefixCacheReader(cache).info == info and info["prompt"]["trigger"] == "new trigger"
    shards = sorted(p.name for p in cache.glob("shard-*"))
    assert len(shards) == info["entries"] > len([n for n in before if n.startswith("shard-")])


def test_a_folder_with_other_files_is_refused_before_anything_is_written(tiny_workspace, tmp_path):
    ws = tiny_workspace
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ForeignFilesError, match=rf"{mine} holds files `u1lib cache` did not write \(notes.txt\)"):
        build_cache(ws["snapshot_dir"], ws["manifest_path"], [ws["train_parquet"]], mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    with pytest.raises(ForeignFilesError, match="is a file"):
        build_cache(ws["snapshot_dir"], ws["manifest_path"], [ws["train_parquet"]], mine / "notes.txt")
