"""The MLP blocks of a decoder layer: the dense SwiGLU MLP, and the A3B model's sparse
Mixture-of-Experts block (both towers), a router over SwiGLU experts.

Routing as upstream's Qwen3-MoE block: logits = gate(x) (no bias), softmax in float32, top-k,
the k weights renormalised to sum 1 (``norm_topk_prob``) and cast to x's dtype; the output is
sum_k w_k * expert_k(x). No capacity limit, no shared expert.

Compute is grouped: the (token, slot) pairs are sorted by expert once, each expert that received
tokens runs one SwiGLU on its contiguous slice, and one ``index_add_`` scatters the weighted rows
back (per token in expert order, as upstream accumulates). The work is O(tokens x k), the Python
loop visits only experts with tokens. Experts stay separate ``nn.Linear`` modules so checkpoint
keys, LoRA on any expert or the router, baking and full fine-tune patterns work as on dense layers;
a grouped-GEMM kernel would need the weights stacked into one [E, out, in] tensor per projection,
a copy that autograd would keep alive for backward in every layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from u1lib.model.config import U1Config


class MLP(nn.Module):
    """SwiGLU, down(silu(gate(x)) * up(x)): a dense layer's MLP and each MoE expert."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def mlp_block(cfg: U1Config, index: int, tower: str) -> nn.Module:
    """Layer ``index``'s MLP in ``tower``: dense, or a sparse MoE block where the config places one."""
    if not cfg.sparse_mlp(index, tower):
        return MLP(cfg.hidden_size, cfg.intermediate_size)
    if tower == "gen":
        sizes = (cfg.gen_num_experts, cfg.gen_num_experts_per_tok, cfg.gen_moe_intermediate_size)
    else:
        sizes = (cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size)
    return SparseMoE(cfg.hidden_size, *sizes, norm_topk_prob=cfg.norm_topk_prob)


class SparseMoE(nn.Module):
    """Keys as upstream's: ``gate.weight`` [E, hidden] (the router), ``experts.{e}.{gate,up,down}_proj``.

    ``taps``, when a dict (see :func:`record_routing`), receives the last call's block input, router
    logits, chosen experts, their float32 weights and the block output.
    """

    def __init__(self, hidden: int, num_experts: int, top_k: int, width: int, norm_topk_prob: bool):
        super().__init__()
        self.gate = nn.Linear(hidden, num_experts, bias=False)
        self.experts = nn.ModuleList(MLP(hidden, width) for _ in range(num_experts))
        self.top_k, self.norm_topk_prob = top_k, norm_topk_prob
        self.taps: dict[str, torch.Tensor] | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, hidden] -> (router logits [T, E], chosen experts [T, k] by falling weight, float32 weights [T, k])."""
        logits = self.gate(x)
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, chosen, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] == 0:
            return torch.zeros_like(x)
        logits, chosen, weights = self.route(flat)
        experts = chosen.flatten()
        order = experts.argsort(stable=True)  # (token, slot) pairs grouped by expert, tokens ascending
        tokens = order // self.top_k
        counts = torch.bincount(experts, minlength=len(self.experts)).tolist()  # the block's one host sync
        slices = flat[tokens].split(counts)
        rows = torch.cat([self.experts[e](part) for e, part in enumerate(slices) if counts[e]])
        rows = rows * weights.to(x.dtype).flatten()[order, None]
        out = torch.zeros_like(flat).index_add_(0, tokens, rows).view_as(x)
        if self.taps is not None:
            self.taps.update(
                {"in": flat, "router_logits": logits, "topk_idx": chosen, "topk_weight": weights, "out": out}
            )
        return out


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
