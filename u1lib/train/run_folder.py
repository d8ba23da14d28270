"""What a run folder holds while it trains: an exclusive lock and the loss history.

The lock is an ``flock`` on ``run_dir/.lock``: the kernel releases it when the process ends, however
it ends, so a killed run never leaves a stale lock behind (on a network file system flock may only
lock within one host), and the file stays as the mark of a run folder. The history lives in memory
and in each checkpoint, and is appended line by line to ``run_dir`` for anyone watching; a resume
rewrites the files from the checkpoint, so lines that Snakemake deleted with a failed job, or that
were written after the checkpoint, come back exactly as an uninterrupted run writes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from typing import Iterator

from u1lib.io import append_jsonl, read_jsonl, refuse_foreign, write_jsonl
from u1lib.train.checkpoint import LOG_NAMES

TRAIN_LOG, VAL_LOG = LOG_NAMES


class RunFolderBusy(RuntimeError):
    """Another live process trains in this run folder."""


LOCK = ".lock"


def claim_run_folder(run_dir: Path) -> None:
    """Make ``run_dir`` a run folder; one that is neither new, empty nor a run folder is refused.

    The lock file every training leaves behind tells a run folder from a folder of the user's, where
    a fresh run would clear the logs, adapters and TensorBoard folders it finds.
    """
    if not (run_dir / LOCK).is_file():
        refuse_foreign(run_dir, lambda name: False, "`u1lib train`")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK).touch()


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` (a run folder, :func:`claim_run_folder`) for one training."""
    claim_run_folder(run_dir)
    with open(run_dir / LOCK, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunFolderBusy(
                f"{run_dir} is in use by {holder}: two trainings in one run folder would mix their checkpoints "
                "and logs. Wait for it to finish or stop it (a killed process releases the folder at once), "
                "or give this run another --run-dir."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"training process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield


class RunLogs:
    """Train and validation records of one run (only the main rank writes files)."""

    def __init__(self, run_dir: Path, *, writes: bool):
        self.run_dir, self.writes = run_dir, writes
        self.records: dict[str, list[dict]] = {name: [] for name in LOG_NAMES}

    def start_fresh(self) -> None:
        self.records = {name: [] for name in LOG_NAMES}
        if self.writes:
            for name in LOG_NAMES:
                (self.run_dir / name).unlink(missing_ok=True)

    def restore(self, saved: dict[str, list[dict]], step: int) -> None:
        """History up to ``step`` from a checkpoint; one written before checkpoints carried it falls
        back to the files in the run folder."""
        for name in LOG_NAMES:
            if name in saved:
                records = saved[name]
            else:
                path = self.run_dir / name
                records = read_jsonl(path) if path.exists() else []
            self.records[name] = [r for r in records if r["step"] <= step]
            if self.writes:
                write_jsonl(self.run_dir / name, self.records[name])

    def append(self, name: str, record: dict) -> None:
        self.records[name].append(record)
        if self.writes:
            append_jsonl(self.run_dir / name, record)
