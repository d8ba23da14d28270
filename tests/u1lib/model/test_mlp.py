"""The A3B engine: sparse MoE blocks against a per-token reference and the golden, grouped compute,
LoRA on experts and router, training gradients, the tiny A3B variant."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.conftest import DATA
from u1lib.lora.adapter import make_trainable
from u1lib.lora.spec import TrainableSurface
from u1lib.model.config import U1Config
from u1lib.model.keys import parameter_shapes
from u1lib.model.loading import load_model
from u1lib.model.mlp import SparseMoE, record_routing
from u1lib.parity import run_parity
from u1lib.tiny import build_tiny_snapshot, tiny_config_dict

GOLDEN = DATA / "golden_a3b_tiny_a"
GEN_MOE = "language_model.model.layers.{}.mlp_mot_gen"


@pytest.fixture(scope="module")
def model():
    return load_model(GOLDEN, ["und", "gen", "fm", "embed"])


def reference_moe(block: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token, from the formula: softmax over all experts in float32, top-k, renormalise,
    weighted sum of the chosen SwiGLU experts (no sorting, no grouping)."""
    out = []
    for row in x.reshape(-1, x.shape[-1]):
        probs = torch.softmax((row @ block.gate.weight.T).float(), dim=-1)
        top = probs.topk(block.top_k)
        weights = top.values / top.values.sum() if block.norm_topk_prob else top.values
        out.append(sum(w.to(x.dtype) * block.experts[int(e)](row) for w, e in zip(weights, top.indices)))
    return torch.stack(out).view_as(x)


def test_grouped_block_equals_the_per_token_formula(model):
    block = model.layers[1].mlp_mot_gen
    x = torch.randn(3, 17, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = block(x), reference_moe(block, x)
    assert (got - want).abs().max() <= 1e-6 * want.abs().max()
    und = model.layers[0].mlp
    assert len(und.experts) == model.config.num_experts and len(block.experts) == model.config.gen_num_experts
    assert und.top_k == model.config.num_experts_per_tok


def test_only_experts_with_tokens_run(model):
    block = copy.deepcopy(model.layers[0].mlp_mot_gen)
    calls = []
    for e, expert in enumerate(block.experts):
        expert.register_forward_hook(lambda mod, args, out, e=e: calls.append((e, args[0].shape[0])))
    x = torch.randn(1, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        block(x)
        chosen = block.route(x[0])[1]
    counts = torch.bincount(chosen.flatten(), minlength=len(block.experts))
    assert calls == [(e, int(n)) for e, n in enumerate(counts) if n]  # in index order, each on its own tokens
    assert len(calls) < len(block.experts)


def test_gradients_reach_only_the_chosen_experts(model):
    trainable = copy.deepcopy(model)
    surface = TrainableSurface.resolve("layers.0.mlp_mot_gen.experts.*.down_proj=r2", [], trainable.config)
    make_trainable(trainable, surface)
    block = trainable.layers[0].mlp_mot_gen
    for adapter in (e.down_proj for e in block.experts):
        torch.nn.init.normal_(adapter.lora_up.weight)
    x = torch.randn(1, 4, trainable.config.hidden_size, generator=torch.Generator().manual_seed(1))
    block(x).pow(2).sum().backward()
    chosen = set(block.route(x[0])[1].flatten().tolist())
    touched = {e for e, expert in enumerate(block.experts) if expert.down_proj.lora_down.weight.grad is not None}
    assert touched == chosen and len(chosen) < len(block.experts)
    assert block.gate.weight.grad is None  # the router is frozen


def test_bf16_routes_in_float32_and_returns_bf16(model):
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    ids = torch.arange(6)[None]
    with record_routing(bf16) as routing, torch.no_grad():
        bf16.prefix(ids)
    layers = bf16.config.num_hidden_layers
    assert {k.rsplit(".", 1)[0] for k in routing} == {f"layer{i}.mlp" for i in range(layers)}  # und tower only
    weights = routing[f"layer{layers - 1}.mlp.topk_weight"]
    assert weights.dtype == torch.float32 and routing[f"layer{layers - 1}.mlp.out"].dtype == torch.bfloat16
    torch.testing.assert_close(weights.sum(-1), torch.ones(6))
    assert all(block.taps is None for block in bf16.modules() if isinstance(block, SparseMoE))


def test_perturbed_router_fails_parity_downstream_only(tmp_path):
    folder = tmp_path / "golden"
    shutil.copytree(GOLDEN, folder)
    weights = load_file(folder / "model.safetensors")
    key = GEN_MOE.format(0) + ".gate.weight"
    weights[key] = weights[key].flip(0)  # experts swap places in the router
    save_file(weights, str(folder / "model.safetensors"))
    failed = {r.name for r in run_parity(folder)[0] if not r.ok}
    assert {"gen0.cond.layer0.mlp_mot_gen.topk_idx", "gen0.cond.layer0.mlp_mot_gen.out", "gen0.cond.x_pred"} <= failed
    assert not {"gen0.cond.layer0.mlp_mot_gen.in", "prefix.cond.layer0.mlp.topk_idx"} & failed


def test_unnormalised_top_k_fails_parity(tmp_path):
    folder = tmp_path / "golden"
    shutil.copytree(GOLDEN, folder)
    raw = json.loads((folder / "config.json").read_text())
    raw["llm_config"]["norm_topk_prob"] = False
    (folder / "config.json").write_text(json.dumps(raw))
    failed = {r.name for r in run_parity(folder)[0] if not r.ok}
    assert {"prefix.cond.layer0.mlp.topk_weight", "gen0.cond.layer0.mlp_mot_gen.out"} <= failed


def test_tiny_a3b_variant(tmp_path):
    snapshot = build_tiny_snapshot(tmp_path / "a3b", seed=0, variant="a3b")
    cfg = U1Config.from_file(snapshot)
    assert cfg.num_attention_heads * cfg.head_dim != cfg.hidden_size
    assert all(cfg.sparse_mlp(i, t) for i in range(cfg.num_hidden_layers) for t in ("und", "gen"))
    with safe_open(snapshot / "model.safetensors", "pt") as handle:
        assert {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()} == parameter_shapes(cfg)  # noqa: SIM118
    golden = json.loads((GOLDEN / "config.json").read_text())
    ours = tiny_config_dict(vocab_size=1024, variant="a3b")
    assert set(ours) == set(golden) and set(ours["llm_config"]) == set(golden["llm_config"])
    model = load_model(snapshot, ["und", "gen", "fm", "embed"])
    images = torch.randn(2, 3, 2 * cfg.token_size, 3 * cfg.token_size)
    with torch.no_grad():
        x_pred, _ = model.denoise(images, torch.tensor([0.2, 0.9]), model.prefix(torch.arange(9)[None]).repeat(2), 1.0)
    assert x_pred.shape == (2, 6, cfg.fm_out_dim) and torch.isfinite(x_pred).all()
