"""The A3B engine: sparse MoE blocks against a per-token reference and the golden, grouped compute
against the per-expert loop (outputs and gradients, LoRA on experts, the fallbacks), LoRA on experts
and router, training gradients, the tiny A3B variant."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.conftest import DATA
from u1lib.lora.adapter import LoRALinear, make_trainable
from u1lib.lora.spec import TrainableSurface
from u1lib.model.config import U1Config
from u1lib.model.keys import parameter_shapes
from u1lib.model.loading import load_model
from u1lib.model.mlp import PROJECTIONS, SparseMoE, grouped_mm_supported, record_routing
from u1lib.parity import run_parity
from u1lib.tiny import build_tiny_snapshot
from u1lib.tiny_config import tiny_config_dict

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


@pytest.mark.parametrize("grouped", [True, False])
def test_block_equals_the_per_token_formula(model, grouped):
    block = copy.deepcopy(model.layers[1].mlp_mot_gen)
    block.grouped = grouped
    x = torch.randn(3, 17, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    assert (block.grouped_plan(x) is not None) == grouped  # the golden's float32 sizes suit the kernel
    with torch.no_grad():
        got, want = block(x), reference_moe(block, x)
    assert (got - want).abs().max() <= 1e-6 * want.abs().max()
    und = model.layers[0].mlp
    assert len(und.experts) == model.config.num_experts and len(block.experts) == model.config.gen_num_experts
    assert und.top_k == model.config.num_experts_per_tok


def test_the_loop_runs_only_experts_with_tokens(model):
    block = copy.deepcopy(model.layers[0].mlp_mot_gen)
    block.grouped = False
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


@pytest.mark.parametrize("rank", [2, 4])  # float32 rank 2 is no 16-byte stride: the loop; rank 4 goes grouped
def test_gradients_reach_only_the_chosen_experts(model, rank):
    trainable = copy.deepcopy(model)
    surface = TrainableSurface.resolve(f"layers.0.mlp_mot_gen.experts.*.down_proj=r{rank}", [], trainable.config)
    make_trainable(trainable, surface)
    block = trainable.layers[0].mlp_mot_gen
    for adapter in (e.down_proj for e in block.experts):
        torch.nn.init.normal_(adapter.lora_up.weight)
    x = torch.randn(1, 4, trainable.config.hidden_size, generator=torch.Generator().manual_seed(1))
    assert (block.grouped_plan(x[0]) is not None) == (rank == 4)
    block(x).pow(2).sum().backward()
    chosen = set(block.route(x[0])[1].flatten().tolist())
    grads = [expert.down_proj.lora_down.weight.grad for expert in block.experts]
    touched = {e for e, grad in enumerate(grads) if grad is not None and grad.abs().sum() > 0}
    assert touched == chosen and len(chosen) < len(block.experts)
    # the loop leaves an expert without tokens without a gradient, the grouped path gives it zeros
    assert all((grad is None) == (rank == 2) for e, grad in enumerate(grads) if e not in chosen)
    assert block.gate.weight.grad is None  # the router is frozen


# grouped compute against the per-expert loop ---------------------------------------------------------
HIDDEN, EXPERTS, TOP_K, WIDTH, IDLE = 32, 6, 2, 16, 5  # expert IDLE receives no token


def moe_block(lora_rank: int | None = 4, seed: int = 0) -> SparseMoE:
    """A block whose router never picks expert IDLE for positive inputs, every parameter trainable,
    LoRA (lora_up non-zero) on every expert projection unless ``lora_rank`` is None."""
    torch.manual_seed(seed)
    block = SparseMoE(HIDDEN, EXPERTS, TOP_K, WIDTH, norm_topk_prob=True)
    with torch.no_grad():
        block.gate.weight[IDLE] = -1.0
    for expert in block.experts:
        for name in PROJECTIONS if lora_rank else ():
            adapter = LoRALinear(getattr(expert, name), lora_rank, alpha=2.0 * lora_rank)
            torch.nn.init.normal_(adapter.lora_up.weight, std=0.1)
            setattr(expert, name, adapter)
    block.requires_grad_(True)
    return block


def positive_tokens(count: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(count, HIDDEN, generator=torch.Generator().manual_seed(seed)).abs()


def output_and_grads(block: SparseMoE, x: torch.Tensor, grouped: bool, dtype=torch.float32):
    """The block's output and the gradients of x and of every parameter (None -> zeros) for one path."""
    block = copy.deepcopy(block).to(dtype)
    block.grouped = grouped
    x = x.to(dtype).requires_grad_(True)
    out = block(x)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    (out * probe).sum().backward()  # not out.sum(): the grouped kernel refuses a stride-0 gradient
    grads = {name: torch.zeros_like(p) if p.grad is None else p.grad for name, p in block.named_parameters()}
    return out, {"x": x.grad, **grads}, block


