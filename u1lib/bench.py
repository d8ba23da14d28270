"""Full-size random-weight benchmarks: ``python -m u1lib bench --measure train --size 2048 ...``.

The model is built with random bf16 weights straight on the device (no download), so every number
depends on shapes alone. Each measure warms up, times with CUDA events, and reports the median,
the FLOPs the shape needs (formulas below and in docs/BENCHMARKS.md), the achieved rate against a
bf16 matmul rate measured in the same process, and peak device / host memory. Several measures run
in one process (``--plan``), each on a freshly built model.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .io import read_json, save_safetensors, write_json
from .lora.adapter import make_trainable
from .lora.spec import TrainableSurface, resolve_spec
from .model.config import U1Config
from .model.loading import random_model
from .model.offload import apply_memory_plan, enable_swap, spread
from .model.sampling import euler_sample
from .model.u1 import PrefixKV, U1Model
from .provenance import git_commit, versions
from .settings import from_section
from .train.distributed import init_from_env
from .train.metrics import device_name, peak_host_rss_bytes
from .train.objectives import flow_loss
from .train.timesteps import sample_t

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "tests" / "data" / "u1_8b_config.json"
MEASURES = ("calibrate", "train", "sample", "prefix", "coldstart")
GIB = 2**30
UNCOND_TOKENS = 10  # the neo1_0 unconditional prefix is 10 tokens


@dataclass
class Measure:
    """One benchmark: what to run and at which shape (every field is a CLI flag)."""

    measure: str
    size: int = 2048  # square image side in pixels (train, sample, coldstart)
    batch: int = 1  # images per step (train, sample) or captions per forward (prefix)
    prefix: int = 300  # text tokens per prefix; rows of a batch vary by up to +-prefix_spread
    prefix_spread: int = 20
    checkpointing: str = "all"  # all | none | K (the top K layers keep activations, as train.checkpointing)
    keep_attention: bool = False  # checkpointed layers keep their attention outputs (no attention recompute)
    swap_layers: int = 0  # generation layers streamed from pinned host memory (0 = all resident)
    slots: int = 2  # device buffers for streamed layers
    steps: int = 50  # sampler steps
    cfg_scale: float = 4.0
    lora: str = "default"  # LoRA spec or preset for training
    compile: bool = False
    warmup: int = 3
    iters: int = 8
    profile: bool = False
    label: str = ""

    def __post_init__(self):
        problems = []
        if self.measure not in MEASURES:
            problems.append(f"measure {self.measure!r} is not one of {', '.join(MEASURES)}")
        if self.checkpointing not in ("all", "none") and not str(self.checkpointing).isdigit():
            problems.append(f"checkpointing {self.checkpointing!r} must be all, none or a layer count")
        for name in ("batch", "prefix", "iters", "slots", "steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if problems:
            raise ValueError("bench settings: " + "; ".join(problems))

    def prefix_lengths(self) -> list[int]:
        """Row prefix lengths: all ``prefix`` for one row, else spread deterministically around it."""
        if self.batch == 1 or self.prefix_spread == 0:
            return [self.prefix] * self.batch
        span = 2 * self.prefix_spread + 1
        return [max(1, self.prefix - self.prefix_spread + (row * 37) % span) for row in range(self.batch)]


# FLOP counts ------------------------------------------------------------------------------
def layer_linear_params(cfg: U1Config) -> int:
    """Weights of one tower's seven projections (q, k, v, o, gate, up, down)."""
    h, d = cfg.hidden_size, cfg.head_dim
    attn = h * d * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads)
    return attn + 3 * h * cfg.intermediate_size


def lora_flops_per_token(cfg: U1Config, spec: str) -> int:
    """2 * r * (in + out) per adapted linear, summed over the spec's targets (all layers)."""
    return sum(2 * t.rank * (t.in_features + t.out_features) for t in resolve_spec(spec, cfg).values())


def attention_flops(cfg: U1Config, queries: int, keys: int) -> int:
    """Q K^T and P V of one row through every layer: 2 matmuls x 2 FLOP per multiply-add."""
    return 4 * queries * keys * cfg.head_dim * cfg.num_attention_heads * cfg.num_hidden_layers


