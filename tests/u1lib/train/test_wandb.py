"""W&B logging through a stand-in ``wandb`` module: what a run sends, once per step, across a resume.

The real package needs an account and a network; the stand-in records the calls the trainer makes
with the names and arguments of wandb's public API (init, Run.log, Run.finish, Image).
"""

from __future__ import annotations

import sys
import types

import pytest

from u1lib.io import read_jsonl
from u1lib.train.loop import train

SETTINGS = {
    "steps": 4,
    "batch_size": 2,
    "lr": 3e-3,
    "lora": "attn=r4a4",
    "val_every": 2,
    "val_max_items": 2,
    "ckpt_every": 2,
    "keep_checkpoints": 1,
    "log_every": 1,
    "preview_every": 2,
    "preview": {"count": 1, "seeds": [0], "steps": 2},
    "wandb_project": "styles",
}


class StandInRun:
    def __init__(self, calls: list, kwargs: dict):
        self.calls, self.kwargs = calls, kwargs

    def log(self, values: dict, step: int) -> None:
        self.calls.append(("log", step, values))

    def finish(self) -> None:
        self.calls.append(("finish",))


@pytest.fixture
def wandb_calls(monkeypatch) -> list:
    calls: list = []
    module = types.ModuleType("wandb")

    def init(**kwargs):
        calls.append(("init", kwargs))
        return StandInRun(calls, kwargs)

    module.init = init
    module.Image = lambda array, caption: ("image", array.shape, caption)
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def _run(ws, run_dir, **overrides):
    paths = {k: ws[k] for k in ("snapshot_dir", "manifest_path", "train_parquet", "val_parquet", "cache_dir")}
    return train({**SETTINGS, **overrides}, run_dir=run_dir, **paths)


def _logged_steps(calls: list, prefix: str) -> list[int]:
    return [c[1] for c in calls if c[0] == "log" and any(k.startswith(prefix) for k in c[2])]


def test_a_run_sends_each_step_once_and_a_resume_continues_the_same_wandb_run(tiny_workspace, tmp_path, wandb_calls):
    run_dir = tmp_path / "run"
    _run(tiny_workspace, run_dir, steps=2)
    first = list(wandb_calls)
    (init,) = [c[1] for c in first if c[0] == "init"]
    assert init["project"] == "styles" and init["name"] == "run" and init["resume"] == "allow"
    assert init["config"]["train"]["lora"] == "attn=r4a4"  # the run folder's config.json
    assert _logged_steps(first, "train/") == [1, 2]
    assert _logged_steps(first, "val/") == [0, 2]
    previews = [c for c in first if c[0] == "log" and any(k.startswith("preview/") for k in c[2])]
    assert [c[1] for c in previews] == [0, 2]
    image = next(iter(previews[0][2].values()))
    assert image[0] == "image" and image[1][2] == 3 and isinstance(image[2], str)  # HWC RGB, prompt caption
    assert first[-1] == ("finish",)

    wandb_calls.clear()
    _run(tiny_workspace, run_dir, steps=4)  # resumes from step 2's checkpoint
    (resumed,) = [c[1] for c in wandb_calls if c[0] == "init"]
    assert resumed["id"] == init["id"]  # the same W&B run, not a second one
    assert _logged_steps(wandb_calls, "train/") == [3, 4]  # W&B cannot rewrite: only what is new
    assert _logged_steps(wandb_calls, "val/") == [4]
    logged = {c[1]: c[2]["train/loss"] for c in wandb_calls if c[0] == "log" and "train/loss" in c[2]}
    on_disk = {r["step"]: r["loss"] for r in read_jsonl(run_dir / "train_log.jsonl")}
    assert logged == {step: on_disk[step] for step in (3, 4)}


def test_wandb_asked_for_but_not_installed_is_a_clear_error(tiny_workspace, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError, installed or not
    with pytest.raises(ValueError, match=r"train.wandb_project is 'styles' but the wandb package is not installed"):
        _run(tiny_workspace, tmp_path / "run")
