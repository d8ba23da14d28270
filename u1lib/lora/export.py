"""``python -m u1lib export``: one adapter -> the file each consumer loads, each verified by loading it back.

Upstream's LoRA loader reads, per model parameter ``P.weight``, only ``P.lora_down.weight``,
``P.lora_up.weight`` and ``P.alpha`` and ignores every other key without a word; vLLM's PEFT loader
refuses any key but ``lora_A``/``lora_B``. So fully fine-tuned tensors ride in neither LoRA file: they
go to ``full_ft.safetensors`` (``--strict-upstream`` refuses instead), and ``merged/``, a complete
snapshot with everything folded in, carries them too. docs/EXPORT.md says who loads what.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open

from u1lib.io import atomic_path, read_json, save_safetensors, sha256_file, write_json
from u1lib.lora.io import LoraFile, read_lora_file
from u1lib.model.config import U1Config
from u1lib.model.loading import weight_files

log = logging.getLogger(__name__)

UPSTREAM, FULL, REPORT, MERGED = "lora_upstream.safetensors", "full_ft.safetensors", "export.json", "merged"
PEFT_WEIGHTS, PEFT_CONFIG = "peft/adapter_model.safetensors", "peft/adapter_config.json"
PEFT_PREFIX = "base_model.model."
UPSTREAM_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
CONSUMERS = {
    UPSTREAM: "upstream's LoRA loader (utils/lora.py, load_and_merge_lora_weight_from_safetensors)",
    FULL: "partial state-dict loaders (load_state_dict(strict=False)); u1lib read_lora_file + bake_lora",
    PEFT_WEIGHTS: "PEFT-format loaders (PeftModel.from_pretrained, vLLM-Omni), with adapter_config.json",
    PEFT_CONFIG: "PEFT-format loaders, with adapter_model.safetensors",
    MERGED: "upstream's from_pretrained and u1lib.model.loading.load_model (a complete snapshot)",
}
TOLERANCE = (
    "LoRA files: per element |delta_file - delta_source| <= 2 * r * eps_fp32 * |alpha/r| * (|up| @ |down|), "
    "the error bound of two fp32 length-r dot products (room for a consumer's other matmul kernel; the "
    "factors are stored losslessly). full_ft.safetensors and merged/: bit-identical in the stored dtype "
    "(the same fp32 operations on the same bytes)."
)
_EPS32 = torch.finfo(torch.float32).eps


def _delta(down: torch.Tensor, up: torch.Tensor, alpha: float) -> torch.Tensor:
    """(alpha / r) * up @ down in fp32: upstream's merge and bake_lora's."""
    return (alpha / down.shape[0]) * (up.float() @ down.float())


def _merged(key: str, tensor: torch.Tensor, lora: LoraFile) -> torch.Tensor:
    """A base tensor after the adapter: W + delta added in fp32, or the full tensor; its dtype kept."""
    module = key.removesuffix(".weight")
    if key.endswith(".weight") and module in lora.triples:
        return (tensor.float() + _delta(*lora.triples[module])).to(tensor.dtype)
    return lora.full[key].to(tensor.dtype) if key in lora.full else tensor


def _read_adapter(path: Path) -> LoraFile:
    if not path.is_file():
        raise ValueError(f"adapter {path}: no such file; give a run's results/runs/<variant>/adapter.safetensors")
    try:
        with safe_open(path, framework="pt"):
            pass
    except Exception as err:  # safetensors raises its own error type for a file that is not one
        raise ValueError(f"adapter {path}: not a safetensors file ({err}); give a run's adapter.safetensors") from None
    lora = read_lora_file(path)
    if not lora.triples:
        raise ValueError(f"adapter {path}: no LoRA pairs (<module>.lora_down/.lora_up.weight); not an adapter")
    return lora


def _check_fits(snapshot: Path, lora: LoraFile, adapter: Path) -> None:
    """Every adapter target is in the base with the adapter's shape (headers only, no weight is read)."""
    if not (snapshot / "config.json").is_file():
        raise ValueError(f"--snapshot {snapshot}: no config.json; give the snapshot folder the adapter was trained on")
    shapes = {}
    for name in weight_files(snapshot):
        with safe_open(snapshot / name, framework="pt") as handle:
            shapes.update({k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()})
    want = {f"{m}.weight": (up.shape[0], down.shape[1]) for m, (down, up, _) in lora.triples.items()}
    want.update({n: tuple(t.shape) for n, t in lora.full.items()})
    problems = [f"{k}: not in the snapshot" for k in want if k not in shapes]
    problems += [f"{k}: snapshot {shapes[k]} != adapter {s}" for k, s in want.items() if shapes.get(k, s) != s]
    if problems:
        revision = lora.metadata.get("u1lib.base_revision", "unknown")
        raise ValueError(
            f"adapter {adapter} does not fit the snapshot {snapshot}:\n  "
            + "\n  ".join(problems)
            + f"\nexport with the snapshot it was trained on (its metadata says base revision {revision})"
        )


