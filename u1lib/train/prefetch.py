"""Decode the next batch's images on a worker thread while the current step computes.

Only image loading moves off the main thread; the order of batches and every random draw stay in the
training loop, so losses are the same with or without prefetching.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch

from u1lib.data.reader import PackedDataset


class BatchPrefetcher:
    def __init__(self, dataset: PackedDataset, pin_memory: bool):
        self.dataset, self.pin_memory = dataset, pin_memory
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="u1lib-prefetch")  # one reader at a time
        self._pending: tuple[tuple[int, ...], Future] | None = None

    def _load(self, indices: list[int]) -> tuple[list[str], torch.Tensor]:
        ids, images = self.dataset.load_batch(indices)
        return ids, images.pin_memory() if self.pin_memory else images

    def load(self, indices: list[int]) -> tuple[list[str], torch.Tensor]:
        """This batch: from the prefetch if it was the one announced, else loaded now (on the worker)."""
        key = tuple(indices)
        if self._pending is None or self._pending[0] != key:
            self._pending = (key, self._pool.submit(self._load, list(indices)))
        result = self._pending[1].result()
        self._pending = None
        return result

    def prefetch(self, indices: list[int]) -> None:
        self._pending = (tuple(indices), self._pool.submit(self._load, list(indices)))
