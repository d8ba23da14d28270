"""The prefix-K/V cache stage: understanding-tower K/V for every caption, on disk, keyed by what shapes it.

Layout of ``out_dir``: ``shard-00000.safetensors`` ... holding ``{sample_id}.k`` / ``{sample_id}.v``
as [layers, kv_heads, L, head_dim] (the unconditional prefix under ``__uncond__``), ``manifest.parquet``
(sample_id, shard, length) and ``cache_info.json`` (the key fields, their hash, the names of the data
files it was built from, and each file's size, sha256 and mtime). A build replaces the folder as a
whole, so a killed or failed rebuild leaves the previous cache intact. The reader checks the files
against their record (hashing only those whose size or mtime moved) and memory maps the shards,
stacking only the rows of the current batch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import safe_open

from u1lib.data.prompts import UNCOND_ID, PromptSpec, load_tokenizer
from u1lib.data.reader import PackedDataset
from u1lib.device import DTYPES, resolve_device
from u1lib.io import atomic_folder, atomic_path, read_json, refuse_foreign, save_safetensors, sha256_file, write_json
from u1lib.model.config import U1Config
from u1lib.model.loading import load_model
from u1lib.model.u1 import PrefixKV
from u1lib.prefix import PrefixEncoder
from u1lib.snapshot import check_files, digest_files, require_verified
from u1lib.source_hash import code_hash

# The cache key's code: what computes the cached K/V, less file plumbing and the snapshot check
# (an edit to those must not recompute an 8B cache).
CACHE_CODE_EXCLUDED = ("io.py", "provenance.py", "source_hash.py", "names.py", "snapshot.py")
INFO = "cache_info.json"
MANIFEST = "manifest.parquet"
_CACHE_FILE = re.compile(r"shard-\d{5}\.safetensors|manifest\.parquet|cache_info\.json")


class CacheError(ValueError):
    """A prefix cache whose files are not the ones its build wrote."""


def _rebuild_hint(cache_dir: Path) -> str:
    return (
        f"rebuild it from every data file the run reads, e.g. `python -m u1lib cache --snapshot SNAPSHOT "
        f"--manifest MANIFEST --data TRAIN.parquet VAL.parquet --out {cache_dir}` (in the workflow: remove "
        f"{cache_dir} and run Snakemake again)"
    )


def _file_records(folder: Path) -> list[dict]:
    """Size, sha256 and mtime of every file the cache wrote, for the reader's check."""
    names = sorted(p.name for p in folder.iterdir() if p.name != INFO)
    return [
        {"path": name, "size": stat[0], "sha256": sha, "mtime_ns": stat[1]}
        for name, (sha, stat) in zip(names, digest_files(folder, names, {}))
    ]


def engine_hash() -> str:
    """Hash of the code that decides the cached tensors (a code change must never reuse a stale cache)."""
    return code_hash(["cache.py"], exclude=CACHE_CODE_EXCLUDED)


def cache_key(snapshot_dir: Path, manifest_path: Path, spec: PromptSpec, dtype: str) -> dict:
    manifest = read_json(manifest_path)
    fields = {
        "model_manifest_hash": manifest["manifest_hash"],
        "model_revision": manifest.get("revision"),
        "tokenizer_sha256": sha256_file(Path(snapshot_dir) / "tokenizer.json"),
        "prompt": spec.to_dict(),
        "dtype": dtype,
        "engine": engine_hash(),
    }
    fields["key"] = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return fields


def bytes_per_token(cfg: U1Config, dtype: str) -> int:
    """K and V of every layer for one text token."""
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * DTYPES[dtype].itemsize


def estimate(snapshot_dir: Path, data_paths: Sequence[Path], spec: PromptSpec, dtype: str) -> dict:
    """Token counts and disk size of the cache, from the tokenizer alone (no model is loaded)."""
    tokenizer = load_tokenizer(snapshot_dir)
    encoder = PrefixEncoder(None, tokenizer, spec)
    tokens = [len(encoder.token_ids(c, t)) for path in data_paths for c, t in PackedDataset(path).texts()]
    per_token = bytes_per_token(U1Config.from_file(snapshot_dir), dtype)
    total = (sum(tokens) + len(encoder.uncond_ids())) * per_token
    return {"captions": len(tokens), "tokens": sum(tokens), "bytes_per_token": per_token, "total_bytes": total}


