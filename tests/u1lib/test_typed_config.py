"""Typed settings from config sections: unknown keys named, YAML lists become the tuples the dataclasses hold."""

import dataclasses

import pytest
import yaml

from u1lib.bench import Measure
from u1lib.sample_settings import SampleSettings
from u1lib.train.settings import TrainSettings
from u1lib.typed_config import from_section


def test_unknown_keys_are_named_with_their_section():
    with pytest.raises(ValueError, match=r"train\.lrr"):
        TrainSettings.from_dict({"lrr": 1.0})
    with pytest.raises(ValueError, match=r"sample\.seed\b"):
        SampleSettings.from_dict({"seed": 1})


def test_lists_become_tuples_and_compare_equal():
    a = TrainSettings.from_dict({"betas": [0.9, 0.99], "val_t": [0.5], "full_ft": ["x"]})
    assert a.betas == (0.9, 0.99) and a.val_t == (0.5,) and a.full_ft == ("x",)
    assert SampleSettings.from_dict({"seeds": [1, 2]}).seeds == (1, 2)


def test_invalid_values_are_all_reported_at_once():
    with pytest.raises(ValueError) as err:
        TrainSettings.from_dict({"loss_type": "l1", "steps": 0, "cond_dropout": 2})
    message = str(err.value)
    assert "train.loss_type" in message and "train.steps" in message and "train.cond_dropout" in message


# (section's from_dict, key, bad value, what the message must say besides the key and the value)
BAD_VALUES = [
    (TrainSettings, "lr", "1e-4", ["(str)", "expected a number", "YAML reads 1e-4 as text: write 1.0e-4"]),
    (TrainSettings, "lr", "3E-5", ["expected a number", "write 1.0e-4", "(here 3.0e-5)"]),
    (TrainSettings, "weight_decay", "1.0e2", ["expected a number", "1.0e+2"]),
    (TrainSettings, "t_eps", "5e-2", ["expected a number or null", "5.0e-2"]),
    (TrainSettings, "lr", "0.001", ["expected a number", "without quotes"]),
    (TrainSettings, "lr", True, ["(bool)", "expected a number"]),
    (TrainSettings, "lr", None, ["(NoneType)", "expected a number"]),
    (TrainSettings, "steps", 10.5, ["(float)", "expected an integer"]),
    (TrainSettings, "steps", True, ["(bool)", "expected an integer"]),
    (TrainSettings, "steps", "200", ["(str)", "expected an integer", "without quotes"]),
    (TrainSettings, "betas", 0.9, ["(float)", "exactly 2 numbers", "[0.9, 0.95]"]),
    (TrainSettings, "betas", [0.9], ["(list of 1)", "exactly 2 numbers"]),
    (TrainSettings, "betas", [0.9, 0.95, 0.99], ["(list of 3)", "exactly 2 numbers"]),
    (TrainSettings, "betas", [0.9, "9e-1"], ["exactly 2 numbers", "9.0e-1"]),
    (TrainSettings, "val_t", 0.5, ["(float)", "a list of numbers"]),
    (TrainSettings, "val_t", [0.5, "x"], ["a list of numbers"]),
    (TrainSettings, "full_ft", "attn", ["(str)", "a list of texts"]),
    (TrainSettings, "checkpointing", True, ["(bool)", "text or an integer"]),
    (TrainSettings, "checkpointing", 2.5, ["(float)", "text or an integer"]),
    (TrainSettings, "keep_attention", 1, ["(int)", "true or false"]),
    (TrainSettings, "compile", "yes", ["(str)", "true or false"]),
    (TrainSettings, "lora", ["attn"], ["(list of 1)", "expected text"]),
    (TrainSettings, "upstream_lora", "adapter.safetensors", ["(str)", "expected a mapping"]),
    (SampleSettings, "seeds", 0, ["(int)", "a list of integers"]),
    (SampleSettings, "seeds", [0, 1.5], ["a list of integers"]),
    (SampleSettings, "cfg_interval", [0.0], ["(list of 1)", "exactly 2 numbers", "[0.0, 1.0]"]),
    (SampleSettings, "cfg_scale", "4e0", ["expected a number", "4.0e+0"]),
    (SampleSettings, "width", 512.0, ["(float)", "expected an integer"]),
    (SampleSettings, "compile", 0, ["(int)", "true or false"]),
    (SampleSettings, "device", None, ["(NoneType)", "expected text"]),
]


