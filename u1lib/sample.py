"""The sampling stage: (adapter x prompt x seed) grids with the model loaded once; PNGs + index.json.

Initial noise comes from a CPU generator seeded per image, so a seed gives the same image on any
device. The base model is the variant with no adapter. Prompts get the same template and trigger
as training, through the same prefix code.
"""

from __future__ import annotations

import argparse
import io
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from PIL import Image

from .cache import DTYPES, resolve_device
from .data.prompts import PromptSpec, load_tokenizer
from .io import write_bytes, write_json
from .lora.adapter import unwrap
from .lora.io import bake_lora, read_lora_file, wrap_from_file
from .model.loading import load_model
from .model.sampling import CFG_NORMS, SAMPLER_T_EPS, euler_sample
from .model.u1 import PrefixKV, U1Model
from .prefix import PrefixEncoder
from .settings import from_section


@dataclass(frozen=True)
class SampleSettings:
    seeds: tuple[int, ...] = (0,)
    steps: int = 50
    cfg_scale: float = 4.0
    timestep_shift: float = 3.0
    cfg_norm: str = "none"
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    t_eps: float = SAMPLER_T_EPS
    width: int = 1024
    height: int = 1024
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    upstream_lora: dict | None = None  # baked into the base for every variant: {"path", "skip"}
    compile: bool = False  # torch.compile each layer (CUDA; pays off over many images)

    def __post_init__(self):
        problems = []
        if self.cfg_norm not in CFG_NORMS:
            problems.append(f"sample.cfg_norm {self.cfg_norm!r} is not one of {', '.join(CFG_NORMS)}")
        if self.steps < 1 or self.batch_size < 1:
            problems.append("sample.steps and sample.batch_size must be positive")
        if not self.seeds:
            problems.append("sample.seeds must list at least one seed")
        if problems:
            raise ValueError("invalid sampling settings:\n  " + "\n  ".join(problems))

    @classmethod
    def from_dict(cls, raw: dict) -> "SampleSettings":
        return from_section(cls, raw, "sample")


def load_prompts(path: Path) -> list[dict]:
    """A prompt set: YAML list of {id, prompt} or a mapping id -> prompt (optionally under `prompts:`)."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if isinstance(raw, dict) and "prompts" in raw:
        raw = raw["prompts"]
    if isinstance(raw, dict):
        raw = [{"id": str(k), "prompt": v} for k, v in raw.items()]
    if not isinstance(raw, list) or not all(isinstance(p, dict) and {"id", "prompt"} <= p.keys() for p in raw):
        raise ValueError(f"{path}: a prompt set is a list of {{id, prompt}} entries or a mapping id -> prompt")
    ids = [str(p["id"]) for p in raw]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: prompt ids must be unique")
    return [{"id": str(p["id"]), "prompt": str(p["prompt"])} for p in raw]


def initial_noise(seed: int, height: int, width: int, noise_scale: float) -> torch.Tensor:
    """[1, 3, H, W] from a CPU generator: device independent, as upstream's CPU seeding."""
    return noise_scale * torch.randn((1, 3, height, width), generator=torch.Generator("cpu").manual_seed(seed))


