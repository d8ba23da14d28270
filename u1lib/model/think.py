"""Think mode: greedy decoding on the understanding tower inside the ``<think>`` block.

Upstream's text-to-image think mode (conditional branch only): the prompt ends with the assistant
turn opened by ``<think>\\n``; tokens are chosen greedily from ``lm_head`` with a K/V cache until
``</think>`` (fed and kept), the end-of-sequence token (neither fed nor kept) or the budget (the last
choice discarded); then ``\\n\\n<img>`` is appended. The thought-extended prefix is what the image
tokens attend to; its cache is the result, so nothing is tokenised twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from u1lib.data.prompts import decode, encode, special_token_id
from u1lib.model.u1 import PrefixKV, U1Model

THINK_OPEN = "<think>\n"
THINK_END = "</think>"
END_OF_TURN = "<|im_end|>"  # the chat template's end-of-sequence token
APPEND_TEXT = "\n\n<img>"
ASSISTANT_TURN = "<|im_start|>assistant\n"


@dataclass(frozen=True)
class ThinkTokens:
    """The ids decoding needs: the two stop tokens and the ids appended after thinking."""

    eos_id: int
    think_end_id: int
    append_ids: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> ThinkTokens:
        """From a snapshot's tokenizer (``u1lib.data.prompts.load_tokenizer``); a missing control token is named."""
        append = tuple(encode(tokenizer, APPEND_TEXT))
        return cls(special_token_id(tokenizer, END_OF_TURN), special_token_id(tokenizer, THINK_END), append)


@dataclass
class ThinkResult:
    token_ids: list[int]  # every token chosen and fed back (ends with </think> when that stopped it)
    stop: str  # "think_end", "eos" or "budget"
    input_ids: list[int]  # prompt + token_ids + append ids: the conditional prefix to sample with
    cache: PrefixKV  # its K/V, one row
    logits: torch.Tensor  # [len(token_ids) + 1, vocab] float32: row j is what token j was chosen from

    def text(self, tokenizer) -> str:
        """The thought as text (control tokens such as a final ``</think>`` included)."""
        return decode(tokenizer, self.token_ids)


def think_prompt(cond_text: str) -> str:
    """A conditional prefix text (``u1lib.data.prompts.cond_text``) with its assistant turn reopened
    as ``<think>\\n``, the prompt think mode decodes from."""
    head, sep, _ = cond_text.rpartition(ASSISTANT_TURN)
    if not sep:
        raise ValueError(f"think mode: the prompt has no {ASSISTANT_TURN!r} turn to open a think block in")
    return head + sep + THINK_OPEN


@torch.no_grad()
def decode_think(model: U1Model, prompt_ids: list[int], tokens: ThinkTokens, max_tokens: int) -> ThinkResult:
    """Greedy think decoding for one prompt (ids ending with ``<think>\\n``); at most ``max_tokens`` tokens.

    Needs the ``und``, ``embed`` and ``lm_head`` groups loaded.
    """
    if max_tokens < 0:
        raise ValueError(f"think max_tokens must be >= 0, got {max_tokens}")
    device = model.language_model.model.embed_tokens.weight.device
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    cache, hidden = model.prefix(ids, final_norm=True)
    rows = [model.lm_logits(hidden[:, -1]).float()]
    chosen, stop = [], "budget"
    for _ in range(max_tokens):
        token = int(rows[-1].argmax(dim=-1))
        if token == tokens.eos_id:
            stop = "eos"
            break
        chosen.append(token)
        cache, hidden = model.extend_prefix(cache, torch.tensor([[token]], device=device))
        rows.append(model.lm_logits(hidden[:, -1]).float())
        if token == tokens.think_end_id:
            stop = "think_end"
            break
    cache, _ = model.extend_prefix(cache, torch.tensor([tokens.append_ids], dtype=torch.long, device=device))
    full = list(prompt_ids) + chosen + list(tokens.append_ids)
    return ThinkResult(chosen, stop, full, cache, torch.cat(rows))


def think(model: U1Model, tokenizer, cond_text: str, max_tokens: int) -> ThinkResult:
    """Think mode for one conditional prefix text (``u1lib.data.prompts.cond_text``, trigger included):
    reopen its assistant turn as ``<think>\n``, tokenise, decode greedily."""
    prompt_ids = encode(tokenizer, think_prompt(cond_text))
    return decode_think(model, prompt_ids, ThinkTokens.from_tokenizer(tokenizer), max_tokens)
