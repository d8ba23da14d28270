"""Prompt templates and the tokenizer: the exact text the model sees in front of the image tokens.

Templates (``PromptSpec.template``):

* ``neo1_0`` — upstream's ChatML template with the generation system message and an empty think
  block (docs/MODEL.md §6.6); byte-for-byte what ``t2i_generate`` builds.
* ``plain`` — the same turns without the system message and without a think block:
  ``<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n<img>``. It is the layout of the
  unconditional prefix with the prompt filled in (the shape upstream trains its condition-dropped
  items on), for experiments with a shorter prefix.

Options: a style ``trigger`` is prepended as ``"{trigger}, {caption}"``. With ``use_think`` on and a
sample that has think text, the assistant turn opens with ``<think>\\n{think}\\n</think>\\n\\n<img>``
(for ``neo1_0`` this replaces the empty think block; ``plain`` gains the block); samples without
think text keep the template's default. The unconditional prefix (:data:`UNCOND_TEXT`) is the same
for every template: no system message, no think block, no trigger.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import Tokenizer

SYSTEM_MESSAGE_FOR_GEN = (
    "You are an image generation and editing assistant that accurately understands and executes user intent.\n\n"
    "You support two modes:\n\n"
    "1. Think Mode:\n"
    "If the task requires reasoning, you MUST start with a <think></think> block. Put all reasoning inside the block "
    "using plain text. DO NOT include any image tags. Keep it reasonable and directly useful for producing the final "
    "image.\n\n"
    "2. Non-Think Mode:\n"
    "If no reasoning is needed, directly produce the final image.\n\n"
    "Task Types:\n\n"
    "A. Text-to-Image Generation:\n"
    "- Generate a high-quality image based on the user's description.\n"
    "- Ensure visual clarity, semantic consistency, and completeness.\n"
    "- DO NOT introduce elements that contradict or override the user's intent.\n\n"
    "B. Image Editing:\n"
    "- Use the provided image(s) as input or reference for modification or transformation.\n"
    "- The result can be an edited image or a new image based on the reference(s).\n"
    "- Preserve all unspecified attributes unless explicitly changed.\n\n"
    "General Rules:\n"
    "- For any visible text in the image, follow the language specified for the rendered text in the user's "
    "description, not the language of the prompt. If no language is specified, use the user's input language."
)
UNCOND_TEXT = "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n<img>"
UNCOND_ID = "__uncond__"  # the cache stores the unconditional prefix under this id, so no sample may use it
EMPTY_THINK_BLOCK = "<think>\n\n</think>\n\n"
TEMPLATES = ("neo1_0", "plain")
# Strings the tokenizer turns into control tokens; a caption must not contain them.
TEMPLATE_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<think>",
    "</think>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
)


@dataclass(frozen=True)
class PromptSpec:
    template: str = "neo1_0"
    trigger: str = ""
    use_think: bool = False

    def __post_init__(self):
        problems = []
        if self.template not in TEMPLATES:
            problems.append(f"template {self.template!r} is not one of {', '.join(TEMPLATES)}")
        if not isinstance(self.trigger, str):
            problems.append(f"trigger must be a string, got {self.trigger!r}")
        elif any(token in self.trigger for token in TEMPLATE_TOKENS):
            problems.append(f"trigger {self.trigger!r} must not contain template tokens")
        if not isinstance(self.use_think, bool):
            problems.append(f"use_think must be true or false, got {self.use_think!r}")
        if problems:
            raise ValueError("prompt spec: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict) -> PromptSpec:
        unknown = sorted(set(data) - {"template", "trigger", "use_think"})
        if unknown:
            raise ValueError(f"prompt spec: unknown key(s) {', '.join(unknown)}; allowed: template, trigger, use_think")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


def cond_text(spec: PromptSpec, caption: str, think: str | None = None) -> str:
    """The conditional prefix for one caption (see the module docstring)."""
    prompt = f"{spec.trigger}, {caption}" if spec.trigger else caption
    if spec.use_think and think:
        think_block = f"<think>\n{think}\n</think>\n\n"
    else:
        think_block = EMPTY_THINK_BLOCK if spec.template == "neo1_0" else ""
    system = f"<|im_start|>system\n{SYSTEM_MESSAGE_FOR_GEN}<|im_end|>\n" if spec.template == "neo1_0" else ""
    return f"{system}<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{think_block}<img>"


def load_tokenizer(snapshot_dir: str | os.PathLike) -> Tokenizer:
    """The snapshot's ``tokenizer.json`` as a ``tokenizers.Tokenizer``.

    The file alone decides the ids, so no tokenizer class named in ``tokenizer_config.json`` and no
    remote code is ever loaded; and no job imports transformers for it (seconds of every start).
    """
    snapshot_dir = Path(snapshot_dir)
    tokenizer_file = snapshot_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"{tokenizer_file}: missing; a model snapshot must contain tokenizer.json")
    try:
        return Tokenizer.from_file(str(tokenizer_file))
    except Exception as err:  # noqa: BLE001 -- the tokenizers library raises plain Exception
        raise ValueError(f"{tokenizer_file}: not a valid tokenizers file ({err})") from None


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` exactly as written: no BOS/EOS or other post-processing added."""
    return tokenizer.encode(text, add_special_tokens=False).ids


def decode(tokenizer: Tokenizer, ids: list[int]) -> str:
    """The text of ``ids``, control tokens included."""
    return tokenizer.decode(ids, skip_special_tokens=False)


def special_token_id(tokenizer: Tokenizer, token: str) -> int:
    """The id of a control token, looked up by its string; it must encode as that single id."""
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise LookupError(f"tokenizer has no token {token!r}; the snapshot's tokenizer.json does not match this model")
    if encode(tokenizer, token) != [token_id]:
        raise LookupError(
            f"token {token!r} (id {token_id}) is not kept whole by the tokenizer; it must be an added token"
        )
    return token_id
