"""The MLP blocks of a decoder layer: the dense SwiGLU MLP, and the A3B model's sparse
Mixture-of-Experts block (both towers), a router over SwiGLU experts.

Routing as upstream's Qwen3-MoE block: logits = gate(x) (no bias), softmax in float32, top-k,
the k weights renormalised to sum 1 (``norm_topk_prob``) and cast to x's dtype; the output is
sum_k w_k * expert_k(x). No capacity limit, no shared expert.

Compute is grouped: the T x k (token, slot) pairs are sorted by expert once and their rows gathered
in that order; each projection then runs as one ``torch._grouped_mm`` over all experts, the group
ends a device tensor (a search in the sorted expert ids), and one ``index_add_`` scatters the
weighted rows back (per token in expert order, as upstream accumulates). Nothing waits on the host
and every shape depends on T alone, so ``torch.compile`` keeps one graph whatever the routing. The
experts stay separate ``nn.Linear`` modules, so checkpoint keys, LoRA on any expert or the router,
baking, merging and full fine-tune patterns work as on dense layers: each call stacks a projection's
weights into one [E, out, in] tensor in the compute dtype (a copy small next to the matmuls), and
``_ExpertLinear`` stacks them again in backward rather than saving the copy, so autograd holds the
experts' own weights, not a second set per layer. LoRA adapters on every expert of a projection
(same rank, scale and dropout) are computed grouped the same way.

Where the kernel is missing (:func:`grouped_mm_supported`), a size is not 16-byte aligned or the
experts of a projection mix adapted and plain linears, a per-expert loop runs the same math: one
SwiGLU per expert that received tokens, on its contiguous slice (one host sync for the slice sizes).
The loop is also the reference the grouped path is tested against (``SparseMoE.grouped = False``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from u1lib.device import compute_dtype
from u1lib.model.config import U1Config

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
_CPU_GROUPED_MM = hasattr(torch, "_grouped_mm") and torch.__version__ >= "2.9"  # 2.8 has the op, no CPU kernel


class MLP(nn.Module):
    """SwiGLU, down(silu(gate(x)) * up(x)): a dense layer's MLP and each MoE expert."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def moe_sizes(cfg: U1Config, tower: str) -> tuple[int, int, int]:
    """(experts, experts per token, expert width) of ``tower``'s (und/gen) sparse MLPs."""
    if tower == "gen":
        return cfg.gen_num_experts, cfg.gen_num_experts_per_tok, cfg.gen_moe_intermediate_size
    return cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size


def mlp_block(cfg: U1Config, index: int, tower: str) -> nn.Module:
    """Layer ``index``'s MLP in ``tower``: dense, or a sparse MoE block where the config places one."""
    if not cfg.sparse_mlp(index, tower):
        return MLP(cfg.hidden_size, cfg.intermediate_size)
    return SparseMoE(cfg.hidden_size, *moe_sizes(cfg, tower), norm_topk_prob=cfg.norm_topk_prob)


