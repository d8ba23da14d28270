"""The adapters a run leaves besides the final one: every ``train.save_every`` steps and the best.

All are in the upstream LoRA format (``save_adapter``), written from the weights as they are at
that step (validation measures those weights, so with EMA on, the final adapter holds the EMA and
these the live ones). Layout of the run folder:

* ``adapters/step-00000100.safetensors``: one per ``save_every`` steps.
* ``best/step-00000040.safetensors``: the adapter of the lowest validation loss after step 0 (the
  base model is the leaderboard's reference, not a candidate). Older bests stay while a kept
  checkpoint's history still ranks them first, so a resume from that checkpoint finds its best.
* ``adapter_best.safetensors``: a copy of the winner made when the run finishes (the final adapter
  when no validation ran after step 0).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from u1lib.io import atomic_path

PERIODIC_DIR, BEST_DIR, BEST_FILE = "adapters", "best", "adapter_best.safetensors"


def _file(folder: Path, step: int) -> Path:
    return folder / f"step-{step:08d}.safetensors"


def _steps(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(p.stem.removeprefix("step-")) for p in folder.glob("step-*.safetensors"))


def best_record(val_log: list[dict], up_to: int | None = None) -> dict | None:
    """The lowest validation loss among trained steps (<= ``up_to``); ties go to the earlier step."""
    candidates = [r for r in val_log if r["step"] >= 1 and (up_to is None or r["step"] <= up_to)]
    return min(candidates, key=lambda r: (r["val_loss"], r["step"])) if candidates else None


class AdapterFiles:
    def __init__(self, run_dir: Path, write: Callable[[Path, int], None], *, save_every: int):
        """``write(path, step)`` saves the model's adapter as it is now (the trainer queues it on its
        background writer, so a file appears once the writer gets to it)."""
        self.run_dir, self.write, self.save_every = run_dir, write, save_every
        self.periodic_dir, self.best_dir = run_dir / PERIODIC_DIR, run_dir / BEST_DIR

    def start_fresh(self) -> None:
        """A run from step 0: adapters of an earlier, abandoned trajectory would mislead."""
        for folder in (self.periodic_dir, self.best_dir):
            shutil.rmtree(folder, ignore_errors=True)

    def discard_after(self, step: int) -> None:
        """After a resume at ``step``: later files belong to steps this run will redo."""
        for folder in (self.periodic_dir, self.best_dir):
            for later in (s for s in _steps(folder) if s > step):
                _file(folder, later).unlink()

    def trained(self, step: int, last: bool) -> None:
        if self.save_every and (step % self.save_every == 0 or last):
            self.write(_file(self.periodic_dir, step), step)

    def validated(self, record: dict, val_log: list[dict]) -> None:
        """``record`` (already in ``val_log``) becomes the best file when it ranks first."""
        best = best_record(val_log)
        if best is record:
            self.write(_file(self.best_dir, record["step"]), record["step"])

    def prune(self, val_log: list[dict], checkpoint_steps: list[int]) -> None:
        """Keep the best of each kept checkpoint's history and the current best; delete the rest."""
        needed = {r["step"] for r in (best_record(val_log, up_to=s) for s in [*checkpoint_steps, None]) if r}
        for step in _steps(self.best_dir):
            if step not in needed:
                _file(self.best_dir, step).unlink()

    def finish(self, val_log: list[dict], final_adapter: Path) -> dict:
        """Copy the winner to ``adapter_best.safetensors``; returns what metrics.json records of it."""
        best = best_record(val_log)
        source = _file(self.best_dir, best["step"]) if best else final_adapter
        if best and not source.is_file():
            raise RuntimeError(f"{source} (the best validation step's adapter) is missing; rerun the training")
        with atomic_path(self.run_dir / BEST_FILE) as tmp:
            shutil.copyfile(source, tmp)
        periodic = [_file(self.periodic_dir, s).relative_to(self.run_dir).as_posix() for s in _steps(self.periodic_dir)]
        return {
            "file": BEST_FILE,
            "step": best["step"] if best else None,
            "val_loss": best["val_loss"] if best else None,
            "chosen_by": "lowest validation loss after step 0" if best else "the final adapter (no validation after 0)",
            "periodic": periodic,
        }
