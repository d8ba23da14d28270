import json
import shutil
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from u1lib.data.prompts import (
    UNCOND_TEXT,
    PromptSpec,
    cond_text,
    encode,
    load_tokenizer,
    special_token_id,
)

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "golden_u1_tiny_a"
PROMPTS = json.loads((GOLDEN / "prompts.json").read_text(encoding="utf-8"))
CHAT_TAIL = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(GOLDEN)


def test_templates_reproduce_the_golden_queries_byte_for_byte():
    assert cond_text(PromptSpec(), PROMPTS["prompt"]) == PROMPTS["cond_query"]
    assert UNCOND_TEXT == PROMPTS["uncond_query"]


def test_golden_token_ids_are_reproduced(tokenizer):
    inputs = load_file(str(GOLDEN / "inputs.safetensors"))
    cond = encode(tokenizer, cond_text(PromptSpec(), PROMPTS["prompt"]))
    assert cond == inputs["prefix.cond.input_ids"][0].tolist()
    assert len(cond) == 258
    assert encode(tokenizer, UNCOND_TEXT) == inputs["prefix.uncond.input_ids"][0].tolist()


def test_special_token_ids_are_looked_up_by_string(tokenizer):
    for token, token_id in PROMPTS["special_token_ids"].items():
        assert special_token_id(tokenizer, token) == token_id
    with pytest.raises(LookupError, match="no token '<image_pad>'"):
        special_token_id(tokenizer, "<image_pad>")


def test_encode_never_adds_bos_or_eos(tmp_path):
    config = json.loads((GOLDEN / "tokenizer.json").read_text())
    config["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<|im_end|>", "type_id": 0}},
        ],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {
            "<|endoftext|>": {"id": "<|endoftext|>", "ids": [128], "tokens": ["<|endoftext|>"]},
            "<|im_end|>": {"id": "<|im_end|>", "ids": [130], "tokens": ["<|im_end|>"]},
        },
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(config))
    with_processor = load_tokenizer(tmp_path)
    assert with_processor.encode("a red fox").ids[0] == 128  # the processor is live ...
    assert encode(with_processor, "a red fox") == encode(load_tokenizer(GOLDEN), "a red fox")  # ... but not used


def test_tokenizer_config_is_never_read(tmp_path):
    """Its class and auto_map would name code to run; tokenizer.json alone decides the ids."""
    shutil.copy(GOLDEN / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "Qwen2Tokenizer", "auto_map": {"AutoTokenizer": ["remote.Tok", None]}})
    )
    tokenizer = load_tokenizer(tmp_path)
    assert encode(tokenizer, UNCOND_TEXT) == [129, 122, 130, 129, 44, 133]
    (tmp_path / "tokenizer_config.json").write_text("{ not json")
    assert encode(load_tokenizer(tmp_path), UNCOND_TEXT) == [129, 122, 130, 129, 44, 133]


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_trigger_is_prepended_to_the_caption():
    text = cond_text(PromptSpec(trigger="sks style"), "a cat")
    assert "<|im_start|>user\nsks style, a cat<|im_end|>" in text


def test_think_labels_replace_the_empty_think_block():
    spec = PromptSpec(use_think=True)
    with_think = cond_text(spec, "a cat", think="cats are soft")
    assert with_think.endswith(CHAT_TAIL.format(prompt="a cat") + "<think>\ncats are soft\n</think>\n\n<img>")
    assert cond_text(spec, "a cat") == cond_text(PromptSpec(), "a cat")
    assert cond_text(PromptSpec(use_think=False), "a cat", think="ignored") == cond_text(PromptSpec(), "a cat")


def test_plain_template_has_no_system_message_and_no_think_block():
    assert cond_text(PromptSpec(template="plain"), "a cat") == CHAT_TAIL.format(prompt="a cat") + "<img>"
    assert cond_text(PromptSpec(template="plain"), "", None) == UNCOND_TEXT
    thinking = cond_text(PromptSpec(template="plain", use_think=True), "a cat", "hmm")
    assert thinking == CHAT_TAIL.format(prompt="a cat") + "<think>\nhmm\n</think>\n\n<img>"


@pytest.mark.parametrize(
    "data,message",
    [
        ({"template": "chatml"}, "template 'chatml'"),
        ({"trigger": "<img>"}, "template tokens"),
        ({"use_think": "yes"}, "use_think"),
        ({"tempalte": "plain"}, "unknown key(s) tempalte"),
    ],
)
def test_prompt_spec_errors(data, message):
    with pytest.raises(ValueError) as caught:
        PromptSpec.from_dict(data)
    assert message in str(caught.value)


def test_prompt_spec_round_trip():
    spec = PromptSpec(template="plain", trigger="x", use_think=True)
    assert PromptSpec.from_dict(spec.to_dict()) == spec
