"""guided_step: one GVD denoising update, fused (see docs/gvd.md).

A step reads the latent, the model output (predicted noise), the guide and, for DDPM, the noise
once, and writes the next latent once (the plain-PyTorch form makes ~8 passes over the latent).

Layout: latents are frame-major ``[B, F, C, h, w]`` (contiguous; other strides are copied first),
so one (instance, frame) is a contiguous row of ``C*h*w`` elements and the per-frame guidance
``lam[f]`` is constant along it. The guide is ``[B, C, h, w]`` (one mode per instance, broadcast
over frames: the common case) or ``[B, F, C, h, w]`` (per frame, e.g. MVIC segments guided by
different modes).

Samplers (x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t), m the guide, lam[f] per frame):

* ``"ddpm"``: ``x_prev = mu(x0, x_t) + lam[f] * sigma_t * (m - x0) + sigma_t * z`` with mu the DDPM
  posterior mean and beta_t = 1 - ab_t / ab_prev (right for strided schedules too) — MGD3's form.
* ``"ddim"`` (eta = 0): ``x0' = x0 + lam[f] (m - x0)``, ``eps' = (x_t - sqrt(ab_t) x0') /
  sqrt(1 - ab_t)``, ``x_prev = sqrt(ab_prev) x0' + sqrt(1 - ab_prev) eps'``.

The op applies the lam vector it is given; switching guidance off after t_stop (lam = 0) and the
frame-wise decay (:func:`frame_decay`) are the caller's. Forward only: sampling runs under
``torch.no_grad()``. With inputs that require grad, automatic dispatch uses the (differentiable)
reference and an explicit fused backend raises.
"""
from __future__ import annotations

import math
import struct
from typing import NamedTuple, Sequence

import torch
from torch.library import wrap_triton

from vdfast.ops.backends import kernel_fake
from vdfast.ops.fused import fused, fused_op
from vdfast.ops.fused import new_out as _new_out_like
from vdfast.ops.registry import FLOATS, op
from vdfast.reference.guided_step import guided_step as _ref_guided_step

__all__ = ["guided_step", "frame_decay", "StepCoefs"]

SAMPLERS = ("ddpm", "ddim")


class StepCoefs(NamedTuple):
    """Scheduler scalars of one step (Python floats; a plain 3-tuple works too).

    alpha_bar_t: cumulative alpha at the current step t. alpha_bar_prev: at the step sampled next
    (1.0 after the last step). sigma_t: the DDPM noise standard deviation of this step (the
    posterior std ``sqrt((1 - ab_prev) / (1 - ab_t) * beta_t)`` or ``sqrt(beta_t)``; the caller
    chooses); DDIM ignores it.
    """

    alpha_bar_t: float
    alpha_bar_prev: float
    sigma_t: float = 0.0

    @classmethod
    def from_schedule(cls, alphas_cumprod: torch.Tensor | Sequence[float], t: int,
                      t_prev: int | None) -> "StepCoefs":
        """The step t -> t_prev of a schedule (t_prev None: the last step, ab_prev = 1), with the
        DDPM posterior std as sigma_t."""
        ab_t = float(alphas_cumprod[t])
        ab_prev = 1.0 if t_prev is None or t_prev < 0 else float(alphas_cumprod[t_prev])
        beta = 1.0 - ab_t / ab_prev
        return cls(ab_t, ab_prev, math.sqrt(max(0.0, (1 - ab_prev) / (1 - ab_t) * beta)))


def frame_decay(lam: float, rho: float, frames: int, segments: int = 1, dtype=torch.float32,
                device=None) -> torch.Tensor:
    """Per-frame guidance coefficients [frames]: ``lam * (1 - (1 - rho) * f' / (F_seg - 1))``.

    f' is the frame index within its MVIC segment (``segments`` segments of ``frames / segments``
    frames; the decay restarts at each segment's first frame); a one-frame segment gets ``lam``.
    rho in [0, 1] is the last frame's share (0: the last frame of a segment is unguided).

    >>> frame_decay(0.1, 0.0, 4)
    tensor([0.1000, 0.0667, 0.0333, 0.0000])
    """
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    if segments < 1 or frames % segments:
        raise ValueError(f"frames ({frames}) must split into {segments} equal segments")
    f_seg = frames // segments
    f = torch.arange(frames, dtype=torch.float64) % f_seg
    share = f / (f_seg - 1) if f_seg > 1 else torch.zeros(frames, dtype=torch.float64)
    return (lam * (1.0 - (1.0 - rho) * share)).to(dtype=dtype, device=device)


