"""Schema violations name the key path the user wrote, every one at once, with a hint where one helps."""

from u1lib.config_errors import config_problems, key_path, problems_message

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "train": {
            "type": "object",
            "additionalProperties": False,
            "required": ["steps"],
            "properties": {
                "steps": {"type": "integer"},
                "lr": {"type": "number"},
                "betas": {"type": "array", "items": {"type": "number"}},
            },
        }
    },
}


def test_key_paths_read_as_written():
    assert key_path(["train", "betas", 1]) == "train.betas[1]"
    assert key_path([]) == "(top level)"


def test_every_problem_is_named_with_its_hint():
    problems = config_problems({"train": {"lrr": 1.0e-4, "betas": [0.9, "x"]}, "trian": {}}, SCHEMA)
    assert problems == [
        "train.betas[1]: 'x' is not of type 'number'",
        "train.lrr: unknown key; did you mean 'lr'?",
        "train.steps: missing; the other settings here need it",
        "trian: unknown key; did you mean 'train'?",
    ]
    assert config_problems({"model": {}}, SCHEMA) == ["model: unknown key; allowed: train"]


def test_yaml_text_exponents_get_the_fix():
    (problem,) = config_problems({"train": {"steps": 1, "lr": "1e-4"}}, SCHEMA)
    assert problem.startswith("train.lr: '1e-4' is not of type 'number'")
    assert problem.endswith("(YAML reads 1e-4 as text: write 1.0e-4)")


def test_a_valid_config_has_no_problems():
    assert config_problems({"train": {"steps": 3}}, SCHEMA) == []
    assert (
        problems_message("invalid config (a.yaml)", ["x: bad", "y: bad"])
        == "invalid config (a.yaml):\n  x: bad\n  y: bad"
    )
