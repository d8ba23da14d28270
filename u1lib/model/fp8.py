"""Opt-in FP8 for the frozen base matmuls of the generation tower (``train.fp8``, ``bench --fp8``).

Each dense generation-layer linear whose weight is frozen (attention q/k/v/o and the SwiGLU MLP;
LoRA-wrapped or plain) stores its weight once as float8 e4m3 with one float32 scale per output row,
which also halves what the weight occupies and what swap mode streams. A call quantizes its input
row-wise (one scale per token) and runs ``torch._scaled_mm``, which accumulates in float32 and
rescales in its epilogue. The backward needs only the input gradient (the weight is frozen): the
output gradient, multiplied by the weight's row scales so that the weight's own scale factors out,
is quantized row-wise the same way and multiplied by the transposed FP8 weight. Nothing is saved for
backward but the weight, so a base matmul keeps no activation.

Sparse MoE experts (grouped matmuls), trainable linears and the understanding tower stay as they
were. Quantizing the base is known to hurt this model at 4 and 8 bits (nf4/int8 grid artifacts),
which is why FP8 is off by default: docs/BENCHMARKS.md reports its guard (loss curve against bf16,
golden parity error).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from u1lib.device import compute_dtype
from u1lib.model.mlp import MLP

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
_ALIGN = 16  # _scaled_mm needs both weight dimensions to be multiples of 16


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (e4m3 values, float32 scales [..., 1]) with ``x ~= values * scales`` per row."""
    amax = x.detach().abs().amax(dim=-1, keepdim=True).float()
    scale = amax.clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def _scaled(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor) -> torch.Tensor:
    """bf16 ``(a * a_scale) @ b * b_scale`` for 2-D e4m3 ``a`` [M, K] (row-major) and ``b`` [K, N] (column-major)."""
    return torch._scaled_mm(a, b, scale_a=a_scale, scale_b=b_scale, out_dtype=torch.bfloat16)


class _Fp8Matmul(torch.autograd.Function):
    """``x @ (weight * scale).T`` with x quantized row-wise; gradient for x only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype):
        rows = x.reshape(-1, x.shape[-1])
        values, row_scales = quantize_rows(rows)
        y = _scaled(values, row_scales, weight.t(), scale.view(1, -1))
        ctx.save_for_backward(weight, scale)
        ctx.in_shape, ctx.in_dtype = x.shape, x.dtype
        return y.to(out_dtype).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, scale = ctx.saved_tensors
        values, row_scales = quantize_rows(grad.reshape(-1, grad.shape[-1]).float() * scale)
        ones = torch.ones(1, weight.shape[1], dtype=torch.float32, device=weight.device)
        grad_x = _scaled(values, row_scales, weight.t().contiguous().t(), ones)
        return grad_x.to(ctx.in_dtype).view(ctx.in_shape), None, None, None


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear for an FP8 weight [out, in] with row scales [out]; output in the dtype F.linear would give."""
    out_dtype = compute_dtype(x)
    y = _Fp8Matmul.apply(x, weight, scale, out_dtype)
    return y if bias is None else y + bias.to(out_dtype)


class Fp8Linear(nn.Module):
    """A frozen linear whose weight is stored in FP8 (``weight``) with its row scales (``weight_scale``)."""

    def __init__(self, weight: nn.Parameter, scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = weight
        self.register_buffer("weight_scale", scale)
        self.bias = bias

    @classmethod
    def quantized(cls, base: nn.Linear) -> "Fp8Linear":
        """``base`` with its weight quantized row-wise."""
        values, scale = quantize_rows(base.weight.detach())
        return cls(nn.Parameter(values, requires_grad=False), scale.view(-1), base.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.weight_scale, self.bias)


def _dense_linears(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """path -> (parent, attribute) of every linear of a dense generation-layer block."""
    found = {}
    for index, layer in enumerate(model.layers):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            found[f"layers.{index}.self_attn.{name}_mot_gen"] = (layer.self_attn, f"{name}_mot_gen")
        if isinstance(layer.mlp_mot_gen, MLP):
            for name in ("gate_proj", "up_proj", "down_proj"):
                found[f"layers.{index}.mlp_mot_gen.{name}"] = (layer.mlp_mot_gen, name)
    return found


def enable_fp8(model: nn.Module) -> list[str]:
    """Store the frozen dense generation-layer weights in FP8 and compute their matmuls there.

    Run after the trainable surface is set (trainable weights are left alone) and before the memory
    plan (streaming then moves FP8 bytes). Returns the converted paths; refuses a model whose
    generation weights are not loaded or whose sizes the FP8 kernel cannot take.
    """
    frozen = {
        path: (parent, name)
        for path, (parent, name) in _dense_linears(model).items()
        if not getattr(parent, name).weight.requires_grad and getattr(parent, name).weight.dtype != FP8
    }
    for path, (parent, name) in frozen.items():  # every refusal before any weight changes
        weight = getattr(parent, name).weight
        if weight.is_meta:
            raise ValueError(f"fp8: {path} has no weights (load the gen group first)")
        if weight.shape[0] % _ALIGN or weight.shape[1] % _ALIGN:
            raise ValueError(
                f"fp8: {path} is {tuple(weight.shape)}; the FP8 kernel needs sizes that are multiples of 16"
            )
        _check_device(weight.device)
    for parent, name in frozen.values():
        module = getattr(parent, name)
        if isinstance(module, nn.Linear):
            setattr(parent, name, Fp8Linear.quantized(module))
        else:  # a LoRA wrapper: its base weight is replaced in place, the adapter is untouched
            values, scale = quantize_rows(module.weight.detach())
            module.weight = nn.Parameter(values, requires_grad=False)
            module.weight_scale = scale.view(-1)
    return list(frozen)


def _check_device(device: torch.device) -> None:
    """Refuse a GPU without FP8 matmuls by name."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"fp8: {name} has no FP8 matmul (needs compute capability 8.9 or newer); turn fp8 off")


def base_linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A linear's base output ``W x + b``: the FP8 matmul where :func:`enable_fp8` converted it."""
    if module.weight_scale is None:
        return F.linear(x, module.weight, module.bias)
    return fp8_linear(x, module.weight, module.weight_scale, module.bias)
