"""The token size the workflow plans with: from the tiny variant, a model folder, or a downloaded snapshot."""

import pytest

from u1lib.token_size import (
    TINY_TOKEN_SIZE,
    ModelTokenSize,
    model_token_size,
    resolve_buckets,
    sample_size_problems,
    static_token_size,
)

AREA = {"kind": "area", "area": 4096, "token_size": "auto"}


def test_the_tiny_variants_decide_it_and_a_hub_model_waits_for_its_files():
    assert static_token_size({"source": "tiny", "tiny_variant": "u15"}) == (32, "the tiny u15 model")
    assert static_token_size({"source": "hub", "repo_id": "org/m", "revision": "abc"}) == (None, "org/m@abc")
    assert set(TINY_TOKEN_SIZE) == {"u1", "u15", "a3b"}


def test_a_folder_without_a_readable_config_is_left_to_the_snapshot_stage(tmp_path):
    assert static_token_size({"source": str(tmp_path)}) == (None, f"{tmp_path}/config.json")


def test_auto_becomes_the_models_size_and_a_number_must_be_a_multiple():
    assert resolve_buckets(AREA, ModelTokenSize(8, 8, "m"))["token_size"] == 8
    assert resolve_buckets(AREA, ModelTokenSize(None, None, "m"))["token_size"] == "auto"
    assert resolve_buckets({**AREA, "token_size": 16}, ModelTokenSize(8, 8, "m"))["token_size"] == 16
    with pytest.raises(ValueError, match=r"token_size 12: not a multiple of the model's token size 8 \(m\)"):
        resolve_buckets({**AREA, "token_size": 12}, ModelTokenSize(8, 8, "m"))


def test_bucket_errors_name_the_key():
    with pytest.raises(ValueError, match=r"^dataset.buckets: "):
        resolve_buckets({**AREA, "area": -1}, ModelTokenSize(8, 8, "m"))


def test_sample_sizes_off_the_grid_name_the_key_and_the_nearest_sizes():
    problems = sample_size_problems(
        {"": {"width": 64, "height": 60}, "variant big: ": {"width": 100}}, token=32, origin="the tiny u15 model"
    )
    assert problems == [
        "sample.height 60: not a multiple of the model's token size 32 (the tiny u15 model); the nearest are 32 and 64",
        "variant big: sample.width 100: not a multiple of the model's token size 32 (the tiny u15 model); "
        "the nearest are 96 and 128",
    ]


def test_the_model_sections_size_is_static_for_a_tiny_model_and_unknown_for_a_hub_model_not_downloaded(tmp_path):
    tiny = model_token_size({"source": "tiny", "tiny_variant": "u1"}, tmp_path / "manifest.json")
    assert tiny == ModelTokenSize(8, 8, "the tiny u1 model")
    hub = {"source": "hub", "repo_id": "org/m", "revision": "abc"}
    assert model_token_size(hub, tmp_path / "manifest.json") == ModelTokenSize(None, None, "org/m@abc")
