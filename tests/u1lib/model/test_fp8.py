"""FP8 base matmuls (train.fp8) on CPU: the math they claim, what is converted, and a training step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from u1lib.lora.adapter import LoRALinear, make_trainable, wrap
from u1lib.lora.spec import TrainableSurface, resolve_spec
from u1lib.model.fp8 import FP8, Fp8Linear, enable_fp8, quantize_rows
from u1lib.model.loading import load_model
from u1lib.model.mlp import SparseMoE
from u1lib.model.offload import enable_swap
from u1lib.model.u1 import PrefixKV
from u1lib.train.objectives import flow_loss


def _dequantized(x: torch.Tensor) -> torch.Tensor:
    values, scales = quantize_rows(x)
    return values.float() * scales


def test_quantize_rows_keeps_each_rows_peak_and_e4m3_precision():
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 3, 8)[:, None]
    values, scales = quantize_rows(x)
    assert values.dtype == FP8 and scales.shape == (8, 1)
    assert torch.equal(values.float().abs().amax(dim=1), torch.full((8,), 448.0))  # each row's peak maps to e4m3's max
    rel = ((values.float() * scales - x).abs() / x.abs().amax(dim=1, keepdim=True)).max()
    assert 0 < rel <= 2**-4  # 3 mantissa bits: half an ulp at the row's top binade, relative to the peak


def test_fp8_linear_computes_the_quantized_product_in_both_directions():
    g = torch.Generator().manual_seed(1)
    base = nn.Linear(64, 48, bias=False).requires_grad_(False)
    base.weight.copy_(torch.randn(48, 64, generator=g))
    x = torch.randn(3, 5, 64, generator=g, requires_grad=True)
    layer = Fp8Linear.quantized(base)
    y = layer(x)
    weight = layer.weight.float() * layer.weight_scale[:, None]
    want = _dequantized(x.detach().reshape(-1, 64)) @ weight.T
    assert y.shape == (3, 5, 48) and y.dtype == torch.float32
    torch.testing.assert_close(y.reshape(-1, 48), want, rtol=2**-8, atol=1e-3)  # bf16 epilogue
    grad = torch.randn(3, 5, 48, generator=g)
    y.backward(grad)
    rows = grad.reshape(-1, 48) * layer.weight_scale  # the weight's row scales move onto the gradient
    want_grad = _dequantized(rows) @ layer.weight.float()
    torch.testing.assert_close(x.grad.reshape(-1, 64), want_grad, rtol=2**-8, atol=1e-3)
    exact = x.detach() @ base.weight.T
    assert 0 < (y - exact).abs().max() / exact.abs().max() < 0.1  # FP8's error, and no more


def test_enable_fp8_converts_the_frozen_dense_generation_linears_only(golden_model):
    model = copy.deepcopy(golden_model)
    names = make_trainable(
        model, TrainableSurface.resolve("attn=r4a4", (r".*layers\.0\.mlp_mot_gen\.up_proj\..*",), model.config)
    )
    assert names
    und_before = model.layers[0].self_attn.q_proj.weight.clone()
    converted = enable_fp8(model)
    layers = len(model.layers)
    assert len(converted) == layers * 7 - 1  # 4 attention + 3 MLP linears a layer, less the fully tuned one
    first = model.layers[0]
    assert isinstance(first.self_attn.q_proj_mot_gen, LoRALinear)  # the adapter stays, its base is FP8
    assert first.self_attn.q_proj_mot_gen.weight.dtype == FP8
    assert first.self_attn.q_proj_mot_gen.lora_down.weight.dtype == torch.float32
    assert isinstance(first.mlp_mot_gen.gate_proj, Fp8Linear)
    assert first.mlp_mot_gen.up_proj.weight.dtype == torch.float32 and first.mlp_mot_gen.up_proj.weight.requires_grad
    assert torch.equal(first.self_attn.q_proj.weight, und_before)  # the understanding tower is untouched
    assert enable_fp8(model) == []  # a second call finds nothing left to convert
    with pytest.raises(RuntimeError, match="FP8 base"):
        first.self_attn.q_proj_mot_gen.merge()


def test_enable_fp8_names_a_size_the_kernel_cannot_take(golden_model):
    model = copy.deepcopy(golden_model)
    attention = model.layers[1].self_attn  # after layer 0's linears in the order they are visited
    attention.q_proj_mot_gen = nn.Linear(64, 40, bias=False).requires_grad_(False)
    with pytest.raises(ValueError, match=r"layers\.1\.self_attn\.q_proj_mot_gen is \(40, 64\).*multiples of 16"):
        enable_fp8(model)
    assert all(p.dtype != FP8 for p in model.parameters())  # refused before any weight changed


def test_sparse_experts_stay_bf16(golden_dir):
    model = load_model(golden_dir.parent / "golden_a3b_tiny_a", ["gen", "fm"])
    assert all(isinstance(layer.mlp_mot_gen, SparseMoE) for layer in model.layers)
    converted = enable_fp8(model)
    assert len(converted) == 4 * len(model.layers) and all(".self_attn." in path for path in converted)
    experts = [m for n, m in model.named_modules() if ".experts." in n and isinstance(m, nn.Linear)]
    assert experts and all(m.weight.dtype != FP8 for m in experts)


def _batch(model):
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    prefix = PrefixKV.stack([model.prefix(torch.randint(0, cfg.vocab_size, (1, n), generator=g)) for n in (5, 3)])
    images = torch.rand(2, 3, 16, 32, generator=g) * 2 - 1
    return images, prefix, torch.tensor([0.3, 0.8]), torch.randn(images.shape, generator=g)


def _step(model, batch):
    model.zero_grad(set_to_none=True)
    loss = flow_loss(model, *batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _adapted(golden_model):
    model = copy.deepcopy(golden_model)
    wrap(model, resolve_spec("attn=r4a4;mlp=r4a4", model.config))
    g = torch.Generator().manual_seed(3)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
        if "lora_up" in name:
            p.data = 0.05 * torch.randn(p.shape, generator=g)  # non-zero: gradients cross the base path
    return model


def test_an_fp8_training_step_stays_near_the_full_precision_one(golden_model):
    full = _adapted(golden_model)
    fp8 = copy.deepcopy(full)
    enable_fp8(fp8)
    batch = _batch(full)
    want_loss, want = _step(full, batch)
    loss, grads = _step(fp8, batch)
    assert grads.keys() == want.keys()
    assert 0 < abs(loss - want_loss) / want_loss < 0.05
    flat, want_flat = torch.cat([grads[k].flatten() for k in want]), torch.cat([want[k].flatten() for k in want])
    assert torch.nn.functional.cosine_similarity(flat, want_flat, dim=0) > 0.98


def test_fp8_weights_stream_in_swap_mode_with_the_same_numbers(golden_model):
    resident = _adapted(golden_model)
    enable_fp8(resident)
    resident.recompute_layers = frozenset(range(len(resident.layers)))
    swapped = copy.deepcopy(resident)
    streamer = enable_swap(swapped, slots=2)
    assert streamer.layers[0].host.dtype == FP8  # one byte a weight crosses the bus
    batch = _batch(resident)
    want_loss, want = _step(resident, batch)
    loss, grads = _step(swapped, batch)
    assert torch.equal(loss, want_loss) and all(torch.equal(grads[k], want[k]) for k in want)
