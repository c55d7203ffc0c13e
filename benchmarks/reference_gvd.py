"""A reference-style GVD sampler: plain PyTorch written the way diffusion reference code works,
kept only as the baseline ``benchmarks/step_gvd.py`` compares vdfast's sampler against (never used
by the package).

Same model call as vdfast (classifier-free guidance as one doubled batch, bf16 autocast on a GPU),
same per-instance noise; the difference is the update: the scheduler's scalars read from the
``alphas_cumprod`` tensor every step, the predicted clean latent, the posterior mean and the mode
guidance as separate tensor expressions, the guidance applied frame by frame in a Python loop (the
frame's coefficient read back to the host), then the noise added: the unfused DDPM update of
docs/gvd.md that :func:`vdfast.ops.guided_step` fuses.
"""
from __future__ import annotations

import math

import torch


def reference_lams(t: int, lam: float, rho: float, t_stop: float, timesteps: int, frames: int,
                   segments: int) -> torch.Tensor:
    """Per-frame guidance ``[frames]``: linear decay within each MVIC segment while
    ``t >= t_stop * timesteps``, else zeros."""
    if lam == 0.0 or t < t_stop * timesteps:
        return torch.zeros(frames)
    seg = frames // segments
    out = torch.empty(frames)
    for f in range(frames):
        share = (f % seg) / (seg - 1) if seg > 1 else 0.0
        out[f] = lam * (1.0 - (1.0 - rho) * share)
    return out


@torch.no_grad()
def reference_sample(model, y, gens, shape, alphas_cumprod, steps: int, cfg_scale: float, guide,
                     lam: float, rho: float, t_stop: float, segments: int) -> torch.Tensor:
    """DDPM sampling of ``len(y)`` latents ``[B, F, C, h, w]``; ``guide`` ``[B, F, C, h, w]``."""
    device = y.device
    T = alphas_cumprod.shape[0]
    F = shape[0]
    ts = torch.linspace(T - 1, 0, steps, dtype=torch.float64).round().long().tolist()
    x = torch.stack([torch.randn(shape, generator=g, device=device) for g in gens])
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else None
        tt = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
        with torch.autocast("cuda", torch.bfloat16, enabled=x.is_cuda):
            eps = model.forward_cfg(x, tt, y, cfg_scale)
        eps = eps.float()
        ab_t = alphas_cumprod[t].item()
        ab_prev = alphas_cumprod[t_prev].item() if t_prev is not None else 1.0
        beta = 1 - ab_t / ab_prev
        sigma = math.sqrt(max(0.0, (1 - ab_prev) / (1 - ab_t) * beta))
        x0 = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
        mean = (math.sqrt(ab_prev) * beta / (1 - ab_t)) * x0 \
            + (math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t)) * x
        lams = reference_lams(t, lam, rho, t_stop, T, F, segments).to(device)
        x_prev = torch.empty_like(x)
        for f in range(F):  # the guidance, frame by frame
            x_prev[:, f] = mean[:, f] + lams[f].item() * sigma * (guide[:, f] - x0[:, f])
        if t_prev is not None:
            noise = torch.stack([torch.randn(shape, generator=g, device=device) for g in gens])
            x_prev = x_prev + sigma * noise
        x = x_prev
    return x