def build_cache(
    snapshot_dir: Path,
    manifest_path: Path,
    data_paths: Sequence[Path],
    out_dir: Path,
    *,
    template: str = "neo1_0",
    trigger: str = "",
    use_think: bool = False,
    batch_size: int = 16,
    dtype: str = "float32",
    device: str = "auto",
    shard_mb: int = 512,
) -> dict:
    """Compute and store prefix K/V for every caption of ``data_paths`` plus the unconditional prefix."""
    snapshot_dir, out_dir = require_verified(manifest_path, snapshot_dir), Path(out_dir)  # refuses changed weights
    refuse_foreign(out_dir, _CACHE_FILE.fullmatch, "`u1lib cache`")
    spec = PromptSpec(template=template, trigger=trigger, use_think=use_think)
    key = cache_key(snapshot_dir, manifest_path, spec, dtype)
    dev = resolve_device(device)
    model = load_model(snapshot_dir, ["und", "embed"], device=dev, dtype=DTYPES[dtype])
    encoder = PrefixEncoder(model, load_tokenizer(snapshot_dir), spec, dev)
    items: dict[str, list[int]] = {UNCOND_ID: encoder.uncond_ids()}
    for path in data_paths:
        dataset = PackedDataset(path)
        for sample_id, (caption, think) in zip(dataset.sample_ids, dataset.texts()):
            if sample_id in items:
                raise ValueError(f"{path}: sample_id {sample_id!r} appears in more than one data file")
            items[sample_id] = encoder.token_ids(caption, think)
    # file names only: they tell a reader what to rebuild from without recording this machine's paths
    info = {**key, "data_files": [Path(path).name for path in data_paths]}
    with atomic_folder(out_dir) as folder:
        rows = _write_shards(folder, encoder, items, batch_size, shard_mb)
        table = pa.table({name: [r[name] for r in rows] for name in ("sample_id", "shard", "length")})
        with atomic_path(folder / MANIFEST) as tmp:
            pq.write_table(table, tmp)
        info.update(entries=len(rows), tokens=sum(r["length"] for r in rows), files=_file_records(folder))
        write_json(folder / INFO, info)
    return info


def _write_shards(folder: Path, encoder: PrefixEncoder, items: dict[str, list[int]], batch_size: int, shard_mb: int):
    """Encode every item and write shards of about ``shard_mb`` into ``folder``: the manifest's rows."""
    by_length: dict[int, list[str]] = {}
    for sample_id in sorted(items):
        by_length.setdefault(len(items[sample_id]), []).append(sample_id)
    # full batches of equal length: no padding, and each row's K/V independent of its batch-mates
    batches = [ids[k : k + batch_size] for _, ids in sorted(by_length.items()) for k in range(0, len(ids), batch_size)]
    rows, shard, shard_bytes, shard_index = [], {}, 0, 0

    def flush():
        nonlocal shard, shard_bytes, shard_index
        if shard:
            save_safetensors(folder / f"shard-{shard_index:05d}.safetensors", shard)
            shard, shard_bytes, shard_index = {}, 0, shard_index + 1

    for ids in batches:
        cache = encoder.encode_ids([items[i] for i in ids])
        for row, sample_id in enumerate(ids):
            one = cache.select(row)
            k = torch.stack([t[0] for t in one.keys]).cpu().contiguous()  # [layers, kv, L, D]
            v = torch.stack([t[0] for t in one.values]).cpu().contiguous()
            shard[f"{sample_id}.k"], shard[f"{sample_id}.v"] = k, v
            shard_bytes += 2 * k.numel() * k.element_size()
            rows.append({"sample_id": sample_id, "shard": f"shard-{shard_index:05d}.safetensors", "length": k.shape[2]})
        if shard_bytes >= shard_mb * 2**20:
            flush()
    flush()
    return rows


