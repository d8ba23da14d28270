"""How an export is checked by loading it back, and the fp32 merge that the merged/ writer and every
check compute (one definition, so the writer and its check cannot disagree on what a merge is)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from u1lib.io import sha256_file
from u1lib.lora.io import LoraFile, read_lora_file
from u1lib.model.config import U1Config
from u1lib.model.loading import weight_files

UPSTREAM_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
TOLERANCE = (
    "LoRA files: per element |delta_file - delta_source| <= 2 * r * eps_fp32 * |alpha/r| * (|up| @ |down|), "
    "the error bound of two fp32 length-r dot products (room for a consumer's other matmul kernel; the "
    "factors are stored losslessly). full_ft.safetensors and merged/: bit-identical in the stored dtype "
    "(the same fp32 operations on the same bytes)."
)
_EPS32 = torch.finfo(torch.float32).eps


def lora_delta(down: torch.Tensor, up: torch.Tensor, alpha: float) -> torch.Tensor:
    """(alpha / r) * up @ down in fp32: upstream's merge and bake_lora's."""
    return (alpha / down.shape[0]) * (up.float() @ down.float())


def merged_tensor(key: str, tensor: torch.Tensor, lora: LoraFile) -> torch.Tensor:
    """A base tensor after the adapter: W + delta added in fp32, or the full tensor; its dtype kept."""
    module = key.removesuffix(".weight")
    if key.endswith(".weight") and module in lora.triples:
        return (tensor.float() + lora_delta(*lora.triples[module])).to(tensor.dtype)
    return lora.full[key].to(tensor.dtype) if key in lora.full else tensor


def compare_triples(got: dict, source: dict) -> tuple[float, list[str]]:
    """Max |delta_got - delta_source| over all modules, and every module outside TOLERANCE."""
    problems = [f"{m}: missing" for m in source if m not in got]
    problems += [f"{m}: not in the source adapter" for m in got if m not in source]
    worst = 0.0
    for module in sorted(set(got) & set(source)):
        down, up, alpha = source[module]
        got_down, got_up, got_alpha = got[module]
        if torch.equal(got_down, down) and torch.equal(got_up, up) and float(got_alpha) == float(alpha):
            continue  # the same factors merge to the same weight: no need to multiply 8B-sized deltas out
        expected, actual = lora_delta(down, up, alpha), lora_delta(*got[module])
        if actual.shape != expected.shape:
            problems.append(f"{module}: delta shape {tuple(actual.shape)} != {tuple(expected.shape)}")
            continue
        bound = 2 * down.shape[0] * _EPS32 * abs(alpha / down.shape[0]) * (up.float().abs() @ down.float().abs())
        diff = (actual - expected).abs()
        worst = max(worst, float(diff.max()))
        if (diff > bound).any():
            problems.append(f"{module}: merged weight off by up to {float(diff.max()):.3g}")
    return worst, problems


def verify_upstream(path: Path, lora: LoraFile) -> tuple[float, list[str]]:
    """Every key is one upstream's loader looks up, factors fp32 (older upstream asserts it), merge equal."""
    with safe_open(path, framework="pt") as handle:
        keys = {k: handle.get_slice(k).get_dtype() for k in handle.keys()}
    problems = [f"{k}: upstream's loader would ignore it" for k in keys if not k.endswith(UPSTREAM_SUFFIXES)]
    problems += [f"{k}: {dtype}, upstream expects F32" for k, dtype in keys.items() if dtype != "F32"]
    worst, found = compare_triples(read_lora_file(path).triples, lora.triples)
    return worst, problems + found


def verify_full(path: Path, lora: LoraFile) -> tuple[float | None, list[str]]:
    """The fully fine-tuned tensors, bit for bit, under their parameter names."""
    with safe_open(path, framework="pt") as handle:
        got = {k: handle.get_tensor(k) for k in handle.keys()}
    if got.keys() != lora.full.keys():
        return None, [f"holds {sorted(got)}, the adapter {sorted(lora.full)}"]
    bad = [n for n, t in got.items() if t.dtype != lora.full[n].dtype or not torch.equal(t, lora.full[n])]
    return (None if bad else 0.0), [f"{n}: differs from the adapter's" for n in bad]


def verify_merged(snapshot: Path, merged: Path, lora: LoraFile, copied: list[str]) -> tuple[float | None, list[str]]:
    """Read merged/ through our loader's shard listing, tensor by tensor beside the base (never whole)."""
    U1Config.from_file(merged)
    problems = [
        f"{rel}: differs from the snapshot's"
        for rel in copied
        if sha256_file(merged / rel) != sha256_file(snapshot / rel)
    ]
    base_files, got_files = weight_files(snapshot), weight_files(merged)
    if {n: sorted(k) for n, k in base_files.items()} != {n: sorted(k) for n, k in got_files.items()}:
        return None, problems + ["shards or their keys differ from the snapshot's"]
    worst = 0.0
    for name, keys in got_files.items():
        with safe_open(snapshot / name, framework="pt") as base, safe_open(merged / name, framework="pt") as got:
            for key in keys:
                expected, actual = merged_tensor(key, base.get_tensor(key), lora), got.get_tensor(key)
                if actual.dtype != expected.dtype or actual.shape != expected.shape:
                    problems.append(f"{name}: {key} is {actual.dtype} {tuple(actual.shape)}, expected {expected.dtype}")
                    continue
                if actual.numel():
                    worst = max(worst, float((actual.float() - expected.float()).abs().max()))
                if not torch.equal(actual, expected):
                    problems.append(f"{name}: {key} differs from the merge")
    return worst, problems