def fm_flops_per_token(cfg: U1Config) -> int:
    """Generation vision embedding (patch conv for m^2 patches + merge conv) and fm_head, per image token."""
    m, p, c, h = cfg.merge_size, cfg.patch_size, cfg.vision_hidden_size, cfg.hidden_size
    embed = 2 * m * m * (3 * p * p) * c + 2 * (c * m * m) * h
    head = 2 * (h * cfg.fm_head_hidden_size + cfg.fm_head_hidden_size * cfg.fm_out_dim)
    return embed + head


def gen_forward_flops(cfg: U1Config, tokens: int, prefix_lengths: list[int], lora: str | None = None) -> dict:
    """One generation pass over len(prefix_lengths) rows of ``tokens`` image tokens, split by kind."""
    rows = len(prefix_lengths)
    linear = 2 * layer_linear_params(cfg) * cfg.num_hidden_layers * tokens * rows
    attn = sum(attention_flops(cfg, tokens, tokens + n) for n in prefix_lengths)
    adapters = lora_flops_per_token(cfg, lora) * tokens * rows if lora else 0
    return {"linear": linear, "attention": attn, "lora": adapters, "fm": fm_flops_per_token(cfg) * tokens * rows}


def train_flops(
    cfg: U1Config, tokens: int, prefix_lengths: list[int], lora: str, recomputed: int, keep_attention: bool = False
) -> dict:
    """Useful FLOPs of one step (forward + backward) and those executed (plus recompute of checkpointed layers).

    Backward: frozen linears need only dX (1x forward), LoRA and trainable fm modules dX + dW (2x),
    flash attention 2.5x its forward (five matmuls against two). With ``keep_attention`` the
    recompute skips attention.
    """
    f = gen_forward_flops(cfg, tokens, prefix_lengths, lora)
    backward = f["linear"] + 2.5 * f["attention"] + 2 * f["lora"] + 2 * f["fm"]
    useful = sum(f.values()) + backward
    layer_share = recomputed / cfg.num_hidden_layers
    recompute = layer_share * (f["linear"] + (0 if keep_attention else f["attention"]) + f["lora"])
    return {"useful": int(useful), "executed": int(useful + recompute), "forward": f}


def prefix_flops(cfg: U1Config, length: int) -> int:
    """Understanding tower over one caption: linears + causal attention (half the square)."""
    linear = 2 * layer_linear_params(cfg) * cfg.num_hidden_layers * length
    return linear + attention_flops(cfg, length, length) // 2


