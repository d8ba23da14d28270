"""The training recipe: setup -> fit -> save (``python -m u1lib train``: train/cli.py).

Loads only the generation tower and fm modules (plus the understanding tower in online-prefix
mode), wraps LoRA per spec, trains, checkpoints every N steps and at the end into
``run_dir/checkpoints``, and resumes from the newest qualifying checkpoint when the same command runs
again (train/resume.py says which qualify). What happens between the steps is train/monitor.py's,
the setup steps are train/setup.py's. About 300 lines because the step itself (micro-steps, the
reduce, clipping, the non-finite stop, the update) is kept whole here: it is the maths a resume's
lineage must pin.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch

from u1lib.device import resolve_device, resolve_dtype
from u1lib.io import write_json
from u1lib.lora.io import adapter_metadata, adapter_tensors, write_adapter_file
from u1lib.snapshot import require_verified
from u1lib.train import checkpoint as ckpt
from u1lib.train import state
from u1lib.train.distributed import init_from_env
from u1lib.train.file_writer import BackgroundWriter
from u1lib.train.inputs import RunFiles
from u1lib.train.lineage import run_lineage
from u1lib.train.metrics import THistogram
from u1lib.train.monitor import RunMonitor
from u1lib.train.objectives import flow_loss
from u1lib.train.optim import WeightEma, make_optimizer, set_lr
from u1lib.train.phases import JobClock
from u1lib.train.prefixes import open_prefixes
from u1lib.train.progress import TrainProgress
from u1lib.train.resume import choose_checkpoint
from u1lib.train.run_folder import RunLogs, run_lock
from u1lib.train.settings import TrainSettings
from u1lib.train.setup import batches, load_base, make_surface, open_inputs
from u1lib.train.stop import TrainingInterrupted, stop_on_signals
from u1lib.train.summary import run_metrics
from u1lib.train.timesteps import sample_t


class NonFiniteLoss(RuntimeError):
    """Training produced NaN/inf; the run stops and the last good checkpoint stays."""


class Trainer:
    """One run: ``__init__`` sets it up in named steps (each needs the ones before), :meth:`fit`
    trains or resumes, :meth:`save` delivers."""

    def __init__(self, s: TrainSettings, files: RunFiles, *, prompt=None, on_incompatible: str = "refuse"):
        self.clock, self.writer = JobClock(), BackgroundWriter()
        self.s, self.run_dir, self.on_incompatible = s, Path(files.run_dir), on_incompatible
        self.checkpoints = self.run_dir / ckpt.FOLDER
        self.run_config = {"train": s.to_dict(), "prompt": prompt or {}}
        with self.clock.phase("inputs"):
            self._join_ranks()
            snapshot_dir = require_verified(files.manifest_path, files.snapshot_dir)  # a changed snapshot is refused
            inputs = open_inputs(s, files, self.device, self.base_dtype)
        self.manifest, self.train_data, self.val_data = inputs.manifest, inputs.train_data, inputs.val_data
        self.val_source = inputs.val_source
        with self.clock.phase("load"):
            self.model, self.baked = load_base(s, snapshot_dir, self.device, self.base_dtype)
        self.t_eps = self.model.config.t_eps if s.t_eps is None else s.t_eps
        with self.clock.phase("surface"):
            self.surface, self.trainable = make_surface(s, self.model)
            self.reducer = self.dist.gradient_reducer(list(self.trainable.values()))
            self.optimizer = make_optimizer(list(self.trainable.values()), s, self.device)
            self.ema = WeightEma(self.trainable, s.ema)
        with self.clock.phase("batches"):
            self.sampler, self.loader, self.weights = batches(
                s, self.train_data, self.model.config.token_size, self.device
            )
        with self.clock.phase("prefixes"):
            self.prefixes = open_prefixes(
                inputs.cache,
                model=self.model,
                snapshot_dir=snapshot_dir,
                prompt=prompt,
                data=[self.train_data, self.val_data],
                dtype=self.base_dtype,
                device=self.device,
            )
        with self.clock.phase("lineage"):
            self.lineage = run_lineage(s, self.manifest, self.train_data, inputs.cache, prompt)
        with self.clock.phase("monitor"):
            self._step_0_state()
            self.monitor = self._make_monitor()

    # setup (the steps of u1lib/train/setup.py need the ranks, device and dtype first) -----
    def _join_ranks(self) -> None:
        self.dist = init_from_env()
        self.device = resolve_device(self.s.device)  # after init_from_env: each rank's own GPU
        self.base_dtype = resolve_dtype(self.s.precision, self.device)

    def _step_0_state(self) -> None:
        """The counters, random stream, history and progress display of step 0 (a resume replaces them)."""
        self.generator = torch.Generator(device=self.device).manual_seed(self.s.seed)
        self.step, self.images_seen, self.dropped_total = 0, 0, 0
        self.t_hist = THistogram()
        self.train_seconds = 0.0
        self.logs = RunLogs(self.run_dir, writes=self.dist.is_main)
        self.progress = TrainProgress(self.s.steps)

    def _make_monitor(self) -> RunMonitor:
        return RunMonitor(
            self.s,
            self.run_dir,
            self.dist,
            model=self.model,
            autocast=self.autocast,
            prefixes=self.prefixes,
            val_data=self.val_data,
            t_eps=self.t_eps,
            device=self.device,
            logs=self.logs,
            progress=self.progress,
            run_config=self.run_config,
            write_adapter=self._write_adapter,
            capture=lambda: state.capture(self),
            clock=self.clock,
            writer=self.writer,
        )

    def autocast(self):
        if self.base_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _adapter_now(self, step: int) -> tuple[dict, dict]:
        """The adapter's tensors as they are now (CPU copies) and its file metadata."""
        metadata = adapter_metadata(
            config=self.run_config, spec=self.s.lora, base_revision=str(self.manifest.get("revision")), step=step
        )
        with self.clock.phase("adapters"):
            tensors = adapter_tensors(self.model, list(self.surface.full_ft), factor_dtype=self.s.adapter_dtype)
        return tensors, metadata

    def _write_adapter(self, path: Path, step: int) -> None:
        tensors, metadata = self._adapter_now(step)
        self.writer.submit(str(path), lambda: write_adapter_file(path, tensors, metadata))

    # fit ------------------------------------------------------------------------------------
    def _next_batch(self) -> list[int]:
        for batch in self.sampler:
            return batch
        return next(iter(self.sampler))  # epoch boundary: the sampler starts the next epoch

    def _micro_step(self) -> dict:
        s = self.s
        batch = self._next_batch()
        n = len(batch)
        part = self.dist.slice(n)  # every rank draws the global batch's random numbers, reads only its rows
        ids, images = self.loader.load(batch[part])
        upcoming = self.sampler.peek()
        self.loader.prefetch(upcoming[self.dist.slice(len(upcoming))])
        t = sample_t(n, s.t_dist, self.generator, t_eps=self.t_eps, mean=s.t_mean, std=s.t_std, shift=s.t_shift)
        noise = torch.randn((n, *images.shape[1:]), generator=self.generator, device=self.device)
        dropped = (torch.rand(n, generator=self.generator, device=self.device) < s.cond_dropout).tolist()
        prefix = self.prefixes.mixed(ids, dropped[part])
        with self.autocast():
            out = flow_loss(
                self.model,
                images.to(self.device, non_blocking=True),
                prefix,
                t[part].to(self.device),
                noise[part],
                loss_type=s.loss_type,
                t_eps=self.t_eps,
                huber_delta=s.huber_delta,
                weights=None if self.weights is None else self.weights[batch][part].to(self.device),
                clamp_noise_scale=s.noise_scale == "clamped",
            )
        (out.loss / s.grad_accum).backward()
        self.t_hist.add(t)
        return {
            "loss": out.loss.detach(),
            "x0_mse": out.x0_mse.mean(),
            "v_mse": out.v_mse.mean(),
            "t": t,
            "n": n,
            "dropped": sum(dropped),
        }

    def train_step(self) -> dict:
        s, params = self.s, list(self.trainable.values())
        started = time.perf_counter()
        set_lr(self.optimizer, self.step, s)
        parts = []
        for micro in range(s.grad_accum):
            if micro == s.grad_accum - 1:
                self.reducer.arm()  # the last backward of the step all-reduces as it goes
            parts.append(self._micro_step())
        self.reducer.finish()
        stats = torch.stack([torch.stack([p["loss"], p["x0_mse"], p["v_mse"]]).float() for p in parts]).mean(0)
        stats = self.dist.all_reduce_sum(stats.cpu()) / self.dist.world_size
        grad_norm = torch.nn.utils.clip_grad_norm_(params, s.grad_clip if s.grad_clip else float("inf"))
        loss = float(stats[0])
        if not math.isfinite(loss) or not math.isfinite(float(grad_norm)):
            self.writer.drain()  # the checkpoint being written is the one to name
            newest = ckpt.list_checkpoints(self.checkpoints)
            where = newest[-1] if newest else "none (no checkpoint was written yet)"
            raise NonFiniteLoss(
                f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {self.step + 1} "
                f"(loss {loss}, grad_norm {float(grad_norm)}); stopped without updating. Last good checkpoint: {where}"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.trainable)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - started
        images = sum(p["n"] for p in parts)
        dropped = sum(p["dropped"] for p in parts)
        self.step += 1
        self.images_seen += images
        self.dropped_total += dropped
        self.train_seconds += elapsed
        return {
            "step": self.step,
            "loss": loss,
            "x0_mse": float(stats[1]),
            "v_mse": float(stats[2]),
            "t": [round(v, 6) for p in parts for v in p["t"].tolist()],
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": float(grad_norm),
            "images_per_s": images / elapsed,
            "dropped": dropped,
            "seconds": elapsed,
        }

    def fit(self) -> None:
        try:
            self._fit()
        finally:
            self.monitor.close()

    def _fit(self) -> None:
        s = self.s
        saved = choose_checkpoint(self.checkpoints, self.lineage, s.steps, self.on_incompatible)
        if saved is not None:
            state.restore(self, saved)
        self.monitor.start(self.step, resumed=saved is not None)
        with stop_on_signals(enabled=not self.dist.active) as stop:
            first = True  # the first step after (re)starting compiles: its time is kept apart
            paused = False  # so is the step after validation, previews or a checkpoint ran
            while self.step < s.steps:
                with self.clock.phase("first_step" if first else "steps_after_pause" if paused else "steps"):
                    record = self.train_step()
                first = False
                paused = self.monitor.stepped(record, stop)
                if stop.signal_name:
                    raise TrainingInterrupted(
                        f"{stop.signal_name}: stopped at step {self.step} of {s.steps} with a checkpoint in "
                        f"{self.checkpoints}; run the same command again to resume"
                    )
        self.dist.barrier()

    # save ---------------------------------------------------------------------------------
    def save(self) -> dict:
        if not self.dist.is_main:
            return {}
        with self.clock.phase("save"):
            self.ema.copy_to(self.trainable)  # the EMA weights are the deliverable when EMA is on
            adapter_path = self.run_dir / "adapter.safetensors"
            tensors, metadata = self._adapter_now(self.step)
            self.writer.drain()  # the periodic and best adapters land before the final one is chosen from
            adapter_bytes = write_adapter_file(adapter_path, tensors, metadata)
            best = self.monitor.finish(adapter_path)
        metrics = run_metrics(self, adapter_bytes=adapter_bytes, best_adapter=best)
        write_json(self.run_dir / "metrics.json", metrics)
        write_json(self.run_dir / "config.json", self.run_config)
        self.progress.finished(metrics, str(adapter_path))
        return metrics


def train(
    settings: dict,
    *,
    snapshot_dir,
    manifest_path,
    train_parquet,
    run_dir,
    val_parquet=None,
    cache_dir=None,
    prompt=None,
    on_incompatible: str = "refuse",
) -> dict:
    """Train (or resume) one run; writes adapter.safetensors, metrics.json, config.json and the logs.

    The paths are :class:`~u1lib.train.inputs.RunFiles`' fields. ``on_incompatible``: what to do with
    checkpoints this run cannot continue from (other settings, data, model or engine code, or past
    ``steps``): ``refuse`` (name the reason and stop) or ``restart`` (move them aside and start over;
    the workflow's choice, since Snakemake reruns a job exactly when such an input changed). One
    process (the main rank) holds the run folder.
    """
    s = TrainSettings.from_dict(settings)
    optional = [None if path is None else Path(path) for path in (val_parquet, cache_dir)]
    files = RunFiles(Path(snapshot_dir), Path(manifest_path), Path(train_parquet), Path(run_dir), *optional)
    lock = run_lock(files.run_dir) if init_from_env().is_main else contextlib.nullcontext()
    with lock:
        trainer = Trainer(s, files, prompt=prompt, on_incompatible=on_incompatible)
        trainer.fit()
        return trainer.save()
