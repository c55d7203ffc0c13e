"""Clip normalisation: uint8 ``[N, T, H, W, C]`` clips (as the store keeps them) to a float
``[N, C, T, H, W]`` network input, with optional whole-batch standardisation.

Backends: ``cuda`` (``csrc/cuda/normalize_clips_cuda.cu``), ``triton`` (``kernels/normalize_clips.py``),
``cpp`` (``csrc/normalize_clips.cpp``), ``reference`` (``vdfast/reference/normalize_clips.py``).
Each backend provides two steps, and the arithmetic between them lives here, once:

* ``stats(clips) -> int64 [C, 2]``: exact sums of x and x^2 per channel (only for ``standardize``);
* ``apply(clips, scale, shift, out)``: ``out[n, c, t, h, w] = scale[c] * clips[n, t, h, w, c] + shift[c]``.
"""
from __future__ import annotations

import functools

import torch
from torch.library import wrap_triton

from vdfast.ops.backends import kernel_fake
from vdfast.ops.fused import fused, fused_op
from vdfast.ops.fused import new_out as _out
from vdfast.ops.registry import op
from vdfast.reference import normalize_clips as _ref

_OP = op("normalize_clips")
OUT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def affine(mean: torch.Tensor, std: torch.Tensor, sums: torch.Tensor | None, count: int):
    """float64 per-channel ``(scale, shift)`` with ``scale * x + shift`` equal to
    ``(x / 255 - mean) / std``, then, given the channel sums of x and x^2 over ``count`` pixels
    per channel, standardised by the batch's scalar mean and unbiased std (no host sync)."""
    a = 1.0 / (255.0 * std)
    b = -mean / std
    if sums is None:
        return a, b
    s1, s2 = sums[:, 0].double(), sums[:, 1].double()
    total = count * a.numel()
    sum_y = (a * s1 + b * count).sum()
    sum_y2 = (a * a * s2 + 2 * a * b * s1 + b * b * count).sum()
    mu = sum_y / total
    var = (sum_y2 - total * mu * mu) / (total - 1)
    sigma = var.clamp_min(0).sqrt()
    return a / sigma, (b - mu) / sigma


# ---------------------------------------------------------------------------------------------
# backends: stats(clips) -> int64 [C, 2]; apply(clips, scale f64 [C], shift f64 [C], out)
# ---------------------------------------------------------------------------------------------
# cpp and cuda call the same compiled kernels; the dispatcher runs the CPU or the CUDA one by device
def _stats_ext(clips):
    sums = torch.empty((clips.shape[-1], 2), dtype=torch.int64, device=clips.device)
    torch.ops.vdfast.normalize_clips_stats(clips, sums)
    return sums


def _apply_ext(clips, scale, shift, out):
    torch.ops.vdfast.normalize_clips_apply(clips, scale, shift, out)


@kernel_fake("normalize_clips_stats")
def _(clips, sums):
    return None  # writes sums in place


@kernel_fake("normalize_clips_apply")
def _(clips, scale, shift, out):
    return None  # writes out in place


def _block(t):
    from vdfast.ops.backends import interpreter_sizes
    return 256 if interpreter_sizes(t) else 1024


def _geom(clips):
    N, T, H, W, C = clips.shape
    return N, T, H, W, C, clips.stride()


def _stats_triton(clips):
    import triton
    from vdfast._kernels.normalize_clips import _normalize_clips_stats_kernel

    N, T, H, W, C, (sN, sT, sH, sW, sC) = _geom(clips)
    blk = _block(clips)
    nprog = triton.cdiv(T * H * W, blk)
    part = _out((N, nprog, C, 2), torch.int64, clips.device)
    if part.numel() == 0:
        return torch.zeros((C, 2), dtype=torch.int64, device=clips.device)
    wrap_triton(_normalize_clips_stats_kernel)[(N, nprog)](clips, part, T, H, W, sN, sT, sH, sW, sC,
                                                           C=C, BLOCK=blk)
    return part.sum(dim=(0, 1))


def _apply_triton(clips, scale, shift, out):
    import triton
    from vdfast._kernels.normalize_clips import _normalize_clips_fwd_kernel

    N, T, H, W, C, (sN, sT, sH, sW, sC) = _geom(clips)
    if out.numel() == 0:
        return
    acc = torch.float64 if out.dtype == torch.float64 else torch.float32
    blk = _block(clips)
    wrap_triton(_normalize_clips_fwd_kernel)[(N, triton.cdiv(T * H * W, blk))](
        clips, out, scale.to(acc), shift.to(acc), T, H, W, sN, sT, sH, sW, sC, C=C, BLOCK=blk)


