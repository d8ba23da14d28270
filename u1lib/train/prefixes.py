"""Conditional / unconditional prefixes for training rows: read from the cache, or computed online."""

from __future__ import annotations

from pathlib import Path

import torch

from u1lib.cache import PrefixCacheReader
from u1lib.data.prompts import UNCOND_ID, PromptSpec, load_tokenizer
from u1lib.data.reader import PackedDataset
from u1lib.model.u1 import PrefixKV, U1Model
from u1lib.prefix import PrefixEncoder


class PrefixSource:
    """One interface over both memory modes, so the step and the validator never ask which is on."""

    def __init__(self, *, cache: PrefixCacheReader | None, encoder: PrefixEncoder | None, captions: dict, dtype):
        self.cache, self.encoder, self.captions, self.dtype = cache, encoder, captions, dtype

    def _fetch(self, ids: list[str]) -> PrefixKV:
        if self.cache is not None:
            return self.cache.get(ids)
        rows = [self.encoder.uncond_ids() if i == UNCOND_ID else self.encoder.token_ids(*self.captions[i]) for i in ids]
        return self.encoder.encode_ids(rows).to(dtype=self.dtype)

    def cond(self, ids: list[str]) -> PrefixKV:
        return self._fetch(ids)

    def mixed(self, ids: list[str], dropped: list[bool]) -> PrefixKV:
        """Each row's caption prefix, or the unconditional prefix where its condition is dropped."""
        return self._fetch([UNCOND_ID if d else i for i, d in zip(ids, dropped)])


def open_prefixes(
    cache: PrefixCacheReader | None,
    *,
    model: U1Model,
    snapshot_dir: Path,
    prompt: dict | None,
    data: list[PackedDataset],
    dtype: torch.dtype,
    device: torch.device,
) -> PrefixSource:
    """The cache when the run has one, else an encoder over the model's understanding tower that
    knows every caption of ``data``."""
    if cache is not None:
        return PrefixSource(cache=cache, encoder=None, captions={}, dtype=dtype)
    encoder = PrefixEncoder(model, load_tokenizer(snapshot_dir), PromptSpec.from_dict(prompt or {}), device)
    captions = {}
    for dataset in data:
        captions.update(zip(dataset.sample_ids, dataset.texts()))
    return PrefixSource(cache=None, encoder=encoder, captions=captions, dtype=dtype)
