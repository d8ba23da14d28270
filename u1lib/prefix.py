"""Text -> prefix K/V on the understanding tower: the one code path behind the cache stage,
online-prefix training and sampling, so their numbers agree exactly."""

from __future__ import annotations

from typing import Sequence

import torch

from u1lib.data.prompts import UNCOND_TEXT, PromptSpec, cond_text, encode
from u1lib.model.u1 import PrefixKV, U1Model


class PrefixEncoder:
    def __init__(self, model: U1Model, tokenizer, spec: PromptSpec, device: torch.device | str = "cpu"):
        self.model, self.tokenizer, self.spec, self.device = model, tokenizer, spec, torch.device(device)

    def token_ids(self, caption: str, think: str | None = None) -> list[int]:
        return encode(self.tokenizer, cond_text(self.spec, caption, think))

    def uncond_ids(self) -> list[int]:
        return encode(self.tokenizer, UNCOND_TEXT)

    @torch.no_grad()
    def encode_ids(self, rows: Sequence[list[int]]) -> PrefixKV:
        """Prefixes of token id lists, in order, right-padded to the longest.

        Rows are run in groups of equal length, so no row ever shares a forward with padding: each
        row's K/V is then the same whatever batch it came in (cache and online mode agree exactly).
        """
        vocab = self.model.config.vocab_size
        too_big = max((max(row, default=0) for row in rows), default=0)
        if too_big >= vocab:
            raise ValueError(
                f"the tokenizer produced id {too_big}, but the model's vocab_size is {vocab}: "
                "tokenizer.json and config.json of this snapshot do not belong together"
            )
        by_length: dict[int, list[int]] = {}
        for index, row in enumerate(rows):
            by_length.setdefault(len(row), []).append(index)
        parts: dict[int, PrefixKV] = {}
        for length, indices in by_length.items():
            ids = torch.tensor([rows[i] for i in indices], dtype=torch.long, device=self.device)
            group = self.model.prefix(ids)
            parts.update({i: group.select(j) for j, i in enumerate(indices)})
        return PrefixKV.stack([parts[i] for i in range(len(rows))])

    def captions(self, captions: Sequence[str], thinks: Sequence[str | None] | None = None) -> PrefixKV:
        thinks = thinks or [None] * len(captions)
        return self.encode_ids([self.token_ids(c, t) for c, t in zip(captions, thinks)])

    def uncond(self) -> PrefixKV:
        return self.encode_ids([self.uncond_ids()])
