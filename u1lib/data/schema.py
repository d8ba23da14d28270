"""Column contracts of the parquet files: the packed dataset (docs/ARCHITECTURE.md) and parquet sources."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PACKED_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("think", pa.string(), nullable=True),
        pa.field("image", pa.binary(), nullable=False),  # PNG of the RGB image at its bucket size
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("bucket", pa.string(), nullable=False),  # "{W}x{H}"
        pa.field("sha256", pa.string(), nullable=False),  # of the source file's bytes
    ]
)
PACKED_COLUMNS = {
    "sample_id": "string",
    "caption": "string",
    "think": "string",
    "image": "binary",
    "width": "int32",
    "height": "int32",
    "bucket": "string",
    "sha256": "string",
}
SOURCE_REQUIRED = {"sample_id": "string", "caption": "string", "image": "binary"}
SOURCE_OPTIONAL = {"think": "string"}

_KIND_TESTS = {
    "string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    "binary": lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t),
    "int32": pa.types.is_int32,
}


def read_schema(path: str | os.PathLike) -> pa.Schema:
    """The arrow schema of a parquet file, or a ValueError that names the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such parquet file")
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not a readable parquet file ({err})") from None


def schema_problems(schema: pa.Schema, required: dict[str, str], optional: dict[str, str] | None = None) -> list[str]:
    """Every missing, repeated or mistyped column, one message each (empty when the schema fits)."""
    optional = optional or {}
    problems = []
    for name, kind in {**required, **optional}.items():
        count = len(schema.get_all_field_indices(name))
        if count == 0:
            if name in required:
                problems.append(f"missing column '{name}' ({kind})")
        elif count > 1:
            problems.append(f"column '{name}' appears {count} times")
        elif not _KIND_TESTS[kind](schema.field(name).type):
            problems.append(f"column '{name}' has type {schema.field(name).type}, expected {kind}")
    return problems
