"""The engine against upstream's own outputs (golden folder), and that the check can fail."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import DATA
from u1lib.parity import FP8_TOLERANCE, TOLERANCE, run_parity

GOLDENS = sorted(DATA.glob("golden_*"))


def test_the_golden_copies_are_all_here():
    assert {p.name for p in GOLDENS} >= {
        "golden_u1_tiny_a",
        "golden_u15_tiny_a",
        "golden_u1_think_a",
        "golden_a3b_tiny_a",
    }


@pytest.mark.parametrize("golden", GOLDENS, ids=lambda p: p.name)
def test_every_golden_tensor_matches(golden):
    rows, unknown = run_parity(golden)
    assert unknown == []
    expected_names = set(load_file(golden / "expected.safetensors"))
    checked = {r.name for r in rows}
    assert expected_names <= checked
    bad = [(r.name, r.rel) for r in rows if not r.ok]
    assert bad == []
    # an implementation from the facts alone reached ~2e-6; we hold ourselves to 1e-5
    assert max(r.rel for r in rows) < 1e-5


def test_fp8_parity_reports_fp8s_own_error(golden_dir):
    """--fp8 runs the forward rows on the FP8 base: errors at FP8's scale, weight merges still exact."""
    rows, unknown = run_parity(golden_dir, fp8=True)
    assert unknown == []
    forward = [r for r in rows if not r.name.startswith("(")]
    assert all(r.tolerance == FP8_TOLERANCE and r.ok for r in forward)
    assert max(r.rel for r in forward) > 100 * TOLERANCE  # FP8 really ran
    prefix = [r for r in forward if r.name.startswith("prefix.")]
    assert prefix and max(r.rel for r in prefix) < 1e-5  # the understanding tower stays full precision
    assert all(r.max_abs == 0 for r in rows if r.name.startswith("(merge)"))


def test_perturbed_weight_fails_parity(golden_dir, tmp_path):
    folder = tmp_path / "golden"
    shutil.copytree(golden_dir, folder)
    weights = load_file(folder / "model.safetensors")
    key = "language_model.model.layers.1.self_attn.k_norm_hw_mot_gen.weight"
    weights[key] = weights[key] * 1.01
    save_file(weights, str(folder / "model.safetensors"))
    rows, _ = run_parity(folder)
    failed = {r.name for r in rows if not r.ok}
    assert "gen0.cond.x_pred" in failed and "sample.final_image" in failed
    assert "prefix.cond.layer1.k" not in failed  # the understanding tower is untouched


def test_unknown_expected_tensor_is_a_failure(golden_dir, tmp_path):
    folder = tmp_path / "golden"
    shutil.copytree(golden_dir, folder)
    expected = load_file(folder / "expected.safetensors")
    expected["gen0.something_new"] = torch.zeros(3)
    save_file(expected, str(folder / "expected.safetensors"))
    _, unknown = run_parity(folder)
    assert unknown == ["gen0.something_new"]


def test_parity_cli_exit_code(golden_dir, capsys):
    from u1lib.cli import main

    assert main(["parity", "--golden", str(golden_dir)]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and f"{TOLERANCE:g}" in out
