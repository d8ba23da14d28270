"""What a run reads besides the model, checked before the model loads: its data and prefix cache."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from u1lib.cache import PrefixCacheReader
from u1lib.data.reader import PackedDataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunFiles:
    """What one training run reads, and the folder it owns: the trainer, the train verb and the
    launcher of several ranks hand these on as one."""

    snapshot_dir: Path
    manifest_path: Path
    train_parquet: Path
    run_dir: Path
    val_parquet: Path | None = None  # None: the validation loss is measured on training images
    cache_dir: Path | None = None  # None only with train.memory_mode online_prefix


def open_data(train_parquet: Path, val_parquet: Path | None) -> tuple[PackedDataset, PackedDataset, str]:
    """Training rows, the rows the validation loss is measured on, and where those come from
    (``held-out``, or ``train`` when no validation file is given, which is said)."""
    train_data = PackedDataset(train_parquet)
    if not len(train_data):
        raise ValueError(f"{train_parquet}: no rows to train on; re-run pack on a folder with usable images")
    if val_parquet is None:
        log.warning(
            "no validation data given: the validation loss is measured on training images of %s, not held-out ones",
            train_parquet,
        )
        return train_data, PackedDataset(train_parquet), "train"  # own reader: the prefetch thread uses train's
    val_data = PackedDataset(val_parquet)
    if not len(val_data):
        raise ValueError(
            f"{val_parquet}: no rows, so there is nothing to validate on. Pack with --val-count N "
            "(dataset.val_count in the workflow), or leave --val-data out to measure the loss on training images"
        )
    return train_data, val_data, "held-out"


def open_cache(
    cache_dir, *, manifest: dict, data: list[PackedDataset], device: torch.device, dtype: torch.dtype
) -> PrefixCacheReader:
    """The prefix cache, checked to come from this model and to hold every row of ``data``."""
    if cache_dir is None:
        raise ValueError(
            "train.memory_mode resident reads prefixes from a cache: pass --cache DIR (built by "
            "`python -m u1lib cache`), or set train.memory_mode: online_prefix"
        )
    reader = PrefixCacheReader(cache_dir, device=device, dtype=dtype)
    built_for = reader.info.get("model_manifest_hash")
    if built_for != manifest.get("manifest_hash"):
        raise ValueError(
            f"prefix cache {cache_dir} was built for model manifest {built_for}, this run trains "
            f"{manifest.get('manifest_hash')}: rebuild the cache with this snapshot"
        )
    missing = reader.missing([i for d in data for i in d.sample_ids])
    if missing:
        raise ValueError(reader.missing_message(missing))
    return reader


def dataset_record(data: PackedDataset) -> dict:
    """Which data an adapter was trained or validated on: a content fingerprint, not a path."""
    return {"file": data.path.name, "rows": len(data), "fingerprint": data.fingerprint()}
