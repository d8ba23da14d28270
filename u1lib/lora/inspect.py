"""``python -m u1lib inspect``: what a LoRA spec would train, or what a LoRA file holds.

Spec mode reads only ``config.json`` (counts come from parameter shapes, no weights are read), so the
trainable surface of the 8B model can be checked on a laptop before a GPU is booked. File mode reads
one adapter file and needs no model at all.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

from u1lib.lora.io import read_lora_file
from u1lib.lora.spec import (
    ALIASES,
    PRESETS,
    LoraTarget,
    SpecError,
    TrainableSurface,
    expand_preset,
    resolve_full_ft,
    resolve_spec,
)
from u1lib.model.config import U1Config

ALL_PRESETS = "all-presets"
_INDEX = re.compile(r"\.\d+(?=\.|$)")


def family_of(module: str) -> str:
    """The alias that names a module (``attn``, ``mlp``, ...), else its path with indexes as ``*``."""
    for alias, pattern in ALIASES.items():
        if alias != "all" and re.fullmatch(pattern, module):
            return alias
    return _INDEX.sub(".*", module)


def target_rows(targets: dict[str, LoraTarget]) -> list[dict]:
    """One row per module family: how many modules, which ranks/alphas, how many parameters."""
    families: dict[str, list[LoraTarget]] = {}
    for target in targets.values():
        families.setdefault(family_of(target.module), []).append(target)
    return [
        {
            "family": family,
            "modules": len(group),
            "rank": _distinct(t.rank for t in group),
            "alpha": _distinct(t.alpha for t in group),
            "params": sum(t.num_params for t in group),
        }
        for family, group in sorted(families.items())
    ]


def full_ft_rows(shapes: dict[str, tuple[int, ...]]) -> list[dict]:
    """One row per module family (weights and biases together, indexes folded into ``*``)."""
    families: dict[str, list[tuple[int, ...]]] = {}
    for name, shape in shapes.items():
        families.setdefault(_INDEX.sub(".*", name.rpartition(".")[0]), []).append(shape)
    return [
        {"modules": family, "tensors": len(group), "params": sum(math.prod(s) for s in group)}
        for family, group in sorted(families.items())
    ]


def module_rows(targets: dict[str, LoraTarget]) -> list[dict]:
    return [
        {"module": t.module, "rank": t.rank, "alpha": f"{t.alpha:g}", "params": t.num_params} for t in targets.values()
    ]


def preset_rows(cfg: U1Config) -> list[dict]:
    """Every preset with its exact trainable counts on this model; one that does not fit it says why.

    (U1.5 has no linear head for ``fm_head=...``; A3B has no dense MLP for ``mlp=...``.)
    """
    rows = []
    for name, (spec, full_ft) in PRESETS.items():
        try:
            counts, note = TrainableSurface.resolve(name, (), cfg).counts(), ""
        except SpecError as err:
            counts, note = dict.fromkeys(("lora_modules", "lora_params", "full_ft_params", "total"), "-"), f"n/a: {err}"
        rows.append({"preset": name, "lora spec": spec, "full-FT regexes": len(full_ft), **counts, "note": note})
    return rows


def _distinct(values) -> str:
    return ",".join(f"{v:g}" for v in sorted(set(values)))


def _table(rows: list[dict]) -> str:
    """Rows of equal keys as aligned text; integers right-aligned with thousands separators."""
    if not rows:
        return "  (none)"
    cells = [[f"{v:,}" if isinstance(v, int) else str(v) for v in row.values()] for row in rows]
    header = list(rows[0])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    numeric = [any(isinstance(row[h], int) for row in rows) for h in header]

    def line(values: list[str]) -> str:
        return "  " + "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(header)] + [line(c) for c in cells])


def _show_spec(model: Path, spec: str, full_ft: list[str], listing: bool) -> None:
    cfg = U1Config.from_file(model)
    if spec == ALL_PRESETS:
        print(f"presets on {model}:")
        print(_table(preset_rows(cfg)))
        return
    clauses, preset_ft = expand_preset(spec)
    targets = resolve_spec(spec, cfg)
    ft_shapes = resolve_full_ft(tuple(preset_ft) + tuple(full_ft), cfg)
    counts = TrainableSurface.resolve(spec, full_ft, cfg).counts()
    print(f"model {model}; spec {spec!r} -> LoRA {clauses!r}; full-FT regexes {list(preset_ft) + full_ft}")
    print("LoRA targets:")
    print(_table(target_rows(targets)))
    print("fully fine-tuned:")
    print(_table(full_ft_rows(ft_shapes)))
    print("trainable counts:")
    print(_table([counts]))
    if listing:
        print("every LoRA target:")
        print(_table(module_rows(targets)))
        print("every fully fine-tuned tensor:")
        print(_table([{"tensor": n, "shape": str(list(s)), "params": math.prod(s)} for n, s in ft_shapes.items()]))


def _show_file(path: Path, listing: bool) -> None:
    lora = read_lora_file(path)
    targets = {
        m: LoraTarget(m, down.shape[1], up.shape[0], rank=down.shape[0], alpha=alpha)
        for m, (down, up, alpha) in lora.triples.items()
    }
    lora_params = sum(t.num_params for t in targets.values())
    full_params = sum(t.numel() for t in lora.full.values())
    counts = {"lora_modules": len(targets), "lora_params": lora_params, "full_ft_params": full_params}
    print(
        f"{path}: {path.stat().st_size:,} bytes, {len(targets)} LoRA modules, {len(lora.full)} fully fine-tuned tensors"
    )
    print("metadata:")
    for key, value in sorted(lora.metadata.items()):
        print(f"  {key} = {value if len(value) <= 120 else value[:117] + '...'}")
    print("LoRA modules:")
    print(_table(target_rows(targets)))
    print("fully fine-tuned:")
    print(_table(full_ft_rows({n: tuple(t.shape) for n, t in lora.full.items()})))
    print("trainable counts:")
    print(_table([{**counts, "total": lora_params + full_params}]))
    if listing:
        print("every LoRA module:")
        print(_table(module_rows(targets)))
        print("every fully fine-tuned tensor:")
        rows = [
            {
                "tensor": n,
                "shape": str(list(t.shape)),
                "dtype": str(t.dtype).removeprefix("torch."),
                "params": t.numel(),
            }
            for n, t in lora.full.items()
        ]
        print(_table(rows))


def cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m u1lib {verb}", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a snapshot folder or its config.json (no weights are read)")
    source.add_argument("--file", type=Path, help="a LoRA .safetensors file to summarise (no model needed)")
    parser.add_argument(
        "--spec",
        help=f"a preset ({', '.join(PRESETS)}), clauses such as 'attn=r64a64;mlp=r64a64', or {ALL_PRESETS} "
        "(default: default)",
    )
    parser.add_argument(
        "--full-ft", action="append", default=[], metavar="REGEX", help="extra fully fine-tuned parameters (repeatable)"
    )
    parser.add_argument("--list", action="store_true", help="also list every target module and fully fine-tuned tensor")
    args = parser.parse_args(argv)
    if args.file and (args.spec or args.full_ft):
        parser.error("--spec and --full-ft describe a model's targets; with --file the file itself says what it holds")
    try:
        if args.file:
            _show_file(args.file, args.list)
        else:
            _show_spec(args.model, (args.spec or "default").strip(), args.full_ft, args.list)
    except (ValueError, FileNotFoundError) as err:  # SpecError, ConfigError and malformed LoRA files
        print(f"{verb}: {err}", file=sys.stderr)
        return 1
    return 0
