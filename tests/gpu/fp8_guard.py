"""FP8's error at the real 8B shapes, next to bf16's: one training step of each against float32.

    python tests/gpu/fp8_guard.py [--size 1024] [--t 0.3 0.7]

Random full-size weights (the bench's), the peer's default LoRA surface with non-zero up factors so
gradients cross the base path, one random 300-token prefix. The reference is the float32 model
without autocast; "bf16" is the trainer's default (frozen base in bf16 under autocast), "fp8" that
plus ``train.fp8``. Prints, per t and precision, as JSON lines: the relative error of the predicted
clean image (x0) on a noised input, the relative loss difference and the cosine of every trainable
gradient (median and worst), all against float32. The loss-curve side
of the guard is the workflow run with ``--axis train.fp8='[false, true]'`` (tests/gpu/workflow_8b.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch
import torch.nn.functional as F

from u1lib.bench.measure import DEFAULT_CONFIG
from u1lib.bench.measures import random_prefix
from u1lib.lora.adapter import make_trainable
from u1lib.lora.spec import TrainableSurface
from u1lib.model.config import U1Config
from u1lib.model.fp8 import enable_fp8
from u1lib.model.loading import random_model
from u1lib.train.objectives import flow_loss


def _autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision != "fp32")


def step(precision, model, images, prefix, t, noise):
    model.zero_grad(set_to_none=True)
    with _autocast(precision, images.device):
        loss = flow_loss(model, images, prefix, t, noise).loss
    loss.backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach().float().item(), grads


def x_pred(precision, model, noised, prefix, t):
    with torch.no_grad(), _autocast(precision, noised.device):
        return model.denoise(noised, t, prefix, 1.0)[0].float()


def precisions(cfg: U1Config, device: torch.device) -> dict[str, torch.nn.Module]:
    """float32 reference, the bf16 trainer's model and its FP8 twin: the same weights and adapters."""
    full = random_model(cfg, ["gen", "fm"], device=device, dtype=torch.float32)
    make_trainable(full, TrainableSurface.resolve("default", (), cfg))
    g = torch.Generator(device=device).manual_seed(5)
    for name, p in full.named_parameters():
        if "lora_up" in name:
            p.data.normal_(0, 0.01, generator=g)
    bf16 = copy.deepcopy(full)
    for p in bf16.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)  # frozen base in bf16, trainable float32 masters stay
    fp8 = copy.deepcopy(bf16)
    enable_fp8(fp8)
    return {"fp32": full, "bf16": bf16, "fp8": fp8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--t", type=float, nargs="+", default=[0.3, 0.7])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="model config (default: the 8B one)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    cfg = U1Config.from_file(args.config)
    models = precisions(cfg, device)
    g = torch.Generator(device=device).manual_seed(6)
    prefix = random_prefix(cfg, [300], device, g)
    images = torch.rand(1, 3, args.size, args.size, device=device, generator=g) * 2 - 1
    noise = torch.randn(images.shape, device=device, generator=g)
    for t_value in args.t:
        t = torch.tensor([t_value], device=device)
        noised = t_value * images + (1 - t_value) * noise
        want_x = x_pred("fp32", models["fp32"], noised, prefix, t)
        want_loss, want_grads = step("fp32", models["fp32"], images, prefix, t, noise)
        for name in ("bf16", "fp8"):
            got_x = x_pred(name, models[name], noised, prefix, t)
            loss, grads = step(name, models[name], images, prefix, t, noise)
            cosines = [
                F.cosine_similarity(grads[k].flatten(), want_grads[k].flatten(), dim=0).item() for k in want_grads
            ]
            record = {
                "precision": name,
                "t": t_value,
                "size": args.size,
                "x_pred_rel_err": ((got_x - want_x).norm() / want_x.norm()).item(),
                "loss": loss,
                "loss_fp32": want_loss,
                "loss_rel_diff": abs(loss - want_loss) / want_loss,
                "grad_cosine_median": statistics.median(cosines),
                "grad_cosine_min": min(cosines),
                "grad_cosine_min_tensor": list(want_grads)[cosines.index(min(cosines))],
            }
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
