"""Give a job its own GPUs when a workflow engine only counts them.

Snakemake's ``resources: gpu=N`` limits how many GPUs its jobs use at once but not which ones, so two
jobs would both land on ``cuda:0``. :func:`claim_gpus` takes N device ids nobody else holds, using
one lock file per id (``fcntl.flock``, released by the kernel even when the process is killed), and
sets ``CUDA_VISIBLE_DEVICES`` to them for the job. It must run before CUDA is initialised.

Where the ids come from, first match wins:

* ``U1LIB_GPUS`` (e.g. ``0,1,2,3``; empty or ``none`` for no GPUs): an explicit pool;
* ``SLURM_JOB_ID`` with ``CUDA_VISIBLE_DEVICES`` set: the scheduler already gave this job its
  devices; nothing is claimed (inside an interactive allocation that runs several jobs, set
  ``U1LIB_GPUS`` instead);
* ``CUDA_VISIBLE_DEVICES``: the ids it lists;
* ``torch.cuda.device_count()``: ids 0..n-1 (0 on a CPU-only machine: nothing to claim).

A job that asks for 0 GPUs on a GPU machine gets ``CUDA_VISIBLE_DEVICES=""`` so it cannot take a
device another job claimed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

POOL_ENV = "U1LIB_GPUS"
LOCK_DIR_ENV = "U1LIB_GPU_LOCK_DIR"


class GpuClaimError(RuntimeError):
    """The GPUs a job asked for cannot be had."""


def gpu_pool(environ: dict[str, str] | None = None) -> list[str] | None:
    """Device ids to choose from, or None when the scheduler already placed the job."""
    env = os.environ if environ is None else environ
    if POOL_ENV in env:
        return _id_list(env[POOL_ENV])
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return None if env.get("SLURM_JOB_ID") else _id_list(visible)
    try:
        import torch
    except ImportError:
        return []
    # device_count() reads NVML and does not initialise CUDA, so the id choice below still takes effect
    return [str(index) for index in range(torch.cuda.device_count())]


def _id_list(text: str) -> list[str]:
    if text.strip().lower() in ("", "none"):
        return []
    return [part.strip() for part in text.split(",") if part.strip()]


@contextlib.contextmanager
def claim_gpus(
    count: int,
    *,
    timeout_s: float | None = None,
    poll_s: float = 1.0,
    lock_dir: str | os.PathLike | None = None,
) -> Iterator[list[str]]:
    """Hold ``count`` free GPU ids and expose only them through ``CUDA_VISIBLE_DEVICES``.

    Waits for ids held by other jobs (forever, or ``timeout_s`` seconds, then :class:`GpuClaimError`).
    Yields the ids; restores the previous ``CUDA_VISIBLE_DEVICES`` and releases the locks on exit.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise GpuClaimError(f"GPU count must be a non-negative integer, got {count!r}")
    pool = gpu_pool()
    if pool is None:
        log.info("GPUs placed by the scheduler: CUDA_VISIBLE_DEVICES=%s", os.environ["CUDA_VISIBLE_DEVICES"])
        yield _id_list(os.environ["CUDA_VISIBLE_DEVICES"])
        return
    if count > len(pool):
        raise GpuClaimError(
            f"the job asks for {count} GPU(s) but only {len(pool)} are available ({', '.join(pool) or 'none'}); "
            f"lower the GPU count in the config or set {POOL_ENV}"
        )
    if not pool:  # CPU-only machine, nothing to hide or claim
        yield []
        return
    folder = Path(lock_dir or os.environ.get(LOCK_DIR_ENV) or "/tmp")
    with contextlib.ExitStack() as held:
        ids = _wait_for_ids(pool, count, folder, held, timeout_s, poll_s)
        previous = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
        log.info("claimed GPU(s) %s; CUDA_VISIBLE_DEVICES=%s", ids or "none", os.environ["CUDA_VISIBLE_DEVICES"])
        try:
            yield ids
        finally:
            if previous is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = previous


def _wait_for_ids(
    pool: list[str], count: int, folder: Path, held: contextlib.ExitStack, timeout_s: float | None, poll_s: float
) -> list[str]:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    announced = False
    while True:
        attempt = contextlib.ExitStack()
        ids: list[str] = []
        for gpu in pool:
            if len(ids) == count:
                break
            if _try_lock(folder, gpu, attempt):
                ids.append(gpu)
        if len(ids) == count:
            held.enter_context(attempt)
            return ids
        attempt.close()  # all or nothing: never sit on a partial claim while waiting
        if deadline is not None and time.monotonic() >= deadline:
            raise GpuClaimError(
                f"no {count} free GPU(s) among {', '.join(pool)} after {timeout_s:g} s; "
                f"other jobs hold the locks in {folder}/u1lib-gpu-*.lock"
            )
        if not announced:
            log.info("waiting for %d free GPU(s) among %s", count, ", ".join(pool))
            announced = True
        time.sleep(poll_s)


def _try_lock(folder: Path, gpu: str, stack: contextlib.ExitStack) -> bool:
    """Take the lock of one id without waiting; on success ``stack`` releases it."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / f"u1lib-gpu-{gpu.replace('/', '_')}.lock", "a+")  # MIG ids hold slashes
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    stack.callback(handle.close)  # closing the file drops the lock
    return True