# timing and memory ----------------------------------------------------------------------
class Recorder:
    """Device and host memory peaks over one measure (Linux clear_refs resets the host peak)."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> dict:
        out = {"host_rss_peak_gib": peak_host_rss_bytes() / GIB}
        if self.device.type == "cuda":
            out["gpu_peak_allocated_gib"] = torch.cuda.max_memory_allocated(self.device) / GIB
            out["gpu_peak_reserved_gib"] = torch.cuda.max_memory_reserved(self.device) / GIB
        return out


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Seconds per call of ``fn`` after ``warmup`` calls: CUDA events on a GPU, the host clock otherwise."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def matmul_tflops(device: torch.device, n: int = 8192, iters: int = 10) -> float:
    """bf16 n x n x n matmul rate on random data (the ceiling every ratio is taken against)."""
    if device.type != "cuda":
        n = 512
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    seconds = statistics.median(time_calls(lambda: a @ b, device, warmup=3, iters=iters))
    return 2 * n**3 / seconds / 1e12


def copy_gbps(device: torch.device, gib: float = 1.0) -> dict:
    """Pinned host <-> device copy bandwidth (what swap mode streams through)."""
    if device.type != "cuda":
        return {}
    n = int(gib * GIB)
    host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(n, dtype=torch.uint8, device=device)
    h2d = statistics.median(time_calls(lambda: dev.copy_(host, non_blocking=True), device, 2, 5))
    d2h = statistics.median(time_calls(lambda: host.copy_(dev, non_blocking=True), device, 2, 5))
    d2d_dst = torch.empty_like(dev)
    d2d = statistics.median(time_calls(lambda: d2d_dst.copy_(dev), device, 2, 5))
    return {"h2d_gbps": n / h2d / 1e9, "d2h_gbps": n / d2h / 1e9, "d2d_gbps_read_plus_write": 2 * n / d2d / 1e9}


# model setup ------------------------------------------------------------------------------
def random_prefix(cfg: U1Config, lengths: list[int], device, generator: torch.Generator) -> PrefixKV:
    """Cache-like prefix K/V: random bf16 [B, H_kv, L_max, D] per layer, right-padded rows."""
    width = max(lengths)
    shape = (len(lengths), cfg.num_key_value_heads, width, cfg.head_dim)
    keys, values = [], []
    for _ in range(cfg.num_hidden_layers):
        keys.append(torch.randn(shape, device=device, dtype=torch.bfloat16, generator=generator))
        values.append(torch.randn(shape, device=device, dtype=torch.bfloat16, generator=generator))
    return PrefixKV(keys, values, torch.tensor(lengths, dtype=torch.long, device=device))


def _model(cfg: U1Config, groups: list[str], device: torch.device, m: Measure, compile: bool | None = None) -> U1Model:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = random_model(cfg, groups, device=device, dtype=dtype)
    if m.compile if compile is None else compile:
        model.compile_layers()
    return model


def image_tokens(cfg: U1Config, m: Measure) -> int:
    if m.size % cfg.token_size:
        raise ValueError(f"size {m.size} must be a multiple of the token size {cfg.token_size} px")
    return (m.size // cfg.token_size) ** 2


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# measures ---------------------------------------------------------------------------------
def run_train(cfg: U1Config, device: torch.device, m: Measure, rec: Recorder) -> dict:
    """One training step per call; under torchrun every rank steps on its own batch and the trainable
    gradients are averaged (u1lib's data parallel), so images/s counts all ranks."""
    dist = init_from_env()
    tokens = image_tokens(cfg, m)
    model = _model(cfg, ["gen", "fm"], device, m, compile=False)  # compiled by the plan, after wrapping
    names = make_trainable(model, TrainableSurface.resolve(m.lora, (), cfg))
    params = dict(model.named_parameters())
    trainable = [params[n] for n in names]
    apply_memory_plan(model, checkpointing=m.checkpointing, keep_attention=m.keep_attention,
                      swap_layers=m.swap_layers, slots=m.slots, compile=m.compile, section="bench")  # fmt: skip
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=device.type == "cuda")
    g = torch.Generator(device=device).manual_seed(0)
    lengths = m.prefix_lengths()
    prefix = random_prefix(cfg, lengths, device, g)
    images = torch.rand(m.batch, 3, m.size, m.size, device=device, generator=g) * 2 - 1
    t_gen = torch.Generator().manual_seed(0)
    losses = []

    def step():
        t = sample_t(m.batch, "logit_normal", t_gen, t_eps=cfg.t_eps)
        t = (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)  # no stream sync
        noise = torch.randn(images.shape, device=device, generator=g)
        with _autocast(device):
            loss = flow_loss(model, images, prefix, t, noise).loss
        loss.backward()
        dist.average_gradients(trainable)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    times, memory = _timed(step, device, m, rec)
    if not all(torch.isfinite(x).item() for x in losses):
        raise RuntimeError("training loss was not finite")
    flops = train_flops(cfg, tokens, lengths, m.lora, len(model.checkpoint_layers), m.keep_attention)
    out = _rates(times, flops["useful"], flops["executed"], m.batch) | memory
    out.update(trainable_params=sum(p.numel() for p in trainable), flops=flops, prefix_lengths=lengths)
    out.update(world_size=dist.world_size, images_per_s_all_ranks=dist.world_size * out["images_per_s"])
    out.update(_maybe_profile(step, device, m))
    return out


