"""The sampling stage: (adapter x prompt x seed) grids with the model loaded once; PNGs + index.json.

Initial noise comes from a CPU generator seeded per image, so a seed gives the same image on any
device. The base model is the variant with no adapter. Prompts get the same template and trigger
as training, through the same prefix code.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from u1lib.data.pixels import image_png
from u1lib.data.prompts import PromptSpec, cond_text, load_tokenizer
from u1lib.device import resolve_device, resolve_dtype, use_compile_cache
from u1lib.io import atomic_folder, refuse_foreign, write_bytes, write_json
from u1lib.lora.adapter import unwrap
from u1lib.lora.io import bake_upstream_lora, read_lora_file, wrap_from_file
from u1lib.model.fp8 import FP8, enable_fp8
from u1lib.model.loading import load_model
from u1lib.model.sampling import euler_sample, initial_noise
from u1lib.model.think import think
from u1lib.model.u1 import PrefixKV, U1Model
from u1lib.names import check_name
from u1lib.prefix import PrefixEncoder
from u1lib.sample_settings import SampleSettings, load_prompts
from u1lib.snapshot import require_verified

progress = logging.getLogger("u1lib.progress")
# beyond these a CPU takes minutes per image: worth a word before the wait starts
CPU_QUICK_PIXELS, CPU_QUICK_STEPS = 256 * 256, 20
INDEX = "index.json"
_SAMPLE_FILE = re.compile(rf"[^/]+_seed\d+\.png|{re.escape(INDEX)}")


def _inside(folder: Path, name: str) -> Path:
    """``folder / name``, refused unless it resolves to a file directly in ``folder`` (a guard behind check_name)."""
    path = folder / name
    if path.resolve().parent != folder.resolve():
        raise ValueError(
            f"refusing to write {path}: it resolves outside {folder}; check the prompt ids and variant names"
        )
    return path


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class _Progress:
    """Images done out of a planned total; the ETA comes from the pace of the batches done so far."""

    def __init__(self, total: int):
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def batch_done(self, images: int, label: str) -> None:
        self.done += images
        per_image = (time.perf_counter() - self.started) / self.done
        progress.info(
            "%s: %d/%d images, %.1f s/image, eta %s",
            label,
            self.done,
            self.total,
            per_image,
            _duration(per_image * (self.total - self.done)),
        )


class Sampler:
    """One loaded model serving many variants, prompts and seeds."""

    def __init__(self, snapshot_dir: Path, settings: SampleSettings, prompt_spec: PromptSpec):
        self.s = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        groups = ["und", "embed", "gen", "fm"] + (["lm_head"] if settings.think_budget is not None else [])
        started = time.perf_counter()
        self.model: U1Model = load_model(snapshot_dir, groups, device=self.device, dtype=self.dtype)
        bake_upstream_lora(self.model, settings.upstream_lora)
        if settings.fp8:  # after the bake: the merge is weight math in the base dtype
            enable_fp8(self.model)
        loaded = time.perf_counter()
        if settings.compile:
            self.model.compile_layers()
        self.encoder = PrefixEncoder(self.model, load_tokenizer(snapshot_dir), prompt_spec, self.device)
        self.uncond = self.encoder.uncond()
        progress.info(
            "model loaded in %.1f s; tokenizer and unconditional prefix in %.1f s",
            loaded - started,
            time.perf_counter() - loaded,
        )
        self._prefixes: dict[str, PrefixKV] = {}
        self.thoughts: dict[str, dict] = {}  # prompt -> {"text", "stop", "tokens"} in think mode
        self._progress: _Progress | None = None

    def plan(self, variants: int, prompts: int) -> None:
        """Say what is about to run, warn when it is a GPU-sized job on the CPU, and start the ETA clock."""
        s = self.s
        total = variants * prompts * len(s.seeds)
        progress.info(
            "sampling %d images (%d variants x %d prompts x %d seeds) at %dx%d, %d steps, cfg %g on %s",
            total,
            variants,
            prompts,
            len(s.seeds),
            s.width,
            s.height,
            s.steps,
            s.cfg_scale,
            self.device,
        )
        if self.device.type == "cpu" and (s.width * s.height > CPU_QUICK_PIXELS or s.steps > CPU_QUICK_STEPS):
            progress.warning(
                "%dx%d at %d steps is sized for a GPU and can take minutes per image on the CPU; for a "
                "quick look pass --size 64 64 --steps 10 (sample.width, sample.height and sample.steps "
                "in a config)",
                s.width,
                s.height,
                s.steps,
            )
        self._progress = _Progress(total)

    def _prefix(self, prompt: str) -> PrefixKV:
        """The prompt's conditional prefix, once per prompt (adapters change only the generation
        tower, so every variant shares it, and in think mode the same thought)."""
        if prompt not in self._prefixes:
            budget = self.s.think_budget
            if budget is None:
                self._prefixes[prompt] = self.encoder.captions([prompt])
            else:
                tokenizer = self.encoder.tokenizer
                result = think(self.model, tokenizer, cond_text(self.encoder.spec, prompt), budget)
                thought = {"text": result.text(tokenizer), "stop": result.stop, "tokens": len(result.token_ids)}
                self.thoughts[prompt] = thought
                self._prefixes[prompt] = result.cache
        return self._prefixes[prompt]

    def images(self, jobs: list[tuple[dict, int]], label: str = "sampling") -> list[torch.Tensor]:
        """Sample every (prompt entry, seed) job, batch_size at a time, logging progress after each batch."""
        s, cfg = self.s, self.model.config
        p = cfg.token_size
        if s.width % p or s.height % p:
            raise ValueError(f"sample width/height {s.width}x{s.height} must be multiples of the token size {p}")
        noise_scale = cfg.noise_scale_for((s.height // p) * (s.width // p))
        if self._progress is None or self._progress.total - self._progress.done < len(jobs):
            self._progress = _Progress(len(jobs))  # no plan() covers these jobs: count them alone
        out = []
        for start in range(0, len(jobs), s.batch_size):
            chunk = jobs[start : start + s.batch_size]
            noise = torch.cat([initial_noise(seed, s.height, s.width, noise_scale) for _, seed in chunk])
            cond = PrefixKV.stack([self._prefix(entry["prompt"]) for entry, _ in chunk])
            images = euler_sample(
                self.model,
                cond,
                self.uncond.repeat(len(chunk)),
                noise.to(self.device, self.dtype),
                steps=s.steps,
                shift=s.timestep_shift,
                cfg_scale=s.cfg_scale,
                cfg_norm=s.cfg_norm,
                cfg_interval=s.cfg_interval,
                t_eps=s.t_eps,
            )
            out.extend(images)
            self._progress.batch_done(len(chunk), label)
        return out

    def run_variant(
        self, variant: str, adapter: Path | None, prompts: list[dict], out_dir: Path, prompt_set: str
    ) -> dict:
        """Apply ``adapter`` (runtime LoRA + its fully fine-tuned tensors), sample, then restore the base."""
        params = dict(self.model.named_parameters())
        lora = read_lora_file(adapter) if adapter else None
        in_fp8 = [n for n in (lora.full if lora else {}) if params[n].dtype == FP8]
        if in_fp8:
            raise ValueError(
                f"{adapter}: fully tunes {in_fp8[0]}, which sample.fp8 stores in FP8; "
                "sample this variant with sample.fp8: false"
            )
        saved = {n: params[n].detach().clone() for n in (lora.full if lora else {})}
        jobs = [(entry, seed) for entry in prompts for seed in self.s.seeds]
        # every target checked before any compute: a name that escapes out_dir fails at once
        files = [_inside(out_dir, f"{entry['id']}_seed{seed}.png") for entry, seed in jobs]
        _inside(out_dir, INDEX)
        refuse_foreign(out_dir, _SAMPLE_FILE.fullmatch, "`u1lib sample`")
        try:
            if lora:
                wrap_from_file(self.model, lora)
            images = self.images(jobs, label=variant)
        finally:
            if lora:
                unwrap(self.model)
                with torch.no_grad():
                    for name, tensor in saved.items():
                        params[name].copy_(tensor)
        records, pngs = [], []
        for (entry, seed), image, path in zip(jobs, images, files):
            pngs.append((path.name, image_png(image)))
            record = {"prompt_id": entry["id"], "prompt": entry["prompt"], "seed": seed, "file": path.name}
            if entry["prompt"] in self.thoughts:
                record["think"] = self.thoughts[entry["prompt"]]
            records.append(record)
        index = {
            "variant": variant,
            "prompt_set": prompt_set,
            "adapter": str(adapter) if adapter else None,
            "sampler": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.s).items()},
            "images": records,
        }
        with atomic_folder(out_dir) as folder:  # the whole set replaces the last one: no strays, no mix
            for name, png in pngs:
                write_bytes(folder / name, png)
            write_json(folder / INDEX, index)
        return index


def sample_variant(
    *,
    snapshot_dir,
    manifest_path=None,
    adapter,
    prompts: list[dict],
    settings: dict,
    out_dir,
    variant: str,
    prompt: dict | None = None,
    prompt_set: str = "prompts",
) -> dict:
    """One variant's grid (the workflow's entry point); a ``manifest_path`` given is checked first."""
    snapshot_dir = require_verified(manifest_path, snapshot_dir) if manifest_path is not None else Path(snapshot_dir)
    sampler = Sampler(snapshot_dir, SampleSettings.from_dict(settings), PromptSpec.from_dict(prompt or {}))
    sampler.plan(variants=1, prompts=len(prompts))
    return sampler.run_variant(variant, Path(adapter) if adapter else None, prompts, Path(out_dir), prompt_set)


def cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m u1lib {verb}", description=__doc__)
    parser.add_argument("--snapshot", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, help="the snapshot's manifest.json: its files are checked first")
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a variant to sample (repeatable); 'base' (no adapter) is always included",
    )
    parser.add_argument("--prompts", type=Path, required=True, help="YAML prompt set")
    parser.add_argument("--out", type=Path, required=True, help="folder; each variant goes to OUT/<name>/")
    parser.add_argument("--settings", type=Path, help="YAML with `sample:` (and optional `prompt:`) sections")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--cfg-scale", type=float)
    parser.add_argument("--size", type=int, nargs=2, metavar=("W", "H"))
    parser.add_argument("--compile-cache", type=Path, help="torch.compile's caches; jobs sharing it compile once")
    args = parser.parse_args(argv)
    if args.compile_cache:
        use_compile_cache(args.compile_cache)
    raw = yaml.safe_load(args.settings.read_text(encoding="utf-8")) if args.settings else {}
    settings = dict(raw.get("sample", {}))
    for key, value in (("seeds", args.seeds), ("steps", args.steps), ("cfg_scale", args.cfg_scale)):
        if value is not None:
            settings[key] = value
    if args.size:
        settings["width"], settings["height"] = args.size
    prompts = load_prompts(args.prompts)  # bad prompts and variant names fail before the model loads
    variants = {"base": None}
    for item in args.adapter:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--adapter {item!r}: expected NAME=PATH")
        if name in variants:
            parser.error(
                f"--adapter {item!r}: a variant {name!r} is already sampled ('base' is the model without "
                "an adapter); give each adapter its own name"
            )
        variants[check_name(name, "--adapter variant name")] = Path(path)
    snapshot = require_verified(args.manifest, args.snapshot) if args.manifest else args.snapshot
    sampler = Sampler(snapshot, SampleSettings.from_dict(settings), PromptSpec.from_dict(raw.get("prompt", {})))
    sampler.plan(variants=len(variants), prompts=len(prompts))
    for name, path in variants.items():
        index = sampler.run_variant(name, path, prompts, args.out / name, args.prompts.stem)
        print(f"{name}: {len(index['images'])} images -> {args.out / name}")
    return 0
