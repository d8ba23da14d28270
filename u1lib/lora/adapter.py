"""LoRA as a module swap: ``y = W x + (alpha / r) * up(down(dropout(x)))``.

The wrapped module keeps the base ``weight``/``bias`` under their original names, so the adapter's
own tensors land at ``<module>.lora_down.weight``, ``<module>.lora_up.weight`` and ``<module>.alpha``,
which is exactly upstream's file convention. Adapter tensors stay float32 (master copies) and are
cast to the activation dtype inside forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from u1lib.lora.spec import LoraTarget, TrainableSurface
from u1lib.model.fp8 import Fp8Linear, base_linear


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear | Fp8Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        # the row scales of a base stored in FP8 (model/fp8.py), from the start or once converted
        self.register_buffer("weight_scale", getattr(base, "weight_scale", None))
        device = base.weight.device
        self.lora_down = nn.Linear(self.in_features, rank, bias=False, device=device, dtype=torch.float32)
        self.lora_up = nn.Linear(rank, self.out_features, bias=False, device=device, dtype=torch.float32)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        # the buffer is what files store; forward reads the Python float (no device sync per call)
        self.register_buffer("alpha", torch.tensor(float(alpha), dtype=torch.float32, device=device))
        self.scale = float(alpha) / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True
        self.merged = False

    @property
    def rank(self) -> int:
        return self.lora_down.weight.shape[0]

    def set_alpha(self, alpha: float) -> None:
        self.alpha.fill_(float(alpha))
        self.scale = float(alpha) / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = base_linear(self, x)
        if not self.enabled or self.merged:
            return y
        down = F.linear(self.dropout(x), self.lora_down.weight.to(x.dtype))
        return y + self.scale * F.linear(down, self.lora_up.weight.to(x.dtype))

    def delta(self) -> torch.Tensor:
        """scale * up @ down in float32 (upstream's merge math)."""
        return self.scale * (self.lora_up.weight.float() @ self.lora_down.weight.float())

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into the base weight (idempotent); a disabled adapter cannot be merged."""
        if not self.enabled:
            raise RuntimeError("cannot merge a disabled LoRA adapter: the base output it promises would change")
        if self.weight_scale is not None:
            raise RuntimeError(
                "cannot merge a LoRA adapter into an FP8 base weight (train.fp8): merge into the bf16 base"
            )
        if not self.merged:
            self.weight.copy_((self.weight.float() + self.delta()).to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight.copy_((self.weight.float() - self.delta()).to(self.weight.dtype))
            self.merged = False


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    try:
        parent = model.get_submodule(parent_path)
    except AttributeError:
        raise ValueError(f"LoRA target {path}: the model has no module {parent_path!r}") from None
    if not hasattr(parent, name):
        raise ValueError(f"LoRA target {path}: the model has no module {path!r}")
    return parent, name


def wrap(model: nn.Module, targets: dict[str, LoraTarget], dropout: float = 0.0) -> dict[str, LoRALinear]:
    """Swap every target ``nn.Linear`` for a LoRALinear; returns path -> adapter module."""
    adapters = {}
    for path, target in targets.items():
        parent, name = _parent(model, path)
        base = getattr(parent, name)
        if isinstance(base, LoRALinear):
            raise ValueError(f"{path} already carries a LoRA adapter")
        if not isinstance(base, (nn.Linear, Fp8Linear)):
            raise ValueError(f"{path} is a {type(base).__name__}, not a Linear; LoRA needs a Linear")
        adapter = LoRALinear(base, target.rank, target.alpha, dropout)
        setattr(parent, name, adapter)
        adapters[path] = adapter
    return adapters


def unwrap(model: nn.Module) -> None:
    """Put the plain (or FP8) Linears back (adapters must be unmerged or deliberately merged first)."""
    for path, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent, name = _parent(model, path)
            if module.weight_scale is not None:
                base = Fp8Linear(module.weight, module.weight_scale, module.bias)
            else:
                base = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
                base.weight = module.weight
                base.bias = module.bias
            setattr(parent, name, base)


def adapters_of(model: nn.Module) -> dict[str, LoRALinear]:
    return {path: m for path, m in model.named_modules() if isinstance(m, LoRALinear)}


def set_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every adapter on or off (off gives the base model's outputs exactly, so merged ones are refused)."""
    adapters = adapters_of(model)
    merged = [path for path, module in adapters.items() if module.merged]
    if merged and not enabled:
        raise RuntimeError(f"cannot disable merged LoRA adapters (e.g. {merged[0]}); unmerge them first")
    for module in adapters.values():
        module.enabled = enabled


def make_trainable(model: nn.Module, surface: TrainableSurface, *, dropout: float = 0.0) -> list[str]:
    """Wrap the surface's LoRA targets, keep its fully tuned tensors as float32 masters (autocast
    computes in bf16) and make exactly the surface trainable; returns the trainable names, sorted."""
    wrap(model, surface.targets, dropout=dropout)
    params = dict(model.named_parameters())
    for name in surface.full_ft:
        params[name].data = params[name].data.float()
    names = sorted([n for n in params if ".lora_" in n] + list(surface.full_ft))
    chosen = set(names)
    for name, param in params.items():
        param.requires_grad_(name in chosen)
    return names
