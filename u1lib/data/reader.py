"""Streaming access to a packed dataset for training.

:class:`PackedDataset` reads only the small columns up front and fetches whole rows one row group
at a time, so the image column is never loaded as a whole. :class:`BucketBatchSampler` makes
batches of one bucket each; its order is a pure function of (seed, epoch), so a resumed run given
the saved ``(epoch, position)`` continues exactly, on any number of data-parallel ranks.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow.parquet as pq
import torch

from u1lib.data.pixels import load_image_tensor
from u1lib.data.schema import PACKED_COLUMNS, read_schema, schema_problems

INDEX_COLUMNS = ["sample_id", "bucket", "width", "height"]


class PackedDataset:
    """Rows of a ``train.parquet`` / ``val.parquet`` written by ``pack``, fetched by index."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        problems = schema_problems(read_schema(self.path), PACKED_COLUMNS)
        if problems:
            raise ValueError(f"{self.path}: not a packed dataset ({'; '.join(problems)}); re-run pack")
        self._file = pq.ParquetFile(self.path)
        index = self._file.read(columns=INDEX_COLUMNS)
        self.sample_ids: list[str] = index.column("sample_id").to_pylist()
        self.buckets: list[str] = index.column("bucket").to_pylist()
        self.widths: list[int] = index.column("width").to_pylist()
        self.heights: list[int] = index.column("height").to_pylist()
        group_rows = [self._file.metadata.row_group(g).num_rows for g in range(self._file.num_row_groups)]
        self._group_starts = list(itertools.accumulate(group_rows, initial=0))
        self._cached_group: tuple[int, list[dict]] | None = None

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index: int) -> dict:
        return self.rows([index])[0]

    def rows(self, indices: Sequence[int]) -> list[dict]:
        """Full rows (image as PNG bytes) in the order asked; each row group is read at most once."""
        located = [self._locate(i) for i in indices]
        fetched: dict[int, list[dict]] = {}
        for group in sorted({group for group, _ in located}):
            fetched[group] = self._read_group(group)
        return [fetched[group][offset] for group, offset in located]

    def fingerprint(self) -> str:
        """sha256 over every row's id and source-file hash: changes when any item is added, dropped or edited."""
        table = self._file.read(columns=["sample_id", "sha256"])
        digest = hashlib.sha256()
        for sample_id, source_hash in zip(table.column("sample_id").to_pylist(), table.column("sha256").to_pylist()):
            digest.update(f"{sample_id}\t{source_hash}\n".encode())
        return digest.hexdigest()[:16]

    def texts(self) -> list[tuple[str, str | None]]:
        """(caption, think) of every row, in row order, without touching the images (for the cache stage)."""
        table = self._file.read(columns=["caption", "think"])
        return list(zip(table.column("caption").to_pylist(), table.column("think").to_pylist()))

    def load_batch(self, indices: Sequence[int]) -> tuple[list[str], torch.Tensor]:
        """Sample ids and images ``[B, 3, H, W]`` in [-1, 1] of one bucket's rows."""
        rows = self.rows(indices)
        buckets = sorted({row["bucket"] for row in rows})
        if len(buckets) != 1:
            raise ValueError(f"a batch must hold one bucket, got {', '.join(buckets)}")
        images = torch.stack([self._image_tensor(row) for row in rows])
        return [row["sample_id"] for row in rows], images

    def _image_tensor(self, row: dict) -> torch.Tensor:
        """One row's image; a cell pack did not write is refused with the file and the id."""
        try:
            tensor = load_image_tensor(row["image"])
        except ValueError as err:
            raise ValueError(f"{self.path}: sample_id {row['sample_id']!r}: {err}; re-run pack") from None
        if tuple(tensor.shape[1:]) != (row["height"], row["width"]):
            raise ValueError(
                f"{self.path}: sample_id {row['sample_id']!r}: the image is {tensor.shape[2]}x{tensor.shape[1]}, "
                f"its row says {row['width']}x{row['height']}; re-run pack"
            )
        return tensor

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: row {index} out of range (0..{len(self) - 1})")
        group = bisect.bisect_right(self._group_starts, index) - 1
        return group, index - self._group_starts[group]

    def _read_group(self, group: int) -> list[dict]:
        # consecutive batches often share a row group (rows are sorted by id, groups are small)
        if self._cached_group is None or self._cached_group[0] != group:
            self._cached_group = (group, self._file.read_row_group(group).to_pylist())
        return self._cached_group[1]


