"""One guided denoising step of GVD (docs/gvd.md), written for readability.
The truth every fast path of :func:`vdfast.ops.guided_step` is tested against.

Latents are frame-major ``[B, F, C, h, w]``; ``model_out`` is the predicted noise (epsilon).
"""
import math

import torch


def guided_step(x_t: torch.Tensor, model_out: torch.Tensor, guide: torch.Tensor,
                lam: torch.Tensor, coefs, noise: torch.Tensor | None = None,
                sampler: str = "ddpm") -> torch.Tensor:
    """x_t, model_out, noise [B, F, C, h, w]; guide [B, C, h, w] or [B, F, C, h, w]; lam [F];
    coefs = (alpha_bar_t, alpha_bar_prev, sigma_t)  ->  x_prev [B, F, C, h, w]."""
    ab_t, ab_prev, sigma = (float(c) for c in coefs)
    F = x_t.shape[1]
    m = guide if guide.dim() == 5 else guide.unsqueeze(1)   # a per-instance guide covers all frames
    lam = lam.to(x_t.dtype).view(1, F, 1, 1, 1)
    eps = model_out
    x0 = (x_t - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)  # predicted clean latent
    if sampler == "ddpm":
        beta = 1 - ab_t / ab_prev                              # the step's beta (also when strided)
        mean = (math.sqrt(ab_prev) * beta / (1 - ab_t)) * x0 \
            + (math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t)) * x_t  # posterior mean
        x_prev = mean + lam * sigma * (m - x0)                  # MGD3 guidance, per frame
        if noise is not None:
            x_prev = x_prev + sigma * noise
        return x_prev
    if sampler == "ddim":                                       # eta = 0: deterministic
        x0_g = x0 + lam * (m - x0)                              # guidance on the clean latent
        eps_g = (x_t - math.sqrt(ab_t) * x0_g) / math.sqrt(1 - ab_t)  # the noise consistent with it
        return math.sqrt(ab_prev) * x0_g + math.sqrt(1 - ab_prev) * eps_g
    raise ValueError(f"unknown sampler {sampler!r}; choose 'ddpm' or 'ddim'")