@pytest.mark.parametrize(
    "cls, key, value, needles", BAD_VALUES, ids=[f"{c.__name__}.{k}={v!r}" for c, k, v, _ in BAD_VALUES]
)
def test_a_mistyped_value_is_named_with_what_was_expected(cls, key, value, needles):
    section = "train" if cls is TrainSettings else "sample"
    with pytest.raises(ValueError) as err:
        cls.from_dict({key: value})
    message = str(err.value)
    assert f"{section}.{key}: got {value!r} " in message
    for needle in needles:
        assert needle in message


def test_every_mistyped_key_is_in_one_error():
    train = [(key, value) for cls, key, value, _ in BAD_VALUES if cls is TrainSettings]
    raw = dict(train)  # the last bad value of each key
    with pytest.raises(ValueError) as err:
        TrainSettings.from_dict({**raw, "seed": 7})  # a good value among them is not listed
    lines = str(err.value).splitlines()[1:]
    assert sorted(line.split(":")[0].strip() for line in lines) == sorted(f"train.{key}" for key in raw)


def test_yaml_text_numbers_get_the_hint_through_the_yaml_reader():
    raw = yaml.safe_load("train:\n  lr: 1e-4\n  betas: 0.9\nsample:\n  cfg_scale: 5e+0\n")
    assert raw["train"]["lr"] == "1e-4"  # the YAML rule the hint is about
    with pytest.raises(ValueError, match=r"train\.lr: got '1e-4' \(str\), expected a number; YAML reads 1e-4"):
        TrainSettings.from_dict(raw["train"])
    with pytest.raises(ValueError, match=r"sample\.cfg_scale: .*write 1\.0e-4 \(here 5\.0e\+0\)"):
        SampleSettings.from_dict(raw["sample"])


def test_well_typed_values_pass_unchanged():
    settings = TrainSettings.from_dict(
        {
            "lr": 1,
            "t_eps": None,
            "grad_clip": 2,
            "checkpointing": 3,
            "betas": (0.8, 1),
            "val_t": [],
            "upstream_lora": {"path": "x.safetensors", "skip": ["a"]},
            "keep_attention": True,
        }
    )
    assert (settings.lr, settings.t_eps, settings.grad_clip, settings.checkpointing) == (1, None, 2, 3)
    assert settings.betas == (0.8, 1) and settings.val_t == () and settings.upstream_lora["skip"] == ["a"]
    assert TrainSettings.from_dict({"checkpointing": "all"}).checkpointing == "all"
    assert SampleSettings.from_dict({"cfg_interval": [0, 1], "t_eps": 0}).cfg_interval == (0, 1)


def test_bench_measures_are_checked_too():
    with pytest.raises(ValueError, match=r"bench\.measures\[\]\.size: got '2048' \(str\), expected an integer"):
        from_section(Measure, {"measure": "train", "size": "2048"}, "bench.measures[]")
    assert from_section(Measure, {"measure": "train", "checkpointing": "4"}, "bench.measures[]").checkpointing == "4"


@dataclasses.dataclass(frozen=True)
class Shapes:
    pair: tuple[int, str] = (1, "a")
    nested: tuple[tuple[float, float], ...] = ()
    mapping: dict[str, int] | None = None
    choice: str | int | None = None


def test_the_rules_hold_for_any_annotation_shape():
    built = from_section(
        Shapes, {"pair": [2, "b"], "nested": [[1, 2.5], [0, 0]], "mapping": {"a": 1}, "choice": 5}, "s"
    )
    assert built == Shapes((2, "b"), ((1, 2.5), (0, 0)), {"a": 1}, 5)
    with pytest.raises(ValueError) as err:
        from_section(Shapes, {"pair": ["b", 2], "nested": [[1]], "mapping": {"a": "1"}, "choice": 1.5}, "s")
    message = str(err.value)
    assert "s.pair: got ['b', 2] (list of 2), expected a list of exactly 2 values (an integer, text)" in message
    assert "s.nested: got [[1]] (list of 1), expected a list of a list of exactly 2 numbers" in message
    assert "s.mapping: got {'a': '1'} (dict), expected a mapping or null" in message
    assert "s.choice: got 1.5 (float), expected text or an integer or null" in message


def test_train_cli_reports_the_typed_problems(tmp_path, capsys):
    from u1lib.cli import main

    config = tmp_path / "train.yaml"
    config.write_text("train: {lr: 1e-4, betas: 0.9}\n", encoding="utf-8")
    code = main(
        [
            "train",
            str(config),
            "--snapshot",
            str(tmp_path),
            "--manifest",
            str(tmp_path / "m.json"),
            "--train-data",
            str(tmp_path / "t.parquet"),
            "--run-dir",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "train.lr: got '1e-4' (str)" in err and "train.betas: got 0.9 (float)" in err
