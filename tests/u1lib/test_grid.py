import pytest

from u1lib.grid import BASE, DEFAULT, GridError, Variant, apply_overrides, describe, expand

CONFIG = {
    "train": {
        "loss_type": "x0",
        "t_dist": "uniform",
        "t_mean": -0.8,
        "t_std": 0.8,
        "lr": 5e-5,
        "upstream_lora": {"path": None, "skip": []},
    },
    "prompt": {"template": "neo1_0", "trigger": "", "use_think": False},
    "sample": {"cfg_scale": 4.0, "prompt_set": "demo", "seeds": [0]},
    "dataset": {"val_count": 2},
}


def names(grid):
    return [variant.name for variant in expand(grid, CONFIG)]


def test_product_of_two_axes_gives_readable_sorted_names_and_knobs():
    variants = expand({"axes": {"train.loss_type": ["x0", "v"], "train.t_dist": ["uniform", "logit_normal"]}}, CONFIG)
    assert [v.name for v in variants] == [
        "loss-v_t-logit_normal",
        "loss-v_t-uniform",
        "loss-x0_t-logit_normal",
        "loss-x0_t-uniform",
    ]
    assert variants[0].knobs == {"train.loss_type": "v", "train.t_dist": "logit_normal"}
    assert variants[0].label == "train.loss_type=v, train.t_dist=logit_normal"


def test_names_do_not_depend_on_key_or_value_order():
    forward = expand({"axes": {"train.loss_type": ["x0", "v"], "train.t_dist": ["uniform", "logit_normal"]}}, CONFIG)
    backward = expand({"axes": {"train.t_dist": ["logit_normal", "uniform"], "train.loss_type": ["v", "x0"]}}, CONFIG)
    assert forward == backward


def test_mapping_form_uses_labels_not_float_values_in_names():
    variants = expand({"axes": {"train.lr": {"lr1e-4": 1.0e-4, "lr3e-4": 3.0e-4}}}, CONFIG)
    assert [(v.name, v.knobs["train.lr"]) for v in variants] == [("lr-lr1e-4", 1.0e-4), ("lr-lr3e-4", 3.0e-4)]


def test_float_values_in_list_form_are_refused():
    with pytest.raises(GridError, match=r"grid.axes.train.lr: value 0.0001 cannot be its own label"):
        expand({"axes": {"train.lr": [1.0e-4, 3.0e-4]}}, CONFIG)


def test_boolean_and_integer_values_get_word_labels():
    assert names({"axes": {"prompt.use_think": [True, False]}}) == ["use-false", "use-true"]


def test_clashing_derived_aliases_fall_back_to_the_whole_segment():
    variants = expand({"axes": {"train.t_mean": {"m0": 0.0}, "train.t_std": {"s1": 1.0}}}, CONFIG)
    assert [v.name for v in variants] == ["t_mean-m0_t_std-s1"]


def test_explicit_alias_and_clash_between_aliases():
    assert names({"axes": {"sample.cfg_scale": {"low": 2.0}}, "aliases": {"sample.cfg_scale": "guidance"}}) == [
        "guidance-low"
    ]
    with pytest.raises(GridError, match="would both be called 'x'"):
        expand(
            {
                "axes": {"train.lr": {"a": 1.0}, "train.t_std": {"b": 1.0}},
                "aliases": {"train.lr": "x", "train.t_std": "x"},
            },
            CONFIG,
        )


def test_explicit_variants_are_added_to_the_product():
    variants = expand(
        {
            "axes": {"train.loss_type": ["x0"]},
            "variants": [{"name": "long", "knobs": {"train.lr": 1.0e-4, "prompt.trigger": "ohwx"}}],
        },
        CONFIG,
    )
    assert [v.name for v in variants] == ["long", "loss-x0"]
    assert variants[0].knobs == {"prompt.trigger": "ohwx", "train.lr": 1.0e-4}


def test_no_grid_trains_one_default_variant():
    assert expand({}, CONFIG) == [Variant(DEFAULT, {}, "the config as written")]


def test_every_problem_is_reported_at_once_with_its_key():
    grid = {
        "axes": {
            "train.los_type": ["x0"],
            "dataset.val_count": [1],
            "sample.prompt_set": ["a"],
            "train.t_dist": ["uniform", "uniform"],
        },
        "variants": [{"name": "base", "knobs": {}}, {"name": "bad/name", "knobs": {"train.nope.deeper": 1}}],
    }
    with pytest.raises(GridError) as err:
        expand(grid, CONFIG)
    message = str(err.value)
    for expected in (
        "grid.axes: train.los_type: no such key",
        "grid.axes: 'dataset.val_count' must be a dotted key in one of the sections train, prompt, sample",
        "grid.axes: sample.prompt_set cannot vary",
        "grid.axes.train.t_dist: value 'uniform' listed twice",
        "variant name 'base' is reserved",
        "grid.variants[1].knobs: train.nope.deeper: no such key ('nope' is not a section)",
    ):
        assert expected in message


def test_name_collisions_and_unsafe_names_are_errors():
    with pytest.raises(GridError, match="variant name 'loss-x0' given twice"):
        expand({"axes": {"train.loss_type": ["x0"]}, "variants": [{"name": "loss-x0", "knobs": {}}]}, CONFIG)
    with pytest.raises(GridError, match=r"label 'a b' may only hold"):
        expand({"axes": {"train.loss_type": {"a b": "x0"}}}, CONFIG)
    with pytest.raises(GridError, match="labels 'one' and 'two' give the same value"):
        expand({"axes": {"train.loss_type": {"one": "x0", "two": "x0"}}}, CONFIG)


def test_apply_overrides_returns_a_new_dict_and_names_unknown_keys():
    result = apply_overrides(CONFIG, {"train.lr": 1.0, "train.upstream_lora.skip": ["a"]})
    assert result["train"]["lr"] == 1.0 and result["train"]["upstream_lora"]["skip"] == ["a"]
    assert CONFIG["train"]["lr"] == 5e-5 and CONFIG["train"]["upstream_lora"]["skip"] == []
    section = apply_overrides(CONFIG["sample"], {"cfg_scale": 1.5})
    assert section == {"cfg_scale": 1.5, "prompt_set": "demo", "seeds": [0]}
    with pytest.raises(GridError, match="train.lrr: no such key"):
        apply_overrides(CONFIG, {"train.lrr": 1.0})


def test_describe_gives_the_variants_document():
    variants = expand({"axes": {"train.loss_type": ["x0"]}}, CONFIG)
    assert describe(variants) == {
        "variants": {"loss-x0": {"knobs": {"train.loss_type": "x0"}, "label": "train.loss_type=x0"}},
        "base": BASE,
    }
