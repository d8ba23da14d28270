"""What the workflow derives from its config, without Snakemake: every refusal names the key and the fix."""

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from u1lib import workflow_plan as plan
from u1lib.grid import BASE, Variant
from u1lib.token_size import ModelTokenSize

REPO = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((REPO / "config" / "schema" / "config.schema.yaml").read_text())
SHA = "0123456789abcdef0123456789abcdef01234567"


def test_canonical_sorts_keys_at_every_depth():
    assert list(plan.canonical({"b": 1, "a": [{"d": 1, "c": 2}]})) == ["a", "b"]
    assert list(plan.canonical({"a": [{"d": 1, "c": 2}]})["a"][0]) == ["c", "d"]


def test_a_variant_whose_knobs_break_the_schema_is_named():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    good, bad = Variant("good", {"train.lr": 0.5}), Variant("bad", {"train.steps": "many"})
    resolved = plan.resolved_configs(config, [good], SCHEMA)
    assert set(resolved) == {BASE, "good"} and resolved["good"]["train"]["lr"] == 0.5
    with pytest.raises(plan.ConfigProblems) as caught:
        plan.resolved_configs(config, [good, bad], SCHEMA)
    assert caught.value.what == "invalid grid"
    assert [p for p in caught.value.problems if p.startswith("variant bad: train.steps")]
    assert not [p for p in caught.value.problems if "variant good" in p]


def test_prompt_key_ignores_key_order_and_follows_every_setting():
    prompt = {"template": "neo1_0", "trigger": "", "use_think": False}
    key = plan.prompt_key(prompt)
    assert key.startswith("neo1_0-") and key == plan.prompt_key(dict(reversed(prompt.items())))
    assert plan.prompt_key({**prompt, "trigger": "sks"}) != key


def test_prompt_set_is_a_named_set_or_a_yaml_path_with_a_safe_name(tmp_path):
    (tmp_path / "demo.yaml").write_text("prompts: []\n")
    assert plan.prompt_set_file("demo", tmp_path) == tmp_path / "demo.yaml"
    with pytest.raises(ValueError, match=r"sample.prompt_set 'nope': no file .*nope.yaml"):
        plan.prompt_set_file("nope", tmp_path)
    odd = tmp_path / "my set.yaml"
    odd.write_text("prompts: []\n")
    with pytest.raises(ValueError, match=r"'my set' is not a safe folder name"):
        plan.prompt_set_file(str(odd), tmp_path)


def test_model_identity_per_source(tmp_path):
    tiny = plan.model_identity(
        {"source": "tiny", "tiny_variant": "u1", "tiny_seed": 3, "tiny_weights": "auto"}, ["c.yaml"]
    )
    assert tiny["tiny_seed"] == 3 and len(tiny["builder"]) == 16
    hub = {"source": "hub", "repo_id": "org/m", "revision": SHA}
    assert plan.model_identity(hub, ["c.yaml"])["revision"] == SHA
    with pytest.raises(
        ValueError, match=r"model.revision 'main'.*huggingface.co/org/m/commits/main.*--configfile c.yaml"
    ):
        plan.model_identity({**hub, "revision": "main"}, ["c.yaml"])
    with pytest.raises(ValueError, match=r"model.revision null"):
        plan.model_identity({**hub, "revision": None}, ["c.yaml"])
    with pytest.raises(ValueError, match=r"model.source '.*missing': no such folder"):
        plan.model_identity({"source": str(tmp_path / "missing")}, [])
    folder = {"source": str(tmp_path), "modeling_source": "none"}
    (tmp_path / "config.json").write_text("{}")
    before = plan.model_identity(folder, [])["files"]
    (tmp_path / "config.json").write_text('{"a": 1}')
    assert plan.model_identity(folder, [])["files"] != before
    with pytest.raises(ValueError, match=r"model.modeling_source 'git'.*set model.modeling_source: none"):
        plan.model_identity({**folder, "modeling_source": "git"}, [])


def test_dataset_source_must_hold_images_or_rows(tmp_path):
    plan.check_dataset_source("demo")
    with pytest.raises(ValueError, match=r"dataset.source '.*nowhere': no such file or folder"):
        plan.check_dataset_source(str(tmp_path / "nowhere"))
    (tmp_path / ".hidden.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"the folder holds no images; give demo"):
        plan.check_dataset_source(str(tmp_path))
    (tmp_path / "a.PNG").write_bytes(b"")
    plan.check_dataset_source(str(tmp_path))
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string())}), empty)
    with pytest.raises(ValueError, match=r"the parquet file has no rows"):
        plan.check_dataset_source(str(empty))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"not a readable parquet file"):
        plan.check_dataset_source(str(broken))


def test_dataset_fingerprint_sees_a_caption_edited_in_place(tmp_path):
    assert plan.dataset_fingerprint("demo") is None
    caption = tmp_path / "a.txt"
    caption.write_text("a cat")
    before = plan.dataset_fingerprint(str(tmp_path))
    folder_mtime = os.stat(tmp_path).st_mtime_ns
    caption.write_text("a dog")
    assert os.stat(tmp_path).st_mtime_ns == folder_mtime  # what Snakemake alone would see
    assert plan.dataset_fingerprint(str(tmp_path)) != before