def grouped_mm_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` computes ``dtype`` on ``device`` (the grouped MoE path's gate).

    CPU: torch >= 2.9 has a kernel for float32 and bfloat16 (both checked on 2.13), eager only for
    float32, since the op's meta function (what torch.compile traces) accepts bfloat16 alone. CUDA:
    bfloat16 on compute capability >= 9.0, the CUTLASS kernel torchtitan's MoE relies on; float32 and
    older GPUs are not counted on and take the per-expert loop.
    """
    if device.type == "cpu":
        eager_float32 = dtype == torch.float32 and not torch.compiler.is_compiling()
        return _CPU_GROUPED_MM and (dtype == torch.bfloat16 or eager_float32)
    if device.type == "cuda":
        kernel = hasattr(torch, "_grouped_mm") and torch.cuda.get_device_properties(device).major >= 9
        return kernel and dtype == torch.bfloat16
    return False


class _ExpertLinear(torch.autograd.Function):
    """Rows x [M, in] sorted by expert, ``offs`` [E] their cumulative ends (int32): row block e times
    ``weights[e]``.T, [M, out], in x's dtype.

    The weights are stacked [E, out, in] (cast to x's dtype) in forward and once more in backward;
    autograd saves the separate weights, which live anyway, and x only where a weight needs a gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, offs: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x if any(ctx.needs_input_grad[2:]) else None, offs, *weights)
        return torch._grouped_mm(x, _stacked(weights, x.dtype).mT, offs=offs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, offs, *weights = ctx.saved_tensors
        grad = grad.contiguous()  # the kernel refuses stride-0 (expanded) gradients
        grad_x = torch._grouped_mm(grad, _stacked(weights, grad.dtype), offs=offs) if ctx.needs_input_grad[0] else None
        grad_w = [None] * len(weights)
        if x is not None:
            stacked = torch._grouped_mm(grad.mT, x, offs=offs)  # [E, out, in]; zeros for an expert without rows
            grad_w = [g.to(w.dtype) if need else None for g, w, need in zip(stacked, weights, ctx.needs_input_grad[2:])]
        return grad_x, None, *grad_w


def _stacked(weights: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return torch.stack([w.to(dtype) for w in weights])


def _aligned(dtype: torch.dtype, *sizes: int) -> bool:
    """The grouped kernels need every matrix stride (here: each feature size) a multiple of 16 bytes."""
    return all(size * dtype.itemsize % 16 == 0 for size in sizes)


class SparseMoE(nn.Module):
    """Keys as upstream's: ``gate.weight`` [E, hidden] (the router), ``experts.{e}.{gate,up,down}_proj``.

    ``taps``, when a dict (see :func:`record_routing`), receives the last call's block input, router
    logits, chosen experts, their float32 weights and the block output. ``grouped = False`` forces
    the per-expert loop.
    """

    def __init__(self, hidden: int, num_experts: int, top_k: int, width: int, norm_topk_prob: bool):
        super().__init__()
        self.gate = nn.Linear(hidden, num_experts, bias=False)
        self.experts = nn.ModuleList(MLP(hidden, width) for _ in range(num_experts))
        self.top_k, self.norm_topk_prob = top_k, norm_topk_prob
        self.taps: dict[str, torch.Tensor] | None = None
        self.grouped = True

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, hidden] -> (router logits [T, E], chosen experts [T, k] by falling weight, float32 weights [T, k])."""
        logits = self.gate(x)
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, chosen, weights

    def grouped_plan(self, x: torch.Tensor) -> list[tuple[list[nn.Module], bool]] | None:
        """Per projection (gate, up, down): the experts' modules and whether their LoRA deltas apply,
        when the grouped path can compute x [T, hidden]; None when the per-expert loop must."""
        dtype, first = compute_dtype(x), self.experts[0].gate_proj
        if not (self.grouped and grouped_mm_supported(x.device, dtype)):
            return None
        if not _aligned(dtype, first.in_features, first.out_features):
            return None
        plan = []
        for name in PROJECTIONS:
            modules = [getattr(expert, name) for expert in self.experts]
            adapted = {_adapted(m) for m in modules}
            if None in adapted or len(adapted) > 1 or any(m.bias is not None for m in modules):
                return None  # another module type, or adapted and plain experts mixed
            lora = adapted.pop()
            if lora:
                settings = {(m.rank, m.scale, getattr(m.dropout, "p", 0.0)) for m in modules}
                if len(settings) > 1 or not _aligned(dtype, modules[0].rank):
                    return None
            plan.append((modules, lora))
        return plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] == 0:
            return torch.zeros_like(x)
        logits, chosen, weights = self.route(flat)
        experts = chosen.flatten()
        sorted_experts, order = experts.sort(stable=True)  # (token, slot) pairs grouped by expert, tokens ascending
        tokens = order // self.top_k
        plan = self.grouped_plan(flat)
        if plan is None:
            rows = self._loop(flat[tokens], experts)
        else:
            rows = self._grouped(flat[tokens], sorted_experts, plan)
        rows = rows * weights.to(x.dtype).flatten()[order, None]
        out = torch.zeros_like(flat).index_add_(0, tokens, rows).view_as(x)
        if self.taps is not None:
            self.taps.update(
                {"in": flat, "router_logits": logits, "topk_idx": chosen, "topk_weight": weights, "out": out}
            )
        return out

    def _loop(self, rows: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Each expert with tokens on its slice of the sorted rows (the reference, and the fallback)."""
        counts = torch.bincount(experts, minlength=len(self.experts)).tolist()  # the loop's one host sync
        slices = rows.split(counts)
        return torch.cat([self.experts[e](part) for e, part in enumerate(slices) if counts[e]])

    def _grouped(self, rows: torch.Tensor, sorted_experts: torch.Tensor, plan: list) -> torch.Tensor:
        """Every expert's SwiGLU at once over the sorted rows, as three grouped matmuls (plus LoRA's)."""
        rows = rows.to(compute_dtype(rows))
        ends = torch.arange(1, len(self.experts) + 1, device=rows.device)
        offs = torch.searchsorted(sorted_experts, ends, out_int32=True)  # rows of experts 0..e, on the device
        (gate, gate_lora), (up, up_lora), (down, down_lora) = plan
        hidden = F.silu(_project(rows, offs, gate, gate_lora)) * _project(rows, offs, up, up_lora)
        return _project(hidden, offs, down, down_lora)


def _adapted(module: nn.Module) -> bool | None:
    """Whether a linear adds a LoRA delta (False: plain ``W x``; None: neither kind of linear).

    A LoRA wrapper (u1lib/lora/adapter.py) is known by its factors rather than its class: the lora
    package builds on the model, never the other way round."""
    if hasattr(module, "lora_down") and hasattr(module, "lora_up"):
        return module.enabled and not module.merged
    return False if isinstance(module, nn.Linear) else None


def _project(x: torch.Tensor, offs: torch.Tensor, modules: list[nn.Module], lora: bool) -> torch.Tensor:
    """One projection of every expert over its rows: W x, plus ``scale * up(down(dropout(x)))`` with LoRA."""
    y = _ExpertLinear.apply(x, offs, *(m.weight for m in modules))
    if not lora:
        return y
    first = modules[0]
    down = _ExpertLinear.apply(first.dropout(x), offs, *(m.lora_down.weight for m in modules))
    return y + first.scale * _ExpertLinear.apply(down, offs, *(m.lora_up.weight for m in modules))


@contextlib.contextmanager
def record_routing(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """While open, every MoE block records its last call; when the context closes, the yielded dict
    maps ``layer<i>.<mlp>.<what>`` (``<mlp>`` = ``mlp`` or ``mlp_mot_gen``) to those tensors."""
    blocks = {_short(path): m for path, m in model.named_modules() if isinstance(m, SparseMoE)}
    found: dict[str, torch.Tensor] = {}
    for block in blocks.values():
        block.taps = {}
    try:
        yield found
    finally:
        for name, block in blocks.items():
            found.update({f"{name}.{key}": value for key, value in block.taps.items()})
            block.taps = None


def _short(path: str) -> str:
    """``language_model.model.layers.3.mlp_mot_gen`` -> ``layer3.mlp_mot_gen``."""
    _, _, rest = path.partition("layers.")
    index, _, mlp = rest.partition(".")
    return f"layer{index}.{mlp}"
