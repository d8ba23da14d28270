"""Think mode (greedy decoding with a K/V cache) and the sampler's CFG options, against u1_think_a."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models

from tests.conftest import DATA
from u1lib.data.prompts import PromptSpec, cond_text, load_tokenizer
from u1lib.model.loading import load_model
from u1lib.model.sampling import euler_sample, time_grid
from u1lib.model.think import ThinkResult, ThinkTokens, decode_think, think, think_prompt

GOLDEN = DATA / "golden_u1_think_a"


@pytest.fixture(scope="module")
def model():
    return load_model(GOLDEN, ["und", "gen", "fm", "embed", "lm_head"])


@pytest.fixture(scope="module")
def tokens() -> ThinkTokens:
    return ThinkTokens.from_tokenizer(load_tokenizer(GOLDEN))


@pytest.fixture(scope="module")
def golden():
    meta = json.loads((GOLDEN / "meta.json").read_text())
    return load_file(GOLDEN / "inputs.safetensors"), load_file(GOLDEN / "expected.safetensors"), meta


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def test_prompt_template_is_upstreams_think_query():
    prompts = json.loads((GOLDEN / "prompts.json").read_text())
    assert think_prompt(cond_text(PromptSpec(), prompts["prompt"])) == prompts["think_query"]
    assert think_prompt(cond_text(PromptSpec(template="plain"), "a cat")).endswith("assistant\n<think>\n")
    with pytest.raises(ValueError, match="no '<|im_start|>assistant\\\\n' turn"):
        think_prompt("just text")


def test_tokens_from_the_tokenizer(tokens, golden):
    specials = json.loads((GOLDEN / "prompts.json").read_text())["special_token_ids"]
    assert (tokens.eos_id, tokens.think_end_id) == (specials["<|im_end|>"], specials["</think>"])
    assert tokens.append_ids == tuple(golden[2]["think"]["think"]["append_ids"])
    bare = Tokenizer(models.WordLevel({"a": 0}, unk_token="a"))
    with pytest.raises(LookupError, match="no token '<\\|im_end\\|>'"):
        ThinkTokens.from_tokenizer(bare)


@pytest.mark.parametrize("run, stop", [("think", "budget"), ("think_end", "think_end")])
def test_both_stopping_rules_match_upstream(model, tokens, golden, run, stop):
    inputs, expected, meta = golden
    result = decode_think(model, inputs[f"{run}.prompt.input_ids"][0].tolist(), tokens, meta["think_budget"])
    assert result.stop == stop == meta["think"][run]["stop"]
    assert result.token_ids == expected[f"{run}.token_ids"].tolist()
    assert result.input_ids == expected[f"{run}.cond.input_ids"][0].tolist()
    assert rel(result.logits, expected[f"{run}.logits"]) < 1e-5
    last = len(result.cache.keys) - 1
    assert rel(result.cache.keys[last], expected[f"{run}.prefix.cond.layer{last}.k"]) < 1e-5
    assert result.cache.lengths.tolist() == [len(result.input_ids)]
    assert result.text(load_tokenizer(GOLDEN)) == meta["think"][run]["text"]


def test_think_from_the_caption_text(model, golden):
    """From the prompt template to the thought-extended prefix, as the sampler calls it."""
    inputs, expected, meta = golden
    tokenizer = load_tokenizer(GOLDEN)
    result = think(model, tokenizer, cond_text(PromptSpec(), meta["think"]["think"]["prompt"]), meta["think_budget"])
    assert result.input_ids[: inputs["think.prompt.input_ids"].shape[1]] == inputs["think.prompt.input_ids"][0].tolist()
    assert result.input_ids == expected["think.cond.input_ids"][0].tolist()


def assert_cache_is_the_prefix(model, result: ThinkResult):
    """Decoding token by token yields the K/V a single causal pass over the same ids yields."""
    fresh = model.prefix(torch.tensor([result.input_ids]))
    for ours, theirs in zip(result.cache.keys + result.cache.values, fresh.keys + fresh.values):
        assert ours.shape == theirs.shape and rel(ours, theirs) < 1e-5


def test_end_of_sequence_stops_without_being_kept(model, tokens, golden):
    inputs = golden[0]
    prompt = inputs["think.prompt.input_ids"][0].tolist()
    free = decode_think(model, prompt, tokens, 4)
    boosted = copy.deepcopy(model)
    head = boosted.language_model.lm_head.weight
    with torch.no_grad():  # after two tokens, the end-of-turn token outscores the third choice
        head[tokens.eos_id] = 1.05 * head[free.token_ids[2]]
    result = decode_think(boosted, prompt, tokens, 12)
    assert result.stop == "eos" and result.token_ids == free.token_ids[:2]
    assert result.logits.shape == (3, boosted.config.vocab_size)
    assert int(result.logits[-1].argmax()) == tokens.eos_id
    assert result.input_ids == prompt + free.token_ids[:2] + list(tokens.append_ids)
    assert_cache_is_the_prefix(boosted, result)


def test_zero_budget_appends_only(model, tokens, golden):
    prompt = golden[0]["think_end.prompt.input_ids"][0].tolist()
    result = decode_think(model, prompt, tokens, 0)
    assert (result.stop, result.token_ids, result.logits.shape[0]) == ("budget", [], 1)
    assert_cache_is_the_prefix(model, result)
    with pytest.raises(ValueError, match="max_tokens must be >= 0, got -1"):
        decode_think(model, prompt, tokens, -1)


def test_extend_prefix_takes_one_row(model):
    cache = model.prefix(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="one row"):
        model.extend_prefix(cache, torch.zeros(2, 1, dtype=torch.long))


# CFG options beyond the golden runs ----------------------------------------------------------------


def records(model, golden, **options) -> list[dict]:
    inputs, _, meta = golden
    cond, uncond = model.prefix(inputs["prefix.cond.input_ids"]), model.prefix(inputs["prefix.uncond.input_ids"])
    steps = []
    euler_sample(
        model,
        cond,
        uncond,
        inputs["sample.init_noise"],
        steps=meta["sampler"]["num_steps"],
        observer=lambda i, record: steps.append(record),
        **options,
    )
    return steps


def test_cfg_zero_star_outside_the_interval_is_plain_conditional(model, golden):
    steps = records(model, golden, cfg_norm="cfg_zero_star", cfg_interval=(0.05, 1.0))
    assert "v_uncond" not in steps[0] and torch.equal(steps[0]["v_pred"], steps[0]["v_cond"])
    assert "alpha" in steps[1] and not torch.equal(steps[1]["v_pred"], steps[1]["v_cond"])


def test_interval_bounds_compare_in_float32(model, golden):
    t1 = float(time_grid(golden[2]["sampler"]["num_steps"], 3.0)[1])  # 0.100000024 in float32
    low = t1 + 1e-9  # above t1 as a double, rounds to t1 in float32: upstream applies CFG at step 1
    assert low > t1 and torch.tensor(low, dtype=torch.float32).item() == t1
    steps = records(model, golden, cfg_interval=(low, 1.0))
    assert ["v_uncond" in s for s in steps] == [False, True, True, True]
