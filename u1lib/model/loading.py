"""Build the model on the meta device and materialise only the parameter groups a stage needs.

Shards are read concurrently, one thread per shard (a cold start is mostly this read). Tensors come
key by key from the memory-mapped safetensors files; for a GPU target each passes through two small
pinned buffers per thread, so host memory holds no more than those buffers, and the cast to the
target dtype runs on the device. A group that is not requested is never read.
"""

from __future__ import annotations

import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from safetensors import safe_open
from torch import nn
from torch.overrides import TorchFunctionMode

from u1lib.model.config import U1Config
from u1lib.model.keys import GROUPS, group_of, parameter_shapes
from u1lib.model.u1 import U1Model

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
READ_THREADS = 8  # 8B sampler groups to an H200 from the page cache: 8.6 s on 1 thread, ~2.3 s on 8, 16 no better
STAGING_BYTES = 32 << 20  # each of a reading thread's two pinned buffers


class CheckpointError(ValueError):
    """Weights that do not match the config they are supposed to fill."""


def weight_files(snapshot_dir: Path) -> dict[str, list[str]]:
    """file name -> keys it holds, from the shard index or the single model.safetensors."""
    snapshot_dir = Path(snapshot_dir)
    index = snapshot_dir / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files: dict[str, list[str]] = {}
        for key, name in weight_map.items():
            files.setdefault(name, []).append(key)
        return files
    single = snapshot_dir / "model.safetensors"
    if not single.exists():
        raise CheckpointError(f"{snapshot_dir}: neither {INDEX_FILE} nor model.safetensors found")
    with safe_open(single, framework="pt") as handle:
        return {"model.safetensors": list(handle.keys())}


def _check_groups(groups: Iterable[str]) -> set[str]:
    groups = set(groups)
    unknown = groups - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown parameter group(s) {sorted(unknown)}; choose from {list(GROUPS)}")
    return groups


def _assign(model: nn.Module, key: str, tensor: torch.Tensor) -> None:
    module_path, _, name = key.rpartition(".")
    module = model.get_submodule(module_path)
    module._parameters[name] = nn.Parameter(tensor, requires_grad=False)


class _SkipInit(TorchFunctionMode):
    """Skips ``torch.nn.init``'s random draws: a meta tensor holds no values to draw, and the meta
    ``normal_`` goes through a decomposition that imports torch._dynamo (1.6 s on a CPU machine, 7.3 s
    of a profiled cold start on an H200 box) just to build a model whose weights are then read from
    files."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def meta_model(cfg: U1Config) -> U1Model:
    with torch.device("meta"), _SkipInit():
        return U1Model(cfg)


def load_model(
    snapshot_dir: str | Path,
    groups: Iterable[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    threads: int = READ_THREADS,
) -> U1Model:
    """The model with the requested groups' weights loaded and all others left on the meta device.

    ``threads`` shards are read at once; 1 reads them one after the other.
    """
    snapshot_dir = Path(snapshot_dir)
    groups = _check_groups(groups)
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # the caller's GPU, not each reading thread's
        device = torch.device("cuda", torch.cuda.current_device())
    cfg = U1Config.from_file(snapshot_dir)
    expected = {k: s for k, s in parameter_shapes(cfg).items() if group_of(k) in groups}
    model = meta_model(cfg)
    shards = {}
    for file_name, keys in weight_files(snapshot_dir).items():
        wanted = [k for k in keys if _group_or_none(k) in groups]
        if wanted:  # never open a shard that holds nothing we need
            shards[file_name] = wanted

    def read(file_name: str) -> tuple[dict[str, torch.Tensor], list[str]]:
        return _read_shard(snapshot_dir, file_name, shards[file_name], expected, device, dtype)

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(shards)))) as pool:
        results = list(pool.map(read, shards))
    loaded, problems = set(), []
    for tensors, shard_problems in results:
        problems += shard_problems
        for key, tensor in tensors.items():
            _assign(model, key, tensor)
            loaded.add(key)
    problems += [f"missing key {k}" for k in sorted(set(expected) - loaded)]
    if problems:
        raise CheckpointError(f"{snapshot_dir} does not match its config.json:\n  " + "\n  ".join(problems))
    return model


def _read_shard(
    snapshot_dir: Path,
    file_name: str,
    keys: list[str],
    expected: dict[str, tuple[int, ...]],
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """One shard's wanted tensors on ``device`` in ``dtype``, and what is wrong with the others."""
    tensors, problems = {}, []
    stager = None if device.type == "cpu" else _Stager(device)
    with safe_open(snapshot_dir / file_name, framework="pt") as handle:
        for key in keys:
            if key not in expected:
                problems.append(f"unexpected key {key} in {file_name}")
                continue
            shape = tuple(handle.get_slice(key).get_shape())
            if shape != expected[key]:
                problems.append(f"{key}: checkpoint shape {shape} != config shape {expected[key]}")
                continue
            # a view of the file mapping, cast or copied before the next is read (no name keeps it)
            if stager is None:
                tensors[key] = handle.get_tensor(key).to(dtype)
            else:
                tensors[key] = stager.copy(handle.get_tensor(key), dtype)
    if stager is not None:
        stager.finish()
    return tensors, problems


