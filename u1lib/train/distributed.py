"""Data parallel over torch.distributed (torchrun), a no-op for one process.

Every rank draws the same global batch and the same random numbers, then works on its slice, so N
ranks give the same losses as one process with the same global batch; gradients of the trainable
tensors are averaged with one all-reduce each.
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

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if not self.active:
            return
        for param in params:
            if param.grad is not None:
                td.all_reduce(param.grad)
                param.grad.div_(self.world_size)

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
