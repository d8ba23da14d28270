"""The sampling stage: golden trajectory end to end, seeds, adapters, the upstream-LoRA skip list, prompt
sets whose ids must stay file names inside the output folder, and what a run says while it works."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
import yaml
from safetensors.torch import load_file

from u1lib.data.pixels import load_image_tensor
from u1lib.data.prompts import PromptSpec, cond_text
from u1lib.io import save_safetensors
from u1lib.model.fp8 import FP8, Fp8Linear
from u1lib.model.loading import load_model
from u1lib.model.sampling import initial_noise
from u1lib.sample import Sampler, cli, sample_variant
from u1lib.sample_settings import SampleSettings, load_prompts
from u1lib.train.inputs import RunFiles
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
        RunFiles(
            snapshot_dir=ws["snapshot_dir"],
            manifest_path=ws["manifest_path"],
            train_parquet=ws["train_parquet"],
            run_dir=tmp_path / "run",
            val_parquet=ws["val_parquet"],
            cache_dir=ws["cache_dir"],
        ),
    )
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


def test_fp8_sampling_runs_adapters_over_the_fp8_base_and_hands_it_back(tiny_workspace, tmp_path):
    """sample.fp8: a runtime adapter wraps the FP8 linears and returns them as they were; the images
    stay near the full-precision ones without being them."""
    snapshot = tiny_workspace["snapshot_dir"]
    _upstream_lora(snapshot, tmp_path / "adapter.safetensors")
    prompts = [{"id": "p", "prompt": "a rocket"}]
    settings = {"seeds": [0], "steps": 3, "width": 64, "height": 48}
    images = {}
    for fp8 in (False, True):
        sampler = Sampler(snapshot, SampleSettings.from_dict({**settings, "fp8": fp8}), PromptSpec())
        for variant, adapter in (("base", None), ("lora", tmp_path / "adapter.safetensors"), ("again", None)):
            out = tmp_path / f"fp8-{fp8}" / variant
            sampler.run_variant(variant, adapter, prompts, out, "demo")
            images[fp8, variant] = load_image_tensor((out / "p_seed0.png").read_bytes())
    q_proj = sampler.model.layers[0].self_attn.q_proj_mot_gen
    assert isinstance(q_proj, Fp8Linear) and q_proj.weight.dtype == FP8
    assert torch.equal(images[True, "base"], images[True, "again"])
    assert not torch.equal(images[True, "base"], images[True, "lora"])
    for variant in ("base", "lora"):
        gap = (images[True, variant] - images[False, variant]).abs().mean()
        assert 0 < gap < 0.05  # FP8's rounding: a few of 255 levels on the [-1, 1] scale


def test_fp8_sampling_refuses_an_adapter_that_fully_tunes_an_fp8_weight(tiny_workspace, tmp_path):
    snapshot = tiny_workspace["snapshot_dir"]
    model = load_model(snapshot, ["gen"])
    name = "language_model.model.layers.0.mlp_mot_gen.up_proj.weight"
    save_safetensors(tmp_path / "full.safetensors", {name: dict(model.named_parameters())[name].detach()})
    sampler = Sampler(
        snapshot, SampleSettings.from_dict({"steps": 1, "width": 32, "height": 32, "fp8": True}), PromptSpec()
    )
    prompts = [{"id": "p", "prompt": "a rocket"}]
    with pytest.raises(ValueError, match=rf"fully tunes {name}, which sample.fp8 stores in FP8"):
        sampler.run_variant("full", tmp_path / "full.safetensors", prompts, tmp_path / "out", "demo")
    assert not (tmp_path / "out").exists()


# ids that would write outside the output folder or name a file badly, in both prompt-set forms
BAD_IDS = ["../../x", "/abs/path", "a/b", "..", ".hidden", "C:\\x", "", "a\nb", "a\x00b", "two words", None]


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("form", ["list", "mapping"])
def test_prompt_sets_refuse_ids_that_are_not_safe_file_names(tmp_path, bad, form):
    entries = [{"id": "ok", "prompt": "a rocket"}, {"id": bad, "prompt": "a fox"}]
    raw = {"prompts": entries} if form == "list" else {e["id"]: e["prompt"] for e in entries}
    path = tmp_path / "prompts.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    assert yaml.safe_load(path.read_text()) == raw  # the bad id reaches load_prompts exactly
    with pytest.raises(ValueError) as err:
        load_prompts(path)
    shown = "" if bad is None else bad
    assert str(err.value).startswith(f"prompt id {shown!r} in {path} "), str(err.value)


@pytest.mark.parametrize("text", ["", "prompts: []\n", "prompts:\n", "{}\n", "# only a comment\n"])
def test_an_empty_prompt_set_is_refused(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: no prompts; list at least one"):
        load_prompts(path)


CLASHES = [
    (["cat", "cat"], "'cat' repeats 'cat'"),
    (["Cat", "cAT"], "'cAT' repeats 'Cat'"),
    (["caf\u00e9", "cafe\u0301"], "'cafe\u0301' repeats 'caf\u00e9'"),
]


@pytest.mark.parametrize(("ids", "clash"), CLASHES)
def test_ids_naming_the_same_file_are_refused(tmp_path, ids, clash):
    """Letter case and Unicode normalisation: one file on macOS and Windows."""
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps([{"id": i, "prompt": "x"} for i in ids]))
    with pytest.raises(ValueError, match=re.escape(f"prompt id {clash}")):
        load_prompts(path)


def test_a_prompt_without_text_is_refused_instead_of_sampling_the_word_none(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("cat:\n")
    with pytest.raises(ValueError, match="prompt id 'cat' has no prompt text"):
        load_prompts(path)


def test_good_ids_in_any_script_load_in_order(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("prompts:\n  - {id: 猫, prompt: a cat}\n  - {id: 2, prompt: two}\n  - {id: café, prompt: coffee}\n")
    assert load_prompts(path) == [
        {"id": "猫", "prompt": "a cat"},
        {"id": "2", "prompt": "two"},
        {"id": "café", "prompt": "coffee"},
    ]


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/b", "..", ".hidden", "", "a\tb"])
def test_sample_cli_refuses_unsafe_variant_names_before_loading_a_model(tmp_path, bad):
    (tmp_path / "p.yaml").write_text("cat: a cat\n")
    argv = [
        "--snapshot",
        str(tmp_path / "no-snapshot"),
        "--prompts",
        str(tmp_path / "p.yaml"),
        "--out",
        str(tmp_path / "out"),
        "--adapter",
        f"{bad}=a.safetensors",
    ]
    with pytest.raises(ValueError, match=f"^{re.escape(f'--adapter variant name {bad!r} ')}"):  # not the snapshot
        cli("sample", argv)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["base", "a"])
def test_sample_cli_refuses_a_variant_name_given_twice(tmp_path, name, capsys):
    (tmp_path / "p.yaml").write_text("cat: a cat\n")
    argv = [
        "--snapshot",
        str(tmp_path),
        "--prompts",
        str(tmp_path / "p.yaml"),
        "--out",
        str(tmp_path / "out"),
        "--adapter",
        "a=1.safetensors",
        "--adapter",
        f"{name}=2.safetensors",
    ]
    with pytest.raises(SystemExit):
        cli("sample", argv)
    assert f"a variant {name!r} is already sampled" in capsys.readouterr().err


ONE_STEP = {"steps": 1, "width": 16, "height": 16}


@pytest.mark.parametrize("bad", ["../escaped", "sub/dir", "/abs/escaped"])
def test_writes_outside_the_output_folder_are_refused_even_without_load_prompts(tiny_workspace, tmp_path, bad):
    """The second guard: entries that never went through load_prompts, caught before any image is sampled."""
    out = tmp_path / "deep" / "out"
    with pytest.raises(ValueError, match=f"refusing to write .*: it resolves outside {re.escape(str(out))}"):
        sample_variant(
            snapshot_dir=tiny_workspace["snapshot_dir"],
            adapter=None,
            out_dir=out,
            variant="base",
            prompts=[{"id": bad, "prompt": "a fox"}],
            settings=ONE_STEP,
        )
    assert not list(tmp_path.rglob("*.png")) and not out.exists()


def test_a_symlinked_target_pointing_elsewhere_is_refused(tiny_workspace, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "p_seed0.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(ValueError, match="resolves outside"):
        sample_variant(
            snapshot_dir=tiny_workspace["snapshot_dir"],
            adapter=None,
            out_dir=out,
            variant="base",
            prompts=[{"id": "p", "prompt": "a fox"}],
            settings=ONE_STEP,
        )
    assert not (tmp_path / "elsewhere.png").exists()


def _sample_into(ws, out, seeds):
    return sample_variant(
        snapshot_dir=ws["snapshot_dir"],
        adapter=None,
        out_dir=out,
        variant="base",
        prompts=[{"id": "p", "prompt": "a fox"}],
        settings={**ONE_STEP, "seeds": seeds},
    )


def test_a_rerun_replaces_the_whole_set_and_a_failed_one_keeps_the_last(tiny_workspace, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _sample_into(tiny_workspace, out, [0, 1])
    _sample_into(tiny_workspace, out, [1])
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "p_seed1.png"]  # no stray from the last set
    kept = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("u1lib.sample.write_json", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _sample_into(tiny_workspace, out, [2, 3])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


def test_a_folder_holding_other_files_is_refused_before_sampling(tiny_workspace, tmp_path, monkeypatch):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.png").write_bytes(b"mine")
    monkeypatch.setattr(Sampler, "images", lambda *a, **k: pytest.fail("sampled before refusing the folder"))
    with pytest.raises(ValueError, match=rf"{out} holds files `u1lib sample` did not write \(holiday.png\)"):
        _sample_into(tiny_workspace, out, [0])
    assert [(p.name, p.read_bytes()) for p in out.iterdir()] == [("holiday.png", b"mine")]


def test_a_run_logs_its_plan_and_progress_with_an_eta(tiny_workspace, tmp_path, caplog):
    settings = {"seeds": [0, 1, 2], "steps": 2, "width": 32, "height": 16, "batch_size": 2, "cfg_scale": 3.5}
    prompts = [{"id": "p", "prompt": "a rocket"}]
    with caplog.at_level(logging.INFO, logger="u1lib.progress"):
        sample_variant(
            snapshot_dir=tiny_workspace["snapshot_dir"],
            adapter=None,
            prompts=prompts,
            settings=settings,
            out_dir=tmp_path / "s",
            variant="base",
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "u1lib.progress"]
    assert re.fullmatch(r"model loaded in \d+\.\d s; tokenizer and unconditional prefix in \d+\.\d s", lines[0])
    assert lines[1] == "sampling 3 images (1 variants x 1 prompts x 3 seeds) at 32x16, 2 steps, cfg 3.5 on cpu"
    assert [line.split(",")[0] for line in lines[2:]] == ["base: 2/3 images", "base: 3/3 images"]  # one per batch
    assert all(" s/image, eta " in line for line in lines[2:]) and lines[-1].endswith("eta 0 s")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # small work: no CPU warning


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        ({"width": 512, "height": 512, "steps": 10}, True),
        ({"width": 64, "height": 64, "steps": 50}, True),
        ({"width": 256, "height": 256, "steps": 20}, False),
    ],
)
def test_large_work_on_the_cpu_is_announced_with_the_flags_for_a_quick_look(tiny_workspace, caplog, settings, warned):
    sampler = Sampler(
        tiny_workspace["snapshot_dir"], SampleSettings.from_dict({**settings, "device": "cpu"}), PromptSpec()
    )
    with caplog.at_level(logging.INFO, logger="u1lib.progress"):
        sampler.plan(variants=2, prompts=4)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warnings) == warned
    if warned:
        assert "--size" in warnings[0] and "--steps" in warnings[0] and "CPU" in warnings[0]


def test_think_mode_decodes_a_thought_per_prompt_and_keeps_it_in_the_index(tiny_workspace, tmp_path):
    """sample.think: the thought is decoded once per prompt, extends the prefix and is recorded."""
    from u1lib.model.think import think as decode

    prompts = [{"id": "cat", "prompt": "a ginger cat"}, {"id": "boat", "prompt": "a red boat"}]
    settings = {"seeds": [0, 1], "steps": 2, "width": 32, "height": 32, "think": {"enabled": True, "max_tokens": 3}}
    common = {"snapshot_dir": tiny_workspace["snapshot_dir"], "prompts": prompts, "variant": "base", "adapter": None}
    index = sample_variant(settings=settings, out_dir=tmp_path / "think", **common)
    thoughts = {r["prompt_id"]: r["think"] for r in index["images"]}
    assert set(thoughts) == {"cat", "boat"} and len(index["images"]) == 4
    for thought in thoughts.values():
        assert thought["stop"] in ("think_end", "eos", "budget") and 0 <= thought["tokens"] <= 3
    # the recorded thought is what decoding the prompt gives on its own
    sampler = Sampler(tiny_workspace["snapshot_dir"], SampleSettings.from_dict(settings), PromptSpec())
    alone = decode(sampler.model, sampler.encoder.tokenizer, cond_text(PromptSpec(), "a ginger cat"), 3)
    assert thoughts["cat"]["text"] == alone.text(sampler.encoder.tokenizer)
    assert sampler._prefix("a ginger cat").lengths.tolist() == [len(alone.input_ids)]
    plain = sample_variant(settings={**settings, "think": {"enabled": False}}, out_dir=tmp_path / "plain", **common)
    assert all("think" not in r for r in plain["images"])


@pytest.mark.parametrize(
    "think, message",
    [
        ({"enabled": "yes"}, "sample.think.enabled"),
        ({"max_tokens": -1}, "sample.think.max_tokens"),
        ({"budget": 3}, "unknown key"),
    ],
)
def test_bad_think_settings_are_named(think, message):
    with pytest.raises(ValueError, match=message):
        SampleSettings.from_dict({"think": think})


def test_the_sampler_does_not_import_the_dataset_stack():
    """A cold start pays for every import: the sampler writes PNGs and reads no parquet, so pyarrow
    (0.3 s) must stay out of its process."""
    import subprocess
    import sys

    probe = "import sys, u1lib.sample; print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyarrow'))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
