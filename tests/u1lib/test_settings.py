"""Typed settings from config sections: unknown keys named, YAML lists become the tuples the dataclasses hold."""

import pytest

from u1lib.sample import SampleSettings
from u1lib.train.settings import TrainSettings


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
