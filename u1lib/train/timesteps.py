"""Training timestep distributions (t = 0 noise, t = 1 clean), always float32."""

from __future__ import annotations

import torch

from u1lib.model.sampling import shift_t

T_DISTS = ("uniform", "logit_normal")


def sample_t(
    n: int,
    dist: str,
    generator: torch.Generator,
    *,
    t_eps: float,
    mean: float = -0.8,
    std: float = 0.8,
    shift: float = 1.0,
) -> torch.Tensor:
    """``n`` training times. uniform: U[t_eps, 1]; logit_normal: sigmoid(N(mean, std)) (upstream's recipe)."""
    if dist == "uniform":
        t = t_eps + (1 - t_eps) * torch.rand(n, generator=generator, dtype=torch.float32, device=generator.device)
    elif dist == "logit_normal":
        normal = torch.randn(n, generator=generator, dtype=torch.float32, device=generator.device)
        t = torch.sigmoid(mean + std * normal)
    else:
        raise ValueError(f"t distribution {dist!r} is not one of {T_DISTS}")
    return shift_t(t, shift)