class PrefixCacheReader:
    """Random access to cached prefixes; only the requested rows are read from the memory-mapped shards."""

    def __init__(self, cache_dir: Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
        self.cache_dir = Path(cache_dir)
        if not (self.cache_dir / MANIFEST).exists() or not (self.cache_dir / INFO).exists():
            raise FileNotFoundError(
                f"{self.cache_dir}: no prefix cache ({MANIFEST} or {INFO} missing): run the cache stage first "
                "(python -m u1lib cache)"
            )
        self.info = read_json(self.cache_dir / INFO)
        self._check_files()
        table = pq.read_table(self.cache_dir / MANIFEST)
        self.shard_of = dict(zip(table.column("sample_id").to_pylist(), table.column("shard").to_pylist()))
        self.device, self.dtype = torch.device(device), dtype
        self._handles: dict[str, object] = {}

    def _check_files(self) -> None:
        """Every file as the build wrote it: sizes always, sha256 of those whose size or mtime moved."""
        records = self.info.get("files")
        fields = {"path", "size", "sha256", "mtime_ns"}
        if not isinstance(records, list) or not all(isinstance(r, dict) and fields <= r.keys() for r in records):
            raise CacheError(
                f"prefix cache {self.cache_dir}: {INFO} records no file checksums (an older u1lib built it, "
                "or it was edited): " + _rebuild_hint(self.cache_dir)
            )
        trusted = {r["path"]: ([r["size"], r["mtime_ns"]], r["sha256"]) for r in records}
        failed, _ = check_files(self.cache_dir, records, trusted)
        if failed:
            raise CacheError(
                f"prefix cache {self.cache_dir} is damaged, its files differ from what {INFO} recorded when it "
                "was built:\n  " + "\n  ".join(failed.values()) + "\n" + _rebuild_hint(self.cache_dir)
            )

    def _handle(self, shard: str):
        if shard not in self._handles:
            self._handles[shard] = safe_open(self.cache_dir / shard, framework="pt")
        return self._handles[shard]

    def missing(self, sample_ids: Sequence[str]) -> list[str]:
        """The ids without a cached prefix, in order, each once: a run can check its data before a model loads."""
        return list(dict.fromkeys(i for i in sample_ids if i not in self.shard_of))

    def missing_message(self, sample_ids: Sequence[str]) -> str:
        """What the cache was built from and how to rebuild it, for ids that :meth:`missing` returned."""
        files = self.info.get("data_files")
        built_from = ", ".join(files) if files else "data files it does not record (an older cache)"
        more = f" and {len(sample_ids) - 5} more" if len(sample_ids) > 5 else ""
        shown = ", ".join(map(repr, sample_ids[:5])) + more
        return f"prefix cache {self.cache_dir} was built from {built_from} without sample(s) {shown}: " + _rebuild_hint(
            self.cache_dir
        )

    def one(self, sample_id: str) -> PrefixKV:
        if sample_id not in self.shard_of:
            raise KeyError(self.missing_message([sample_id]))
        handle = self._handle(self.shard_of[sample_id])
        k, v = handle.get_tensor(f"{sample_id}.k"), handle.get_tensor(f"{sample_id}.v")
        to = dict(device=self.device, dtype=self.dtype or k.dtype, non_blocking=True)
        k, v = k.to(**to), v.to(**to)  # one copy each; layers are views of it
        return PrefixKV(
            [layer[None] for layer in k],
            [layer[None] for layer in v],
            torch.tensor([k.shape[2]], dtype=torch.long, device=self.device),
        )

    def get(self, sample_ids: Sequence[str]) -> PrefixKV:
        return PrefixKV.stack([self.one(i) for i in sample_ids])


def cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m u1lib {verb}", description=__doc__)
    parser.add_argument("--snapshot", type=Path, required=True, help="model snapshot directory")
    parser.add_argument("--manifest", type=Path, required=True, help="the snapshot's manifest.json")
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="packed parquet file(s)")
    parser.add_argument("--out", type=Path, help="cache directory (required unless --estimate)")
    parser.add_argument("--template", default="neo1_0")
    parser.add_argument("--trigger", default="")
    parser.add_argument("--use-think", action="store_true")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--estimate", action="store_true", help="print the disk size and exit")
    args = parser.parse_args(argv)
    spec = PromptSpec(template=args.template, trigger=args.trigger, use_think=args.use_think)
    if args.estimate:
        est = estimate(args.snapshot, args.data, spec, args.dtype)
        print(
            f"{est['captions']} captions, {est['tokens']} tokens, {est['bytes_per_token'] / 1024:.1f} KiB per token: "
            f"{est['total_bytes'] / 2**20:.1f} MiB on disk"
        )
        return 0
    if args.out is None:
        parser.error("--out is required unless --estimate is given")
    info = build_cache(
        args.snapshot,
        args.manifest,
        args.data,
        args.out,
        template=args.template,
        trigger=args.trigger,
        use_think=args.use_think,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
    )
    print(f"cached {info['entries']} prefixes ({info['tokens']} tokens) under key {info['key']} in {args.out}")
    return 0
