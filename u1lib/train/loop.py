"""The training recipe: setup -> fit -> save. ``python -m u1lib train CONFIG.yaml --run-dir DIR ...``.

Loads only the generation tower and fm modules (plus the understanding tower in online-prefix
mode), wraps LoRA per spec, trains, checkpoints every N steps into ``run_dir/checkpoints`` and
resumes from the newest valid checkpoint when the same command runs again.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

from ..cache import PrefixCacheReader, resolve_device
from ..data.prompts import PromptSpec, load_tokenizer
from ..data.reader import BucketBatchSampler, PackedDataset
from ..io import append_jsonl, read_json, read_jsonl, write_json, write_jsonl
from ..lora.adapter import wrap
from ..lora.io import adapter_metadata, bake_lora, read_lora_file, save_adapter
from ..lora.spec import expand_preset, resolve_full_ft, resolve_spec
from ..model.loading import load_model
from ..model.offload import enable_swap, spread
from ..model.u1 import PrefixKV, U1Model
from ..prefix import UNCOND_ID, PrefixEncoder
from ..provenance import git_commit, source_hash, versions
from . import checkpoint as ckpt
from .distributed import init_from_env
from .metrics import THistogram, device_name, peak_gpu_bytes, peak_host_rss_bytes
from .objectives import flow_loss
from .prefetch import BatchPrefetcher
from .settings import TrainSettings
from .timesteps import sample_t
from .validation import Validator


class NonFiniteLoss(RuntimeError):
    """Training produced NaN/inf; the run stops and the last good checkpoint stays."""


class IncompatibleCheckpoint(ValueError):
    """A checkpoint written under settings that change the math of this run."""


# sources whose change alters what a checkpoint's tensors mean (the math of a step or the data order)
_STEP_SOURCES = ("model/u1.py", "model/layers.py", "model/rope.py", "model/embedders.py", "lora/adapter.py",
                 "train/objectives.py", "train/timesteps.py", "data/reader.py", "prefix.py")  # fmt: skip
ON_INCOMPATIBLE = ("refuse", "restart")


class PrefixSource:
    """Conditional / unconditional prefixes for sample ids, from the cache or computed online."""

    def __init__(self, *, cache: PrefixCacheReader | None, encoder: PrefixEncoder | None, captions: dict, dtype):
        self.cache, self.encoder, self.captions, self.dtype = cache, encoder, captions, dtype

    def _fetch(self, ids: list[str]) -> PrefixKV:
        if self.cache is not None:
            return self.cache.get(ids)
        rows = [self.encoder.uncond_ids() if i == UNCOND_ID else self.encoder.token_ids(*self.captions[i]) for i in ids]
        return self.encoder.encode_ids(rows).to(dtype=self.dtype)

    def cond(self, ids: list[str]) -> PrefixKV:
        return self._fetch(ids)

    def mixed(self, ids: list[str], dropped: list[bool]) -> PrefixKV:
        """Each row's caption prefix, or the unconditional prefix where its condition is dropped."""
        return self._fetch([UNCOND_ID if d else i for i, d in zip(ids, dropped)])


