"""The pipeline on the embedded tiny U1.5 and A3B models (`model.tiny_variant`), the token size that
follows the model, and the U1.5 and A3B presets.

The two real runs go to results/report.html side by side, one core each (two cores in all), in a
module fixture the tests share: about 25 s on 2 CPU cores together.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from PIL import Image
from safetensors import safe_open
from snakemake.utils import validate

from tests.workflow.conftest import REPO, copy_workflow
from u1lib.lora.spec import TrainableSurface, resolve_spec
from u1lib.model.config import U1Config
from u1lib.snapshot import COMMIT_SHA

REPORT = "results/report.html"
# the LoRA each tiny run trains: U1.5 has U1's dense MLPs; A3B has experts instead (mlp matches nothing there)
LORA = {"u15": "attn=r4a4;mlp=r4a4", "a3b": "attn=r4a4;gen_moe_mlp=r4a4"}
TOKEN_SIZE = {"u15": 32, "a3b": 8}  # patch_size x merge of u1lib/tiny.py's configs
SCHEMA = REPO / "config" / "schema" / "config.schema.yaml"


def tiny_config(workflow, variant: str, name: str | None = None, **sections) -> str:
    """The default config at its smallest: one variant, 2 steps, one prompt, one seed, 2 sampler steps."""
    (workflow.root / "config" / "prompts" / "one.yaml").write_text(
        "prompts:\n  - {id: cat, prompt: Close-up of a tabby cat with green eyes.}\n"
    )
    config = workflow.config()
    config["model"].update(name=f"tiny-{variant}", tiny_variant=variant)
    config["train"].update(steps=2, val_every=2, val_t=[0.5], ckpt_every=2, log_every=1, lora=LORA[variant])
    config["sample"].update(prompt_set="one", seeds=[0], steps=2, batch_size=1)
    config["cache"]["batch_size"] = 8
    config["grid"] = {"axes": {}}  # one variant, "default"
    for section, values in sections.items():
        config[section].update(values)
    return workflow.write_config(name or f"{variant}.yaml", config)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """variant -> (workflow, config file), each run to results/report.html, both at once."""
    started = {}
    for variant in LORA:
        workflow = copy_workflow(tmp_path_factory.mktemp(variant))
        config = tiny_config(workflow, variant)
        command = [sys.executable, "-m", "snakemake", "-s", str(workflow.root / "Snakefile")]
        command += ["--directory", str(workflow.workdir), "--cores", "1", REPORT, "--configfile", config]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started[variant] = (workflow, config, process)
    for variant, (_, _, process) in started.items():
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"tiny {variant}:\n{output}"
    return {variant: (workflow, config) for variant, (workflow, config, _) in started.items()}


def results(runs, variant: str):
    return runs[variant][0].workdir / "results"


def snapshot(runs, variant: str):
    return results(runs, variant) / "models" / f"tiny-{variant}" / "snapshot"


@pytest.mark.integration
def test_the_snapshot_is_the_variant_it_names(runs):
    u15 = json.loads((snapshot(runs, "u15") / "config.json").read_text())
    assert u15["use_pixel_head"] is True and u15["noise_scale_max_value"] == 16.0
    assert "num_experts" not in u15["llm_config"]
    a3b = json.loads((snapshot(runs, "a3b") / "config.json").read_text())
    assert a3b["use_pixel_head"] is False and a3b["llm_config"]["model_type"] == "qwen3_moe"
    assert (a3b["llm_config"]["num_experts"], a3b["llm_config"]["gen_num_experts"]) == (8, 6)
    for variant in LORA:
        models = results(runs, variant) / "models" / f"tiny-{variant}"
        assert json.loads((models / "identity.json").read_text())["tiny_variant"] == variant
        assert json.loads((models / "manifest.json").read_text())["revision"] == f"tiny-{variant}-seed-0"


@pytest.mark.integration
def test_the_pack_follows_the_models_token_size(runs):
    for variant, expected in TOKEN_SIZE.items():
        token = U1Config.from_file(snapshot(runs, variant)).token_size
        stats = json.loads((results(runs, variant) / "data" / "demo" / "stats.json").read_text())
        assert token == expected == stats["buckets"]["spec"]["token_size"], variant
        sides = [int(side) for name in stats["buckets"]["names"] for side in name.split("x")]
        assert sides and all(side % token == 0 for side in sides), (variant, stats["buckets"]["names"])


@pytest.mark.integration
def test_the_adapter_holds_exactly_the_spec_s_lora_keys(runs):
    for variant, spec in LORA.items():
        targets = resolve_spec(spec, U1Config.from_file(snapshot(runs, variant)))
        expected = {
            f"{module}.{part}" for module in targets for part in ("lora_down.weight", "lora_up.weight", "alpha")
        }
        with safe_open(str(results(runs, variant) / "runs" / "default" / "adapter.safetensors"), "pt") as adapter:
            assert set(adapter.keys()) == expected, variant
    a3b = resolve_spec(LORA["a3b"], U1Config.from_file(snapshot(runs, "a3b")))
    assert any(".mlp_mot_gen.experts." in module for module in a3b)
    assert not any(module.endswith("mlp_mot_gen.gate") for module in a3b)  # the router stays frozen


@pytest.mark.integration
def test_samples_and_report(runs):
    for variant in LORA:
        for run in ("base", "default"):
            folder = results(runs, variant) / "runs" / run / "samples" / "one"
            images = json.loads((folder / "index.json").read_text())["images"]
            assert [(image["prompt_id"], image["seed"]) for image in images] == [("cat", 0)], (variant, run)
            with Image.open(folder / images[0]["file"]) as png:
                assert png.size == (64, 64)
        report = (results(runs, variant) / "report.html").read_text(encoding="utf-8")
        assert f"tiny-{variant}-seed-0" in report and "default" in report


@pytest.mark.integration
def test_a_finished_run_plans_nothing_and_another_variant_reruns_everything_reading_the_model(runs):
    workflow, config = runs["u15"]
    assert workflow.planned_jobs(REPORT, "--configfile", config) == {}
    other = tiny_config(workflow, "a3b", name="switched.yaml", model={"name": "tiny-u15"})
    plan = workflow.planned_jobs(REPORT, "--configfile", other)
    readers = {"model_identity": 1, "snapshot": 1, "cache": 1, "train": 1, "export": 1, "sample": 2, "report": 1}
    assert {rule: plan.get(rule) for rule in readers} == readers
    assert plan["pack"] == 1  # 32-px tokens -> 8-px ones: other buckets
    assert "demo_dataset" not in plan and "write_variants" not in plan


@pytest.mark.integration
def test_sizes_that_do_not_fit_the_token_size_stop_the_workflow_naming_the_key(runs):
    workflow, _ = runs["u15"]
    config = tiny_config(workflow, "u15", name="width.yaml", sample={"width": 48})
    output = workflow.snakemake("--dry-run", "--configfile", config, check=False)
    assert output.returncode != 0
    expected = (
        "sample.width 48: not a multiple of the model's token size 32 (the tiny u15 model); the nearest are 32 and 64"
    )
    assert expected in output.stdout + output.stderr
    config = tiny_config(
        workflow, "u15", name="token.yaml", dataset={"buckets": {"kind": "area", "area": 4096, "token_size": 8}}
    )
    output = workflow.snakemake("--dry-run", "--configfile", config, check=False)
    assert "dataset.buckets.token_size 8: not a multiple of the model's token size 32" in output.stdout + output.stderr


# --- the presets ------------------------------------------------------------------------------------


def preset(name: str) -> dict:
    import u1lib.sample_settings as sample
    import u1lib.train.settings as settings

    config = yaml.safe_load((REPO / "config" / name).read_text())
    validate(config, str(SCHEMA))
    settings.TrainSettings.from_dict(config["train"])
    sample.SampleSettings.from_dict({k: v for k, v in config["sample"].items() if k != "prompt_set"})
    return config


def test_the_u15_preset_pins_a_commit_and_trains_the_official_u15_surface():
    config = preset("u15-8b.yaml")
    assert config["model"]["repo_id"] == "sensenova/SenseNova-U1.5-8B-MoT"
    assert COMMIT_SHA.match(config["model"]["revision"])
    shapes = json.loads((REPO / "u1lib" / "model" / "u1_8b_config.json").read_text())
    shapes.update(use_pixel_head=True, noise_scale_max_value=16.0)  # U1.5's config differences
    surface = TrainableSurface.resolve(
        config["train"]["lora"], config["train"]["full_ft"], U1Config.from_upstream_dict(shapes)
    )
    assert len(surface.targets) == 294 and not surface.full_ft
    assert {(t.rank, t.alpha) for t in surface.targets.values()} == {(128, 8.0)}
    assert config["train"]["memory_mode"] == "resident" and config["train"]["checkpointing"] == "all"


def test_the_a3b_preset_adapts_attention_and_experts_and_refuses_to_run_without_a_revision(workflow, tmp_path):
    from u1lib.tiny_config import tiny_config_dict

    config = preset("a3b.yaml")
    assert config["model"]["revision"] is None
    surface = TrainableSurface.resolve(
        config["train"]["lora"], config["train"]["full_ft"], U1Config.from_upstream_dict(tiny_config_dict(1024, "a3b"))
    )
    families = {module.rsplit(".", 2)[-2] if ".experts." not in module else "experts" for module in surface.targets}
    assert families == {"self_attn", "experts"}  # no router (mlp_mot_gen.gate), nothing of the understanding tower
    preset_file = str(workflow.root / "config" / "a3b.yaml")
    output = workflow.snakemake("--dry-run", REPORT, "--configfile", preset_file, check=False)
    text = output.stdout + output.stderr
    assert output.returncode != 0 and "model.revision null: sensenova/SenseNova-U1-A3B-MoT" in text
    assert (
        "https://huggingface.co/sensenova/SenseNova-U1-A3B-MoT/commits/main" in text and "'Files and versions'" in text
    )
    revision = tmp_path / "a3b-revision.yaml"
    revision.write_text("model: {revision: " + "0123456789abcdef" * 2 + "01234567}\n")
    planned = workflow.snakemake("--dry-run", REPORT, "--configfile", preset_file, str(revision)).stdout
    assert "results/data/demo-2k-a3b/" in planned and "results/models/a3b/manifest.json" in planned
