"""Adapter files in upstream's LoRA format, and bake-in of upstream LoRAs with a skip list.

Layout: ``<module>.lora_down.weight`` [r, in] and ``<module>.lora_up.weight`` [out, r],
``<module>.alpha`` a float32 scalar. Factors are written in float32 by default (older upstream merges
assert it) or in bfloat16 on request (the official U1.5 LoRA's format, half the size); any float
dtype is read, with or without a ``diffusion_model.`` prefix, and scale = alpha / rank either way.
Fully fine-tuned weights are stored under their own names.
Fully fine-tuned *biases* are stored as ``<module>.full_ft_bias``: upstream's merge treats any key
equal to a model parameter's name without ``.weight`` as a LoRA triple and fails on a plain bias
(docs/MODEL.md section 10, item 13), so a plain ``.bias`` key would make the file unloadable there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from u1lib.io import save_safetensors
from u1lib.lora.adapter import LoRALinear, adapters_of, wrap
from u1lib.lora.spec import LoraTarget

UPSTREAM_PREFIX = "diffusion_model."
FT_BIAS_SUFFIX = ".full_ft_bias"
_LEGACY = {".lora_A.weight": ".lora_down.weight", ".lora_B.weight": ".lora_up.weight"}


@dataclass
class LoraFile:
    """A LoRA file read into memory: module path -> (down, up, alpha), plus full fine-tuned tensors."""

    triples: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)
    full: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def _canonical(key: str) -> str:
    if key.startswith(UPSTREAM_PREFIX):
        key = key[len(UPSTREAM_PREFIX) :]
    for old, new in _LEGACY.items():
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def read_lora_file(path: str | Path) -> LoraFile:
    """Parse an upstream-format (or this project's) LoRA file; incomplete triples are an error naming them."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"LoRA file {path} does not exist")
    with safe_open(path, framework="pt") as handle:
        tensors = {_canonical(k): handle.get_tensor(k) for k in handle.keys()}
        metadata = handle.metadata() or {}
    result = LoraFile(metadata=metadata)
    modules = {k[: -len(".lora_down.weight")] for k in tensors if k.endswith(".lora_down.weight")}
    problems = []
    for module in sorted(modules):
        up = tensors.pop(f"{module}.lora_up.weight", None)
        down = tensors.pop(f"{module}.lora_down.weight")
        alpha = tensors.pop(f"{module}.alpha", None)
        if up is None:
            problems.append(f"{module}: lora_down without lora_up")
            continue
        if down.dim() != 2 or up.dim() != 2 or up.shape[1] != down.shape[0]:
            problems.append(
                f"{module}: lora_down {tuple(down.shape)} and lora_up {tuple(up.shape)} are not [r, in] and [out, r]"
            )
            continue
        if alpha is not None and alpha.numel() != 1:
            problems.append(f"{module}: alpha has shape {tuple(alpha.shape)}, expected a scalar")
            continue
        result.triples[module] = (down, up, float(alpha) if alpha is not None else float(down.shape[0]))
    stray = [k for k in tensors if ".lora_up." in k or k.endswith(".alpha")]
    problems += [f"{k}: no matching lora_down" for k in stray]
    if problems:
        raise ValueError(f"{path}: malformed LoRA file:\n  " + "\n  ".join(problems))
    for key, tensor in tensors.items():
        name = key[: -len(FT_BIAS_SUFFIX)] + ".bias" if key.endswith(FT_BIAS_SUFFIX) else key
        result.full[name] = tensor
    return result


FACTOR_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def adapter_tensors(model: nn.Module, full_ft: list[str], *, factor_dtype: str = "float32") -> dict[str, torch.Tensor]:
    """Every adapter of ``model`` and the named fully fine-tuned tensors, as an upstream-format file's
    tensors: CPU copies, never views of the live weights, so they can be written while training goes on.

    ``factor_dtype`` is the dtype of the lora_down/lora_up matrices (float32 or bfloat16).
    """
    if factor_dtype not in FACTOR_DTYPES:
        raise ValueError(f"LoRA factor dtype {factor_dtype!r} is not one of {', '.join(FACTOR_DTYPES)}")
    dtype = FACTOR_DTYPES[factor_dtype]
    params = dict(model.named_parameters())
    unknown = [name for name in full_ft if name not in params]
    if unknown:
        raise ValueError(f"cannot save fully fine-tuned tensors the model does not have: {', '.join(unknown)}")

    def copy(tensor: torch.Tensor, to: torch.dtype) -> torch.Tensor:
        return tensor.detach().to("cpu", to, copy=True).contiguous()

    tensors: dict[str, torch.Tensor] = {}
    for module, adapter in adapters_of(model).items():
        tensors[f"{module}.lora_down.weight"] = copy(adapter.lora_down.weight, dtype)
        tensors[f"{module}.lora_up.weight"] = copy(adapter.lora_up.weight, dtype)
        tensors[f"{module}.alpha"] = copy(adapter.alpha, torch.float32)
    for name in full_ft:
        key = name[: -len(".bias")] + FT_BIAS_SUFFIX if name.endswith(".bias") else name
        tensors[key] = copy(params[name], torch.float32)
    return tensors


def write_adapter_file(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Write :func:`adapter_tensors`' result as an upstream LoRA file; returns bytes written."""
    save_safetensors(path, tensors, {"format": "pt", "u1lib.format": "upstream_lora", **metadata})
    return Path(path).stat().st_size


def save_adapter(
    model: nn.Module, path: str | Path, full_ft: list[str], metadata: dict[str, str], *, factor_dtype: str = "float32"
) -> int:
    """Write every adapter of ``model`` and the named fully fine-tuned tensors; returns bytes written."""
    return write_adapter_file(path, adapter_tensors(model, full_ft, factor_dtype=factor_dtype), metadata)


def load_adapter_weights(model: nn.Module, lora: LoraFile, *, strict: bool = True) -> None:
    """Copy a file's tensors into an already wrapped model; every missing or unexpected name is reported."""
    adapters = adapters_of(model)
    params = dict(model.named_parameters())
    problems = [f"file has LoRA for {m}, model has no adapter there" for m in lora.triples if m not in adapters]
    problems += [f"model adapter {m} missing from file" for m in adapters if m not in lora.triples]
    problems += [f"file has tensor {n}, model has no such parameter" for n in lora.full if n not in params]
    if problems and strict:
        raise ValueError("adapter does not match the model:\n  " + "\n  ".join(problems))
    shape_problems = [
        f"{module}: file down/up {tuple(down.shape)}/{tuple(up.shape)} != adapter "
        f"{tuple(adapters[module].lora_down.weight.shape)}/{tuple(adapters[module].lora_up.weight.shape)}"
        for module, (down, up, _) in lora.triples.items()
        if module in adapters
        and (down.shape != adapters[module].lora_down.weight.shape or up.shape != adapters[module].lora_up.weight.shape)
    ]
    shape_problems += [
        f"{name}: file shape {tuple(t.shape)} != model {tuple(params[name].shape)}"
        for name, t in lora.full.items()
        if name in params and t.shape != params[name].shape
    ]
    if shape_problems:
        raise ValueError("adapter shapes do not match the model:\n  " + "\n  ".join(shape_problems))
    with torch.no_grad():
        for module, (down, up, alpha) in lora.triples.items():
            if module not in adapters:
                continue
            adapter = adapters[module]
            adapter.lora_down.weight.copy_(down)
            adapter.lora_up.weight.copy_(up)
            adapter.set_alpha(alpha)
        for name, tensor in lora.full.items():
            if name in params:
                params[name].copy_(tensor.to(params[name].dtype))


def bake_lora(model: nn.Module, lora: LoraFile, skip: list[str] | tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Merge a LoRA file into the base weights (W += alpha/r * up @ down, added in float32).

    Modules whose path contains any ``skip`` substring are left alone. The same function serves
    training and sampling, so a skip list is honoured identically in both. A target the model does
    not have is an error (no silent partial loads); full fine-tuned tensors in the file replace the
    model's, also subject to ``skip``.
    """
    params = dict(model.named_parameters())
    report: dict[str, list[str]] = {"merged": [], "skipped": [], "replaced": []}
    missing = [m for m in lora.triples if f"{m}.weight" not in params]
    missing += [n for n in lora.full if n not in params]
    if missing:
        raise ValueError("LoRA targets not present in the model:\n  " + "\n  ".join(sorted(missing)))
    expected = {f"{m}.weight": (up.shape[0], down.shape[1]) for m, (down, up, _) in lora.triples.items()}
    expected.update({n: tuple(t.shape) for n, t in lora.full.items()})
    problems = [
        f"{n}: not loaded (meta device); load its parameter group first"
        for n in expected
        if params[n].is_meta and not any(s in n for s in skip)
    ]
    problems += [
        f"{n}: model shape {tuple(params[n].shape)} != LoRA file's {tuple(shape)}"
        for n, shape in expected.items()
        if tuple(params[n].shape) != tuple(shape)
    ]
    if problems:
        raise ValueError("LoRA file does not fit the model:\n  " + "\n  ".join(sorted(problems)))
    with torch.no_grad():
        for module, (down, up, alpha) in lora.triples.items():
            if any(s in module for s in skip):
                report["skipped"].append(module)
                continue
            weight = params[f"{module}.weight"]
            delta = (alpha / down.shape[0]) * (up.float().to(weight.device) @ down.float().to(weight.device))
            weight.copy_((weight.float() + delta).to(weight.dtype))
            report["merged"].append(module)
        for name, tensor in lora.full.items():
            if any(s in name for s in skip):
                report["skipped"].append(name)
                continue
            params[name].copy_(tensor.to(params[name].dtype))
            report["replaced"].append(name)
    return report


def bake_upstream_lora(model: nn.Module, spec: dict | None) -> dict[str, list[str]] | None:
    """Bake the config's ``upstream_lora: {path, skip}`` into the base; None (nothing baked) when the
    spec or its path is empty, the config's default, so training and sampling take the section as is."""
    if not spec or not spec.get("path"):
        return None
    return bake_lora(model, read_lora_file(spec["path"]), skip=tuple(spec.get("skip", ())))


def adapter_metadata(*, config: dict, spec: str, base_revision: str, step: int) -> dict[str, str]:
    return {
        "u1lib.config": json.dumps(config, sort_keys=True),
        "u1lib.spec": spec,
        "u1lib.base_revision": base_revision,
        "u1lib.step": str(step),
    }


def wrap_from_file(model: nn.Module, lora: LoraFile) -> dict[str, LoRALinear]:
    """Wrap the modules a file names (rank/alpha from the file) and load its weights: a runtime adapter."""
    targets = {
        m: LoraTarget(m, down.shape[1], up.shape[0], rank=down.shape[0], alpha=alpha)
        for m, (down, up, alpha) in lora.triples.items()
    }
    adapters = wrap(model, targets)
    load_adapter_weights(model, lora)
    return adapters
