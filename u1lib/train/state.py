"""A run's full training state into a checkpoint and back: trainable tensors, optimizer, EMA, every
random stream, the data cursor, the counters and the loss history.

Restoring all of it is what lets a resumed run continue the trajectory of an uninterrupted one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from u1lib.train import checkpoint as ckpt
from u1lib.train.metrics import THistogram

if TYPE_CHECKING:
    from u1lib.train.loop import Trainer


def capture(t: "Trainer") -> ckpt.TrainState:
    opt_tensors, opt_scalars = ckpt.optimizer_to_tensors(t.optimizer, list(t.trainable))
    return ckpt.TrainState(
        step=t.step,
        trainable=dict(t.trainable),
        optimizer=opt_tensors,
        optimizer_scalars=opt_scalars,
        ema=t.ema.tensors,
        rng=ckpt.capture_rng(t.generator, t.device),
        info={
            "sampler": t.sampler.state_dict(),
            "images_seen": t.images_seen,
            "dropped_total": t.dropped_total,
            "t_hist": t.t_hist.counts.tolist(),
            "train_seconds": t.train_seconds,
            "lineage": t.lineage,
            "world_size": t.dist.world_size,
        },
        logs=t.logs.records,
    )


def restore(t: "Trainer", state: ckpt.TrainState) -> None:
    with torch.no_grad():
        for name, tensor in state.trainable.items():
            t.trainable[name].copy_(tensor)
        for name, tensor in state.ema.items():
            t.ema.tensors[name].copy_(tensor)
    ckpt.optimizer_from_tensors(t.optimizer, list(t.trainable), state.optimizer, state.optimizer_scalars)
    ckpt.restore_rng(state.rng, t.generator, t.device)
    t.sampler.load_state_dict(state.info["sampler"])  # global batches: any number of ranks resumes
    t.step = state.step
    t.images_seen, t.dropped_total = state.info["images_seen"], state.info["dropped_total"]
    t.t_hist = THistogram(counts=state.info["t_hist"])
    t.train_seconds = state.info["train_seconds"]
    t.logs.restore(state.logs, t.step)
