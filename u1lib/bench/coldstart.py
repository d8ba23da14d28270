"""Cold start: a fresh process from import to a written PNG, timed from outside."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from u1lib.bench.measure import DEFAULT_CONFIG, UNCOND_TOKENS, Measure
from u1lib.bench.timing import Recorder
from u1lib.model.config import U1Config
from u1lib.model.loading import random_model
from u1lib.model.sampling import euler_sample


def run_coldstart(cfg: U1Config, device: torch.device, m: Measure, rec: Recorder) -> dict:
    """Wall time of a fresh process from start to a written PNG (random weights built on the device)."""
    out_png = Path("/tmp") / f"u1lib_coldstart_{m.size}.png"
    out_png.unlink(missing_ok=True)
    child = [
        sys.executable,
        "-m",
        "u1lib",
        "bench",
        "--coldstart-child",
        str(out_png),
        "--size",
        str(m.size),
        "--steps",
        str(m.steps),
        "--cfg-scale",
        str(m.cfg_scale),
        "--prefix",
        str(m.prefix),
    ]
    t0 = time.perf_counter()
    done = subprocess.run(child, capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parents[2])
    wall = time.perf_counter() - t0
    if done.returncode or not out_png.exists():
        raise RuntimeError(f"cold-start child failed: {done.stderr[-500:]}")
    return {"wall_s": wall, "phases": json.loads(done.stdout.strip().splitlines()[-1])}


def coldstart_child(out_png: Path, m: Measure) -> None:
    """Import, build every tower the sampler needs on the GPU, encode two prefixes, sample, write a PNG."""
    import numpy as np
    from PIL import Image

    marks = {"import_s": time.perf_counter()}
    cfg, device = U1Config.from_file(DEFAULT_CONFIG), torch.device("cuda")
    model = random_model(cfg, ["und", "embed", "gen", "fm"], device=device, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    marks["build_s"] = time.perf_counter()
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        cond = model.prefix(torch.randint(0, cfg.vocab_size, (1, m.prefix), device=device, generator=g))
        uncond = model.prefix(torch.randint(0, cfg.vocab_size, (1, UNCOND_TOKENS), device=device, generator=g))
        tokens = (m.size // cfg.token_size) ** 2
        noise = cfg.noise_scale_for(tokens) * torch.randn(1, 3, m.size, m.size, device=device, generator=g)
        image = euler_sample(model, cond, uncond, noise, steps=m.steps, cfg_scale=m.cfg_scale)
    pixels = ((image[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    marks["sample_s"] = time.perf_counter()
    Image.fromarray(np.ascontiguousarray(pixels)).save(out_png)
    marks["png_s"] = time.perf_counter()
    start = marks.pop("import_s")
    print(json.dumps({k: round(v - start, 3) for k, v in marks.items()}))
