"""Full-state checkpoints (trainable tensors, optimizer, EMA, RNG, data cursor, loss history) as
safetensors + JSON.

Each checkpoint is a folder ``step-00000123`` built under a temporary name and renamed into place,
so a crash or a full disk during a save leaves the previous checkpoint intact and no partial one.
The train/validation logs up to the checkpoint's step travel inside it: a workflow job that fails
loses its declared log files (Snakemake deletes them), and a resume restores them from here.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from u1lib.io import read_json, read_jsonl, write_json, write_jsonl

FOLDER = "checkpoints"  # inside the run folder
PREFIX = "step-"
LOG_NAMES = ("train_log.jsonl", "val_log.jsonl")


@dataclass
class TrainState:
    step: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]  # flattened tensor state: "{param}.{name}"
    optimizer_scalars: dict  # non-tensor optimizer state per param
    ema: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]
    info: dict  # json-able: sampler, scheduler, compatibility, counters
    logs: dict[str, list[dict]] = field(default_factory=dict)  # LOG_NAMES -> records up to ``step``

    def on_cpu(self) -> TrainState:
        """A copy that shares nothing with the live run (tensors copied to the CPU, logs as they are
        now), so it can be written while training changes the originals."""

        def copied(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}

        return replace(
            self,
            trainable=copied(self.trainable),
            optimizer=copied(self.optimizer),
            ema=copied(self.ema),
            rng=copied(self.rng),
            info=copy.deepcopy(self.info),
            logs={name: list(records) for name, records in self.logs.items()},
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(root: Path, state: TrainState, keep: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{state.step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in state.trainable.items()}, str(tmp / "trainable.safetensors")
        )
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in state.optimizer.items()}, str(tmp / "optimizer.safetensors")
        )
        save_file({k: v.detach().cpu().contiguous() for k, v in state.ema.items()}, str(tmp / "ema.safetensors"))
        save_file({k: v.cpu().contiguous() for k, v in state.rng.items()}, str(tmp / "rng.safetensors"))
        write_json(tmp / "state.json", {"step": state.step, "optimizer_scalars": state.optimizer_scalars, **state.info})
        for name, records in state.logs.items():
            write_jsonl(tmp / name, records)
        for name in os.listdir(tmp):
            with open(tmp / name, "rb") as handle:
                os.fsync(handle.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    if not root.exists():
        return []
    return sorted(
        p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()
    )


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(PREFIX) :])


def load_checkpoint(path: Path) -> TrainState:
    info = read_json(path / "state.json")
    return TrainState(
        step=int(info.pop("step")),
        trainable=load_file(path / "trainable.safetensors"),
        optimizer=load_file(path / "optimizer.safetensors"),
        optimizer_scalars=info.pop("optimizer_scalars"),
        ema=load_file(path / "ema.safetensors"),
        rng=load_file(path / "rng.safetensors"),
        info=info,
        logs={name: read_jsonl(path / name) for name in LOG_NAMES if (path / name).exists()},
    )


def newest_valid(root: Path, max_step: int | None = None) -> tuple[TrainState | None, list[str]]:
    """The newest checkpoint (at most ``max_step``) that reads back completely; problems with newer
    broken ones are returned."""
    problems = []
    candidates = [p for p in list_checkpoints(root) if max_step is None or checkpoint_step(p) <= max_step]
    for path in reversed(candidates):
        try:
            return load_checkpoint(path), problems
        except Exception as err:  # a damaged checkpoint: fall back to the one before
            problems.append(f"{path.name}: unreadable ({err}); trying an older checkpoint")
    return None, problems


def optimizer_to_tensors(optimizer: torch.optim.Optimizer, names: list[str]) -> tuple[dict, dict]:
    """Flatten an optimizer's per-parameter state into tensors keyed by parameter name."""
    tensors, scalars = {}, {}
    state = optimizer.state_dict()["state"]
    for index, name in enumerate(names):
        for key, value in state.get(index, {}).items():
            if torch.is_tensor(value):
                tensors[f"{name}.{key}"] = value
            else:
                scalars[f"{name}.{key}"] = value
    return tensors, scalars


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, names: list[str], tensors: dict, scalars: dict) -> None:
    full = optimizer.state_dict()
    index_of = {name: i for i, name in enumerate(names)}
    state: dict[int, dict] = {}
    for flat, value in [*tensors.items(), *scalars.items()]:
        name, _, key = flat.rpartition(".")
        if name not in index_of:
            raise ValueError(f"checkpoint optimizer state names {name!r}, which this run does not train")
        state.setdefault(index_of[name], {})[key] = value
    full["state"] = state
    optimizer.load_state_dict(full)


def capture_rng(generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """Every random stream a step draws from: the run's generator, torch's CPU and (on CUDA) device state."""
    state = {"generator": generator.get_state(), "torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, torch.Tensor], generator: torch.Generator, device: torch.device) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["torch_cuda"], device)
