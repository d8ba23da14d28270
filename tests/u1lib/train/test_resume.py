"""The resume rule on the tiny model: exactly the steps asked for, history that survives a failed job,
one process per run folder, and a stop on Ctrl-C/SIGTERM that keeps every finished step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from u1lib.io import read_json, read_jsonl
from u1lib.lora.io import read_lora_file
from u1lib.train import loop, setup
from u1lib.train.checkpoint import list_checkpoints
from u1lib.train.loop import train
from u1lib.train.resume import IncompatibleCheckpoint
from u1lib.train.run_folder import RunFolderBusy, run_lock
from u1lib.train.stop import TrainingInterrupted

CONSTANT = {
    "steps": 6,
    "batch_size": 2,
    "lr": 2e-3,
    "lora": "attn=r4a4;mlp=r4a4",
    "val_every": 2,
    "ckpt_every": 2,
    "log_every": 100,
    "val_max_items": 2,
    "cond_dropout": 0.3,
    "schedule": "constant",
    "warmup_steps": 2,
    "keep_checkpoints": 5,
}
PATHS = ("snapshot_dir", "manifest_path", "train_parquet", "val_parquet", "cache_dir")


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in the loop can catch it."""


def _run(ws, run_dir, **overrides):
    return train({**CONSTANT, **overrides}, run_dir=run_dir, **{k: ws[k] for k in PATHS})


def _during_step(monkeypatch, step: int, action):
    """Run ``action`` inside the ``step``-th training step this process takes (1 = its first)."""
    real, calls = loop.Trainer._micro_step, {"n": 0}

    def wrapped(self):
        calls["n"] += 1
        if calls["n"] == step:
            action()
        return real(self)

    monkeypatch.setattr(loop.Trainer, "_micro_step", wrapped)


def _kill():
    raise Killed()


TIMINGS = ("seconds", "images_per_s")


def _history(run_dir):
    """Both logs, less the wall-clock fields (the only ones a rerun may change)."""
    train_log = [{k: v for k, v in r.items() if k not in TIMINGS} for r in read_jsonl(run_dir / "train_log.jsonl")]
    return train_log, read_jsonl(run_dir / "val_log.jsonl")


def _steps_of(run_dir):
    return [r["step"] for r in read_jsonl(run_dir / "train_log.jsonl")]


@pytest.fixture(scope="module")
def straight(tiny_workspace, tmp_path_factory):
    """Uninterrupted 6- and 4-step runs to compare against."""
    root = tmp_path_factory.mktemp("straight")
    _run(tiny_workspace, root / "six")
    _run(tiny_workspace, root / "four", steps=4)
    return root


def test_history_deleted_with_a_failed_job_comes_back_on_resume(tiny_workspace, straight, tmp_path, monkeypatch):
    """Snakemake deletes a failed job's declared outputs, the logs among them; the checkpoint has them."""
    run = tmp_path / "run"
    # dies during step 4 (checkpoint 2 kept), then, resumed at 2, during its third step (step 5)
    for step in (4, 3):
        with monkeypatch.context() as patch:
            _during_step(patch, step, _kill)
            with pytest.raises(Killed):
                _run(tiny_workspace, run)
        for name in ("train_log.jsonl", "val_log.jsonl", "metrics.json", "adapter.safetensors"):
            (run / name).unlink(missing_ok=True)
    _run(tiny_workspace, run)
    assert _history(run) == _history(straight / "six")
    assert read_jsonl(run / "val_log.jsonl")[0]["step"] == 0  # the base model's validation survives
    assert (
        read_lora_file(run / "adapter.safetensors").triples.keys()
        == read_lora_file(straight / "six" / "adapter.safetensors").triples.keys()
    )


def test_fewer_steps_resume_from_an_earlier_checkpoint_and_deliver_exactly_them(tiny_workspace, straight, tmp_path):
    run = tmp_path / "run"
    _run(tiny_workspace, run)  # 6 steps, checkpoints at 2, 4, 6
    metrics = _run(tiny_workspace, run, steps=4)
    assert metrics["steps"] == 4 and _steps_of(run) == [1, 2, 3, 4]
    assert read_lora_file(run / "adapter.safetensors").metadata["u1lib.step"] == "4"
    assert _history(run) == _history(straight / "four")
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000002", "step-00000004"]
    assert (run / "checkpoints.previous" / "step-00000006").is_dir()  # set aside, not deleted


def test_fewer_steps_than_any_kept_checkpoint_refuse_on_the_cli_and_restart_in_the_workflow(tiny_workspace, tmp_path):
    run = tmp_path / "run"
    _run(tiny_workspace, run, keep_checkpoints=1)  # only step-6 is kept
    with pytest.raises(IncompatibleCheckpoint, match=r"past train\.steps 3.*at least 6 steps"):
        _run(tiny_workspace, run, steps=3, keep_checkpoints=1)
    metrics = train(
        {**CONSTANT, "steps": 3}, run_dir=run, on_incompatible="restart", **{k: tiny_workspace[k] for k in PATHS}
    )
    assert metrics["steps"] == 3 and _steps_of(run) == [1, 2, 3]
    assert read_lora_file(run / "adapter.safetensors").metadata["u1lib.step"] == "3"


