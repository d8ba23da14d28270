"""Data parallel over torch.distributed (torchrun), a no-op for one process.

Every rank draws the same global batch and the same random numbers, then works on its slice, so N
ranks give the same losses as one process with the same global batch; gradients of the trainable
tensors are averaged in buckets that are all-reduced while the backward still runs (GradientReducer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as td


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def slice(self, count: int) -> slice:
        """This rank's part of a global batch of ``count`` items."""
        if count % self.world_size:
            raise ValueError(f"global batch {count} does not split evenly over {self.world_size} ranks")
        per = count // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return tensor
        device = "cuda" if td.get_backend() == "nccl" else "cpu"
        moved = tensor.to(device)
        td.all_reduce(moved)
        return moved.to(tensor.device)

    def gradient_reducer(self, params: list[torch.nn.Parameter]) -> "GradientReducer":
        """The reducer that averages ``params``' gradients over the ranks (a no-op for one process)."""
        return GradientReducer(params, self.world_size)

    def barrier(self) -> None:
        if self.active:
            td.barrier()


def init_from_env() -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not td.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        td.init_process_group(backend)
    return Dist(td.get_rank(), td.get_world_size())


class GradientReducer:
    """Averages gradients over the ranks while the backward still runs.

    The tensors are split once into buckets of about ``bucket_bytes`` in reverse order (the backward
    produces the last layers' gradients first). After :meth:`arm`, each tensor's post-accumulate hook
    marks it ready; a bucket whose tensors are all ready is flattened and all-reduced asynchronously,
    so communication overlaps the rest of the backward. Buckets launch strictly in index order, so
    every rank issues the same collectives in the same order whatever its data. :meth:`finish` gives
    a tensor without a gradient a zero one (every rank then reduces the same buckets: a rank whose
    batch left an expert unrouted must not skip it), launches what is left, waits, and writes the
    averages back. Only the armed backward reduces: the earlier micro-steps of gradient accumulation
    just accumulate. For one process there is nothing to reduce: no hooks, and arm/finish do nothing.
    """

    def __init__(self, params: list[torch.nn.Parameter], world_size: int, bucket_bytes: int = 25 << 20):
        self.world_size = world_size
        self.armed = False
        self.buckets: list[list[torch.nn.Parameter]] = []
        if world_size == 1:
            return
        self.buckets.append([])
        size = 0
        for param in reversed(params):
            if size >= bucket_bytes:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(param)
            size += param.numel() * param.element_size()
        self.bucket_of = {id(p): b for b, bucket in enumerate(self.buckets) for p in bucket}
        for param in params:
            param.register_post_accumulate_grad_hook(self._ready)

    def arm(self) -> None:
        """The next backward is the last of the step: reduce its gradients as they come."""
        self.armed = self.world_size > 1
        self.waiting = [len(bucket) for bucket in self.buckets]
        self.launched: list[tuple[torch.Tensor, object]] = []

    def _ready(self, param: torch.nn.Parameter) -> None:
        if not self.armed:
            return
        self.waiting[self.bucket_of[id(param)]] -= 1
        while len(self.launched) < len(self.buckets) and self.waiting[len(self.launched)] == 0:
            self._launch(len(self.launched))

    def _launch(self, b: int) -> None:
        flat = torch.cat([p.grad.reshape(-1) for p in self.buckets[b]])
        self.launched.append((flat, td.all_reduce(flat, async_op=True)))

    def finish(self) -> None:
        """Wait for every bucket and put the averaged gradients in place."""
        if not self.armed:
            return
        for bucket in self.buckets[len(self.launched) :]:
            for param in bucket:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
        while len(self.launched) < len(self.buckets):
            self._launch(len(self.launched))
        for bucket, (flat, handle) in zip(self.buckets, self.launched):
            handle.wait()
            flat.div_(self.world_size)
            for param, part in zip(bucket, flat.split([p.numel() for p in bucket])):
                param.grad.copy_(part.view_as(param.grad))
        self.armed = False
