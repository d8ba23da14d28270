"""Grouped against per-expert-loop compute of one A3B generation MoE block on CUDA, as one JSON line.

    python tests/gpu/moe_grouped_check.py --tokens 4096 16384 --iters 10

The block is SenseNova-U1-A3B's generation MoE (hidden 2048, 32 experts, top-8, width 768) on random
weights (near-uniform routing), bf16 base weights with LoRA rank 16 (alpha 16, float32 factors,
lora_up drawn small so every factor gets a gradient) on every expert projection, run under bf16
autocast as training runs it. Per token count: the largest |grouped - loop| of the output and of
the gradients (input, router, lora_down, lora_up), each path's distance to a float32 loop for scale,
and the median forward + backward milliseconds and peak memory of each path (router frozen, as
config/a3b.yaml trains). Then whether a grouped step runs under ``set_sync_debug_mode("error")``
(the loop's must not), and whether ``torch.compile`` of the grouped block runs a second routing
without recompiling (``set_stance("fail_on_recompile")``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch import nn

from u1lib.lora.adapter import LoRALinear
from u1lib.model.mlp import PROJECTIONS, SparseMoE, grouped_mm_supported

CUDA = torch.device("cuda")
HIDDEN, EXPERTS, TOP_K, WIDTH, RANK = 2048, 32, 8, 768, 16
LORA = ("lora_down", "lora_up")


def make_block(seed: int = 0) -> SparseMoE:
    torch.manual_seed(seed)
    block = SparseMoE(HIDDEN, EXPERTS, TOP_K, WIDTH, norm_topk_prob=True).to(CUDA, torch.bfloat16)
    for expert in block.experts:
        for name in PROJECTIONS:
            adapter = LoRALinear(getattr(expert, name), RANK, float(RANK))
            nn.init.normal_(adapter.lora_up.weight, std=1e-3)
            setattr(expert, name, adapter)
    block.requires_grad_(False)
    for name, param in block.named_parameters():
        param.requires_grad_(".lora_" in name)
    return block


def inputs(tokens: int, seed: int, dtype=torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device=CUDA).manual_seed(seed)
    x = torch.randn(tokens, HIDDEN, device=CUDA, generator=generator)
    probe = torch.randn(tokens, HIDDEN, device=CUDA, generator=generator)  # (out * probe).sum(): no stride-0 grad
    return x.to(dtype), probe.to(dtype)


def step(block: nn.Module, x: torch.Tensor, probe: torch.Tensor, autocast: bool = True) -> tuple:
    block.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = block(x)
    (out * probe).sum().backward()
    return out, x.grad


def gradients(block: SparseMoE, x: torch.Tensor, probe: torch.Tensor, autocast: bool = True) -> dict:
    """Output and gradient families of one forward + backward, in float32 for comparison."""
    block.gate.weight.requires_grad_(True)
    out, grad_x = step(block, x, probe, autocast)
    block.gate.weight.requires_grad_(False)
    params = dict(block.named_parameters())
    families = {"router": ["gate.weight"], **{kind: [n for n in params if f".{kind}." in n] for kind in LORA}}
    found = {"out": out.float(), "x": grad_x.float()}
    for family, names in families.items():
        grads = [torch.zeros_like(params[n]) if params[n].grad is None else params[n].grad for n in names]
        found[family] = torch.cat([g.flatten() for g in grads]).float()  # no tokens: zeros on both paths
    return found


def max_diff(a: dict, b: dict) -> dict:
    return {k: float((a[k] - b[k]).abs().max()) for k in a}


def median_ms(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def timed(block: SparseMoE, grouped: bool, x, probe, warmup: int, iters: int) -> dict:
    block.grouped = grouped
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ms = median_ms(lambda: step(block, x, probe), warmup, iters)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    block.grouped = True
    return {"ms": round(ms, 3), "peak_gib": round(peak, 3)}


def compare(block: SparseMoE, tokens: int, warmup: int, iters: int) -> dict:
    x, probe = inputs(tokens, seed=tokens)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        on_grouped = block.grouped_plan(x) is not None
    grouped = gradients(block, x, probe)
    block.grouped = False
    loop = gradients(block, x, probe)
    block.grouped = True
    reference = copy.deepcopy(block).float()
    reference.grouped = False
    exact = gradients(reference, x.float(), probe.float(), autocast=False)
    del reference
    counts = torch.bincount(block.route(x)[1].flatten(), minlength=EXPERTS)
    return {
        "grouped_path": on_grouped,
        "tokens_per_expert": [int(counts.min()), int(counts.max())],
        "max_abs_diff_grouped_vs_loop": max_diff(grouped, loop),
        "max_abs_loop": {k: float(v.abs().max()) for k, v in loop.items()},
        "max_abs_diff_vs_fp32_loop": {"grouped": max_diff(grouped, exact), "loop": max_diff(loop, exact)},
        "grouped": timed(block, True, x, probe, warmup, iters),
        "loop": timed(block, False, x, probe, warmup, iters),
    }


def syncs(block: SparseMoE, grouped: bool, tokens: int) -> str | None:
    """The error set_sync_debug_mode('error') raises for one step of a path, None when it syncs nowhere."""
    x, probe = inputs(tokens, seed=1)
    block.grouped = grouped
    step(block, x, probe)  # warm: first-call allocations and lazy inits are no part of the question
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(block, x, probe)
        return None
    except RuntimeError as error:
        return str(error).splitlines()[0][:200]
    finally:
        torch.cuda.set_sync_debug_mode(0)
        block.grouped = True


def compiled(block: SparseMoE, tokens: int, warmup: int, iters: int) -> dict:
    torch._dynamo.reset()
    model = torch.compile(block)
    (x1, probe), (x2, _) = inputs(tokens, seed=11), inputs(tokens, seed=12)
    routes = [block.route(x)[1].flatten().bincount(minlength=EXPERTS) for x in (x1, x2)]
    result = {"routings_differ": bool((routes[0] != routes[1]).any())}
    try:
        start = time.perf_counter()
        out, _ = step(model, x1, probe)
        torch.cuda.synchronize()
        result["first_call_s"] = round(time.perf_counter() - start, 1)
        with torch.compiler.set_stance("fail_on_recompile"):
            out2, _ = step(model, x2, probe)
            eager, _ = step(block, x2, probe)
            result["max_abs_diff_vs_eager_grouped"] = float((out2.float() - eager.float()).abs().max())
            result["ms"] = round(median_ms(lambda: step(model, x2, probe), warmup, iters), 3)
        result["second_routing_recompiled"] = False
    except Exception as error:  # a recompile under fail_on_recompile, or a compile failure: report it
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(CUDA)
    record = {
        "device": props.name,
        "capability": f"{props.major}.{props.minor}",
        "torch": torch.__version__,
        "grouped_mm_supported": grouped_mm_supported(CUDA, torch.bfloat16),
    }
    block = make_block()
    record["tokens"] = {str(n): compare(block, n, args.warmup, args.iters) for n in args.tokens}
    record["sync_error"] = {"grouped": syncs(block, True, args.tokens[0]), "loop": syncs(block, False, args.tokens[0])}
    record["compile"] = compiled(block, args.tokens[0], args.warmup, args.iters)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