def _scalars(coefs, sampler: str) -> tuple[float, float, float, float, float]:
    """(a, b, c0, c1, s) of the fused form, in float64: x0 = a x - b eps; see csrc/guided_step.cpp."""
    ab_t, ab_prev, sigma = (float(c) for c in coefs)
    if not (0.0 < ab_t < 1.0 and 0.0 < ab_prev <= 1.0):
        raise ValueError(f"need 0 < alpha_bar_t < 1 and 0 < alpha_bar_prev <= 1, got {ab_t}, "
                         f"{ab_prev}")
    a, b = 1.0 / math.sqrt(ab_t), math.sqrt(1.0 - ab_t) / math.sqrt(ab_t)
    if sampler == "ddpm":
        beta = 1.0 - ab_t / ab_prev
        c0 = math.sqrt(ab_prev) * beta / (1.0 - ab_t)
        c1 = math.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab_t)
        return a, b, c0, c1, sigma
    c1 = math.sqrt(1.0 - ab_prev) / math.sqrt(1.0 - ab_t)
    c0 = math.sqrt(ab_prev) - c1 * math.sqrt(ab_t)
    return a, b, c0, c1, 0.0


def _new_out(x):
    """Uninitialised output like ``x`` (NaN-filled under VDFAST_NAN_FILL=1)."""
    return _new_out_like(x.shape, x.dtype, x.device)


# ---------------------------------------------------------------------------------------------
# backends: fn(x, eps, guide, lam, noise, coefs, sampler, out) -> out
# ---------------------------------------------------------------------------------------------
def _ext(x, eps, guide, lam, noise, coefs, sampler, out):
    """cpp and cuda: one compiled kernel, the CPU or the CUDA one by the tensors' device."""
    a, b, c0, c1, s = _scalars(coefs, sampler)
    torch.ops.vdfast.guided_step_fwd(x, eps, guide, lam, noise, a, b, c0, c1, s, sampler == "ddim",
                                     out)


@kernel_fake("guided_step_fwd")
def _(x, eps, guide, lam, noise, a, b, c0, c1, s, ddim, out):
    return None  # writes out in place


def _f32(v: float) -> float:
    """v rounded to float32 (to nearest, as torch's conversion), without a tensor: the launcher
    also runs while torch.compile traces the Triton op, where a tensor's value is unknown."""
    return struct.unpack("f", struct.pack("f", v))[0]


def _split(v: float) -> tuple[float, float]:
    """v as a float32 pair hi + lo (Triton passes Python floats as float32)."""
    hi = _f32(v)
    return hi, _f32(v - hi)


def _triton(x, eps, guide, lam, noise, coefs, sampler, out):
    import triton
    import triton.language as tl

    from vdfast._kernels.guided_step import _guided_step_fwd_kernel
    from vdfast.ops.backends import interpreter_sizes
    B, F = x.shape[:2]
    CHW = math.prod(x.shape[2:])  # x[0, 0] would fail on an empty batch
    if x.numel() == 0:
        return
    scal = [h for v in _scalars(coefs, sampler) for h in _split(v)]
    block = min(triton.next_power_of_2(CHW), 4096 if interpreter_sizes(x) else 1024)
    grid = (B * F, triton.cdiv(CHW, block))
    wrap_triton(_guided_step_fwd_kernel)[grid](
        x, eps, guide, lam, noise if noise is not None else x, out, F, CHW, *scal,
        GUIDE_PER_FRAME=guide.dim() == 5, HAS_NOISE=noise is not None and sampler == "ddpm",
        DDIM=sampler == "ddim", BLOCK=block,
        ACC=tl.float64 if x.dtype == torch.float64 else tl.float32)


_LAUNCHERS = {"cpp": _ext, "cuda": _ext, "triton": _triton}


@fused_op("vdfast::guided_step", mutates_args=("out",))
def _guided_step_op(x: torch.Tensor, eps: torch.Tensor, guide: torch.Tensor, lam: torch.Tensor,
                    noise: torch.Tensor | None, coefs: list[float], sampler: str, out: torch.Tensor,
                    backend: str) -> None:
    """The fused step on ``backend``, written into ``out`` (forward only)."""
    _LAUNCHERS[backend](x, eps, guide, lam, noise, coefs, sampler, out)


@_guided_step_op.register_fake
def _(x, eps, guide, lam, noise, coefs, sampler, out, backend):
    return None


def _fused(backend):
    op_call = fused(_guided_step_op, backend)

    def run(x, eps, guide, lam, noise, coefs, sampler, out):
        out = _new_out(x) if out is None else out
        op_call(x, eps, guide, lam, noise, [float(c) for c in coefs], sampler, out)
        return out
    return run


def _reference(x, eps, guide, lam, noise, coefs, sampler, out):
    res = _ref_guided_step(x, eps, guide, lam, coefs, noise, sampler)
    if out is None:
        return res
    return out.copy_(res)


def _forward_only(*tensors, **kw) -> list[str]:
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return ["forward only: inputs require grad (sample under torch.no_grad(), or use "
                "backend='reference', which is differentiable)"]
    return []


_op = op("guided_step")
_op.register("cuda", _fused("cuda"), devices=("cuda",), extra_check=_forward_only,
             kernels=("guided_step_fwd",))
