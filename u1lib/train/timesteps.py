"""Training timestep distributions (t = 0 noise, t = 1 clean), always float32."""

from __future__ import annotations

import torch

T_DISTS = ("uniform", "logit_normal")


def shift_t(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Move t towards the noisy end by ``shift`` (same map as the sampler's grid; 1.0 = identity)."""
    if shift == 1.0:
        return t
    sigma = 1 - t
    return 1 - shift * sigma / (1 + (shift - 1) * sigma)


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
