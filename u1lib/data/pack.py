"""Pack captioned images into ``train.parquet``, ``val.parquet`` and ``stats.json`` (the ``pack`` stage).

Two passes keep memory flat and the output independent of input order:

1. every item is loaded, decoded, fitted to its bucket and PNG-encoded once, then staged as its own
   row group in a temporary parquet file (only ids stay in memory);
2. usable ids are sorted, split into train/val by a seeded hash rule, and copied from the stage into
   the final files in row groups of :data:`ROW_GROUP_SIZE`.

Same input, same settings -> byte-identical parquet (pinned PNG and parquet settings, sorted rows,
no timestamps). Bad items are skipped and listed in ``stats.json`` with a reason, or, with
``strict``, reported together as one error before anything is written.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from u1lib.data.buckets import BucketSpec, check_source_size, scale_factor
from u1lib.data.images import BadItem, decode_image, encode_png
from u1lib.data.schema import PACKED_SCHEMA
from u1lib.data.sources import Candidate, Skipped, Source, SourceItem, folder_source, parquet_source
from u1lib.io import atomic_path, write_json

ROW_GROUP_SIZE = 16
MAX_LISTED_WHEN_EMPTY = 20  # skipped items an all-bad source's error shows
# image bytes are PNG already: compressing them again only costs time
PARQUET_OPTIONS = {
    "compression": {name: ("none" if name == "image" else "zstd") for name in PACKED_SCHEMA.names},
    "use_dictionary": ["bucket"],
    "write_statistics": ["sample_id", "width", "height", "bucket"],
    "version": "2.6",
}
SPLIT_RULE = "sort usable ids by sha256('{split_seed}:{sample_id}'); the first val_count go to val"


class PackError(ValueError):
    """Packing cannot produce a usable dataset; the message says why and what to do."""


def pack(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    buckets: BucketSpec,
    val_count: int = 0,
    split_seed: int = 0,
    strict: bool = False,
) -> dict:
    """Pack a folder of ``<id>.{jpg,jpeg,png,webp}`` + ``<id>.txt``, or a ``.parquet`` of ``sample_id,
    caption, think (optional), image (encoded bytes)``; returns the stats."""
    src = Path(src)
    source = parquet_source(src) if src.suffix == ".parquet" else folder_source(src)
    return _pack(source, Path(out_dir), buckets, val_count, split_seed, strict)


def convert_item(sample_id: str, item: SourceItem, spec: BucketSpec) -> tuple[dict, float]:
    """One dataset row (image fitted to its bucket, PNG-encoded) and the resize scale factor."""
    image = decode_image(item.image_bytes)
    bucket = spec.bucket_for(image.width, image.height)
    check_source_size(image.width, image.height, bucket, spec.min_source_fraction)
    row = {
        "sample_id": sample_id,
        "caption": item.caption,
        "think": item.think,
        "image": encode_png(spec.fit(image, bucket)),
        "width": bucket.width,
        "height": bucket.height,
        "bucket": bucket.name,
        "sha256": hashlib.sha256(item.image_bytes).hexdigest(),
    }
    return row, scale_factor(image.width, image.height, bucket)


def split_validation(sample_ids: list[str], val_count: int, split_seed: int) -> set[str]:
    """The ids that go to val: a seeded hash order, so neither file order nor other items matter."""
    if val_count >= len(sample_ids):
        raise PackError(
            f"val_count {val_count} leaves no training items: only {len(sample_ids)} usable item(s); "
            "lower val_count or add images"
        )
    ranked = sorted(sample_ids, key=lambda sid: (hashlib.sha256(f"{split_seed}:{sid}".encode()).hexdigest(), sid))
    return set(ranked[:val_count])


def _pack(source: Source, out_dir: Path, spec: BucketSpec, val_count: int, split_seed: int, strict: bool) -> dict:
    for name, value in (("val_count", val_count), ("split_seed", split_seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PackError(f"{name} must be a non-negative integer, got {value!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pack-", dir=out_dir) as tmp:
        staged = Path(tmp) / "staged.parquet"
        groups, scales, skipped = _stage(source, staged, spec)
        skipped.sort(key=lambda s: (s.origin, s.reason))
        _print_skipped(skipped)
        if strict and skipped:
            raise PackError(f"strict mode: {len(skipped)} bad item(s) in {source.description}:\n{_listing(skipped)}")
        if not groups:
            shown = skipped[:MAX_LISTED_WHEN_EMPTY]
            more = f"\n  ... and {len(skipped) - len(shown)} more" if len(skipped) > len(shown) else ""
            raise PackError(
                f"no usable items in {source.description}: all {len(skipped)} item(s) were skipped; "
                f"fix or replace them:\n{_listing(shown)}{more}"
            )
        val_ids = split_validation(sorted(groups), val_count, split_seed)
        per_bucket = _write_splits(staged, groups, val_ids, out_dir)
    stats = {
        "source": source.description,
        "counts": {
            "usable": len(groups),
            "train": sum(per_bucket["train"].values()),
            "val": len(val_ids),
            "skipped": len(skipped),
        },
        "per_bucket": per_bucket,
        "buckets": {"spec": spec.to_dict(), "names": _bucket_names(spec, per_bucket)},
        "resize": {
            "policy": spec.resize_policy,
            "min_source_fraction": spec.min_source_fraction,
            "upscaled": sorted(sid for sid, s in scales.items() if s > 1),
            "downscaled_count": sum(1 for s in scales.values() if s < 1),
        },
        "split": {"rule": SPLIT_RULE, "split_seed": split_seed, "val_count": val_count, "val_ids": sorted(val_ids)},
        "skipped": [s.to_dict() for s in skipped],
        "skipped_by_reason": dict(sorted(Counter(s.reason for s in skipped).items())),
        "ignored_files": source.ignored,
        "format": {"row_group_size": ROW_GROUP_SIZE, "image": "PNG, RGB, stored at bucket size"},
    }
    write_json(out_dir / "stats.json", stats)
    print(
        f"packed {stats['counts']['usable']} item(s) from {source.description}: "
        f"{stats['counts']['train']} train, {stats['counts']['val']} val -> {out_dir}"
    )
    return stats


def _stage(source: Source, staged: Path, spec: BucketSpec) -> tuple[dict[str, int], dict[str, float], list[Skipped]]:
    """Convert every candidate into its own row group of ``staged``; return id -> row group, scales, skips."""
    groups: dict[str, int] = {}
    scales: dict[str, float] = {}
    skipped = []
    with pq.ParquetWriter(staged, PACKED_SCHEMA, compression="none") as writer:
        for item in source.items:
            if not isinstance(item, Candidate):
                skipped.append(item)
                continue
            try:
                row, scale = convert_item(item.sample_id, item.load(), spec)
            except BadItem as err:
                skipped.append(Skipped(item.origin, err.reason, err.detail))
                continue
            writer.write_table(pa.Table.from_pylist([row], schema=PACKED_SCHEMA))
            groups[item.sample_id] = len(groups)
            scales[item.sample_id] = scale
    return groups, scales, skipped


def _write_splits(staged: Path, groups: dict[str, int], val_ids: set[str], out_dir: Path) -> dict:
    """Copy staged rows, sorted by id, into train/val parquet files; return per-split bucket counts."""
    stage = pq.ParquetFile(staged)
    per_bucket = {"train": Counter(), "val": Counter()}
    with atomic_path(out_dir / "train.parquet") as train_tmp, atomic_path(out_dir / "val.parquet") as val_tmp:
        writers = {
            "train": pq.ParquetWriter(train_tmp, PACKED_SCHEMA, **PARQUET_OPTIONS),
            "val": pq.ParquetWriter(val_tmp, PACKED_SCHEMA, **PARQUET_OPTIONS),
        }
        pending: dict[str, list[pa.Table]] = {"train": [], "val": []}
        for sample_id in sorted(groups):
            split = "val" if sample_id in val_ids else "train"
            row = stage.read_row_group(groups[sample_id])
            per_bucket[split][row.column("bucket")[0].as_py()] += 1
            pending[split].append(row)
            if len(pending[split]) == ROW_GROUP_SIZE:
                writers[split].write_table(pa.concat_tables(pending[split]), row_group_size=ROW_GROUP_SIZE)
                pending[split] = []
        for split, writer in writers.items():
            if pending[split]:
                writer.write_table(pa.concat_tables(pending[split]), row_group_size=ROW_GROUP_SIZE)
            writer.close()
    return {split: dict(sorted(counts.items())) for split, counts in per_bucket.items()}


def _bucket_names(spec: BucketSpec, per_bucket: dict) -> list[str]:
    """The spec's bucket list; for kind aspect (no list) the buckets the images got."""
    if spec.kind == "aspect":
        return sorted({*per_bucket["train"], *per_bucket["val"]})
    return [bucket.name for bucket in spec.buckets()]