_op.register("triton", _fused("triton"), devices=("cuda",), extra_check=_forward_only)
_op.register("cpp", _fused("cpp"), devices=("cpu",), dtypes=(torch.float32, torch.float64),
             extra_check=_forward_only, kernels=("guided_step_fwd",))
_op.register("reference", _reference, devices=("cpu", "cuda"), dtypes=FLOATS)


def guided_step(x_t: torch.Tensor, model_out: torch.Tensor, guide: torch.Tensor,
                lam: torch.Tensor | float, coefs: StepCoefs | Sequence[float],
                noise: torch.Tensor | None = None, *, sampler: str = "ddpm",
                out: torch.Tensor | None = None, backend: str | None = None) -> torch.Tensor:
    """One guided denoising step: x_t -> x_{t-1} (DDPM) or x_{t_prev} (DDIM, eta = 0).

    Args:
        x_t: latents ``[B, F, C, h, w]`` (frame-major), float32/float64 (half on Triton/CUDA).
        model_out: the predicted noise epsilon, ``[B, F, C, h, w]`` (after classifier-free
            guidance, if any).
        guide: the guiding mode ``[B, C, h, w]`` (broadcast over frames) or ``[B, F, C, h, w]``.
        lam: per-frame guidance ``[F]`` (see :func:`frame_decay`), or a float for all frames;
            0 turns guidance off (e.g. after t_stop).
        coefs: :class:`StepCoefs` ``(alpha_bar_t, alpha_bar_prev, sigma_t)`` as Python floats.
        noise: ``[B, F, C, h, w]`` standard normal noise z for DDPM; None for no noise (the last
            step). DDIM takes none.
        sampler: ``"ddpm"`` or ``"ddim"``.
        out: optional output tensor (may be ``x_t`` itself for an in-place update).
        backend: ``"cuda" | "triton" | "cpp" | "reference"`` or None (automatic; env
            ``VDFAST_BACKEND``).

    Returns:
        ``[B, F, C, h, w]``, the next latent, in x_t's dtype.

    Example:
        >>> lam = frame_decay(0.1, 0.0, frames=16)
        >>> c = StepCoefs.from_schedule(alphas_cumprod, t=980, t_prev=960)
        >>> with torch.no_grad():
        ...     x = guided_step(x, eps, modes, lam, c, torch.randn_like(x))
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
    if x_t.dim() != 5:
        raise ValueError(f"x_t must be [B, F, C, h, w], got {tuple(x_t.shape)}")
    B, F = x_t.shape[:2]
    if model_out.shape != x_t.shape:
        raise ValueError(f"model_out must match x_t {tuple(x_t.shape)}, got "
                         f"{tuple(model_out.shape)}")
    if guide.shape not in (x_t.shape, x_t.shape[:1] + x_t.shape[2:]):
        raise ValueError(f"guide must be [B, C, h, w] or [B, F, C, h, w] "
                         f"({tuple(x_t.shape)}), got {tuple(guide.shape)}")
    if noise is not None:
        if sampler == "ddim":
            raise ValueError("ddim (eta = 0) takes no noise")
        if noise.shape != x_t.shape:
            raise ValueError(f"noise must match x_t {tuple(x_t.shape)}, got {tuple(noise.shape)}")
    if out is not None and (out.shape != x_t.shape or out.dtype != x_t.dtype
                            or not out.is_contiguous()):
        raise ValueError("out must be a contiguous tensor like x_t")
    if not torch.is_tensor(lam):
        lam = torch.full((F,), float(lam), dtype=x_t.dtype, device=x_t.device)
    if lam.shape != (F,):
        raise ValueError(f"lam must be [F] = [{F}], got {tuple(lam.shape)}")
    _scalars(coefs, sampler)  # validates before any backend runs
    tensors = [x_t, model_out, guide, lam] + ([noise] if noise is not None else [])
    impl = _op.select(tensors, backend=backend)
    if impl.name == "reference":
        return impl.fn(x_t, model_out, guide, lam, noise, coefs, sampler, out)
    dt = x_t.dtype
    x_t, model_out, guide, lam = (t.to(dt).contiguous() for t in (x_t, model_out, guide, lam))
    noise = noise.to(dt).contiguous() if noise is not None else None
    return impl.fn(x_t, model_out, guide, lam, noise, coefs, sampler, out)


def _check_inputs(device, dtype, gen):
    """The first-call check's input: DDPM with noise, a per-frame lambda, guide broadcast over
    frames (forward only: the fused backends have no backward)."""
    def r(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(device, dtype)
    lam = torch.tensor([0.3, 0.2, 0.1], dtype=torch.float64).to(device, dtype)
    return (r(2, 3, 2, 5, 7), r(2, 3, 2, 5, 7), r(2, 2, 5, 7), lam, (0.5, 0.6, 0.1),
            r(2, 3, 2, 5, 7)), {}


_op.check_with(guided_step, _check_inputs)