def _snapshot_files(snapshot: Path) -> tuple[list[str], list[str]]:
    """(weight shards, other files) of a snapshot as relative paths; hidden paths are not part of it."""
    shards = sorted(weight_files(snapshot))
    files = [p.relative_to(snapshot) for p in snapshot.rglob("*") if p.is_file()]
    others = [p.as_posix() for p in files if not any(s.startswith(".") for s in p.parts)]
    return shards, sorted(set(others) - set(shards))


def _peft_config(lora: LoraFile) -> dict:
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
        expected, actual = _delta(down, up, alpha), _delta(*got[module])
        if actual.shape != expected.shape:
            problems.append(f"{module}: delta shape {tuple(actual.shape)} != {tuple(expected.shape)}")
            continue
        bound = 2 * down.shape[0] * _EPS32 * abs(alpha / down.shape[0]) * (up.float().abs() @ down.float().abs())
        diff = (actual - expected).abs()
        worst = max(worst, float(diff.max()))
        if (diff > bound).any():
            problems.append(f"{module}: merged weight off by up to {float(diff.max()):.3g}")
    return worst, problems


def _verify_upstream(path: Path, lora: LoraFile) -> tuple[float, list[str]]:
    """Every key is one upstream's loader looks up, factors fp32 (older upstream asserts it), merge equal."""
    with safe_open(path, framework="pt") as handle:
        keys = {k: handle.get_slice(k).get_dtype() for k in handle.keys()}
    problems = [f"{k}: upstream's loader would ignore it" for k in keys if not k.endswith(UPSTREAM_SUFFIXES)]
    problems += [f"{k}: {dtype}, upstream expects F32" for k, dtype in keys.items() if dtype != "F32"]
    worst, found = compare_triples(read_lora_file(path).triples, lora.triples)
    return worst, problems + found


def _verify_full(path: Path, lora: LoraFile) -> tuple[float | None, list[str]]:
    """The fully fine-tuned tensors, bit for bit, under their parameter names."""
    with safe_open(path, framework="pt") as handle:
        got = {k: handle.get_tensor(k) for k in handle.keys()}
    if got.keys() != lora.full.keys():
        return None, [f"holds {sorted(got)}, the adapter {sorted(lora.full)}"]
    bad = [n for n, t in got.items() if t.dtype != lora.full[n].dtype or not torch.equal(t, lora.full[n])]
    return (None if bad else 0.0), [f"{n}: differs from the adapter's" for n in bad]


def _verify_merged(snapshot: Path, merged: Path, lora: LoraFile, copied: list[str]) -> tuple[float | None, list[str]]:
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
                expected, actual = _merged(key, base.get_tensor(key), lora), got.get_tensor(key)
                if actual.dtype != expected.dtype or actual.shape != expected.shape:
                    problems.append(f"{name}: {key} is {actual.dtype} {tuple(actual.shape)}, expected {expected.dtype}")
                    continue
                if actual.numel():
                    worst = max(worst, float((actual.float() - expected.float()).abs().max()))
                if not torch.equal(actual, expected):
                    problems.append(f"{name}: {key} differs from the merge")
    return worst, problems


