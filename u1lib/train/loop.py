"""The training recipe: setup -> fit -> save (``python -m u1lib train``: train/cli.py).

Loads only the generation tower and fm modules (plus the understanding tower in online-prefix
mode), wraps LoRA per spec, trains, checkpoints every N steps and at the end into
``run_dir/checkpoints``, and resumes from the newest qualifying checkpoint when the same command runs
again (train/resume.py says which qualify).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import torch

from u1lib.cache import PrefixCacheReader
from u1lib.data.prompts import PromptSpec, load_tokenizer
from u1lib.data.reader import BucketBatchSampler
from u1lib.device import resolve_device, resolve_dtype
from u1lib.io import read_json, write_json
from u1lib.lora.adapter import make_trainable
from u1lib.lora.io import adapter_metadata, bake_lora, read_lora_file, save_adapter
from u1lib.lora.spec import TrainableSurface
from u1lib.model.loading import load_model
from u1lib.model.offload import apply_memory_plan
from u1lib.model.u1 import U1Model
from u1lib.prefix import PrefixEncoder
from u1lib.snapshot import require_verified
from u1lib.source_hash import code_hash
from u1lib.train import checkpoint as ckpt
from u1lib.train.adapter_files import AdapterFiles
from u1lib.train.distributed import init_from_env
from u1lib.train.inputs import open_cache, open_data
from u1lib.train.metrics import THistogram
from u1lib.train.objectives import flow_loss, image_weights
from u1lib.train.optim import lr_factor, make_optimizer
from u1lib.train.prefetch import BatchPrefetcher
from u1lib.train.prefixes import PrefixSource
from u1lib.train.previews import Previewer, PreviewSettings
from u1lib.train.progress import TrainProgress
from u1lib.train.resume import choose_checkpoint
from u1lib.train.run_folder import TRAIN_LOG, VAL_LOG, RunLogs, run_lock
from u1lib.train.settings import TrainSettings
from u1lib.train.stop import TrainingInterrupted, stop_on_signals
from u1lib.train.summary import run_metrics
from u1lib.train.timesteps import sample_t
from u1lib.train.tracking import Trackers
from u1lib.train.validation import Validator

log = logging.getLogger(__name__)

# The lineage's code: what the training step imports, less what cannot change a checkpoint's
# tensors or the history it carries (display, file plumbing, the run summary, the resume rule itself).
LINEAGE_EXCLUDED = (
    "train/progress.py",
    "train/stop.py",
    "train/run_folder.py",
    "train/summary.py",
    "train/resume.py",
    "train/metrics.py",
    "io.py",
    "provenance.py",
    "source_hash.py",
    "snapshot.py",
)


class NonFiniteLoss(RuntimeError):
    """Training produced NaN/inf; the run stops and the last good checkpoint stays."""


class Trainer:
    def __init__(
        self,
        s: TrainSettings,
        *,
        snapshot_dir,
        manifest_path,
        train_parquet,
        val_parquet,
        cache_dir,
        run_dir,
        prompt=None,
        on_incompatible: str = "refuse",
    ):
        self.s, self.run_dir, self.on_incompatible = s, Path(run_dir), on_incompatible
        self.dist = init_from_env()
        self.device = resolve_device(s.device)  # after init_from_env: each rank's own GPU
        self.base_dtype = resolve_dtype(s.precision, self.device)
        snapshot_dir = require_verified(manifest_path, snapshot_dir)  # a snapshot that changed is refused
        self.manifest = read_json(manifest_path)
        self.train_data, self.val_data, self.val_source = open_data(Path(train_parquet), val_parquet)
        cache = None  # before the model loads: a cache that cannot serve fails fast
        if s.memory_mode == "resident":
            held_out = [self.val_data] if self.val_source == "held-out" else []
            cache = open_cache(
                cache_dir,
                manifest=self.manifest,
                data=[self.train_data, *held_out],
                device=self.device,
                dtype=self.base_dtype,
            )
        self.model = self._load_model(snapshot_dir)
        self.t_eps = self.model.config.t_eps if s.t_eps is None else s.t_eps
        self.baked = self._bake_upstream_lora()
        self.surface = TrainableSurface.resolve(s.lora, s.full_ft, self.model.config)
        torch.manual_seed(s.seed)  # adapter init
        self.trainable_names = make_trainable(self.model, self.surface, dropout=s.lora_dropout)
        apply_memory_plan(
            self.model,
            checkpointing=s.checkpointing,
            keep_attention=s.keep_attention,
            swap_layers=s.swap_layers,
            compile=s.compile,
        )  # after the surface: only frozen weights stream
        params = dict(self.model.named_parameters())
        self.params = [params[n] for n in self.trainable_names]
        self.optimizer = make_optimizer(self.params, s, self.device)
        self.ema = {n: p.detach().clone() for n, p in zip(self.trainable_names, self.params)} if s.ema else {}
        self.sampler = BucketBatchSampler(self.train_data, s.batch_size, seed=s.seed, drop_last=True)
        self.loader = BatchPrefetcher(self.train_data, pin_memory=self.device.type == "cuda")
        data, token = self.train_data, self.model.config.token_size
        self.weights = image_weights(data.widths, data.heights, token, s.token_weighting)  # None: equal
        self.prefixes = self._prefix_source(cache, snapshot_dir, prompt)
        self.validator = Validator(
            self.val_data,
            self.prefixes,
            t_values=s.val_t,
            seed=s.val_seed,
            max_items=s.val_max_items,
            t_eps=self.t_eps,
            device=self.device,
        )
        self.lineage = self._lineage(cache, prompt)
        self.logs = RunLogs(self.run_dir, writes=self.dist.is_main)
        self.run_config = {"train": s.to_dict(), "prompt": prompt or {}}
        self.adapters = AdapterFiles(self.run_dir, self._write_adapter, save_every=s.save_every)
        self.previewer = Previewer(
            PreviewSettings.from_dict(s.preview), self.val_data, self.prefixes, self.run_dir / "previews", self.device
        )
        main = self.dist.is_main  # the other ranks write no files
        self.trackers = Trackers(
            self.run_dir,
            tensorboard=s.tensorboard and main,
            wandb_project=s.wandb_project if main else None,
            config=self.run_config,
        )
        self.generator = torch.Generator(device=self.device).manual_seed(s.seed)
        self.step, self.images_seen, self.dropped_total = 0, 0, 0
        self.t_hist = THistogram()
        self.train_seconds = 0.0
        self.progress = TrainProgress(s.steps)

    # setup --------------------------------------------------------------------------------
    def _load_model(self, snapshot_dir) -> U1Model:
        groups = ["gen", "fm"] + (["und", "embed"] if self.s.memory_mode == "online_prefix" else [])
        return load_model(snapshot_dir, groups, device=self.device, dtype=self.base_dtype)

    def _bake_upstream_lora(self) -> dict | None:
        spec = self.s.upstream_lora
        if not spec:
            return None
        return bake_lora(self.model, read_lora_file(spec["path"]), skip=tuple(spec.get("skip", ())))

    def _prefix_source(self, cache: PrefixCacheReader | None, snapshot_dir, prompt) -> PrefixSource:
        if cache is not None:
            return PrefixSource(cache=cache, encoder=None, captions={}, dtype=self.base_dtype)
        spec = PromptSpec.from_dict(prompt or {})
        encoder = PrefixEncoder(self.model, load_tokenizer(snapshot_dir), spec, self.device)
        captions = {}
        for data in (self.train_data, self.val_data):
            captions.update(zip(data.sample_ids, data.texts()))
        return PrefixSource(cache=None, encoder=encoder, captions=captions, dtype=self.base_dtype)

    def _lineage(self, cache: PrefixCacheReader | None, prompt) -> dict:
        return {
            "settings": self.s.compatibility(),
            "model": self.manifest.get("manifest_hash"),
            "data": self.train_data.fingerprint(),
            # the prompt the prefixes were made with: the cache records it, online mode is given it
            "prompt": cache.info["prompt"] if cache is not None else PromptSpec.from_dict(prompt or {}).to_dict(),
            "engine": code_hash(["train/loop.py"], exclude=LINEAGE_EXCLUDED),
        }

    def autocast(self):
        if self.base_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # state ----------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        if not self.dist.is_main:
            return None
        opt_tensors, opt_scalars = ckpt.optimizer_to_tensors(self.optimizer, self.trainable_names)
        state = ckpt.TrainState(
            step=self.step,
            trainable={n: p for n, p in zip(self.trainable_names, self.params)},
            optimizer=opt_tensors,
            optimizer_scalars=opt_scalars,
            ema=self.ema,
            rng=ckpt.capture_rng(self.generator, self.device),
            info={
                "sampler": self.sampler.state_dict(),
                "images_seen": self.images_seen,
                "dropped_total": self.dropped_total,
                "t_hist": self.t_hist.counts.tolist(),
                "train_seconds": self.train_seconds,
                "lineage": self.lineage,
                "world_size": self.dist.world_size,
            },
            logs=self.logs.records,
        )
        return ckpt.save_checkpoint(self.run_dir / "checkpoints", state, keep=self.s.keep_checkpoints)

    def resume(self) -> bool:
        state = choose_checkpoint(self.run_dir / "checkpoints", self.lineage, self.s.steps, self.on_incompatible)
        if state is None:
            return False
        params = dict(zip(self.trainable_names, self.params))
        with torch.no_grad():
            for name, tensor in state.trainable.items():
                params[name].copy_(tensor)
            for name, tensor in state.ema.items():
                self.ema[name].copy_(tensor)
        ckpt.optimizer_from_tensors(self.optimizer, self.trainable_names, state.optimizer, state.optimizer_scalars)
        ckpt.restore_rng(state.rng, self.generator, self.device)
        self.sampler.load_state_dict(state.info["sampler"])  # global batches: any number of ranks resumes
        self.step = state.step
        self.images_seen, self.dropped_total = state.info["images_seen"], state.info["dropped_total"]
        self.t_hist = THistogram(counts=state.info["t_hist"])
        self.train_seconds = state.info["train_seconds"]
        self.logs.restore(state.logs, self.step)
        if self.dist.is_main:
            self.progress.resumed(self.step, f"{self.run_dir / 'checkpoints'} step {self.step}")
            if self.logs.records[VAL_LOG]:
                self.progress.validated(self.logs.records[VAL_LOG][-1])
        return True

    def _write_adapter(self, path: Path, step: int) -> int:
        metadata = adapter_metadata(
            config=self.run_config, spec=self.s.lora, base_revision=str(self.manifest.get("revision")), step=step
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        return save_adapter(self.model, path, list(self.surface.full_ft), metadata, factor_dtype=self.s.adapter_dtype)

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
        s = self.s
        started = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = s.lr * lr_factor(self.step, s)
        parts = [self._micro_step() for _ in range(s.grad_accum)]
        self.dist.average_gradients(self.params)
        stats = torch.stack([torch.stack([p["loss"], p["x0_mse"], p["v_mse"]]).float() for p in parts]).mean(0)
        stats = self.dist.all_reduce_sum(stats.cpu()) / self.dist.world_size
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, s.grad_clip if s.grad_clip else float("inf"))
        loss = float(stats[0])
        if not math.isfinite(loss) or not math.isfinite(float(grad_norm)):
            newest = ckpt.list_checkpoints(self.run_dir / "checkpoints")
            where = newest[-1] if newest else "none (no checkpoint was written yet)"
            raise NonFiniteLoss(
                f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {self.step + 1} "
                f"(loss {loss}, grad_norm {float(grad_norm)}); stopped without updating. Last good checkpoint: {where}"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema:
            with torch.no_grad():
                for name, param in zip(self.trainable_names, self.params):
                    self.ema[name].lerp_(param.detach(), 1 - s.ema)
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

    def validate(self) -> None:
        self.model.eval()
        record = {"step": self.step, **self.validator.run(self.model, self.dist, self.autocast)}
        self.model.train()
        self.logs.append(VAL_LOG, record)
        self.progress.validated(record)
        if self.dist.is_main:
            self.trackers.validated(record)
            self.adapters.validated(record, self.logs.records[VAL_LOG])

    def preview(self) -> None:
        if not self.dist.is_main:
            return
        self.model.eval()
        images = self.previewer.run(self.model, self.step, self.autocast)
        self.model.train()
        self.trackers.previewed(self.step, images)

    def _start(self) -> None:
        """Resume, or start from step 0 with the base model's validation and previews; the run's
        files past the resumed step (or all, from step 0) go, and the trackers replay the history."""
        s, resumed = self.s, self.resume()
        if self.dist.is_main:
            if resumed:
                self.adapters.discard_after(self.step)
            else:
                self.logs.start_fresh()
                self.adapters.start_fresh()
            self.previewer.discard_after(self.step if resumed else -1)  # -1: every preview goes
            self.trackers.open(self.step, self.logs.records, self.previewer.root)
        if not resumed:
            if s.val_every:
                self.validate()  # step 0: the base model's loss
            if s.preview_every:
                self.preview()

    def fit(self) -> None:
        try:
            self._fit()
        finally:
            self.trackers.close()

    def _fit(self) -> None:
        s = self.s
        self._start()
        with stop_on_signals(enabled=not self.dist.active) as stop:
            while self.step < s.steps:
                record = self.train_step()
                self.logs.append(TRAIN_LOG, record)
                last = self.step == s.steps
                if self.dist.is_main:
                    self.trackers.trained(record)
                    self.adapters.trained(self.step, last)
                if s.val_every and (self.step % s.val_every == 0 or last):
                    self.validate()
                if s.preview_every and (self.step % s.preview_every == 0 or last):
                    self.preview()
                if self.dist.is_main and (self.step % s.log_every == 0 or self.step == s.steps or stop.signal_name):
                    self.progress.step(self.step, record["loss"])
                periodic = s.ckpt_every and (self.step % s.ckpt_every == 0 or self.step == s.steps)
                if periodic or stop.signal_name:
                    self.save_checkpoint()
                    if self.dist.is_main:
                        kept = [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(self.run_dir / "checkpoints")]
                        self.adapters.prune(self.logs.records[VAL_LOG], kept)
                if stop.signal_name:
                    raise TrainingInterrupted(
                        f"{stop.signal_name}: stopped at step {self.step} of {s.steps} with a checkpoint in "
                        f"{self.run_dir / 'checkpoints'}; run the same command again to resume"
                    )
        self.dist.barrier()

    # save ---------------------------------------------------------------------------------
    def save(self) -> dict:
        if not self.dist.is_main:
            return {}
        if self.ema:  # the EMA weights are the deliverable when EMA is on
            with torch.no_grad():
                for name, param in zip(self.trainable_names, self.params):
                    param.copy_(self.ema[name])
        adapter_path = self.run_dir / "adapter.safetensors"
        adapter_bytes = self._write_adapter(adapter_path, self.step)
        best = self.adapters.finish(self.logs.records[VAL_LOG], adapter_path)
        self.previewer.write_summary()
        metrics = {**run_metrics(self), "adapter_bytes": adapter_bytes, "best_adapter": best}
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
    val_parquet,
    cache_dir,
    run_dir,
    prompt=None,
    on_incompatible: str = "refuse",
) -> dict:
    """Train (or resume) one run; writes adapter.safetensors, metrics.json, config.json and the logs.

    ``on_incompatible``: what to do with checkpoints this run cannot continue from (other settings,
    data, model or engine code, or past ``steps``): ``refuse`` (name the reason and stop) or
    ``restart`` (move them aside and start over; the workflow's choice, since Snakemake reruns a
    job exactly when such an input changed). One process (the main rank) holds the run folder.
    """
    s = TrainSettings.from_dict(settings)
    run_dir = Path(run_dir)
    lock = run_lock(run_dir) if init_from_env().is_main else contextlib.nullcontext()
    with lock:
        trainer = Trainer(
            s,
            snapshot_dir=snapshot_dir,
            manifest_path=manifest_path,
            train_parquet=train_parquet,
            val_parquet=val_parquet,
            cache_dir=cache_dir,
            run_dir=run_dir,
            prompt=prompt,
            on_incompatible=on_incompatible,
        )
        trainer.fit()
        return trainer.save()