@pytest.mark.parametrize("lora_rank", [4, None])
def test_grouped_equals_the_loop_in_float32(lora_rank):
    block, x = moe_block(lora_rank), positive_tokens(13)
    counts = torch.bincount(block.route(x)[1].flatten(), minlength=EXPERTS)
    assert counts[IDLE] == 0 and (counts > 0).sum() == EXPERTS - 1
    out, grads, grouped = output_and_grads(block, x, grouped=True)
    ref_out, ref_grads, loop = output_and_grads(block, x, grouped=False)
    assert grouped.grouped_plan(x) is not None and loop.grouped_plan(x) is None
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    idle = [name for name in grads if f"experts.{IDLE}." in name]
    assert idle and all(grads[name].abs().max() == 0 for name in idle)
    assert grads["gate.weight"].abs().max() > 0 and grads["x"].abs().max() > 0
    if lora_rank:
        assert grads["experts.0.gate_proj.lora_down.weight"].abs().max() > 0


def test_grouped_equals_the_loop_in_bfloat16():
    block, x = moe_block(8), positive_tokens(40)  # bfloat16 needs 16-byte strides: rank 8
    out, grads, grouped = output_and_grads(block, x, grouped=True, dtype=torch.bfloat16)
    ref_out, ref_grads, _ = output_and_grads(block, x, grouped=False, dtype=torch.bfloat16)
    assert grouped.grouped_plan(x.bfloat16()) is not None and out.dtype == torch.bfloat16
    for name, (got, want) in {"out": (out, ref_out), **{n: (g, ref_grads[n]) for n, g in grads.items()}}.items():
        scale = want.float().abs().max().clamp_min(1e-3)
        assert (got.float() - want.float()).abs().max() <= 2e-2 * scale, name


def test_grouped_under_autocast_computes_in_bfloat16():
    block, x = moe_block(8), positive_tokens(11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block.grouped_plan(x) is not None  # float32 input, bfloat16 compute
        out, grads, _ = output_and_grads(block, x, grouped=True)
        ref_out, ref_grads, _ = output_and_grads(block, x, grouped=False)
    assert out.dtype == ref_out.dtype == torch.float32
    for name, (got, want) in {"out": (out, ref_out), **{n: (g, ref_grads[n]) for n, g in grads.items()}}.items():
        assert got.dtype == want.dtype, name
        assert (got - want).abs().max() <= 2e-2 * want.abs().max().clamp_min(1e-3), name


def test_zero_tokens_give_an_empty_output_on_both_paths():
    block = moe_block()
    for grouped in (True, False):
        block.grouped = grouped
        out = block(torch.empty(2, 0, HIDDEN))
        assert out.shape == (2, 0, HIDDEN) and out.dtype == torch.float32


def count_grouped_mm(monkeypatch) -> list[int]:
    calls, kernel = [], torch._grouped_mm
    monkeypatch.setattr(torch, "_grouped_mm", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    return calls


def test_lora_on_every_expert_goes_grouped(monkeypatch):
    block, x = moe_block(4), positive_tokens(9)
    ran = []
    for expert in block.experts:
        expert.register_forward_hook(lambda *args: ran.append(1))
    plan = block.grouped_plan(x)
    assert [lora for _, lora in plan] == [True, True, True]
    calls = count_grouped_mm(monkeypatch)
    with torch.no_grad():
        block(x)
    assert len(calls) == 3 * 3 and not ran  # W, lora_down, lora_up per projection; no expert module called


def test_a_mixed_surface_falls_back_to_the_loop(monkeypatch):
    block, x = moe_block(None), positive_tokens(9)
    for expert in block.experts[:3]:  # LoRA on half the experts' down_proj
        expert.down_proj = LoRALinear(expert.down_proj, 4, 4.0)
    assert block.grouped_plan(x) is None
    calls = count_grouped_mm(monkeypatch)
    with torch.no_grad():
        out = block(x)
    assert not calls
    torch.testing.assert_close(out, reference_moe(block, x), rtol=1e-5, atol=1e-6)
    block.experts[3].down_proj = LoRALinear(block.experts[3].down_proj, 8, 8.0)  # all adapted, ranks differ
    for expert in block.experts[4:]:
        expert.down_proj = LoRALinear(expert.down_proj, 4, 4.0)
    assert block.grouped_plan(x) is None


def test_merged_or_disabled_adapters_go_grouped_without_their_delta(monkeypatch):
    block, x = moe_block(4), positive_tokens(9)
    with torch.no_grad():
        want = reference_moe(block, x)
        for expert in block.experts:
            expert.gate_proj.merge()
            expert.up_proj.enabled = False
            expert.up_proj.weight.add_(expert.up_proj.delta())  # the merge by hand, the adapter switched off
        assert [lora for _, lora in block.grouped_plan(x)] == [False, False, True]
        calls = count_grouped_mm(monkeypatch)
        got = block(x)
    assert len(calls) == 1 + 1 + 3
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_grouped_mm_capability():
    assert grouped_mm_supported(torch.device("cpu"), torch.float32)
    assert grouped_mm_supported(torch.device("cpu"), torch.bfloat16)
    assert not grouped_mm_supported(torch.device("cpu"), torch.float16)
    assert not grouped_mm_supported(torch.device("meta"), torch.bfloat16)


def test_bf16_routes_in_float32_and_returns_bf16(model):
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    ids = torch.arange(6)[None]
    with record_routing(bf16) as routing, torch.no_grad():
        bf16.prefix(ids, final_norm=True)  # the whole tower (a cache-only prefix stops at the last K/V)
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