def run_sample(cfg: U1Config, device: torch.device, m: Measure, rec: Recorder) -> dict:
    tokens = image_tokens(cfg, m)
    model = _model(cfg, ["gen", "fm"], device, m)
    if m.swap_layers:
        enable_swap(model, spread(m.swap_layers, cfg.num_hidden_layers), slots=m.slots)
    g = torch.Generator(device=device).manual_seed(0)
    cond = random_prefix(cfg, [m.prefix] * m.batch, device, g)
    guided = m.cfg_scale > 1.0
    uncond = random_prefix(cfg, [UNCOND_TOKENS] * m.batch, device, g) if guided else None
    noise = cfg.noise_scale_for(tokens) * torch.randn(m.batch, 3, m.size, m.size, device=device, generator=g)

    def sample(steps: int):
        with torch.no_grad():
            return euler_sample(model, cond, uncond, noise, steps=steps, cfg_scale=m.cfg_scale)

    sample(2)  # warm-up (kernels, compile)
    rec.reset()
    times = time_calls(lambda: sample(m.steps), device, warmup=0, iters=m.iters)
    lengths = [m.prefix] * m.batch + ([UNCOND_TOKENS] * m.batch if guided else [])
    per_step = sum(gen_forward_flops(cfg, tokens, lengths).values())
    out = _rates(times, per_step * m.steps, per_step * m.steps, m.batch) | rec.read()
    out.update(s_per_denoise_step=statistics.median(times) / m.steps, flops_per_step=per_step)
    return out


def run_prefix(cfg: U1Config, device: torch.device, m: Measure, rec: Recorder) -> dict:
    model = _model(cfg, ["und", "embed"], device, m)
    g = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (m.batch, m.prefix), device=device, generator=g)

    def encode():
        with torch.no_grad():
            return model.prefix(ids)

    times, memory = _timed(encode, device, m, rec)
    total = prefix_flops(cfg, m.prefix) * m.batch
    out = _rates(times, total, total, m.batch) | memory
    out["captions_per_s"] = out.pop("images_per_s")
    return out


def run_calibrate(cfg: U1Config, device: torch.device, m: Measure, rec: Recorder) -> dict:
    """Copy bandwidths and the attention kernels SDPA offers for the training / sampling shapes."""
    out = copy_gbps(device)
    if device.type != "cuda":
        return out
    from torch.nn.attention import SDPBackend

    tokens = image_tokens(cfg, m)
    h, hk, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q = torch.randn(m.batch, h, tokens, d, device=device, dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(m.batch, hk, tokens + m.prefix, d, device=device, dtype=torch.bfloat16) for _ in range(2))
    fwd = 4 * m.batch * tokens * (tokens + m.prefix) * d * h
    backends = {
        "flash_gqa": (SDPBackend.FLASH_ATTENTION, True),
        "cudnn_gqa": (SDPBackend.CUDNN_ATTENTION, True),
        "cudnn_expanded": (SDPBackend.CUDNN_ATTENTION, False),
        "efficient_expanded": (SDPBackend.EFFICIENT_ATTENTION, False),
    }
    for name, (backend, gqa) in backends.items():
        kk, vv = (k, v) if gqa else (k.repeat_interleave(h // hk, 1), v.repeat_interleave(h // hk, 1))
        kk, vv = kk.requires_grad_(True), vv.requires_grad_(True)
        forward = functools.partial(_attention, q, kk, vv, backend, gqa)
        try:
            with torch.no_grad():
                f = statistics.median(time_calls(forward, device, 2, 5))
            fb = statistics.median(time_calls(lambda: forward().sum().backward(), device, 2, 5))  # noqa: B023
            out[name] = {"fwd_ms": f * 1e3, "fwd_tflops": fwd / f / 1e12, "fwd_bwd_ms": fb * 1e3,
                         "fwd_bwd_tflops": 3.5 * fwd / fb / 1e12}  # fmt: skip
        except RuntimeError as err:
            out[name] = {"error": str(err).splitlines()[0][:200]}
    return out


def _attention(q, k, v, backend, gqa: bool) -> torch.Tensor:
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backend):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)


def run_coldstart(cfg: U1Config, device: torch.device, m: Measure, rec: Recorder) -> dict:
    """Wall time of a fresh process from start to a written PNG (random weights built on the device)."""
    out_png = Path("/tmp") / f"u1lib_coldstart_{m.size}.png"
    out_png.unlink(missing_ok=True)
    child = [sys.executable, "-m", "u1lib", "bench", "--coldstart-child", str(out_png), "--size", str(m.size),
             "--steps", str(m.steps), "--cfg-scale", str(m.cfg_scale), "--prefix", str(m.prefix)]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(child, capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parents[1])
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


