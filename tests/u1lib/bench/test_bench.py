"""Benchmark plumbing on CPU: FLOP formulas against hand counts, the 8B trainable surface, a smoke run."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import CONFIG_8B
from u1lib.bench import cli
from u1lib.bench.flops import gen_forward_flops, lora_flops_per_token, prefix_flops, train_flops
from u1lib.bench.measure import Measure
from u1lib.lora.adapter import make_trainable
from u1lib.lora.spec import TrainableSurface
from u1lib.model.config import U1Config
from u1lib.model.heads import PixelHead
from u1lib.model.loading import meta_model


def test_8b_flops_by_hand():
    cfg = U1Config.from_file(CONFIG_8B)
    f = gen_forward_flops(cfg, 4096, [300], "default")
    per_layer = 4096 * 4096 * 2 + 1024 * 4096 * 2 + 3 * 4096 * 12288  # q, o, k, v, gate/up/down
    assert f["linear"] == 2 * per_layer * 42 * 4096
    assert f["attention"] == 4 * 4096 * 4396 * 128 * 32 * 42  # QK^T + PV over 300 + 4096 keys
    assert f["lora"] == 2 * 64 * (8192 + 5120 + 5120 + 8192 + 3 * 16384) * 42 * 4096
    step = train_flops(cfg, 4096, [300], "default", recomputed=42)
    assert step["executed"] - step["useful"] == pytest.approx(f["linear"] + f["attention"] + f["lora"], rel=1e-9)
    assert 170e12 < step["useful"] < 185e12  # ~176 TFLOP: the 2048^2 floor is ~0.22 s at 800 TFLOP/s
    kv = 2 * 1024 * 4096  # the last layer stops at its K and V projections
    assert prefix_flops(cfg, 300) == 2 * (per_layer * 41 + kv) * 300 + 2 * 300 * 300 * 128 * 32 * 41


TINY = dict(hidden_size=16, intermediate_size=48, num_attention_heads=2, num_key_value_heads=1, head_dim=8)


def test_moe_flops_by_hand():
    """Und: 4 experts, top-2, width 6, layer 1 dense; gen: 6 experts, top-3, width 10, every layer."""
    cfg = U1Config(
        **TINY,
        num_hidden_layers=3,
        vocab_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=6,
        gen_num_experts=6,
        gen_num_experts_per_tok=3,
        gen_moe_intermediate_size=10,
        mlp_only_layers=(1,),
        vision_hidden_size=8,
        patch_size=2,
        merge_size=2,
        fm_head_hidden_size=12,
    )
    attn = 16 * 8 * (2 * 2 + 2 * 1)  # q, o: 16 x 16; k, v: 16 x 8
    gen_mlp = 16 * 6 + 3 * 3 * 16 * 10  # router + 3 of the 6 experts
    und_sparse, und_dense = 16 * 4 + 2 * 3 * 16 * 6, 3 * 16 * 48
    f = gen_forward_flops(cfg, 10, [5, 7], "gen_moe_mlp=r2;gen_moe_router=r2")
    assert f["linear"] == 2 * 3 * (attn + gen_mlp) * 10 * 2 == 276_480
    assert f["attention"] == 4 * 10 * (15 + 17) * 8 * 2 * 3
    per_expert = 3 * 2 * 2 * (16 + 10)  # gate, up (16 -> 10), down (10 -> 16) at rank 2
    router = 2 * 2 * (16 + 6)
    assert f["lora"] == 3 * (3 * per_expert + router) * 10 * 2 == 61_440  # 3 experts per token
    embed = 2 * 4 * (3 * 2 * 2) * 8 + 2 * (8 * 4) * 16
    assert f["fm"] == (embed + 2 * (16 * 12 + 12 * 48)) * 10 * 2 == 66_560
    assert lora_flops_per_token(cfg, "layers.0.mlp_mot_gen.experts.1.down_proj=r2") == 2 * 2 * 26 * 3 // 6 == 52
    und = 2 * attn + und_sparse + und_dense + 2 * 16 * 8  # layer 2 (the last) stops at its k and v
    assert prefix_flops(cfg, 9) == 2 * und * 9 + 4 * 9 * 9 * 8 * 2 * 2 // 2 == 90_432


def test_pixel_head_flops_by_hand():
    """U1.5's head at hidden 16, width 8, 8 px tokens: conv1 4 -> 8 channels, conv2 2 -> 12, both 3x3."""
    cfg = U1Config(
        **TINY,
        num_hidden_layers=1,
        vocab_size=32,
        vision_hidden_size=8,
        patch_size=4,
        merge_size=2,
        use_pixel_head=True,
        pixel_head_width=8,
    )
    conv1 = 2 * 2 * (2 * 9 * 4 * 8)  # 2 x 2 outputs per token, 2 FLOP x 9 taps x 4 in x 8 out channels
    conv2 = 4 * 4 * (2 * 9 * 2 * 12)  # 4 x 4 outputs per token, 2 x 9 taps x 2 in x 12 out channels
    embed = 2 * 4 * (3 * 4 * 4) * 8 + 2 * (8 * 4) * 16
    assert conv1 + conv2 == 9216
    assert gen_forward_flops(cfg, 6, [3])["fm"] == (embed + conv1 + conv2) * 6 == 79_872
    with FlopCounterMode(display=False) as counter:  # the module itself on a 2 x 3 token grid
        PixelHead(cfg)(torch.randn(1, 6, 16), 2, 3)
    assert counter.get_total_flops() == (conv1 + conv2) * 6


