"""Preview samples while a run trains: the same few held-out captions and seeds at every preview step.

The captions are the first ``train.preview.count`` validation items (training items when there is
no held-out split), so every preview can be set beside the real image it describes
(``previews/reference/``); their prefixes come from the same source as training's (the cache, or
the online encoder), so previews need no understanding tower in the cache's memory mode. Each
preview step is a folder ``previews/step-00000120/`` (PNGs + index.json) built under a temporary
name and renamed into place; step 0 is the base model (zero-initialised adapters change nothing).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from u1lib.data.pixels import image_png
from u1lib.data.prompts import UNCOND_ID
from u1lib.data.reader import PackedDataset
from u1lib.io import atomic_folder, read_json, write_bytes, write_json
from u1lib.model.sampling import CFG_NORMS, SAMPLER_T_EPS, euler_sample, initial_noise
from u1lib.model.u1 import U1Model
from u1lib.train.prefixes import PrefixSource
from u1lib.typed_config import from_section

STEP_PREFIX = "step-"
INDEX = "index.json"
REFERENCE = "reference"
# image tokens one preview batch denoises (guidance doubles the rows): 2 images at 2048², 8 at 1024²
PREVIEW_BATCH_TOKENS = 8192


@dataclass(frozen=True)
class PreviewSettings:
    """``train.preview``: cheap by default (few steps); size 0 keeps each caption's own image size."""

    count: int = 2
    seeds: tuple[int, ...] = (0,)
    steps: int = 8
    cfg_scale: float = 4.0
    timestep_shift: float = 3.0
    cfg_norm: str = "none"
    width: int = 0
    height: int = 0

    def __post_init__(self):
        problems = []
        if self.count < 1 or self.steps < 1:
            problems.append(f"train.preview.count and .steps must be positive, got {self.count} and {self.steps}")
        if not self.seeds:
            problems.append("train.preview.seeds must list at least one seed")
        if self.cfg_norm not in CFG_NORMS:
            problems.append(f"train.preview.cfg_norm {self.cfg_norm!r} is not one of {', '.join(CFG_NORMS)}")
        if (self.width == 0) != (self.height == 0) or self.width < 0 or self.height < 0:
            problems.append(
                f"train.preview.width/height: give both (multiples of the token size) or leave both 0 for each "
                f"caption's own image size, got {self.width}x{self.height}"
            )
        if problems:
            raise ValueError("invalid preview settings:\n  " + "\n  ".join(problems))

    @classmethod
    def from_dict(cls, raw: dict) -> "PreviewSettings":
        return from_section(cls, raw, "train.preview")


def step_folder(root: Path, step: int) -> Path:
    return root / f"{STEP_PREFIX}{step:08d}"


def preview_steps(root: Path) -> list[int]:
    """Steps with a complete preview folder (temporary folders start with a dot and are not listed)."""
    if not root.is_dir():
        return []
    return sorted(int(p.name[len(STEP_PREFIX) :]) for p in root.glob(f"{STEP_PREFIX}*") if (p / INDEX).is_file())


