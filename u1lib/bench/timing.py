"""Timing with CUDA events, memory peaks, the matmul and copy ceilings, and the kernel profile."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from u1lib.bench.measure import Measure
from u1lib.train.metrics import peak_host_rss_bytes

GIB = 2**30


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


def timed(fn, device: torch.device, m: Measure, rec: Recorder) -> tuple[list[float], dict]:
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


def rates(times: list[float], useful: float, executed: float, items: int) -> dict:
    median = statistics.median(times)
    out = {
        "s_per_step": median,
        "s_min": min(times),
        "s_max": max(times),
        "images_per_s": items / median,
        "useful_tflops": useful / median / 1e12,
        "executed_tflops": executed / median / 1e12,
    }
    return out


def maybe_profile(fn, device: torch.device, m: Measure) -> dict:
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
        kind = (
            "attention"
            if any(s in name for s in ("flash", "fmha", "sdpa", "attention"))
            else "matmul"
            if any(s in name for s in ("gemm", "nvjet", "cutlass", "sm90_xmma", "matmul"))
            else "copy"
            if "memcpy" in name
            else "other"
        )
        kinds[kind] = kinds.get(kind, 0.0) + us / 2e3
        kernels.append((us / 2e3, event.count // 2, event.key[:120]))
    kernels.sort(reverse=True)
    return {"profile_ms_per_step_by_kind": kinds, "profile_top_kernels": kernels[:25]}
