"""``python -m u1lib parity --golden DIR``: run the engine on a golden folder and compare every tensor.

A golden folder (format: tests/data/golden_u1_tiny_a/README.md) holds upstream's outputs on a small
random model. Everything needed (image size, sampler settings, t values, prompts) is read from the
folder; every expected tensor is either checked or reported as one this code cannot check (a failure).
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from u1lib.golden import GoldenRun
from u1lib.lora.io import bake_lora, read_lora_file, wrap_from_file
from u1lib.model.fp8 import enable_fp8
from u1lib.model.loading import load_model

TOLERANCE = 1e-4  # max|a - b| <= TOLERANCE * max|b|, per tensor
# with --fp8 the error is FP8's own (e4m3 keeps 3 mantissa bits, ~3% per element): the bound says only
# that it stays an FP8 rounding error, not that FP8 is safe to train with (docs/BENCHMARKS.md weighs that)
FP8_TOLERANCE = 0.25


@dataclass
class Row:
    name: str
    max_abs: float
    rel: float
    tolerance: float = TOLERANCE

    @property
    def ok(self) -> bool:
        return self.rel <= self.tolerance


def compare(
    expected: dict[str, torch.Tensor], computed: dict[str, torch.Tensor], tolerance: float = TOLERANCE
) -> tuple[list[Row], list[str]]:
    rows, unknown = [], []
    for name in sorted(expected):
        if name not in computed:
            unknown.append(name)
            continue
        want = expected[name].double()
        got = computed[name].detach().double()
        if got.numel() != want.numel():
            rows.append(Row(f"{name} (shape {tuple(got.shape)} vs {tuple(want.shape)})", float("inf"), float("inf")))
            continue
        err = (got.reshape(want.shape) - want).abs().max().item()
        scale = want.abs().max().item()
        rows.append(Row(name, err, err / scale if scale > 0 else (0.0 if err == 0 else float("inf")), tolerance))
    return rows, unknown


def _forward_model(model, fp8: bool):
    """The model the forward rows run on: ``model`` itself, or a copy with its FP8 base (train.fp8)."""
    if not fp8:
        return model
    converted = copy.deepcopy(model)
    enable_fp8(converted)
    return converted


def run_parity(folder: str | Path, fp8: bool = False) -> tuple[list[Row], list[str]]:
    """Rows for every expected tensor plus the input sanity checks; names that could not be checked.

    ``fp8``: the forward rows run with the generation tower's frozen dense matmuls in FP8, bounded by
    FP8_TOLERANCE; weight merges are bf16/fp32 weight math either way."""
    folder = Path(folder)
    run = GoldenRun(folder)
    with torch.no_grad():
        groups = ["und", "gen", "fm", "embed", "lm_head", "vision_und"]
        model = load_model(folder, groups, device="cpu", dtype=torch.float32)
        expected = load_file(folder / "expected.safetensors")
        bound = FP8_TOLERANCE if fp8 else TOLERANCE  # for the forward rows; inputs and merges keep TOLERANCE
        computed = run.compute(_forward_model(model, fp8))
        checks = {k[len("inputs-check.") :]: v for k, v in computed.items() if k.startswith("inputs-check.")}
        rows, unknown = compare(expected, computed, bound)
        facts = run.given()
        given = {k: facts[k] for k in checks if k in facts}
        rows += [Row(f"(input) {r.name}", r.max_abs, r.rel) for r in compare(given, checks)[0]]
        lora_path = folder / "lora.safetensors"
        if lora_path.exists():
            lora = read_lora_file(lora_path)
            merged_expected_path = folder / "lora_merged_expected.safetensors"
            if merged_expected_path.exists():
                baked = copy.deepcopy(model)
                bake_lora(baked, lora)
                params = dict(baked.named_parameters())
                merged_rows, merged_unknown = compare(load_file(merged_expected_path), params)
                rows += [Row(f"(merge) {r.name}", r.max_abs, r.rel) for r in merged_rows]
                unknown += merged_unknown
            adapted = copy.deepcopy(model)
            wrap_from_file(adapted, lora)  # runtime adapter: unmerged base + LoRA branch
            lora_expected = {k: v for k, v in expected.items() if k.startswith("lora_merged.")}
            if lora_expected:
                computed = run.compute(_forward_model(adapted, fp8), tag="lora_merged.")
                lora_rows, lora_unknown = compare(lora_expected, computed, bound)
                rows = [r for r in rows if not r.name.startswith("lora_merged.")] + lora_rows
                unknown = [u for u in unknown if not u.startswith("lora_merged.")] + lora_unknown
    return rows, unknown


def cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m u1lib {verb}", description=__doc__)
    parser.add_argument(
        "--golden", required=True, type=Path, help="golden folder (config.json, inputs/expected.safetensors, meta.json)"
    )
    parser.add_argument(
        "--fp8",
        action="store_true",
        help="run the generation tower's frozen dense matmuls in FP8 (train.fp8) and report the error it adds",
    )
    args = parser.parse_args(argv)
    rows, unknown = run_parity(args.golden, fp8=args.fp8)
    width = max(len(r.name) for r in rows) if rows else 10
    print(f"{'tensor':<{width}}  {'max|a-b|':>10}  {'rel':>10}  ok")
    for r in rows:
        print(f"{r.name:<{width}}  {r.max_abs:10.3e}  {r.rel:10.3e}  {'yes' if r.ok else 'NO'}")
    for name in unknown:
        print(f"{name:<{width}}  {'-':>10}  {'-':>10}  NO (no rule to compute this tensor)")
    failed = [r.name for r in rows if not r.ok] + unknown
    worst = max((r.rel for r in rows), default=0.0)
    bound = FP8_TOLERANCE if args.fp8 else TOLERANCE  # what the forward rows were held to
    print(
        f"\n{len(rows)} tensors compared, worst relative error {worst:.2e} (pass <= {bound:g}"
        f"{' for FP8 outputs' if args.fp8 else ''}); {len(failed)} failed"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli("parity", sys.argv[1:]))