def _channel_stats(mean, std, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``mean``, ``std`` on ``device``. Sequences are copied to the device once per
    (values, device) and remembered: a copy from a Python tuple on every call is a host
    synchronisation on CUDA."""
    if isinstance(mean, torch.Tensor) or isinstance(std, torch.Tensor):
        return (torch.as_tensor(mean, dtype=torch.float64).to(device),
                torch.as_tensor(std, dtype=torch.float64).to(device))
    return _cached_stats(tuple(map(float, mean)), tuple(map(float, std)), str(device))


@functools.lru_cache(maxsize=64)
def _cached_stats(mean: tuple, std: tuple, device: str):
    return (torch.tensor(mean, dtype=torch.float64, device=device),
            torch.tensor(std, dtype=torch.float64, device=device))


_LAUNCHERS = {"cpp": (_stats_ext, _apply_ext), "cuda": (_stats_ext, _apply_ext),
              "triton": (_stats_triton, _apply_triton)}


@fused_op("vdfast::normalize_clips", mutates_args=())
def _normalize_clips_op(clips: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                        standardize: bool, out_dtype: torch.dtype, backend: str) -> torch.Tensor:
    """The fused op on ``backend``; ``mean``, ``std``: float64 [C] on the clips' device."""
    stats, apply = _LAUNCHERS[backend]
    N, T, H, W, C = clips.shape
    sums = stats(clips) if standardize else None
    scale, shift = affine(mean, std, sums, N * T * H * W)
    out = _out((N, C, T, H, W), out_dtype, clips.device)
    apply(clips, scale.contiguous(), shift.contiguous(), out)
    return out


@_normalize_clips_op.register_fake
def _(clips, mean, std, standardize, out_dtype, backend):
    N, T, H, W, C = clips.shape
    return clips.new_empty((N, C, T, H, W), dtype=out_dtype)


def _fused(backend):
    op_call = fused(_normalize_clips_op, backend)

    def run(clips, mean, std, standardize, out_dtype):
        mean, std = _channel_stats(mean, std, clips.device)
        return op_call(clips, mean, std, standardize, out_dtype)
    return run


def normalize_clips(clips: torch.Tensor, mean, std, standardize: bool = False,
                    out_dtype: torch.dtype = torch.float32, backend: str | None = None) -> torch.Tensor:
    """uint8 clips ``[N, T, H, W, C]`` -> float ``[N, C, T, H, W]``, ``(x / 255 - mean[c]) / std[c]``.

    One pass over the input (the layout change and the normalisation are fused). With
    ``standardize=True`` the result is then standardised by the whole batch's scalar mean and
    standard deviation, ``(y - y.mean()) / y.std()``, with the *unbiased* std (``Tensor.std()``'s
    default, as the evaluation protocol's code computes it): the fused backends take these from
    exact integer channel sums of the input, so the output is still written once.

    Args:
        clips: uint8 ``[N, T, H, W, C]``, any strides (slices and permutations need no copy).
        mean, std: ``C`` floats (sequence or tensor), e.g. ImageNet's
            ``(0.485, 0.456, 0.406)``, ``(0.229, 0.224, 0.225)``.
        standardize: also standardise by the batch's scalar mean / unbiased std.
        out_dtype: float32 (default), float64, float16 or bfloat16. Arithmetic is float64 in the
            cpp backend, float32 (float64 for a float64 output) in the others.
        backend: ``None`` (automatic) or ``"cuda"``, ``"triton"``, ``"cpp"``, ``"reference"``.

    Returns:
        A new contiguous ``[N, C, T, H, W]`` tensor of ``out_dtype``; no gradient (integer input).

    Example::

        >>> clips = torch.randint(0, 256, (8, 16, 112, 112, 3), dtype=torch.uint8)
        >>> x = vdfast.ops.normalize_clips(clips, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        >>> x.shape
        torch.Size([8, 3, 16, 112, 112])
    """
    if clips.dtype != torch.uint8 or clips.dim() != 5:
        raise ValueError(f"normalize_clips: clips must be uint8 [N, T, H, W, C]; got {clips.dtype} "
                         f"{tuple(clips.shape)}")
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"normalize_clips: out_dtype must be one of {OUT_DTYPES}; got {out_dtype}")
    C = clips.shape[-1]
    for name, v in (("mean", mean), ("std", std)):
        n = v.numel() if isinstance(v, torch.Tensor) else len(v)
        if n != C:
            raise ValueError(f"normalize_clips: {name} needs {C} values (one per channel), got {n}")
    probe = torch.empty(0, dtype=out_dtype, device=clips.device)
    impl = _OP.select([probe], backend)
    return impl.fn(clips, mean, std, bool(standardize), out_dtype)


_OP.register("reference", _ref.normalize_clips, devices=("cpu", "cuda"), dtypes=OUT_DTYPES)
_OP.register("cpp", _fused("cpp"), devices=("cpu",), dtypes=OUT_DTYPES,
             kernels=("normalize_clips_stats", "normalize_clips_apply"))
_OP.register("triton", _fused("triton"), devices=("cuda",), dtypes=OUT_DTYPES)
_OP.register("cuda", _fused("cuda"), devices=("cuda",), dtypes=OUT_DTYPES,
             kernels=("normalize_clips_stats", "normalize_clips_apply"))


def _check_inputs(device, dtype, gen):
    """The first-call check's input: odd sizes, a permuted (non-contiguous) view, standardised."""
    clips = torch.randint(0, 256, (2, 3, 7, 5, 3), generator=gen, dtype=torch.uint8)
    clips = clips.to(device).permute(0, 1, 3, 2, 4)
    return (clips, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), {"standardize": True,
                                                                  "out_dtype": dtype}


_OP.check_with(normalize_clips, _check_inputs)

__all__ = ["normalize_clips"]