def test_default_surface_is_the_peers_286m():
    """The surface the trainer and the bench both apply (lora.adapter.make_trainable)."""
    cfg = U1Config.from_file(CONFIG_8B)
    model = meta_model(cfg)
    surface = TrainableSurface.resolve("default", (), cfg)
    names = make_trainable(model, surface)
    params = dict(model.named_parameters())
    trainable = [params[n] for n in names]
    assert sum(p.numel() for p in trainable) == 286_289_920 == surface.counts()["total"]
    assert sorted(n for n, p in params.items() if p.requires_grad) == names  # exactly the surface trains
    assert all(p.dtype == torch.float32 for p in trainable)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and "layers.0." in n and "_mot_gen" in n]
    assert frozen and "language_model.model.layers.0.self_attn.q_proj_mot_gen.weight" in frozen


def test_measure_rejects_bad_settings():
    with pytest.raises(ValueError, match="measure 'fly'"):
        Measure("fly")
    with pytest.raises(ValueError, match="checkpointing"):
        Measure("train", checkpointing="some")


def test_cli_smoke_on_cpu(golden_dir, tmp_path, capsys):
    plan = [
        {
            "measure": "train",
            "size": 16,
            "batch": 2,
            "prefix": 6,
            "prefix_spread": 2,
            "lora": "attn=r4a4",
            "warmup": 1,
            "iters": 2,
        },
        {"measure": "train", "size": 16, "prefix": 6, "lora": "attn=r4a4", "swap_layers": 2, "warmup": 1, "iters": 1},
        {"measure": "sample", "size": 16, "prefix": 6, "steps": 2, "iters": 1},
        {"measure": "prefix", "batch": 3, "prefix": 7, "warmup": 1, "iters": 2},
        {"measure": "train", "size": 18, "iters": 1},
    ]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = tmp_path / "bench.json"
    code = cli(
        "bench",
        ["--plan", str(tmp_path / "plan.json"), "--config", str(golden_dir), "--device", "cpu", "--out", str(out)],
    )
    record = json.loads(out.read_text())
    assert code == 1  # the last measure fails (18 px is no multiple of the 4 px token) and says so
    results = record["results"]
    assert "multiple of the token size" in results[-1]["error"]
    train, swapped, sample, prefix = results[:4]
    assert train["prefix_lengths"] == [4, 6] and train["s_per_step"] > 0 and train["images_per_s"] > 0
    assert "error" not in swapped and swapped["settings"]["swap_layers"] == 2
    assert sample["s_per_denoise_step"] > 0 and prefix["captions_per_s"] > 0
    assert record["matmul_tflops"] > 0 and "host_rss_peak_gib" in train
    assert "ERROR" in capsys.readouterr().out
