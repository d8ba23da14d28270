"""GPU behaviour (skipped without CUDA): swap mode, bf16 and FP8 training against fp32, batching, kernel choice."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from tests.conftest import CONFIG_8B
from u1lib.bench.measures import random_prefix
from u1lib.lora.adapter import make_trainable
from u1lib.lora.spec import TrainableSurface
from u1lib.model.config import U1Config
from u1lib.model.fp8 import Fp8Linear, enable_fp8, quantize_rows
from u1lib.model.layers import normalize
from u1lib.model.loading import random_model
from u1lib.model.offload import enable_swap
from u1lib.model.u1 import PrefixKV
from u1lib.train.objectives import flow_loss

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def small_config(layers: int = 6) -> U1Config:
    """8B head layout (128-dim heads, 4:1 GQA) at a width that makes each layer's copy take real time."""
    cfg = U1Config.from_file(CONFIG_8B)
    return U1Config(
        **{
            **cfg.to_dict(),
            "num_hidden_layers": layers,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "vocab_size": 512,
            "fm_head_hidden_size": 512,
            "vision_hidden_size": 64,
        }
    )


def _batch(cfg, lengths, size=128, seed=0):
    g = torch.Generator(device=CUDA).manual_seed(seed)
    prefix = random_prefix(cfg, lengths, CUDA, g)
    images = torch.rand(len(lengths), 3, size, size, device=CUDA, generator=g) * 2 - 1
    t = torch.rand(len(lengths), device=CUDA, generator=g) * 0.9 + 0.05
    return images, prefix, t, torch.randn(images.shape, device=CUDA, generator=g)


