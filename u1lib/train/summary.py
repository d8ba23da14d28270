"""The run summary (metrics.json): what was trained, on what, how fast, and the losses it reached."""

from __future__ import annotations

from typing import TYPE_CHECKING

from u1lib.provenance import git_commit, versions
from u1lib.train.inputs import dataset_record
from u1lib.train.metrics import device_name, peak_gpu_bytes, peak_host_rss_bytes
from u1lib.train.run_folder import TRAIN_LOG, VAL_LOG

if TYPE_CHECKING:
    from u1lib.train.loop import Trainer


def run_metrics(t: "Trainer", *, adapter_bytes: int, best_adapter: dict) -> dict:
    """metrics.json of a finished run. Its one "best" is ``best_adapter`` (train/adapter_files.py:
    the lowest validation loss after step 0); the base model's loss is ``initial_val_loss`` (step 0)."""
    train_log, val_log = t.logs.records[TRAIN_LOG], t.logs.records[VAL_LOG]
    return {
        "steps": t.step,
        "images_seen": t.images_seen,
        "wall_time_s": t.train_seconds,
        "job_seconds": t.clock.summary(),
        "s_per_step": t.train_seconds / len(train_log) if train_log else None,
        "images_per_s": t.images_seen / t.train_seconds if t.train_seconds else None,
        "peak_gpu_mem_bytes": peak_gpu_bytes(t.device),
        "peak_host_rss_bytes": peak_host_rss_bytes(),
        "final_train_loss": train_log[-1]["loss"] if train_log else None,
        "initial_val_loss": val_log[0]["val_loss"] if val_log and val_log[0]["step"] == 0 else None,
        "final_val_loss": val_log[-1]["val_loss"] if val_log else None,
        "trainable_params": sum(p.numel() for p in t.trainable.values()),
        "device": device_name(t.device),
        "world_size": t.dist.world_size,
        "versions": versions(),
        "git_commit": git_commit(),
        "t_hist": t.t_hist.to_dict(),
        "dropout_count": t.dropped_total,
        "base_revision": t.manifest.get("revision"),
        "dataset": {
            "train": dataset_record(t.train_data),
            "validation": {"source": t.val_source, **dataset_record(t.val_data)},
        },
        "upstream_lora": t.baked and {k: len(v) for k, v in t.baked.items()},
        "adapter_bytes": adapter_bytes,
        "best_adapter": best_adapter,
    }
