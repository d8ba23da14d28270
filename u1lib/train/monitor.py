"""The work a run does between its steps, each on its own ``train.*_every`` schedule: validation,
previews, the periodic and best adapters, checkpoints, the trackers and the progress lines.

Validation runs on every rank (its sums are all-reduced); the rest writes files, so only the main
rank does it. Each schedule includes the last step.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import torch

from u1lib.data.reader import PackedDataset
from u1lib.model.u1 import U1Model
from u1lib.train import checkpoint as ckpt
from u1lib.train.adapter_files import AdapterFiles
from u1lib.train.distributed import Dist
from u1lib.train.file_writer import BackgroundWriter
from u1lib.train.phases import JobClock
from u1lib.train.prefixes import PrefixSource
from u1lib.train.previews import Previewer, PreviewSettings
from u1lib.train.progress import TrainProgress
from u1lib.train.run_folder import TRAIN_LOG, VAL_LOG, RunLogs
from u1lib.train.settings import TrainSettings
from u1lib.train.stop import StopRequest
from u1lib.train.tracking import Trackers
from u1lib.train.validation import Validator

# validation items whose compiled passes pay for compiling them: on an H200 at 2048² with five t,
# the first compiled call took 9.6 s, later ones 0.72 s against 0.86 s eager (tests/gpu/eval_compile_probe.py)
EVAL_COMPILE_PAYBACK = 64


def due(every: int, step: int, steps: int) -> bool:
    """A ``train.*_every`` schedule: every ``every`` steps (0: never), and the last step."""
    return bool(every) and (step % every == 0 or step == steps)


def compiles_eval(s: TrainSettings, items_per_validation: int) -> bool:
    """Whether validation and previews run compiled: ``train.compile_eval``, or under auto whether the
    run validates more items in all (the base model, then on its schedule) than the compilation costs."""
    if s.compile_eval != "auto":
        return bool(s.compile_eval)
    validations = bool(s.val_every) + sum(due(s.val_every, step, s.steps) for step in range(1, s.steps + 1))
    return validations * items_per_validation > EVAL_COMPILE_PAYBACK


class RunMonitor:
    """The loop's hooks: :meth:`start` once, :meth:`stepped` after each step, :meth:`finish` at the end."""

    def __init__(
        self,
        s: TrainSettings,
        run_dir: Path,
        dist: Dist,
        *,
        model: U1Model,
        autocast: Callable,
        prefixes: PrefixSource,
        val_data: PackedDataset,
        t_eps: float,
        device: torch.device,
        logs: RunLogs,
        progress: TrainProgress,
        run_config: dict,
        write_adapter: Callable[[Path, int], None],
        capture: Callable[[], ckpt.TrainState],
        clock: JobClock,
        writer: BackgroundWriter,
    ):
        """``capture()`` is the run's full state for a checkpoint; ``write_adapter(path, step)`` queues
        the adapter as it is now on ``writer``, which also writes the checkpoints while training goes
        on; ``clock`` receives the time of each kind of work."""
        self.s, self.dist, self.model, self.autocast, self.clock = s, dist, model, autocast, clock
        self.writer = writer
        self.logs, self.progress, self.capture = logs, progress, capture
        self.checkpoints = run_dir / ckpt.FOLDER
        self.validator = Validator(
            val_data,
            prefixes,
            t_values=s.val_t,
            seed=s.val_seed,
            max_items=s.val_max_items,
            t_eps=t_eps,
            device=device,
        )
        items = len(self.validator.indices[dist.rank :: dist.world_size])
        self.eager_eval = s.compile and not compiles_eval(s, items)  # fixed for the run: decided once
        self.adapters = AdapterFiles(run_dir, write_adapter, save_every=s.save_every)
        self.previewer = Previewer(
            PreviewSettings.from_dict(s.preview), val_data, prefixes, run_dir / "previews", device
        )
        main = dist.is_main  # the other ranks write no files
        self.trackers = Trackers(
            run_dir,
            tensorboard=s.tensorboard and main,
            wandb_project=s.wandb_project if main else None,
            config=run_config,
        )

    def start(self, step: int, resumed: bool) -> None:
        """Resumed at ``step``: the files past it go (the run redoes those steps) and the progress says
        where it stands. From step 0: every file of an earlier trajectory goes, and the base model is
        validated and previewed. Either way the trackers replay the history."""
        if self.dist.is_main:
            if resumed:
                self.progress.resumed(step, f"{self.checkpoints} step {step}")
                if self.logs.records[VAL_LOG]:
                    self.progress.validated(self.logs.records[VAL_LOG][-1])
                self.adapters.discard_after(step)
            else:
                self.logs.start_fresh()
                self.adapters.start_fresh()
            self.previewer.discard_after(step if resumed else -1)  # -1: every preview goes
            with self.clock.phase("logs"):
                self.trackers.open(step, self.logs.records, self.previewer.root)
        if not resumed:
            if self.s.val_every:
                self.validate(step)
            if self.s.preview_every:
                self.preview(step)

    def stepped(self, record: dict, stop: StopRequest) -> bool:
        """After the step of ``record``; True when it validated, previewed or checkpointed (the next
        step's time is kept apart: it may pay for what ran here). A signal (``stop``, read as late as
        possible: it may come while this runs) makes a checkpoint due now."""
        s, step = self.s, record["step"]
        with self.clock.phase("logs"):
            self.logs.append(TRAIN_LOG, record)
            if self.dist.is_main:
                self.trackers.trained(record)
        if self.dist.is_main:
            self.adapters.trained(step, step == s.steps)
        validating, previewing = due(s.val_every, step, s.steps), due(s.preview_every, step, s.steps)
        if validating:
            self.validate(step)
        if previewing:
            self.preview(step)
        if self.dist.is_main and (step % s.log_every == 0 or step == s.steps or stop.signal_name):
            self.progress.step(step, record["loss"])
        checkpointing = due(s.ckpt_every, step, s.steps) or bool(stop.signal_name)
        if checkpointing:
            self.checkpoint()
        return validating or previewing or checkpointing

    def _evaluating(self):
        """Eval passes run eagerly unless :func:`compiles_eval` says compiling them pays."""
        return torch.compiler.set_stance("force_eager") if self.eager_eval else contextlib.nullcontext()

    def validate(self, step: int) -> None:
        self.model.eval()
        with self.clock.phase("validation"), self._evaluating():
            record = {"step": step, **self.validator.run(self.model, self.dist, self.autocast)}
        self.model.train()
        with self.clock.phase("logs"):
            self.logs.append(VAL_LOG, record)
            self.progress.validated(record)
            if self.dist.is_main:
                self.trackers.validated(record)
        if self.dist.is_main:
            self.adapters.validated(record, self.logs.records[VAL_LOG])

    def preview(self, step: int) -> None:
        if not self.dist.is_main:
            return
        self.model.eval()
        with self.clock.phase("previews"), self._evaluating():
            images = self.previewer.run(self.model, step, self.autocast)
        self.model.train()
        with self.clock.phase("logs"):
            self.trackers.previewed(step, images)

    def checkpoint(self) -> None:
        """Save the full state, then keep only the best adapters a kept checkpoint can still need."""
        if not self.dist.is_main:
            return
        with self.clock.phase("checkpoints"):
            state = self.capture().on_cpu()
        val_log = list(self.logs.records[VAL_LOG])
        self.writer.submit(f"the checkpoint of step {state.step}", lambda: self._save_and_prune(state, val_log))

    def _save_and_prune(self, state: ckpt.TrainState, val_log: list[dict]) -> None:
        ckpt.save_checkpoint(self.checkpoints, state, keep=self.s.keep_checkpoints)
        kept = [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(self.checkpoints)]
        self.adapters.prune(val_log, kept)

    def finish(self, final_adapter: Path) -> dict:
        """``adapter_best.safetensors`` and the previews' index; returns metrics.json's ``best_adapter``."""
        self.writer.drain()
        best = self.adapters.finish(self.logs.records[VAL_LOG], final_adapter)
        self.previewer.write_summary()
        return best

    def close(self) -> None:
        """Let the files already handed over land (a stopped or failed run keeps its last checkpoint)."""
        try:
            self.writer.drain()
        finally:
            self.trackers.close()