def _step(model, batch, autocast: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = flow_loss(model, *batch).loss
    loss.backward()
    return loss.detach().float(), {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _with_nonzero_lora(model):
    g = torch.Generator(device=CUDA).manual_seed(5)
    for name, p in model.named_parameters():
        if "lora_up" in name:
            p.data.normal_(0, 0.02, generator=g)
    return model


@pytest.mark.parametrize("slots,keep_attention", [(2, False), (3, False), (2, True)])
def test_swap_mode_equals_resident(slots, keep_attention):
    cfg = small_config()
    resident = random_model(cfg, ["gen", "fm"], device=CUDA, dtype=torch.bfloat16)
    make_trainable(resident, TrainableSurface.resolve("default", (), cfg))
    _with_nonzero_lora(resident)
    resident.recompute_layers = frozenset(range(cfg.num_hidden_layers))
    swapped = copy.deepcopy(resident)
    swapped.keep_attention = keep_attention
    enable_swap(swapped, slots=slots)
    batch = _batch(cfg, [40, 33])
    want_loss, want = _step(resident, batch, autocast=True)
    for _ in range(3):  # later steps start from the slots the previous one left
        loss, grads = _step(swapped, batch, autocast=True)
        torch.testing.assert_close(loss, want_loss, rtol=1e-3, atol=0)
        assert grads.keys() == want.keys()
        assert max(_rel(grads[k], want[k]) for k in want) < 2e-2  # flash backward accumulates dQ atomically
    images, prefix, t, _ = batch
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(2):
            got = swapped.denoise(images, t, prefix, 2.0)[0]
            torch.testing.assert_close(got, resident.denoise(images, t, prefix, 2.0)[0], rtol=0, atol=0)


def _against_fp32(fp8: bool) -> tuple[float, list[float]]:
    """A training step of the trainer's mixed-precision model (frozen base in bf16, or FP8 from it,
    float32 masters) against the float32 one: relative loss difference, each gradient's cosine."""
    cfg = small_config(layers=3)
    fp32 = random_model(cfg, ["gen", "fm"], device=CUDA, dtype=torch.float32, seed=2)
    make_trainable(fp32, TrainableSurface.resolve("default", (), cfg))
    _with_nonzero_lora(fp32)
    mixed = copy.deepcopy(fp32)
    for name, p in mixed.named_parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    if fp8:
        assert enable_fp8(mixed)
    batch = _batch(cfg, [40, 40], seed=3)
    loss32, grads32 = _step(fp32, batch, autocast=False)
    loss, grads = _step(mixed, batch, autocast=True)
    cos = [F.cosine_similarity(grads[k].flatten(), grads32[k].flatten(), dim=0).item() for k in grads32]
    return abs(loss - loss32).item() / loss32.item(), cos


def test_bf16_training_close_to_fp32():
    loss_diff, cos = _against_fp32(fp8=False)
    assert loss_diff < 2e-2 and min(cos) > 0.98


@pytest.mark.parametrize("compiled", [False, True])
def test_fp8_linear_on_the_gpu_computes_the_quantized_product(compiled):
    """The CUDA kernel, eager and compiled, on a row count that is no multiple of 16.

    Compared by norm: an elementwise bound failed on the H200 in two of four runs (once on 56 of
    113,664 gradient elements; cause not pinned down, a quantization rounding an element to the
    neighbouring e4m3 value would do it), while the norm stays at the bf16 epilogue's rounding.
    """
    g = torch.Generator(device=CUDA).manual_seed(4)
    base = torch.nn.Linear(1024, 512, bias=False, device=CUDA, dtype=torch.bfloat16).requires_grad_(False)
    base.weight.normal_(0, 0.02, generator=g)
    layer = Fp8Linear.quantized(base)
    x = torch.randn(3, 37, 1024, device=CUDA, dtype=torch.bfloat16, generator=g, requires_grad=True)
    forward = torch.compile(layer) if compiled else layer
    y = forward(x)
    values, scales = quantize_rows(x.detach().reshape(-1, 1024))
    want = (values.float() * scales) @ (layer.weight.float() * layer.weight_scale[:, None]).T
    assert _rel(y.float().reshape(-1, 512), want) < 4e-3  # the bf16 epilogue's rounding
    grad = torch.randn_like(y)
    y.backward(grad)
    g_values, g_scales = quantize_rows(grad.reshape(-1, 512).float() * layer.weight_scale)
    want_grad = (g_values.float() * g_scales) @ layer.weight.float()
    assert _rel(x.grad.float().reshape(-1, 1024), want_grad) < 4e-3
    exact = x.detach().float() @ base.weight.float().T
    assert 1e-3 < _rel(y.float(), exact) < 0.1  # FP8's own error, and no more


def test_fp8_training_close_to_fp32():
    """FP8's guard at small 8B-layout shapes: loss and gradients against the fp32 step."""
    loss_diff, cos = _against_fp32(fp8=True)
    assert loss_diff < 5e-2 and min(cos) > 0.95


def test_batched_equals_one_by_one():
    cfg = small_config(layers=3)
    model = random_model(cfg, ["gen", "fm"], device=CUDA, dtype=torch.float32, seed=4)
    images, _, t, _ = _batch(cfg, [1, 1], seed=6)
    g = torch.Generator(device=CUDA).manual_seed(7)
    rows = [random_prefix(cfg, [n], CUDA, g) for n in (37, 21)]
    with torch.no_grad():
        batched = model.denoise(images, t, PrefixKV.stack(rows).to(dtype=torch.float32), 2.0)[0]
        for r, row in enumerate(rows):
            one = model.denoise(images[r : r + 1], t[r : r + 1], row.to(dtype=torch.float32), 2.0)[0]
            torch.testing.assert_close(batched[r : r + 1], one, rtol=1e-4, atol=1e-4)


def test_unmasked_gqa_attention_runs_on_flash():
    cfg = small_config(layers=2)
    model = random_model(cfg, ["gen", "fm"], device=CUDA, dtype=torch.bfloat16)
    images, prefix, t, _ = _batch(cfg, [30, 17])  # padded rows take the per-run path: still no mask
    with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        x_flash = model.denoise(images, t, prefix, 2.0)[0]
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        x_math = model.denoise(images, t, prefix, 2.0)[0]
    assert _rel(x_flash.float(), x_math.float()) < 2e-2


def test_fused_rms_norm_matches_float_reference():
    x = torch.randn(64, 4096, device=CUDA, dtype=torch.bfloat16) * 3
    ref = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    got = normalize(x, 1e-6)
    assert got.dtype == torch.bfloat16
    assert (got.float() - ref.float()).abs().max() <= ref.float().abs().max() * 2**-7  # within one bf16 ulp