class Previewer:
    """Samples the preview set with the model as it is now and writes one step folder."""

    def __init__(self, settings: PreviewSettings, data: PackedDataset, prefixes: PrefixSource, root: Path, device):
        self.s, self.data, self.prefixes, self.root, self.device = settings, data, prefixes, root, device
        self.indices = list(range(min(settings.count, len(data))))
        texts = data.texts()
        self.items = [{"sample_id": data.sample_ids[i], "prompt": texts[i][0]} for i in self.indices]

    def discard_after(self, step: int) -> None:
        """Remove previews past ``step`` (a resume redraws them from the same trajectory)."""
        for later in (s for s in preview_steps(self.root) if s > step):
            shutil.rmtree(step_folder(self.root, later))

    def _write_references(self) -> None:
        folder = self.root / REFERENCE
        if (folder / INDEX).is_file():
            return
        folder.mkdir(parents=True, exist_ok=True)
        records = []
        for k, (index, item) in enumerate(zip(self.indices, self.items)):
            _, image = self.data.load_batch([index])
            write_bytes(folder / f"{k:02d}.png", image_png(image[0]))
            records.append({**item, "file": f"{k:02d}.png"})
        write_json(folder / INDEX, {"images": records})

    @torch.no_grad()
    def run(self, model: U1Model, step: int, autocast) -> list[tuple[dict, bytes]]:
        """Preview images at ``step``: (index record, PNG bytes) per image, also written to disk.

        Captions of one image size share a denoising batch (up to PREVIEW_BATCH_TOKENS image tokens), so
        a preview step costs one pass per size instead of one per caption.
        """
        self._write_references()
        s, cfg = self.s, model.config
        uncond_one = self.prefixes.cond([UNCOND_ID])
        pngs: dict[tuple[int, int], bytes] = {}
        for height, width, tokens, ks in self._batches(cfg.token_size):
            scale = cfg.noise_scale_for(tokens)
            noise = torch.cat([initial_noise(seed, height, width, scale) for _ in ks for seed in s.seeds])
            rows = len(ks) * len(s.seeds)
            with autocast():
                images = euler_sample(
                    model,
                    self.prefixes.cond([self.items[k]["sample_id"] for k in ks]).repeat(len(s.seeds)),
                    uncond_one.repeat(rows),
                    noise.to(self.device),
                    steps=s.steps,
                    shift=s.timestep_shift,
                    cfg_scale=s.cfg_scale,
                    cfg_norm=s.cfg_norm,
                    t_eps=SAMPLER_T_EPS,
                )
            for row, image in enumerate(images):
                pngs[ks[row // len(s.seeds)], s.seeds[row % len(s.seeds)]] = image_png(image)
        out = []
        for k, item in enumerate(self.items):
            record = {"prompt_id": item["sample_id"], "prompt": item["prompt"]}
            out += [({**record, "seed": seed, "file": f"{k:02d}_seed{seed}.png"}, pngs[k, seed]) for seed in s.seeds]
        self._write_step(step, out)
        return out

    def _batches(self, token_size: int) -> list[tuple[int, int, int, list[int]]]:
        """(height, width, image tokens, caption positions) per denoising batch: captions grouped by image size in
        order of first appearance, each batch holding at most PREVIEW_BATCH_TOKENS image tokens (one
        caption's seeds always go together)."""
        s = self.s
        sizes: dict[tuple[int, int], list[int]] = {}
        for k, index in enumerate(self.indices):
            height, width = (s.height, s.width) if s.width else (self.data.heights[index], self.data.widths[index])
            if height % token_size or width % token_size:
                raise ValueError(
                    f"train.preview.width/height {width}x{height} must be multiples of the token size {token_size}"
                )
            sizes.setdefault((height, width), []).append(k)
        batches = []
        for (height, width), ks in sizes.items():
            tokens = (height // token_size) * (width // token_size)
            per_batch = max(1, PREVIEW_BATCH_TOKENS // (len(s.seeds) * tokens))
            batches += [(height, width, tokens, ks[i : i + per_batch]) for i in range(0, len(ks), per_batch)]
        return batches

    def _write_step(self, step: int, images: list[tuple[dict, bytes]]) -> None:
        with atomic_folder(step_folder(self.root, step)) as tmp:
            for record, png in images:
                write_bytes(tmp / record["file"], png)
            write_json(tmp / INDEX, {"step": step, "images": [record for record, _ in images]})

    def write_summary(self) -> Path:
        """``previews/index.json``: every preview step's folder, the references and the settings."""
        steps = preview_steps(self.root)
        summary = {
            "steps": [{"step": s, "index": f"{step_folder(self.root, s).name}/{INDEX}"} for s in steps],
            "reference": f"{REFERENCE}/{INDEX}" if (self.root / REFERENCE / INDEX).is_file() else None,
            "settings": json.loads(json.dumps(asdict(self.s))),  # tuples as lists
        }
        write_json(self.root / INDEX, summary)
        return self.root / INDEX


def read_step(root: Path, step: int) -> dict:
    return read_json(step_folder(root, step) / INDEX)
