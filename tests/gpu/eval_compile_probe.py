"""What a train job pays before and around its steps: compiler imports, eager against compiled eval.

    python tests/gpu/eval_compile_probe.py [--batch 5] [--size 2048]

On random 8B generation-tower weights with the default trainable surface, times (each call synced)
``import torch._dynamo``, the first ``torch.compile`` (inside the memory plan), three no-grad
validation-like forwards (``--batch`` t values of one image, as train/validation.py) run eagerly
under ``torch.compiler.set_stance("force_eager")`` and then compiled, and three training steps.
Its first-call and later-call times are what ``EVAL_COMPILE_PAYBACK`` (train/monitor.py) rests on.
"""

from __future__ import annotations

import argparse
import time

import torch

from u1lib.bench.measure import DEFAULT_CONFIG
from u1lib.bench.measures import random_prefix
from u1lib.lora.adapter import make_trainable
from u1lib.lora.spec import TrainableSurface
from u1lib.model.config import U1Config
from u1lib.model.loading import random_model
from u1lib.model.offload import apply_memory_plan
from u1lib.train.objectives import flow_loss

CUDA = torch.device("cuda")


def timed(label: str, fn):
    started = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    print(f"{label}: {time.perf_counter() - started:.2f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=5, help="t values per validation item")
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    cfg = U1Config.from_file(DEFAULT_CONFIG)
    model = timed("random generation tower", lambda: random_model(cfg, ["gen", "fm"], device=CUDA))
    torch.manual_seed(0)
    names = timed("make_trainable", lambda: make_trainable(model, TrainableSurface.resolve("default", (), cfg)))
    timed("import torch._dynamo", lambda: __import__("torch._dynamo"))
    plan = dict(checkpointing="all", keep_attention=True, compile=True)
    timed("memory plan with compile", lambda: apply_memory_plan(model, **plan))
    params = dict(model.named_parameters())
    optimizer = torch.optim.AdamW([params[n] for n in names], lr=1e-5, fused=True)
    g = torch.Generator(device=CUDA).manual_seed(0)
    prefix = random_prefix(cfg, [300] * args.batch, CUDA, g)
    images = torch.rand(args.batch, 3, args.size, args.size, device=CUDA, generator=g) * 2 - 1
    noise = torch.randn(images.shape, device=CUDA, generator=g)
    t = torch.linspace(0.1, 0.9, args.batch, device=CUDA)

    def validate():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return flow_loss(model, images, prefix, t, noise, loss_type="x0").x0_mse.sum().item()

    model.eval()
    with torch.compiler.set_stance("force_eager"):
        for call in range(3):
            timed(f"validation item, eager, call {call}", validate)
    for call in range(3):
        timed(f"validation item, compiled, call {call}", validate)
    model.train()
    one = random_prefix(cfg, [300], CUDA, g)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = flow_loss(model, images[:1], one, t[:1], noise[:1]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for call in range(3):
        timed(f"training step, call {call}", step)
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
