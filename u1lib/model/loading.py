"""Build the model on the meta device and materialise only the parameter groups a stage needs.

Tensors are read key by key from the safetensors files straight to the target device and dtype,
so host memory never holds the full checkpoint and a group that is not requested is never read.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Iterable

import torch
from safetensors import safe_open
from torch import nn

from u1lib.model.config import U1Config
from u1lib.model.keys import GROUPS, group_of, parameter_shapes
from u1lib.model.u1 import U1Model

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"


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


def meta_model(cfg: U1Config) -> U1Model:
    with torch.device("meta"):
        return U1Model(cfg)


def load_model(
    snapshot_dir: str | Path,
    groups: Iterable[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> U1Model:
    """The model with the requested groups' weights loaded and all others left on the meta device."""
    snapshot_dir = Path(snapshot_dir)
    groups = _check_groups(groups)
    cfg = U1Config.from_file(snapshot_dir)
    expected = {k: s for k, s in parameter_shapes(cfg).items() if group_of(k) in groups}
    model = meta_model(cfg)
    loaded, problems = set(), []
    for file_name, keys in weight_files(snapshot_dir).items():
        wanted = [k for k in keys if _group_or_none(k) in groups]
        if not wanted:
            continue  # never open a shard that holds nothing we need
        with safe_open(snapshot_dir / file_name, framework="pt", device=str(device)) as handle:
            for key in wanted:
                if key not in expected:
                    problems.append(f"unexpected key {key} in {file_name}")
                    continue
                tensor = handle.get_slice(key)
                shape = tuple(tensor.get_shape())
                if shape != expected[key]:
                    problems.append(f"{key}: checkpoint shape {shape} != config shape {expected[key]}")
                    continue
                _assign(model, key, handle.get_tensor(key).to(dtype))
                loaded.add(key)
    problems += [f"missing key {k}" for k in sorted(set(expected) - loaded)]
    if problems:
        raise CheckpointError(f"{snapshot_dir} does not match its config.json:\n  " + "\n  ".join(problems))
    return model


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