def to_png(image: torch.Tensor) -> bytes:
    """[3, H, W] in [-1, 1] -> PNG bytes (clamp, scale, round)."""
    pixels = ((image.float() * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class Sampler:
    """One loaded model serving many variants, prompts and seeds."""

    def __init__(self, snapshot_dir: Path, settings: SampleSettings, prompt_spec: PromptSpec):
        self.s = settings
        self.device = resolve_device(settings.device)
        dtype = settings.dtype if settings.dtype != "auto" else ("bfloat16" if self.device.type == "cuda" else "float32")
        self.dtype = DTYPES[dtype]
        self.model: U1Model = load_model(snapshot_dir, ["und", "embed", "gen", "fm"], device=self.device, dtype=self.dtype)
        if settings.upstream_lora:
            spec = settings.upstream_lora
            bake_lora(self.model, read_lora_file(spec["path"]), skip=tuple(spec.get("skip", ())))
        if settings.compile:
            self.model.compile_layers()
        self.encoder = PrefixEncoder(self.model, load_tokenizer(snapshot_dir), prompt_spec, self.device)
        self.uncond = self.encoder.uncond()
        self._prefixes: dict[str, PrefixKV] = {}

    def _prefix(self, prompt: str) -> PrefixKV:
        if prompt not in self._prefixes:
            self._prefixes[prompt] = self.encoder.captions([prompt])
        return self._prefixes[prompt]

    def images(self, jobs: list[tuple[dict, int]]) -> list[torch.Tensor]:
        """Sample every (prompt entry, seed) job, batch_size at a time."""
        s, cfg = self.s, self.model.config
        p = cfg.token_size
        if s.width % p or s.height % p:
            raise ValueError(f"sample width/height {s.width}x{s.height} must be multiples of the token size {p}")
        noise_scale = cfg.noise_scale_for((s.height // p) * (s.width // p))
        out = []
        for start in range(0, len(jobs), s.batch_size):
            chunk = jobs[start : start + s.batch_size]
            noise = torch.cat([initial_noise(seed, s.height, s.width, noise_scale) for _, seed in chunk])
            cond = PrefixKV.stack([self._prefix(entry["prompt"]) for entry, _ in chunk])
            images = euler_sample(
                self.model, cond, self.uncond.repeat(len(chunk)), noise.to(self.device, self.dtype),
                steps=s.steps, shift=s.timestep_shift, cfg_scale=s.cfg_scale, cfg_norm=s.cfg_norm,
                cfg_interval=s.cfg_interval, t_eps=s.t_eps,
            )  # fmt: skip
            out.extend(images)
        return out

    def run_variant(self, variant: str, adapter: Path | None, prompts: list[dict], out_dir: Path, prompt_set: str) -> dict:
        """Apply ``adapter`` (runtime LoRA + its fully fine-tuned tensors), sample, then restore the base."""
        params = dict(self.model.named_parameters())
        lora = read_lora_file(adapter) if adapter else None
        saved = {n: params[n].detach().clone() for n in (lora.full if lora else {})}
        try:
            if lora:
                wrap_from_file(self.model, lora)
            jobs = [(entry, seed) for entry in prompts for seed in self.s.seeds]
            images = self.images(jobs)
        finally:
            if lora:
                unwrap(self.model)
                with torch.no_grad():
                    for name, tensor in saved.items():
                        params[name].copy_(tensor)
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob("*.png"):  # a rerun with fewer prompts or seeds leaves no strays
            stale.unlink()
        records = []
        for (entry, seed), image in zip(jobs, images):
            name = f"{entry['id']}_seed{seed}.png"
            write_bytes(out_dir / name, to_png(image))
            records.append({"prompt_id": entry["id"], "prompt": entry["prompt"], "seed": seed, "file": name})
        index = {
            "variant": variant, "prompt_set": prompt_set, "adapter": str(adapter) if adapter else None,
            "sampler": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.s).items()},
            "images": records,
        }  # fmt: skip
        write_json(out_dir / "index.json", index)
        return index


def sample_variant(
    *, snapshot_dir, manifest_path=None, adapter, prompts: list[dict], settings: dict, out_dir, variant: str,
    prompt: dict | None = None, prompt_set: str = "prompts",
) -> dict:  # fmt: skip
    """One variant's grid (the workflow's entry point); ``manifest_path`` is accepted for provenance symmetry."""
    sampler = Sampler(Path(snapshot_dir), SampleSettings.from_dict(settings), PromptSpec.from_dict(prompt or {}))
    return sampler.run_variant(variant, Path(adapter) if adapter else None, prompts, Path(out_dir), prompt_set)


def cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m u1lib {verb}", description=__doc__)
    parser.add_argument("--snapshot", type=Path, required=True)
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                        help="a variant to sample (repeatable); 'base' (no adapter) is always included")  # fmt: skip
    parser.add_argument("--prompts", type=Path, required=True, help="YAML prompt set")
    parser.add_argument("--out", type=Path, required=True, help="folder; each variant goes to OUT/<name>/")
    parser.add_argument("--settings", type=Path, help="YAML with `sample:` (and optional `prompt:`) sections")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--cfg-scale", type=float)
    parser.add_argument("--size", type=int, nargs=2, metavar=("W", "H"))
    args = parser.parse_args(argv)
    raw = yaml.safe_load(args.settings.read_text(encoding="utf-8")) if args.settings else {}
    settings = dict(raw.get("sample", {}))
    for key, value in (("seeds", args.seeds), ("steps", args.steps), ("cfg_scale", args.cfg_scale)):
        if value is not None:
            settings[key] = value
    if args.size:
        settings["width"], settings["height"] = args.size
    sampler = Sampler(args.snapshot, SampleSettings.from_dict(settings), PromptSpec.from_dict(raw.get("prompt", {})))
    prompts = load_prompts(args.prompts)
    variants = {"base": None}
    for item in args.adapter:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--adapter {item!r}: expected NAME=PATH")
        variants[name] = Path(path)
    for name, path in variants.items():
        index = sampler.run_variant(name, path, prompts, args.out / name, args.prompts.stem)
        print(f"{name}: {len(index['images'])} images -> {args.out / name}")
    return 0