def _clear_out(out: Path, planned: list[str], adapter: Path, overwrite: bool) -> None:
    """Refuse to replace files unless ``overwrite``; then remove ours: planned, and stale ones an earlier
    export.json lists, so the folder always says what its export.json says."""
    existing = [rel for rel in planned if (out / rel).exists()]
    if overwrite and (out / REPORT).is_file():
        earlier = read_json(out / REPORT).get("files", {})
        inside = [rel for rel in earlier if (out / rel).resolve().is_relative_to(out.resolve())]
        existing += [rel for rel in inside if rel not in planned and (out / rel).is_file()]
    if any((out / rel).resolve() == adapter.resolve() for rel in existing):
        raise ValueError(f"adapter {adapter} is a file export would replace; export to another --out")
    if existing and not overwrite:
        raise ValueError(f"--out {out} already holds {', '.join(existing)}; pass --overwrite to replace them")
    for rel in existing:
        (out / rel).unlink()


def _write(out: Path, lora: LoraFile, adapter: Path, snapshot: Path | None, shards: list[str], others: list[str]):
    meta = {"format": "pt", **lora.metadata, "u1lib.exported_from": adapter.name}
    upstream, peft = {}, {}
    for module, (down, up, alpha) in lora.triples.items():
        upstream[f"{module}.lora_down.weight"], upstream[f"{module}.lora_up.weight"] = down.float(), up.float()
        upstream[f"{module}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
        peft[f"{PEFT_PREFIX}{module}.lora_A.weight"], peft[f"{PEFT_PREFIX}{module}.lora_B.weight"] = down, up
    save_safetensors(out / UPSTREAM, upstream, {**meta, "u1lib.format": "upstream_lora"})
    save_safetensors(out / PEFT_WEIGHTS, peft, {"format": "pt"})
    write_json(out / PEFT_CONFIG, _peft_config(lora))
    if lora.full:
        save_safetensors(out / FULL, dict(sorted(lora.full.items())), {**meta, "u1lib.format": "full_ft"})
    for rel in shards:  # one shard in memory at a time
        with safe_open(snapshot / rel, framework="pt") as handle:
            tensors = {k: _merged(k, handle.get_tensor(k), lora) for k in handle.keys()}
            shard_meta = handle.metadata()
        save_safetensors(out / MERGED / rel, tensors, shard_meta)
        del tensors
    for rel in others:
        with atomic_path(out / MERGED / rel) as tmp:
            shutil.copyfile(snapshot / rel, tmp)


def export_adapter(
    adapter: str | Path,
    out: str | Path,
    *,
    snapshot: str | Path | None = None,
    merged: bool = False,
    strict_upstream: bool = False,
    overwrite: bool = False,
) -> dict:
    """Write every export of ``adapter`` into ``out``, verify each, then export.json; returns its content."""
    adapter, out = Path(adapter), Path(out)
    snapshot = None if snapshot is None else Path(snapshot)
    if merged and snapshot is None:
        raise ValueError("--merged needs --snapshot SNAPSHOT_DIR: the base model folder the adapter was trained on")
    lora = _read_adapter(adapter)
    full = sorted(lora.full)
    if full and strict_upstream:
        raise ValueError(
            f"adapter {adapter} holds {len(full)} fully fine-tuned tensors that upstream's LoRA loader would drop "
            f"without a word: {', '.join(full)}. Refused (--strict-upstream); without it they are split into {FULL}, "
            "and --merged --snapshot SNAPSHOT_DIR writes a model that carries them"
        )
    shards, others = [], []
    if snapshot is not None:
        _check_fits(snapshot, lora, adapter)
        if out.resolve().is_relative_to(snapshot.resolve()) or snapshot.resolve().is_relative_to(out.resolve()):
            raise ValueError(f"--out {out} and --snapshot {snapshot} overlap; export into a folder of its own")
        if merged:
            shards, others = _snapshot_files(snapshot)
    planned = [UPSTREAM, PEFT_WEIGHTS, PEFT_CONFIG] + ([FULL] if full else [])
    planned += [f"{MERGED}/{rel}" for rel in shards + others]
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")
    outside = [rel for rel in planned if not (out / rel).resolve().is_relative_to(out.resolve())]
    if outside:
        raise ValueError(f"snapshot {snapshot} names files outside itself ({', '.join(outside)}); refusing to write")
    _clear_out(out, planned + [REPORT], adapter, overwrite)
    _write(out, lora, adapter, snapshot, shards, others)
    if full:
        log.warning(
            f"{adapter}: {len(full)} fully fine-tuned tensors are not LoRA pairs: {', '.join(full)}. Upstream's "
            f"LoRA loader ignores such tensors without a message and vLLM's PEFT loader refuses them, so {UPSTREAM} "
            f"and peft/ hold the LoRA pairs only; {FULL} carries the tensors, "
            + ("and merged/ has them merged in." if merged else "and --merged --snapshot DIR merges them into a model.")
            + " (--strict-upstream refuses such an adapter instead.)"
        )

    try:
        results = {UPSTREAM: _verify_upstream(out / UPSTREAM, lora)}
        results[PEFT_WEIGHTS] = compare_triples(read_peft(out / "peft"), lora.triples)
        if full:
            results[FULL] = _verify_full(out / FULL, lora)
        if merged:
            results[f"{MERGED}/"] = _verify_merged(snapshot, out / MERGED, lora, others)
    except ValueError as err:  # a file that does not even read back
        results = {"reading back": (None, [str(err)])}
    problems = [f"{rel}: {p}" for rel, (_, found) in results.items() for p in found]
    if problems:
        for rel in planned:
            (out / rel).unlink(missing_ok=True)
        raise ValueError(
            f"export of {adapter} failed verification; its files were removed:\n  " + "\n  ".join(problems)
        )

    files = {}
    for rel in planned:
        consumer = CONSUMERS[MERGED if rel.startswith(f"{MERGED}/") else rel]
        files[rel] = {"consumer": consumer, "sha256": sha256_file(out / rel), "bytes": (out / rel).stat().st_size}
    report = {
        "source": {"adapter": str(adapter), "sha256": sha256_file(adapter), "lora_modules": len(lora.triples)},
        "snapshot": None if snapshot is None else str(snapshot),
        "full_ft_tensors": full,
        "split": f"in {FULL}{' and merged/' if merged else ''}, not in {UPSTREAM} or peft/" if full else None,
        "files": files,
        "verification": {
            "tolerance": TOLERANCE,
            **{rel: {"max_abs_diff": worst, "ok": not found} for rel, (worst, found) in results.items()},
        },
    }
    write_json(out / REPORT, report)
    return report


def cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m u1lib {verb}", description=__doc__.split("\n")[0])
    parser.add_argument("adapter", type=Path, help="an adapter.safetensors a run wrote")
    parser.add_argument("--out", type=Path, required=True, help="folder for the exports and export.json")
    parser.add_argument("--merged", action="store_true", help="also write merged/, a complete merged snapshot")
    parser.add_argument("--snapshot", type=Path, help="the base snapshot folder (needed by --merged; checks shapes)")
    parser.add_argument(
        "--strict-upstream", action="store_true", help="refuse an adapter with fully fine-tuned tensors, not split it"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace files an earlier export wrote")
    args = parser.parse_args(argv)
    options = {k: getattr(args, k) for k in ("snapshot", "merged", "strict_upstream", "overwrite")}
    report = export_adapter(args.adapter, args.out, **options)
    for rel, entry in report["files"].items():
        if not rel.startswith(f"{MERGED}/"):
            print(f"{args.out / rel}: {entry['consumer']}")
    if args.merged:
        print(f"{args.out / MERGED}/: {CONSUMERS[MERGED]}")
    diffs = ", ".join(f"{k} {v['max_abs_diff']:.3g}" for k, v in report["verification"].items() if k != "tolerance")
    print(f"{args.out / REPORT}: each file loaded back and its merge compared; max abs diff: {diffs}")
    return 0
