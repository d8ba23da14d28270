"""The sampling stage: golden trajectory end to end, seeds, adapters, and the upstream-LoRA skip list."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from u1lib.io import save_safetensors
from u1lib.model.loading import load_model
from u1lib.sample import SampleSettings, Sampler, initial_noise, sample_variant
from u1lib.data.prompts import PromptSpec
from u1lib.train.loop import Trainer
from u1lib.train.settings import TrainSettings

GOLDEN_SETTINGS = {"seeds": [42], "steps": 4, "cfg_scale": 4.0, "timestep_shift": 3.0, "width": 64, "height": 64}


def test_sampler_stage_reproduces_the_golden_image(golden_dir):
    inputs = load_file(golden_dir / "inputs.safetensors")
    expected = load_file(golden_dir / "expected.safetensors")
    assert torch.equal(initial_noise(42, 64, 64, 2.0), inputs["sample.init_noise"])
    sampler = Sampler(golden_dir, SampleSettings.from_dict(GOLDEN_SETTINGS), PromptSpec())
    # the prompt goes through the template and tokenizer: same ids as upstream's
    assert sampler.encoder.token_ids("a red fox sitting in the snow") == inputs["prefix.cond.input_ids"][0].tolist()
    (image,) = sampler.images([({"id": "fox", "prompt": "a red fox sitting in the snow"}, 42)])
    want = expected["sample.final_image"][0]
    assert (image - want).abs().max() <= 1e-4 * want.abs().max()


def test_seeds_reproduce_and_differ(tiny_workspace, tmp_path):
    prompts = [{"id": "p", "prompt": "a rocket"}]
    settings = {"seeds": [0, 1], "steps": 3, "width": 64, "height": 48}
    common = dict(snapshot_dir=tiny_workspace["snapshot_dir"], adapter=None, prompts=prompts, settings=settings)
    first = sample_variant(out_dir=tmp_path / "a", variant="base", **common)
    sample_variant(out_dir=tmp_path / "b", variant="base", **common)
    files = [r["file"] for r in first["images"]]
    assert files == ["p_seed0.png", "p_seed1.png"]
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / files[0]).read_bytes() != (tmp_path / "a" / files[1]).read_bytes()


def _upstream_lora(snapshot_dir, path):
    """A random upstream-format LoRA on every generation attention projection and fm_head.0."""
    model = load_model(snapshot_dir, ["gen", "fm"])
    g = torch.Generator().manual_seed(3)
    tensors = {}
    for name, param in model.named_parameters():
        attention = "self_attn" in name and name.endswith("_proj_mot_gen.weight")
        if attention or name == "fm_modules.fm_head.0.weight":
            module = name[: -len(".weight")]
            out_f, in_f = param.shape
            tensors[f"{module}.lora_down.weight"] = torch.randn(2, in_f, generator=g)
            tensors[f"{module}.lora_up.weight"] = torch.randn(out_f, 2, generator=g) * 0.1
            tensors[f"{module}.alpha"] = torch.tensor(2.0)
    save_safetensors(path, tensors)
    return model


def test_upstream_lora_skip_list_is_the_same_in_training_and_sampling(tiny_workspace, tmp_path):
    ws = tiny_workspace
    base = _upstream_lora(ws["snapshot_dir"], tmp_path / "distill.safetensors")
    stack = {"path": str(tmp_path / "distill.safetensors"), "skip": ["fm_modules.fm_head"]}
    trainer = Trainer(
        TrainSettings.from_dict({"steps": 1, "lora": "mlp=r2a2", "upstream_lora": stack}),
        snapshot_dir=ws["snapshot_dir"], manifest_path=ws["manifest_path"], train_parquet=ws["train_parquet"],
        val_parquet=ws["val_parquet"], cache_dir=ws["cache_dir"], run_dir=tmp_path / "run",
    )  # fmt: skip
    sampler = Sampler(ws["snapshot_dir"], SampleSettings.from_dict({"upstream_lora": stack}), PromptSpec())
    trained = dict(trainer.model.named_parameters())
    sampled = dict(sampler.model.named_parameters())
    original = dict(base.named_parameters())
    q = "language_model.model.layers.0.self_attn.q_proj_mot_gen.weight"
    head = "fm_modules.fm_head.0.weight"
    assert not torch.equal(trained[q], original[q])  # merged
    assert torch.equal(trained[q], sampled[q])  # identically in both places
    assert torch.equal(trained[head], original[head]) and torch.equal(sampled[head], original[head])  # skipped
    assert trainer.baked["skipped"] == ["fm_modules.fm_head.0"]
