"""The Euler flow sampler core: time grid with shift, CFG variants, one batched cond+uncond pass per step."""

from __future__ import annotations

from typing import Callable

import torch

from u1lib.model.embedders import unpatchify
from u1lib.model.u1 import PrefixKV, U1Model, velocity

CFG_NORMS = ("none", "global", "channel", "cfg_zero_star")
SAMPLER_T_EPS = 0.02  # upstream's generate path; training keeps config.t_eps (0.05)


def shift_t(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Move times towards the noisy end by ``shift`` (1.0 = identity); the sampler's grid and the
    training times share this map.

    The order of operations matches upstream (sigma -> shifted sigma -> t) so the values agree bit
    for bit.
    """
    if shift == 1.0:
        return t
    sigma = 1 - t
    sigma = shift * sigma / (1 + (shift - 1) * sigma)
    return 1 - sigma


def time_grid(steps: int, shift: float) -> torch.Tensor:
    """float32 grid of ``steps + 1`` times from 0 (noise) to 1 (clean), shifted towards the noisy end."""
    return shift_t(torch.linspace(0, 1, steps + 1, dtype=torch.float32), shift)


def combine_cfg(v_cond, v_uncond, scale: float, norm: str, step: int, taps: dict | None = None) -> torch.Tensor:
    """Classifier-free guidance on velocities [B, N, D]; norms are per sample (global) or per token (channel).

    ``taps``, when given, receives the normalisation factor (``scale``) or CFG-Zero*'s ``alpha``,
    which upstream computes at step 0 too, where the velocity is zeroed.
    """
    if norm == "cfg_zero_star":
        c, u = v_cond.float(), v_uncond.float()
        alpha = (c * u).sum(dim=(1, 2), keepdim=True) / (u.pow(2).sum(dim=(1, 2), keepdim=True) + 1e-8)
        if taps is not None:
            taps["alpha"] = alpha
        if step == 0:
            return torch.zeros_like(v_cond)
        alpha = alpha.to(v_cond.dtype)
        return v_uncond * alpha + scale * (v_cond - v_uncond * alpha)
    v = v_uncond + scale * (v_cond - v_uncond)
    if norm == "none":
        return v
    dims = (1, 2) if norm == "global" else (2,)
    ratio = (v_cond.norm(dim=dims, keepdim=True) / (v.norm(dim=dims, keepdim=True) + 1e-8)).clamp(0, 1)
    if taps is not None:
        taps["scale"] = ratio
    return v * ratio


def initial_noise(seed: int, height: int, width: int, noise_scale: float) -> torch.Tensor:
    """[1, 3, H, W] from a CPU generator: device independent, as upstream's CPU seeding."""
    return noise_scale * torch.randn((1, 3, height, width), generator=torch.Generator("cpu").manual_seed(seed))


# called once per step with the step index and a record: ``z`` (state before the step), ``v_cond``,
# ``v_pred`` (the velocity used), and where CFG ran ``v_uncond`` plus ``scale`` / ``alpha`` per cfg_norm
StepObserver = Callable[[int, dict[str, torch.Tensor]], None]


@torch.no_grad()
def euler_sample(
    model: U1Model,
    cond: PrefixKV,
    uncond: PrefixKV | None,
    noise: torch.Tensor,
    *,
    steps: int,
    shift: float = 3.0,
    cfg_scale: float = 4.0,
    cfg_norm: str = "none",
    cfg_interval: tuple[float, float] = (0.0, 1.0),
    t_eps: float = SAMPLER_T_EPS,
    observer: StepObserver | None = None,
) -> torch.Tensor:
    """Denoise ``noise`` [B, 3, H, W] (already scaled by the noise scale) into images in [-1, 1] space.

    ``cond`` / ``uncond`` hold one prefix row per image. When guidance is active, both branches run as
    one batch of 2B through the generation tower.
    """
    if cfg_norm not in CFG_NORMS:
        raise ValueError(f"cfg_norm {cfg_norm!r} is not one of {CFG_NORMS}")
    cfg = model.config
    b, _, height, width = noise.shape
    p = cfg.token_size
    num_tokens = (height // p) * (width // p)
    noise_scale = cfg.noise_scale_for(num_tokens)
    guided = uncond is not None and cfg_scale > 1.0
    both = PrefixKV.stack([cond, uncond]) if guided else cond
    x = noise
    grid = time_grid(steps, shift)
    low, high = torch.tensor(cfg_interval, dtype=torch.float32)  # inclusive, compared in float32 as upstream
    for i in range(steps):
        t_now = float(grid[i])
        use_cfg = guided and bool(low <= grid[i]) and bool(grid[i] <= high)
        rows = 2 * b if use_cfg else b
        prefix = both if use_cfg else cond
        t = torch.full((rows,), t_now, dtype=torch.float32, device=x.device)
        images = torch.cat((x, x)) if use_cfg else x
        x_pred, z = model.denoise(images, t, prefix, noise_scale)
        v = velocity(x_pred, z, t, t_eps)
        record: dict[str, torch.Tensor] = {"z": z[:b], "v_cond": v[:b]}
        if use_cfg:
            record["v_uncond"] = v[b:]
            v = combine_cfg(v[:b], v[b:], cfg_scale, cfg_norm, i, record if observer else None)
        if observer is not None:
            observer(i, record | {"v_pred": v})
        z = z[:b] + (grid[i + 1] - grid[i]) * v  # float32 step, as upstream; a 0-dim CPU scalar needs no sync
        x = unpatchify(z, p, height, width)
    return x