class _Stager:
    """Host tensors to ``device`` through two pinned buffers on a side stream: one buffer fills from
    the file mapping (numpy copies without the GIL) while the other's copy to the device runs.
    Pageable memory would make each copy synchronous and bounce it through the driver's own buffer."""

    def __init__(self, device: torch.device):
        cuda = device.type == "cuda"
        self.device = device
        self.buffers = [torch.empty(STAGING_BYTES, dtype=torch.uint8, pin_memory=cuda) for _ in range(2)]
        self.stream = torch.cuda.Stream(device) if cuda else None
        self.copied = [None, None]  # per buffer: the event its last copy to the device records
        self.turn = 0

    def copy(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``tensor`` on the device in ``dtype``; the cast runs there, so an fp32 shard costs no host memory."""
        # allocated on the caller's stream, as any parameter would be; filled on the side stream
        out = torch.empty(tensor.shape, dtype=dtype, device=self.device)
        raw = out if tensor.dtype == dtype else torch.empty(tensor.shape, dtype=tensor.dtype, device=self.device)
        source = tensor.reshape(-1).view(torch.uint8).numpy()
        target = raw.view(-1).view(torch.uint8)
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))  # memory freed there is free
        with torch.cuda.stream(self.stream):
            for start in range(0, source.size, STAGING_BYTES):
                part = source[start : start + STAGING_BYTES]
                buffer = self.buffers[self.turn]
                if self.copied[self.turn] is not None:
                    self.copied[self.turn].synchronize()
                np.copyto(buffer.numpy()[: part.size], part)
                target[start : start + part.size].copy_(buffer[: part.size], non_blocking=True)
                if self.stream is not None:
                    self.copied[self.turn] = self.stream.record_event()
                self.turn ^= 1
            if raw is not out:
                out.copy_(raw)
                if self.stream is not None:
                    raw.record_stream(self.stream)  # not reused before the cast has read it
        return out

    def finish(self) -> None:
        """Wait for every copy: the tensors are then usable on any stream."""
        if self.stream is not None:
            self.stream.synchronize()


def _group_or_none(key: str) -> str | None:
    try:
        return group_of(key)
    except ValueError:
        log.warning("ignoring checkpoint key %s: it belongs to no parameter group", key)
        return None


def random_model(
    cfg: U1Config,
    groups: Iterable[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> U1Model:
    """Random weights for the requested groups, created directly on ``device`` (benchmarks, no download)."""
    groups = _check_groups(groups)
    model = meta_model(cfg)
    generator = torch.Generator(device=device).manual_seed(seed)
    for key, shape in parameter_shapes(cfg).items():
        if group_of(key) not in groups:
            continue
        tensor = torch.empty(shape, device=device, dtype=dtype)
        if "norm" in key:
            tensor.fill_(1.0)
        elif len(shape) == 1:
            tensor.normal_(0.0, 0.02, generator=generator)
        else:
            tensor.normal_(0.0, 1.0 / math.sqrt(math.prod(shape[1:])), generator=generator)
        _assign(model, key, tensor)
    return model