def lineage_differences(saved: dict, now: dict) -> list[str]:
    """What differs between a checkpoint's lineage and this run's, one readable item each.

    A setting the checkpoint does not mention (added to u1lib later) counts as its default value.
    """
    defaults = TrainSettings().compatibility()
    saved_settings = {**defaults, **saved.get("settings", {})}
    differ = [
        f"train.{k}: checkpoint {saved_settings.get(k)!r}, now {v!r}"
        for k, v in now["settings"].items()
        if saved_settings.get(k) != v
    ]
    labels = {"model": "base model manifest", "data": "training data", "prompt": "prompt template/trigger", "engine": "engine code"}
    differ += [f"{labels[k]}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in labels if saved.get(k) != now[k]]
    return differ


def lr_factor(step: int, s: TrainSettings) -> float:
    if step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    if s.schedule == "constant":
        return 1.0
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(params: list[torch.nn.Parameter], s: TrainSettings, device: torch.device):
    if s.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise RuntimeError("train.optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    fused = device.type == "cuda"
    return torch.optim.AdamW(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay, fused=fused)


class Trainer:
    def __init__(self, s: TrainSettings, *, snapshot_dir, manifest_path, train_parquet, val_parquet, cache_dir, run_dir,
                 prompt=None, on_incompatible: str = "refuse"):  # fmt: skip
        if on_incompatible not in ON_INCOMPATIBLE:
            raise ValueError(f"on_incompatible {on_incompatible!r} is not one of {ON_INCOMPATIBLE}")
        self.s, self.run_dir, self.on_incompatible = s, Path(run_dir), on_incompatible
        self.dist = init_from_env()
        self.device = resolve_device(s.device)
        if self.device.type == "cuda" and self.dist.active:
            self.device = torch.device("cuda", torch.cuda.current_device())
        use_bf16 = s.precision == "bf16" or (s.precision == "auto" and self.device.type == "cuda")
        self.base_dtype = torch.bfloat16 if use_bf16 else torch.float32
        self.manifest = read_json(manifest_path)
        groups = ["gen", "fm"] + (["und", "embed"] if s.memory_mode == "online_prefix" else [])
        self.model: U1Model = load_model(snapshot_dir, groups, device=self.device, dtype=self.base_dtype)
        cfg = self.model.config
        self.t_eps = cfg.t_eps if s.t_eps is None else s.t_eps
        self.baked = self._bake_upstream_lora()
        self.trainable_names, self.full_ft = self._make_trainable()
        params = dict(self.model.named_parameters())
        self.params = [params[n] for n in self.trainable_names]
        self._memory_plan(cfg.num_hidden_layers)
        self.optimizer = make_optimizer(self.params, s, self.device)
        self.ema = {n: p.detach().clone() for n, p in zip(self.trainable_names, self.params)} if s.ema else {}
        self.train_data = PackedDataset(train_parquet)
        self.sampler = BucketBatchSampler(self.train_data, s.batch_size, seed=s.seed, drop_last=True)
        self.loader = BatchPrefetcher(self.train_data, pin_memory=self.device.type == "cuda")
        val_data = PackedDataset(val_parquet) if val_parquet else None
        captions = {}
        if s.memory_mode == "online_prefix":
            spec = PromptSpec.from_dict(prompt or {})
            encoder = PrefixEncoder(self.model, load_tokenizer(snapshot_dir), spec, self.device)
            for data in filter(None, (self.train_data, val_data)):
                captions.update(zip(data.sample_ids, data.texts()))
            self.prefixes = PrefixSource(cache=None, encoder=encoder, captions=captions, dtype=self.base_dtype)
        else:
            reader = PrefixCacheReader(cache_dir, device=self.device, dtype=self.base_dtype)
            self.prefixes = PrefixSource(cache=reader, encoder=None, captions=captions, dtype=self.base_dtype)
        if val_data is None or not len(val_data):
            val_data = PackedDataset(train_parquet)  # a reader of its own: the prefetch thread uses train_data's
        self.validator = Validator(
            val_data, self.prefixes, t_values=s.val_t, seed=s.val_seed,
            max_items=s.val_max_items, t_eps=self.t_eps, device=self.device,
        )  # fmt: skip
        self.lineage = {
            "settings": s.compatibility(),
            "model": self.manifest.get("manifest_hash"),
            "data": self.train_data.fingerprint(),
            # the prompt the prefixes were made with: the cache records it, online mode is given it
            "prompt": reader.info["prompt"] if s.memory_mode == "resident" else PromptSpec.from_dict(prompt or {}).to_dict(),
            "engine": source_hash(*_STEP_SOURCES),
        }
        self.generator = torch.Generator(device=self.device).manual_seed(s.seed)
        self.step, self.images_seen, self.dropped_total = 0, 0, 0
        self.t_hist = THistogram()
        self.train_seconds = 0.0

    # setup --------------------------------------------------------------------------------
    def _bake_upstream_lora(self) -> dict | None:
        spec = self.s.upstream_lora
        if not spec:
            return None
        return bake_lora(self.model, read_lora_file(spec["path"]), skip=tuple(spec.get("skip", ())))

    def _make_trainable(self) -> tuple[list[str], list[str]]:
        cfg = self.model.config
        _, preset_ft = expand_preset(self.s.lora)
        targets = resolve_spec(self.s.lora, cfg)
        full_ft = list(resolve_full_ft(tuple(preset_ft) + tuple(self.s.full_ft), cfg))
        torch.manual_seed(self.s.seed)  # adapter init
        wrap(self.model, targets, dropout=self.s.lora_dropout)
        params = dict(self.model.named_parameters())
        for name in full_ft:
            # fp32 master copy of a fully fine-tuned tensor; autocast computes in bf16
            params[name].data = params[name].data.float()
            params[name].requires_grad_(True)
        names = [n for n, p in self.model.named_parameters() if ".lora_" in n] + full_ft
        for name in names:
            params[name].requires_grad_(True)
        return sorted(names), full_ft

    def _memory_plan(self, num_layers: int) -> None:
        """Checkpointing, kept attention, streamed layers and compilation, as the settings ask."""
        s = self.s
        self.model.checkpoint_layers = s.checkpoint_layers(num_layers)
        self.model.keep_attention = s.keep_attention
        if s.swap_layers:
            streamed = spread(s.swap_layers, num_layers)
            if not set(streamed) <= self.model.checkpoint_layers:
                raise ValueError(
                    f"train.swap_layers {s.swap_layers} streams layers {streamed}, which must be checkpointed: "
                    "set train.checkpointing to all"
                )
            enable_swap(self.model, streamed)
        if s.compile:
            self.model.compile_layers()

    def autocast(self):
        if self.base_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # state ----------------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, torch.Tensor]:
        state = {"generator": self.generator.get_state(), "torch_cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["torch_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        opt_tensors, opt_scalars = ckpt.optimizer_to_tensors(self.optimizer, self.trainable_names)
        state = ckpt.TrainState(
            step=self.step,
            trainable={n: p for n, p in zip(self.trainable_names, self.params)},
            optimizer=opt_tensors,
            optimizer_scalars=opt_scalars,
            ema=self.ema,
            rng=self._rng_state(),
            info={
                "sampler": self.sampler.state_dict(),
                "images_seen": self.images_seen,
                "dropped_total": self.dropped_total,
                "t_hist": self.t_hist.counts.tolist(),
                "train_seconds": self.train_seconds,
                "lineage": self.lineage,
                "world_size": self.dist.world_size,
            },
        )
        ckpt.save_checkpoint(self.run_dir / "checkpoints", state, keep=self.s.keep_checkpoints)

    def resume(self) -> bool:
        state, problems = ckpt.newest_valid(self.run_dir / "checkpoints")
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
        if state is None:
            return False
        differ = lineage_differences(state.info.get("lineage", {}), self.lineage)
        if differ:
            folder = self.run_dir / "checkpoints"
            detail = "; ".join(differ)
            if self.on_incompatible == "refuse":
                raise IncompatibleCheckpoint(
                    f"{folder} was written with different settings ({detail}). Restore those settings, "
                    "or start over: delete that folder (or pass --on-incompatible restart)."
                )
            aside = folder.with_name("checkpoints.previous")
            shutil.rmtree(aside, ignore_errors=True)
            folder.rename(aside)
            print(f"warning: starting over; {folder} came from other settings ({detail}); moved to {aside}", file=sys.stderr)
            return False
        params = dict(zip(self.trainable_names, self.params))
        with torch.no_grad():
            for name, tensor in state.trainable.items():
                params[name].copy_(tensor)
            for name, tensor in state.ema.items():
                self.ema[name].copy_(tensor)
        ckpt.optimizer_from_tensors(self.optimizer, self.trainable_names, state.optimizer, state.optimizer_scalars)
        self.generator.set_state(state.rng["generator"])
        torch.set_rng_state(state.rng["torch_cpu"])
        if "torch_cuda" in state.rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(state.rng["torch_cuda"], self.device)
        sampler_state = dict(state.info["sampler"])
        sampler_state.update(rank=self.sampler.rank, world_size=self.sampler.world_size)  # global batches: any rank count
        self.sampler.load_state_dict(sampler_state)
        self.step = state.step
        self.images_seen, self.dropped_total = state.info["images_seen"], state.info["dropped_total"]
        self.t_hist = THistogram(counts=state.info["t_hist"])
        self.train_seconds = state.info["train_seconds"]
        if self.dist.is_main:
            for log in ("train_log.jsonl", "val_log.jsonl"):
                path = self.run_dir / log
                if path.exists():  # drop lines written after the checkpoint (they will be redone)
                    kept = [r for r in read_jsonl(path) if r["step"] <= self.step]
                    write_jsonl(path, kept)
        return True

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
                self.model, images.to(self.device, non_blocking=True), prefix, t[part].to(self.device),
                noise[part], loss_type=s.loss_type, t_eps=self.t_eps, huber_delta=s.huber_delta,
            )  # fmt: skip
        (out.loss / s.grad_accum).backward()
        self.t_hist.add(t)
        return {"loss": out.loss.detach(), "x0_mse": out.x0_mse.mean(), "v_mse": out.v_mse.mean(), "t": t, "n": n, "dropped": sum(dropped)}

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
            "step": self.step, "loss": loss, "x0_mse": float(stats[1]), "v_mse": float(stats[2]),
            "t": [round(v, 6) for p in parts for v in p["t"].tolist()], "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": float(grad_norm), "images_per_s": images / elapsed, "dropped": dropped, "seconds": elapsed,
        }  # fmt: skip

    def validate(self) -> dict:
        self.model.eval()
        result = {"step": self.step, **self.validator.run(self.model, self.dist, self.autocast)}
        self.model.train()
        return result

    def fit(self) -> None:
        s = self.s
        resumed = self.resume()
        if self.dist.is_main and not resumed:
            for log in ("train_log.jsonl", "val_log.jsonl"):
                (self.run_dir / log).unlink(missing_ok=True)
        if not resumed and s.val_every:
            self._log("val_log.jsonl", self.validate())  # step 0: the base model's loss
        progress = Progress(s.steps, self.step)
        while self.step < s.steps:
            record = self.train_step()
            self._log("train_log.jsonl", record)
            if self.dist.is_main and (self.step % s.log_every == 0 or self.step == s.steps):
                progress.show(self.step, record["loss"])
            if s.val_every and (self.step % s.val_every == 0 or self.step == s.steps):
                self._log("val_log.jsonl", self.validate())
            if s.ckpt_every and self.step % s.ckpt_every == 0 and self.step < s.steps:
                self.save_checkpoint()
        self.dist.barrier()

    def _log(self, name: str, record: dict) -> None:
        if self.dist.is_main:
            append_jsonl(self.run_dir / name, record)

    # save ---------------------------------------------------------------------------------
    def save(self, settings_dict: dict) -> dict:
        if not self.dist.is_main:
            return {}
        if self.ema:  # the EMA weights are the deliverable when EMA is on
            with torch.no_grad():
                for name, param in zip(self.trainable_names, self.params):
                    param.copy_(self.ema[name])
        metadata = adapter_metadata(
            config=settings_dict, spec=self.s.lora, base_revision=str(self.manifest.get("revision")), step=self.step
        )
        adapter_bytes = save_adapter(self.model, self.run_dir / "adapter.safetensors", self.full_ft, metadata)
        train_log = read_jsonl(self.run_dir / "train_log.jsonl")
        val_log = read_jsonl(self.run_dir / "val_log.jsonl") if (self.run_dir / "val_log.jsonl").exists() else []
        best = min(val_log, key=lambda r: r["val_loss"]) if val_log else None
        metrics = {
            "steps": self.step,
            "images_seen": self.images_seen,
            "wall_time_s": self.train_seconds,
            "s_per_step": self.train_seconds / max(1, len(train_log)) if train_log else None,
            "images_per_s": self.images_seen / self.train_seconds if self.train_seconds else None,
            "peak_gpu_mem_bytes": peak_gpu_bytes(self.device),
            "peak_host_rss_bytes": peak_host_rss_bytes(),
            "final_train_loss": train_log[-1]["loss"] if train_log else None,
            "final_val_loss": val_log[-1]["val_loss"] if val_log else None,
            "best_val_loss": best["val_loss"] if best else None,
            "best_val_step": best["step"] if best else None,
            "trainable_params": sum(p.numel() for p in self.params),
            "adapter_bytes": adapter_bytes,
            "device": device_name(self.device),
            "world_size": self.dist.world_size,
            "versions": versions(),
            "git_commit": git_commit(),
            "t_hist": self.t_hist.to_dict(),
            "dropout_count": self.dropped_total,
            "base_revision": self.manifest.get("revision"),
            "upstream_lora": self.baked and {k: len(v) for k, v in self.baked.items()},
        }
        write_json(self.run_dir / "metrics.json", metrics)
        write_json(self.run_dir / "config.json", settings_dict)
        return metrics


class Progress:
    """A one-line progress display on a terminal; plain lines when logging to a file."""

    def __init__(self, total: int, start: int):
        self.total, self.start, self.began = total, start, time.perf_counter()
        self.tty = sys.stderr.isatty()

    def show(self, step: int, loss: float) -> None:
        done = step - self.start
        rate = (time.perf_counter() - self.began) / max(1, done)
        eta = rate * (self.total - step)
        line = f"step {step}/{self.total} loss {loss:.4f} {rate:.2f}s/step eta {eta / 60:.1f}min"
        print(("\r" + line) if self.tty else line, end="" if self.tty and step < self.total else "\n", file=sys.stderr, flush=True)


def train(settings: dict, *, snapshot_dir, manifest_path, train_parquet, val_parquet, cache_dir, run_dir, prompt=None,
          on_incompatible: str = "refuse") -> dict:  # fmt: skip
    """Train (or resume) one run; writes adapter.safetensors, metrics.json, config.json and the logs.

    ``on_incompatible``: what to do with checkpoints from other settings, data, model or engine code:
    ``refuse`` (name the differences and stop) or ``restart`` (move them aside and start over; the
    workflow's choice, since Snakemake reruns a job exactly when such an input changed).
    """
    s = TrainSettings.from_dict(settings)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(
        s, snapshot_dir=snapshot_dir, manifest_path=manifest_path, train_parquet=train_parquet,
        val_parquet=val_parquet, cache_dir=cache_dir, run_dir=run_dir, prompt=prompt, on_incompatible=on_incompatible,
    )  # fmt: skip
    trainer.fit()
    return trainer.save({"train": s.to_dict(), "prompt": prompt or {}})


def cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m u1lib {verb}", description=__doc__)
    parser.add_argument("config", type=Path, help="YAML with a `train` section (and optionally `prompt`)")
    parser.add_argument("--snapshot", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--train-data", type=Path, required=True, help="train.parquet")
    parser.add_argument("--val-data", type=Path, help="val.parquet (default: a fixed subset of train)")
    parser.add_argument("--cache", type=Path, help="prefix cache dir (not needed with memory_mode online_prefix)")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--on-incompatible", choices=ON_INCOMPATIBLE, default="refuse",
                        help="checkpoints from other settings/data/code: refuse (default) or restart from scratch")  # fmt: skip
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    train(
        raw.get("train", {}), snapshot_dir=args.snapshot, manifest_path=args.manifest, train_parquet=args.train_data,
        val_parquet=args.val_data, cache_dir=args.cache, run_dir=args.run_dir, prompt=raw.get("prompt"),
        on_incompatible=args.on_incompatible,
    )  # fmt: skip
    return 0
