"""Conditional / unconditional prefixes for training rows: read from the cache, or computed online."""

from __future__ import annotations

from u1lib.cache import PrefixCacheReader
from u1lib.model.u1 import PrefixKV
from u1lib.prefix import UNCOND_ID, PrefixEncoder


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