def test_more_steps_under_a_constant_schedule_continue_from_the_final_checkpoint(tiny_workspace, straight, tmp_path):
    run = tmp_path / "run"
    _run(tiny_workspace, run, steps=4)
    metrics = _run(tiny_workspace, run)
    assert metrics["steps"] == 6
    assert _history(run) == _history(straight / "six")


def test_a_cosine_schedule_refuses_a_changed_step_count(tiny_workspace, tmp_path):
    run = tmp_path / "run"
    _run(tiny_workspace, run, steps=4, schedule="cosine")
    for steps in (6, 3):
        with pytest.raises(IncompatibleCheckpoint, match=rf"train\.steps: checkpoint 4, now {steps}"):
            _run(tiny_workspace, run, steps=steps, schedule="cosine")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_at_the_step_boundary_with_a_checkpoint(tiny_workspace, straight, tmp_path, monkeypatch, signum):
    run = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # the default, or SIG_IGN when the suite runs in the background
    with monkeypatch.context() as patch:
        _during_step(patch, 3, lambda: os.kill(os.getpid(), signum))
        with pytest.raises(TrainingInterrupted, match="stopped at step 3 of 6"):
            _run(tiny_workspace, run)
    assert [p.name for p in list_checkpoints(run / "checkpoints")][-1] == "step-00000003"
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    _run(tiny_workspace, run)
    assert _history(run) == _history(straight / "six")


def test_a_second_process_on_one_run_folder_is_refused_and_a_killed_one_releases_it(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from u1lib.train.run_folder import run_lock
            with run_lock(Path({str(run)!r})):
                print("locked", flush=True)
                time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=rf"in use by training process {holder.pid}"):
            with run_lock(run):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(run):  # SIGKILL left nothing stuck
        pass


def test_a_folder_that_is_not_a_run_folder_is_refused_untouched(tiny_workspace, tmp_path):
    mine = tmp_path / "project"
    (mine / "tensorboard").mkdir(parents=True)  # names a fresh run would clear or overwrite
    (mine / "tensorboard" / "events.out").write_text("mine")
    (mine / "config.json").write_text("{}")
    with pytest.raises(
        ValueError, match=rf"{mine} holds files `u1lib train` did not write \(config.json, tensorboard/events.out\)"
    ):
        _run(tiny_workspace, mine)
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "tensorboard"]
    assert (mine / "config.json").read_text() == "{}"
    assert (mine / "tensorboard" / "events.out").read_text() == "mine"
    empty = tmp_path / "empty"
    (empty / "previews").mkdir(parents=True)  # as Snakemake makes the folders of the train job's outputs
    with run_lock(empty):  # a new or empty folder becomes a run folder
        pass
    (empty / "train_log.jsonl").write_text("")
    with run_lock(empty):  # and stays one, whatever it holds
        pass


def test_empty_validation_data_is_refused_and_missing_validation_is_recorded(tiny_workspace, tmp_path):
    import pyarrow.parquet as pq

    empty = tmp_path / "empty.parquet"
    table = pq.read_table(tiny_workspace["val_parquet"])
    pq.write_table(table.slice(0, 0), empty)
    with pytest.raises(ValueError, match=r"empty\.parquet: no rows, so there is nothing to validate on"):
        train(
            {**CONSTANT, "steps": 1},
            run_dir=tmp_path / "a",
            **{**{k: tiny_workspace[k] for k in PATHS}, "val_parquet": empty},
        )
    metrics = train(
        {**CONSTANT, "steps": 1},
        run_dir=tmp_path / "b",
        **{**{k: tiny_workspace[k] for k in PATHS}, "val_parquet": None},
    )
    assert metrics["dataset"]["validation"]["source"] == "train"
    assert metrics["dataset"]["train"]["fingerprint"] == metrics["dataset"]["validation"]["fingerprint"]


def test_a_cache_without_the_validation_rows_fails_before_the_model_loads(tiny_workspace, tmp_path, monkeypatch):
    from u1lib.cache import build_cache

    ws = tiny_workspace
    build_cache(ws["snapshot_dir"], ws["manifest_path"], [ws["train_parquet"]], tmp_path / "cache")

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the cache was checked")

    monkeypatch.setattr(setup, "load_model", no_load)
    with pytest.raises(ValueError, match=r"built from train\.parquet without sample\(s\) '[^']+', '[^']+': rebuild"):
        train(
            {**CONSTANT, "steps": 1},
            run_dir=tmp_path / "run",
            **{**{k: ws[k] for k in PATHS}, "cache_dir": tmp_path / "cache"},
        )


def test_metrics_name_the_data_the_adapter_was_trained_on(tiny_workspace, tmp_path):
    from u1lib.data.reader import PackedDataset

    metrics = _run(tiny_workspace, tmp_path / "run", steps=1)
    assert read_json(tmp_path / "run" / "metrics.json")["dataset"] == metrics["dataset"]
    assert metrics["dataset"]["train"] == {
        "file": "train.parquet",
        "rows": len(PackedDataset(tiny_workspace["train_parquet"])),
        "fingerprint": PackedDataset(tiny_workspace["train_parquet"]).fingerprint(),
    }
    assert metrics["dataset"]["validation"]["source"] == "held-out"
