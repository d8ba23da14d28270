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


class Validator:
    def __init__(self, dataset: PackedDataset, prefixes, *, t_values, seed: int, max_items: int, t_eps: float, device):
        self.dataset, self.prefixes = dataset, prefixes
        self.t_values = torch.tensor(list(t_values), dtype=torch.float32)
        self.seed, self.t_eps, self.device = seed, t_eps, device
        self.indices = list(range(min(max_items, len(dataset))))

    @torch.no_grad()
    def run(self, model: U1Model, dist: Dist, autocast) -> dict:
        n_t = len(self.t_values)
        sums = torch.zeros(2, n_t, dtype=torch.float64)
        for index in self.indices[dist.rank :: dist.world_size]:
            ids, image = self.dataset.load_batch([index])
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            noise = torch.randn((n_t, *image.shape[1:]), generator=generator)
            images = image.expand(n_t, -1, -1, -1).to(self.device)
            prefix = self.prefixes.cond(ids).repeat(n_t)  # read (or computed) once for the whole t grid
            with autocast():
                out = flow_loss(
                    model,
                    images,
                    prefix,
                    self.t_values.to(self.device),
                    noise.to(self.device),
                    loss_type="x0",
                    t_eps=self.t_eps,
                )
            sums[0] += out.x0_mse.double().cpu()
            sums[1] += out.v_mse.double().cpu()
        sums = dist.all_reduce_sum(sums) / max(1, len(self.indices))
        per_t = {f"{t:g}": float(v) for t, v in zip(self.t_values.tolist(), sums[0])}
        return {"val_loss": float(sums[0].mean()), "val_v_mse": float(sums[1].mean()), "per_t": per_t}