def test_pack_settings_resolve_auto_and_refuse_a_size_off_the_models_grid():
    dataset = {
        "buckets": {"kind": "area", "area": 4096, "token_size": "auto"},
        "val_count": 2,
        "split_seed": 0,
        "strict": False,
    }
    settings = plan.pack_settings(dataset, ModelTokenSize(8, 8, "the tiny u1 model"))
    assert settings["buckets"]["token_size"] == 8 and settings["val_count"] == 2
    with pytest.raises(plan.ConfigProblems, match=r"token_size 12: not a multiple"):
        plan.pack_settings({**dataset, "buckets": {**dataset["buckets"], "token_size": 12}}, ModelTokenSize(8, 8, "m"))


def test_sample_sizes_name_the_variant_that_changes_them():
    config = {"sample": {"width": 64, "height": 64}}
    variants = {BASE: config, "wide": {"sample": {"width": 100, "height": 64}}}
    plan.check_sample_sizes(config, variants, ModelTokenSize(None, None, "hub"))  # not known yet: the sampler checks
    with pytest.raises(plan.ConfigProblems) as caught:
        plan.check_sample_sizes(config, variants, ModelTokenSize(None, 32, "m"))
    assert caught.value.problems == [
        "variant wide: sample.width 100: not a multiple of the model's token size 32 (m); the nearest are 96 and 128"
    ]


def test_every_stage_has_a_code_hash():
    hashes = plan.stage_code_hashes()
    assert set(hashes) == set(plan.STAGE_CODE) and all(len(value) == 16 for value in hashes.values())
    assert hashes["train"] != hashes["report"]


def test_the_upstream_checkout_comes_from_the_pins_and_needs_a_repo(tmp_path):
    commit = "a" * 40
    pins = tmp_path / "pins.yaml"
    pins.write_text(yaml.safe_dump({"repo": "Org/Upstream-Code", "commit": commit, "files": {"modeling.py": "b" * 64}}))
    assert plan.upstream_checkout(pins) == {
        "dir": "results/upstream/Upstream-Code",
        "url": "https://github.com/Org/Upstream-Code.git",
        "commit": commit,
    }
    pins.write_text(yaml.safe_dump({"commit": commit, "files": {"modeling.py": "b" * 64}}))
    with pytest.raises(ValueError, match=r"pins.yaml: needs 'repo: owner/name'"):
        plan.upstream_checkout(pins)


def test_check_config_names_every_problem_at_once():
    schema = {
        "type": "object",
        "properties": {"train": {"type": "object", "properties": {"steps": {"type": "integer"}}}},
        "additionalProperties": False,
    }
    plan.check_config({"train": {"steps": 3}}, schema)
    with pytest.raises(plan.ConfigProblems) as caught:
        plan.check_config({"train": {"steps": "many"}, "trian": {}}, schema)
    assert len(caught.value.problems) == 2
    assert any("trian" in p for p in caught.value.problems) and any("steps" in p for p in caught.value.problems)


def test_check_config_fills_the_defaults_of_what_is_left_out_and_keeps_what_is_given():
    schema = {
        "type": "object",
        "properties": {
            "train": {
                "type": "object",
                "default": {},
                "properties": {"steps": {"type": "integer", "default": 10}, "axes": {"default": {"a": [1]}}},
            },
            "sample": {"type": "object", "properties": {"seeds": {"default": [0]}}},
        },
    }
    empty = {}
    plan.check_config(empty, schema)
    assert empty == {"train": {"steps": 10, "axes": {"a": [1]}}}  # a default object gets its own defaults
    empty["train"]["axes"]["a"].append(2)
    assert schema["properties"]["train"]["properties"]["axes"]["default"] == {"a": [1]}  # copies, not shared
    given = {"train": {"steps": 3}, "sample": {}}
    plan.check_config(given, schema)
    assert given == {"train": {"steps": 3, "axes": {"a": [1]}}, "sample": {"seeds": [0]}}


def test_the_whole_schema_fills_a_config_that_names_nothing():
    config = {}
    plan.check_config(config, SCHEMA)
    assert config["train"]["steps"] == SCHEMA["properties"]["train"]["properties"]["steps"]["default"]
    assert set(config) == {k for k, sub in SCHEMA["properties"].items() if "default" in sub}


def test_wildcard_regex_matches_exactly_the_names():
    import re

    pattern = re.compile(rf"(?:{plan.one_of(['a.b', 'c+'])})")
    assert pattern.fullmatch("a.b") and pattern.fullmatch("c+")
    assert not pattern.fullmatch("axb") and not pattern.fullmatch("cc")


def test_paths_in_job_params_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert plan.from_workdir(tmp_path / "config" / "pins.yaml") == Path("config/pins.yaml")
