"""Random weights that train, and the metadata a tiny weight file carries: the recipe of the tiny
model's random variant and of the golden data, also used for the random full-size snapshot of the
GPU checks (kept apart from tiny.py so that the pretraining code, which starts from this draw, and
the tiny snapshot builder, which calls the pretraining for a rebuild, do not import each other)."""

from __future__ import annotations

import math

import torch

from u1lib.model.config import U1Config
from u1lib.model.keys import parameter_shapes

SEED_KEY = "u1lib.tiny_seed"  # the metadata key that marks a weight file as a tiny build's


def file_metadata(seed: int, kind: str) -> dict[str, str]:
    """The safetensors metadata of a tiny weight file: its seed, and pretrained or random."""
    return {"format": "pt", SEED_KEY: str(seed), "u1lib.tiny_weights": kind}


def init_like(key: str, noise: torch.Tensor) -> torch.Tensor:
    """A parameter drawn from standard-normal ``noise`` the way a trainable random model is drawn:
    weights (>= 2-D) N(0, 1/fan_in), biases N(0, 0.05^2), norm weights 1 + N(0, 0.1^2).

    Norms near 1 keep activations alive through every layer, so a loss on such a model moves when
    an adapter learns (norms near 0 make it flat). Shared by the tiny model and the random
    full-size snapshot of the GPU checks.
    """
    if "norm" in key:
        return 1 + 0.1 * noise
    if noise.dim() == 1:
        return 0.05 * noise
    fan_in = math.prod(noise.shape) // noise.shape[0]
    return noise * (1 / math.sqrt(fan_in))


def random_weights(cfg: U1Config, seed: int) -> dict[str, torch.Tensor]:
    """Every parameter of ``cfg``, float32, drawn in sorted-key order from one CPU generator with
    :func:`init_like`: the recipe of the golden data, which this reproduces bit for bit at its seed.
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    return {
        key: init_like(key, torch.randn(shape, generator=generator, dtype=torch.float32))
        for key, shape in parameter_shapes(cfg).items()
    }