def _listing(skipped: list[Skipped]) -> str:
    return "\n".join(f"  {s.origin}: {s.reason}" + (f" ({s.detail})" if s.detail else "") for s in skipped)


def _print_skipped(skipped: list[Skipped]) -> None:
    if not skipped:
        return
    print(f"skipped {len(skipped)} item(s):")
    for reason, count in sorted(Counter(s.reason for s in skipped).items()):
        print(f"  {count:5d}  {reason}")


def cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m u1lib {verb}", description=__doc__.split("\n")[0])
    parser.add_argument("src", help="folder of <id>.<jpg|jpeg|png|webp> + <id>.txt, or a .parquet file")
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--out-dir", help="where train.parquet, val.parquet, stats.json go")
    out.add_argument("--out", help="one FILE.parquet of every usable item (no split), stats in FILE.stats.json")
    parser.add_argument(
        "--buckets",
        default="official",
        help="'official' (8B, ~4 MP), 'area:<pixels>' or 'aspect:<pixels>' (aspect kept, no crop)",
    )
    parser.add_argument("--token-size", type=int, default=32, help="bucket sides are multiples of this (8B: 32)")
    parser.add_argument(
        "--min-source-fraction",
        type=float,
        default=0.25,
        help="skip images whose short side is below this fraction of the bucket's",
    )
    parser.add_argument("--val-count", type=int, default=0)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--strict", action="store_true", help="any bad item is an error")
    args = parser.parse_args(argv)
    if args.out and args.val_count:
        parser.error("--out writes one file without a validation split; use --out-dir with --val-count")
    try:
        spec = BucketSpec.parse(args.buckets, args.token_size, args.min_source_fraction)
        options = dict(buckets=spec, val_count=args.val_count, split_seed=args.split_seed, strict=args.strict)
        if args.out_dir:
            pack(args.src, args.out_dir, **options)
        else:
            _pack_to_file(args.src, Path(args.out), options)
    except ValueError as err:  # PackError, SourceError, BucketError and bad files
        print(f"pack: {err}", file=sys.stderr)
        return 1
    return 0


def _pack_to_file(src: str, out: Path, options: dict) -> None:
    """Pack into a scratch folder beside ``out``, then move the one parquet and its stats into place."""
    if out.suffix != ".parquet":
        raise PackError(f"--out {out}: the file name must end in .parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        pack(src, scratch, **options)
        os.replace(Path(scratch) / "train.parquet", out)
        os.replace(Path(scratch) / "stats.json", out.with_suffix(".stats.json"))
