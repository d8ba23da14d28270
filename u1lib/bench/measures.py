"""The measures: a training step, sampling, the prefix forward and the kernel calibration, on
random full-size weights built on the device."""

from __future__ import annotations

import functools
import statistics

import torch

from u1lib.bench.coldstart import run_coldstart
from u1lib.bench.flops import gen_forward_flops, prefix_flops, train_flops
from u1lib.bench.measure import UNCOND_TOKENS, Measure
from u1lib.bench.timing import Recorder, copy_gbps, maybe_profile, rates, time_calls, timed
from u1lib.device import resolve_dtype
from u1lib.lora.adapter import make_trainable
from u1lib.lora.spec import TrainableSurface
from u1lib.model.config import U1Config
from u1lib.model.fp8 import enable_fp8
from u1lib.model.loading import random_model
from u1lib.model.offload import apply_memory_plan, enable_swap, spread
from u1lib.model.sampling import euler_sample
from u1lib.model.u1 import PrefixKV, U1Model
from u1lib.train.distributed import init_from_env
from u1lib.train.objectives import flow_loss
from u1lib.train.timesteps import sample_t


def random_prefix(cfg: U1Config, lengths: list[int], device, generator: torch.Generator) -> PrefixKV:
    """Cache-like prefix K/V: random bf16 [B, H_kv, L_max, D] per layer, right-padded rows."""
    width = max(lengths)
    shape = (len(lengths), cfg.num_key_value_heads, width, cfg.head_dim)
    keys, values = [], []
    for _ in range(cfg.num_hidden_layers):
        keys.append(torch.randn(shape, device=device, dtype=torch.bfloat16, generator=generator))
        values.append(torch.randn(shape, device=device, dtype=torch.bfloat16, generator=generator))
    return PrefixKV(keys, values, torch.tensor(lengths, dtype=torch.long, device=device))


def _model(cfg: U1Config, groups: list[str], device: torch.device, m: Measure, finish: bool = True) -> U1Model:
    """Random weights on the device; ``finish``: with ``m``'s FP8 and compilation applied (False: the
    caller applies them after wrapping its trainable surface)."""
    model = random_model(cfg, groups, device=device, dtype=resolve_dtype("auto", device))
    if finish and m.fp8:
        enable_fp8(model)
    if finish and m.compile:
        model.compile_layers()
    return model


def image_tokens(cfg: U1Config, m: Measure) -> int:
    if m.size % cfg.token_size:
        raise ValueError(f"size {m.size} must be a multiple of the token size {cfg.token_size} px")
    return (m.size // cfg.token_size) ** 2


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def run_train(cfg: U1Config, device: torch.device, m: Measure, rec: Recorder) -> dict:
    """One training step per call; under torchrun every rank steps on its own batch and the trainable
    gradients are averaged (u1lib's data parallel), so images/s counts all ranks."""
    dist = init_from_env()
    tokens = image_tokens(cfg, m)
    model = _model(cfg, ["gen", "fm"], device, m, finish=False)  # FP8 and compile after wrapping
    names = make_trainable(model, TrainableSurface.resolve(m.lora, (), cfg))
    if m.fp8:
        enable_fp8(model)
    params = dict(model.named_parameters())
    trainable = [params[n] for n in names]
    apply_memory_plan(
        model,
        checkpointing=m.checkpointing,
        keep_attention=m.keep_attention,
        swap_layers=m.swap_layers,
        slots=m.slots,
        compile=m.compile,
        section="bench",
    )
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=device.type == "cuda")
    g = torch.Generator(device=device).manual_seed(0)
    lengths = m.prefix_lengths()
    prefix = random_prefix(cfg, lengths, device, g)
    images = torch.rand(m.batch, 3, m.size, m.size, device=device, generator=g) * 2 - 1
    t_gen = torch.Generator().manual_seed(0)
    losses = []
    reducer = dist.gradient_reducer(trainable)  # as the trainer: all-reduce overlapped with the backward

    def step():
        t = sample_t(m.batch, "logit_normal", t_gen, t_eps=cfg.t_eps)
        t = (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)  # no stream sync
        noise = torch.randn(images.shape, device=device, generator=g)
        with _autocast(device):
            loss = flow_loss(model, images, prefix, t, noise).loss
        reducer.arm()
        loss.backward()
        reducer.finish()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    times, memory = timed(step, device, m, rec)
    if not all(torch.isfinite(x).item() for x in losses):
        raise RuntimeError("training loss was not finite")
    flops = train_flops(cfg, tokens, lengths, m.lora, len(model.recompute_layers), m.keep_attention)
    out = rates(times, flops["useful"], flops["executed"], m.batch) | memory
    out.update(trainable_params=sum(p.numel() for p in trainable), flops=flops, prefix_lengths=lengths)
    out.update(world_size=dist.world_size, images_per_s_all_ranks=dist.world_size * out["images_per_s"])
    out.update(maybe_profile(step, device, m))
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
    out = rates(times, per_step * m.steps, per_step * m.steps, m.batch) | rec.read()
    out.update(s_per_denoise_step=statistics.median(times) / m.steps, flops_per_step=per_step)
    return out


def run_prefix(cfg: U1Config, device: torch.device, m: Measure, rec: Recorder) -> dict:
    model = _model(cfg, ["und", "embed"], device, m)
    g = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (m.batch, m.prefix), device=device, generator=g)

    def encode():
        with torch.no_grad():
            return model.prefix(ids)

    times, memory = timed(encode, device, m, rec)
    total = prefix_flops(cfg, m.prefix) * m.batch
    out = rates(times, total, total, m.batch) | memory
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
            out[name] = {
                "fwd_ms": f * 1e3,
                "fwd_tflops": fwd / f / 1e12,
                "fwd_bwd_ms": fb * 1e3,
                "fwd_bwd_tflops": 3.5 * fwd / fb / 1e12,
            }
        except RuntimeError as err:
            out[name] = {"error": str(err).splitlines()[0][:200]}
    return out


def _attention(q, k, v, backend, gqa: bool) -> torch.Tensor:
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backend):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)


RUNNERS = {
    "train": run_train,
    "sample": run_sample,
    "prefix": run_prefix,
    "calibrate": run_calibrate,
    "coldstart": run_coldstart,
}
