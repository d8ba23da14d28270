"""``python -m u1lib inspect-data``: summarise a packed parquet file and check it against the packed
schema, without reading its image column."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from u1lib.data.schema import PACKED_COLUMNS, read_schema, schema_problems


def inspect_data(path: str | os.PathLike) -> dict:
    """Summary of a packed parquet without reading its image column; ``problems`` empty when it is sound."""
    path = Path(path)
    schema = read_schema(path)
    problems = schema_problems(schema, PACKED_COLUMNS)
    columns = [name for name in PACKED_COLUMNS if name != "image" and name in schema.names]
    table = pq.read_table(path, columns=columns)
    summary = {"file": str(path), "rows": table.num_rows, "row_groups": pq.ParquetFile(path).num_row_groups}
    if "sample_id" in columns:
        ids = table.column("sample_id").to_pylist()
        duplicates = sorted(sid for sid, n in Counter(ids).items() if n > 1)
        if duplicates:
            problems.append(f"duplicate sample_id(s): {', '.join(duplicates[:10])}")
        if ids != sorted(ids):
            problems.append("rows are not sorted by sample_id")
    if "bucket" in columns:
        summary["buckets"] = dict(sorted(Counter(table.column("bucket").to_pylist()).items()))
    if {"bucket", "width", "height"} <= set(columns):
        sizes = zip(*(table.column(name).to_pylist() for name in ("bucket", "width", "height")))
        mismatched = sum(1 for bucket, w, h in sizes if bucket != f"{w}x{h}")
        if mismatched:
            problems.append(f"{mismatched} row(s) whose width x height differs from their bucket")
    if "caption" in columns and table.num_rows:
        lengths = [len(caption or "") for caption in table.column("caption").to_pylist()]
        summary["caption_chars"] = {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)}
    if "think" in columns:
        summary["with_think"] = table.num_rows - table.column("think").null_count
    summary["problems"] = problems
    return summary


def cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m u1lib {verb}", description=inspect_data.__doc__)
    parser.add_argument("file", help="a train.parquet or val.parquet written by pack")
    args = parser.parse_args(argv)
    try:
        summary = inspect_data(args.file)
    except ValueError as err:
        print(f"inspect-data: {err}", file=sys.stderr)
        return 1
    print(f"{summary['file']}: {summary['rows']} rows in {summary['row_groups']} row groups")
    for bucket, count in summary.get("buckets", {}).items():
        print(f"  bucket {bucket:>11}: {count}")
    if "caption_chars" in summary:
        c = summary["caption_chars"]
        print(f"  caption chars: min {c['min']}, median {c['median']}, max {c['max']}")
    if "with_think" in summary:
        print(f"  rows with think text: {summary['with_think']}")
    for problem in summary["problems"]:
        print(f"  PROBLEM: {problem}")
    print("  schema: ok" if not summary["problems"] else f"  {len(summary['problems'])} problem(s)")
    return 1 if summary["problems"] else 0
