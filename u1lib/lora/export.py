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
import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from u1lib.io import atomic_path, read_json, save_safetensors, sha256_file, write_json
from u1lib.lora.export_check import (
    TOLERANCE,
    compare_triples,
    merged_tensor,
    verify_full,
    verify_merged,
    verify_upstream,
)
from u1lib.lora.io import LoraFile, read_lora_file
from u1lib.lora.peft import PEFT_PREFIX, peft_config, read_peft
from u1lib.model.loading import weight_files

log = logging.getLogger(__name__)

UPSTREAM, FULL, REPORT, MERGED = "lora_upstream.safetensors", "full_ft.safetensors", "export.json", "merged"
PEFT_WEIGHTS, PEFT_CONFIG = "peft/adapter_model.safetensors", "peft/adapter_config.json"
CONSUMERS = {
    UPSTREAM: "upstream's LoRA loader (utils/lora.py, load_and_merge_lora_weight_from_safetensors)",
    FULL: "partial state-dict loaders (load_state_dict(strict=False)); u1lib read_lora_file + bake_lora",
    PEFT_WEIGHTS: "PEFT-format loaders (PeftModel.from_pretrained, vLLM-Omni), with adapter_config.json",
    PEFT_CONFIG: "PEFT-format loaders, with adapter_model.safetensors",
    MERGED: "upstream's from_pretrained and u1lib.model.loading.load_model (a complete snapshot)",
}


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
    write_json(out / PEFT_CONFIG, peft_config(lora))
    if lora.full:
        save_safetensors(out / FULL, dict(sorted(lora.full.items())), {**meta, "u1lib.format": "full_ft"})
    for rel in shards:  # one shard in memory at a time
        with safe_open(snapshot / rel, framework="pt") as handle:
            tensors = {k: merged_tensor(k, handle.get_tensor(k), lora) for k in handle.keys()}
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
        results = {UPSTREAM: verify_upstream(out / UPSTREAM, lora)}
        results[PEFT_WEIGHTS] = compare_triples(read_peft(out / "peft"), lora.triples)
        if full:
            results[FULL] = verify_full(out / FULL, lora)
        if merged:
            results[f"{MERGED}/"] = verify_merged(snapshot, out / MERGED, lora, others)
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
