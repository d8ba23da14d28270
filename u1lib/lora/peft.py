"""The PEFT layout (``peft/`` of an export, what PeftModel and vLLM-Omni load): its adapter_config.json,
and a reader that applies that config per module the way PEFT does, independent of the writer."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open

from u1lib.io import read_json
from u1lib.lora.io import LoraFile

PEFT_PREFIX = "base_model.model."


def peft_config(lora: LoraFile) -> dict:
    """Commonest rank/alpha as defaults, the others per module; only keys PEFT has read since 0.6."""
    ranks = {m: down.shape[0] for m, (down, _, _) in lora.triples.items()}
    alphas = {m: int(a) if float(a).is_integer() else a for m, (_, _, a) in lora.triples.items()}
    r, alpha = Counter(ranks.values()).most_common(1)[0][0], Counter(alphas.values()).most_common(1)[0][0]
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "revision": None,
        "inference_mode": True,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted(lora.triples),
        "rank_pattern": {m: v for m, v in sorted(ranks.items()) if v != r},
        "alpha_pattern": {m: v for m, v in sorted(alphas.items()) if v != alpha},
        "modules_to_save": None,  # full tensors: vLLM refuses them, so they live in full_ft.safetensors
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
    }


def _pattern(patterns: dict, module: str, default):
    """PEFT's lookup: the exact module name, else the first key matching the end of the path."""
    if module in patterns:
        return patterns[module]
    return next((v for k, v in patterns.items() if re.match(rf"(.*\.)?({k})$", module)), default)


def read_peft(folder: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """A PEFT LoRA folder as module -> (lora_A, lora_B, alpha), configured per module as PEFT would."""
    folder = Path(folder)
    config = read_json(folder / "adapter_config.json")
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{folder}/adapter_config.json: peft_type {config.get('peft_type')!r}, not 'LORA'")
    targets = config["target_modules"]
    with safe_open(folder / "adapter_model.safetensors", framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    triples, problems = {}, []
    for key in sorted(tensors):
        if not (key.startswith(PEFT_PREFIX) and key.endswith((".lora_A.weight", ".lora_B.weight"))):
            problems.append(f"{key}: not a PEFT LoRA key")
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len(PEFT_PREFIX) : -len(".lora_A.weight")]
        down, up = tensors[key], tensors.get(f"{PEFT_PREFIX}{module}.lora_B.weight")
        rank = _pattern(config["rank_pattern"], module, config["r"])
        if isinstance(targets, str):
            targeted = re.fullmatch(targets, module)
        else:
            targeted = any(module == t or module.endswith(f".{t}") for t in targets)
        if up is None or down.shape[0] != rank or up.shape[1] != rank or not targeted:
            problems.append(f"{module}: no lora_B, factors not of rank {rank}, or not in target_modules")
            continue
        triples[module] = (down, up, float(_pattern(config["alpha_pattern"], module, config["lora_alpha"])))
    if problems:
        raise ValueError(f"{folder}: not a PEFT LoRA adapter:\n  " + "\n  ".join(problems))
    return triples
