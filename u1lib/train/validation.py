"""Held-out loss on a fixed grid of t values with fixed noise: identical across variants and resumes.

The reported ``val_loss`` is the x0-MSE averaged over items and t (one currency for every loss
type, so an x0-loss run and a v-loss run can be ranked); the v-MSE is logged beside it.
"""

from __future__ import annotations

import torch

from u1lib.data.reader import PackedDataset
from u1lib.model.u1 import U1Model
from u1lib.train.distributed import Dist
from u1lib.train.objectives import flow_loss

KEPT_INPUT_BYTES = 1 << 30  # host memory for the fixed images and noise kept between validations


class Validator:
    """Held-out loss of the model as it is now; each item's image and noise are the same at every
    validation, so they are kept in host memory (up to KEPT_INPUT_BYTES: a 2048² item with five t
    values is 300 MB) rather than decoded and drawn again (drawing that noise alone took 0.4-1.2 s
    on a 2-core CPU machine)."""

    def __init__(self, dataset: PackedDataset, prefixes, *, t_values, seed: int, max_items: int, t_eps: float, device):
        self.dataset, self.prefixes = dataset, prefixes
        self.t_values = torch.tensor(list(t_values), dtype=torch.float32)
        self.seed, self.t_eps, self.device = seed, t_eps, device
        self.indices = list(range(min(max_items, len(dataset))))
        self._kept: dict[int, tuple] = {}
        self._kept_bytes = 0

    def _inputs(self, index: int) -> tuple:
        """(token ids, image [1, 3, H, W], noise [T, 3, H, W]) of one item, the noise from its own seed."""
        if index in self._kept:
            return self._kept[index]
        ids, image = self.dataset.load_batch([index])
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        noise = torch.randn((len(self.t_values), *image.shape[1:]), generator=generator)
        size = image.nbytes + noise.nbytes
        if self._kept_bytes + size <= KEPT_INPUT_BYTES:
            if self.device.type == "cuda":
                image, noise = image.pin_memory(), noise.pin_memory()
            self._kept[index] = ids, image, noise
            self._kept_bytes += size
        return ids, image, noise

    @torch.no_grad()
    def run(self, model: U1Model, dist: Dist, autocast) -> dict:
        n_t = len(self.t_values)
        sums = torch.zeros(2, n_t, dtype=torch.float64)
        for index in self.indices[dist.rank :: dist.world_size]:
            ids, image, noise = self._inputs(index)
            images = image.to(self.device, non_blocking=True).expand(n_t, -1, -1, -1)
            prefix = self.prefixes.cond(ids).repeat(n_t)  # read (or computed) once for the whole t grid
            with autocast():
                out = flow_loss(
                    model,
                    images,
                    prefix,
                    self.t_values.to(self.device),
                    noise.to(self.device, non_blocking=True),
                    loss_type="x0",
                    t_eps=self.t_eps,
                )
            sums[0] += out.x0_mse.double().cpu()
            sums[1] += out.v_mse.double().cpu()
        sums = dist.all_reduce_sum(sums) / max(1, len(self.indices))
        per_t = {f"{t:g}": float(v) for t, v in zip(self.t_values.tolist(), sums[0])}
        return {"val_loss": float(sums[0].mean()), "val_v_mse": float(sums[1].mean()), "per_t": per_t}