def _hash_order(count: int, salt: str) -> list[int]:
    """A permutation of range(count) from sha256 keys: stable across Python and library versions."""
    return sorted(range(count), key=lambda k: hashlib.sha256(f"{salt}:{k}".encode()).digest())


class BucketBatchSampler:
    """Batches of indices from one bucket each; an epoch is a seeded shuffle without replacement.

    Per epoch: each bucket's indices are shuffled and cut into batches (a short last batch is kept
    unless ``drop_last``), then the batches of all buckets are shuffled together. Data-parallel
    ranks all draw the same global batches and each takes its slice (train/distributed.py), so
    the order does not depend on the number of ranks.

    Iterating yields the rest of the current epoch; the next iteration starts the next epoch.
    ``state_dict()`` is ``(epoch, position)`` = batches of this epoch already handed out.
    """

    def __init__(self, dataset, batch_size: int, seed: int, drop_last: bool = False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        by_bucket: dict[str, list[int]] = defaultdict(list)
        for index, bucket in enumerate(dataset.buckets):
            by_bucket[bucket].append(index)
        self._by_bucket = dict(sorted(by_bucket.items()))
        self.epoch, self.position = 0, 0
        self._plan: tuple[int, list[list[int]]] | None = None
        self._check_not_empty()

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch``, in order."""
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, self._all_batches(epoch))
        return self._plan[1]

    def _all_batches(self, epoch: int) -> list[list[int]]:
        batches = []
        for bucket, indices in self._by_bucket.items():
            shuffled = [indices[k] for k in _hash_order(len(indices), f"{self.seed}:{epoch}:{bucket}")]
            for start in range(0, len(shuffled), self.batch_size):
                batch = shuffled[start : start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        return [batches[k] for k in _hash_order(len(batches), f"{self.seed}:{epoch}:batches")]

    def _check_not_empty(self) -> None:
        if not self.epoch_batches(0):
            sizes = ", ".join(f"{bucket}: {len(ids)}" for bucket, ids in self._by_bucket.items()) or "no rows"
            raise ValueError(
                f"no batch with batch_size {self.batch_size} and drop_last={self.drop_last} "
                f"(items per bucket: {sizes}); lower batch_size or add images"
            )

    def __len__(self) -> int:
        return len(self.epoch_batches(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        if self.position >= len(self.epoch_batches(self.epoch)):
            self.epoch, self.position = self.epoch + 1, 0
        batches = self.epoch_batches(self.epoch)
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield batch

    def peek(self) -> list[int]:
        """The batch the next iteration will yield, without consuming it (for prefetching)."""
        batches = self.epoch_batches(self.epoch)
        if self.position < len(batches):
            return batches[self.position]
        return self.epoch_batches(self.epoch + 1)[0]

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved state; the settings that shape the order must be unchanged (the rank
        fields older checkpoints carry do not shape it)."""
        mismatched = [
            f"{key} {state.get(key)!r} (now {getattr(self, key)!r})"
            for key in ("seed", "batch_size", "drop_last")
            if state.get(key) != getattr(self, key)
        ]
        if mismatched:
            raise ValueError(f"sampler state was saved with other settings: {', '.join(mismatched)}")
        epoch, position = state["epoch"], state["position"]
        if not 0 <= position <= len(self.epoch_batches(epoch)):
            raise ValueError(f"sampler state position {position} is outside epoch {epoch}")
        self.epoch, self.position = epoch, position