def write_random_snapshot(out_dir: Path, config: Path = DEFAULT_CONFIG, shard_gib: float = 4.0) -> Path:
    """A full-size snapshot on disk with random bf16 weights (sharded, indexed) and the tiny tokenizer.

    For timing what a real run pays to read weights (cold start) and for running the real workflow
    on a GPU: weights follow tiny.init_like (norms near 1), so training visibly lowers the loss; the
    tokenizer only has to produce valid ids. Tensors are drawn on the GPU when there is one, so
    writing is bounded by the disk.
    """
    from .model.keys import parameter_shapes
    from .tiny import build_tiny_snapshot, init_like

    out_dir = Path(out_dir)
    build_tiny_snapshot(out_dir)
    (out_dir / "model.safetensors").unlink()
    (out_dir / "config.json").write_bytes(Path(config).read_bytes())
    cfg = U1Config.from_file(out_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=device).manual_seed(0)
    shard, shard_bytes, weight_map, names = {}, 0, {}, []

    def flush():
        nonlocal shard, shard_bytes
        name = f"model-{len(names) + 1:05d}.safetensors"
        save_safetensors(out_dir / name, shard)
        weight_map.update(dict.fromkeys(shard, name))
        names.append(name)
        shard, shard_bytes = {}, 0

    for key, shape in parameter_shapes(cfg).items():
        shard[key] = init_like(key, torch.randn(shape, device=device, dtype=torch.bfloat16, generator=g)).cpu()
        shard_bytes += shard[key].numel() * 2
        if shard_bytes >= shard_gib * GIB:
            flush()
    if shard:
        flush()
    write_json(out_dir / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
    return out_dir


RUNNERS = {"train": run_train, "sample": run_sample, "prefix": run_prefix, "calibrate": run_calibrate,
           "coldstart": run_coldstart}  # fmt: skip


def _timed(fn, device: torch.device, m: Measure, rec: Recorder) -> tuple[list[float], dict]:
    """Warm up, reset the memory peaks (steady state: optimizer states exist), time; (times, extras).

    Each timed call ends in a sync (a loop that reads its loss every step); ``s_per_step_pipelined``
    times the same number of calls back to back, as a loop that never waits on the device.
    """
    time_calls(fn, device, warmup=m.warmup, iters=0)
    rec.reset()
    times = time_calls(fn, device, warmup=0, iters=m.iters)
    extras = rec.read()
    extras["s_per_step_pipelined"] = time_calls(lambda: [fn() for _ in range(m.iters)], device, 0, 1)[0] / m.iters
    return times, extras


def _rates(times: list[float], useful: float, executed: float, items: int) -> dict:
    median = statistics.median(times)
    out = {"s_per_step": median, "s_min": min(times), "s_max": max(times), "images_per_s": items / median,
           "useful_tflops": useful / median / 1e12, "executed_tflops": executed / median / 1e12}  # fmt: skip
    return out


def _maybe_profile(fn, device: torch.device, m: Measure) -> dict:
    """Top kernels of two profiled calls, and device time by kind (matmul, attention, the rest)."""
    if not m.profile or device.type != "cuda":
        return {}
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            fn()
        torch.cuda.synchronize(device)
    kinds: dict[str, float] = {}
    kernels = []
    for event in prof.key_averages():
        us = event.self_device_time_total
        if us <= 0:
            continue
        name = event.key.lower()
        kind = ("attention" if any(s in name for s in ("flash", "fmha", "sdpa", "attention")) else
                "matmul" if any(s in name for s in ("gemm", "nvjet", "cutlass", "sm90_xmma", "matmul")) else
                "copy" if "memcpy" in name else "other")  # fmt: skip
        kinds[kind] = kinds.get(kind, 0.0) + us / 2e3
        kernels.append((us / 2e3, event.count // 2, event.key[:120]))
    kernels.sort(reverse=True)
    return {"profile_ms_per_step_by_kind": kinds, "profile_top_kernels": kernels[:25]}


# entry points -----------------------------------------------------------------------------
def run_bench(settings: dict, out_json: Path) -> dict:
    """Run ``settings["measures"]`` (dicts of :class:`Measure` fields) and write one JSON record.

    ``settings`` may also name ``config`` (an upstream config.json; default the 8B one) and ``device``.
    A failing measure is recorded with its error and the others still run.
    """
    unknown = sorted(set(settings) - {"config", "device", "measures"})
    if unknown:
        raise ValueError(f"bench settings: unknown key(s) {unknown}; expected config, device, measures")
    measures = [from_section(Measure, raw, "bench.measures[]") for raw in settings.get("measures", [])]
    if not measures:
        raise ValueError("bench settings: 'measures' lists no measure")
    cfg = U1Config.from_file(settings.get("config") or DEFAULT_CONFIG)
    dist = init_from_env()  # under torchrun: one rank per GPU, rank 0 reports
    device = torch.device(settings.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    rec = Recorder(device)
    record = {"device": device_name(device), "versions": versions(), "git_commit": git_commit(), "config": cfg.to_dict(),
              "matmul_tflops": matmul_tflops(device), "results": []}  # fmt: skip
    for m in measures:
        rec.reset()
        started = time.perf_counter()
        try:
            result = RUNNERS[m.measure](cfg, device, m, rec)
            result["ratio_to_matmul"] = result.get("useful_tflops", 0.0) / record["matmul_tflops"]
        except Exception as err:  # noqa: BLE001 - one broken measure must not lose the others' numbers
            result = {"error": f"{type(err).__name__}: {str(err)[:400]}"}
        result.update(settings=asdict(m), wall_s=time.perf_counter() - started)
        record["results"].append(result)
        if dist.is_main:
            print(summary_line(result), flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            getattr(torch._C, "_host_emptyCache", lambda: None)()  # cached pinned blocks inflate the next host peak
        if dist.is_main:
            write_json(out_json, record)
    return record


def summary_line(r: dict) -> str:
    s = r["settings"]
    shape = f"L{s['prefix']}" if s["measure"] == "prefix" else f"{s['size']}px"
    name = s["label"] or f"{s['measure']} {shape} b{s['batch']}"
    if "error" in r:
        return f"{name:<40} ERROR {r['error']}"
    if "s_per_step" not in r:
        return f"{name:<40} " + json.dumps({k: v for k, v in r.items() if k not in ("settings",)})[:400]
    rate = r.get("captions_per_s", r.get("images_per_s"))
    return (f"{name:<40} {r['s_per_step']:8.4f} s  {rate:7.2f}/s  {r['useful_tflops']:6.1f} TF/s "
            f"({100 * r['ratio_to_matmul']:4.1f}%)  gpu {r.get('gpu_peak_allocated_gib', 0):6.2f}/"
            f"{r.get('gpu_peak_reserved_gib', 0):6.2f} GiB  host {r.get('host_rss_peak_gib', 0):5.2f} GiB")  # fmt: skip


def _parser(verb: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m u1lib {verb}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--measure", choices=MEASURES, help="one measure from the flags below")
    parser.add_argument("--plan", type=Path, help="JSON file: a list of measure dicts (or {config, device, measures})")
    parser.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON record to write")
    parser.add_argument("--config", type=Path, help="upstream config.json (default: the 8B config)")
    parser.add_argument("--device", help="cuda (default when present) or cpu")
    parser.add_argument("--coldstart-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--write-snapshot", type=Path, metavar="DIR",
                        help="write a full-size random-weight snapshot (sharded safetensors) to DIR and exit")  # fmt: skip
    defaults = Measure("train")
    for name, value in asdict(defaults).items():
        if name == "measure":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=type(value), default=value)
    return parser


def cli(verb: str, argv: list[str]) -> int:
    parser = _parser(verb)
    args = parser.parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k in Measure.__dataclass_fields__ and k != "measure"}
    if args.write_snapshot:
        write_random_snapshot(args.write_snapshot, args.config or DEFAULT_CONFIG)
        return 0
    if args.coldstart_child:
        coldstart_child(args.coldstart_child, Measure("coldstart", **fields))
        return 0
    if bool(args.plan) == bool(args.measure):
        parser.error("give exactly one of --measure or --plan")
    if args.plan:
        raw = read_json(args.plan)
        settings = raw if isinstance(raw, dict) else {"measures": raw}
    else:
        settings = {"measures": [{"measure": args.measure, **fields}]}
    settings.update({k: str(v) for k, v in (("config", args.config), ("device", args.device)) if v})
    try:
        record = run_bench(settings, args.out)
    except ValueError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    return 1 if any("error" in r for r in record["results"]) else 0
