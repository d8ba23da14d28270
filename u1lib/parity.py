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
from u1lib.model.loading import load_model

TOLERANCE = 1e-4  # max|a - b| <= TOLERANCE * max|b|, per tensor


@dataclass
class Row:
    name: str
    max_abs: float
    rel: float

    @property
    def ok(self) -> bool:
        return self.rel <= TOLERANCE


def compare(expected: dict[str, torch.Tensor], computed: dict[str, torch.Tensor]) -> tuple[list[Row], list[str]]:
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
        rows.append(Row(name, err, err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))))
    return rows, unknown


def run_parity(folder: str | Path) -> tuple[list[Row], list[str]]:
    """Rows for every expected tensor plus the input sanity checks; names that could not be checked."""
    folder = Path(folder)
    run = GoldenRun(folder)
    with torch.no_grad():
        groups = ["und", "gen", "fm", "embed", "lm_head", "vision_und"]
        model = load_model(folder, groups, device="cpu", dtype=torch.float32)
        expected = load_file(folder / "expected.safetensors")
        computed = run.compute(model)
        checks = {k[len("inputs-check.") :]: v for k, v in computed.items() if k.startswith("inputs-check.")}
        rows, unknown = compare(expected, computed)
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
                lora_rows, lora_unknown = compare(lora_expected, run.compute(adapted, tag="lora_merged."))
                rows = [r for r in rows if not r.name.startswith("lora_merged.")] + lora_rows
                unknown = [u for u in unknown if not u.startswith("lora_merged.")] + lora_unknown
    return rows, unknown


def cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m u1lib {verb}", description=__doc__)
    parser.add_argument(
        "--golden", required=True, type=Path, help="golden folder (config.json, inputs/expected.safetensors, meta.json)"
    )
    args = parser.parse_args(argv)
    rows, unknown = run_parity(args.golden)
    width = max(len(r.name) for r in rows) if rows else 10
    print(f"{'tensor':<{width}}  {'max|a-b|':>10}  {'rel':>10}  ok")
    for r in rows:
        print(f"{r.name:<{width}}  {r.max_abs:10.3e}  {r.rel:10.3e}  {'yes' if r.ok else 'NO'}")
    for name in unknown:
        print(f"{name:<{width}}  {'-':>10}  {'-':>10}  NO (no rule to compute this tensor)")
    failed = [r.name for r in rows if not r.ok] + unknown
    worst = max((r.rel for r in rows), default=0.0)
    print(
        f"\n{len(rows)} tensors compared, worst relative error {worst:.2e} (pass <= {TOLERANCE:g}); "
        f"{len(failed)} failed"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli("parity", sys.argv[1:]))
