"""Triton kernels of ``vdfast.ops.normalize_clips`` (launchers in ``vdfast/ops/normalize_clips.py``).

uint8 ``[N, T, H, W, C]`` (any strides) -> ``[N, C, T, H, W]``: ``out = scale[c] * x + shift[c]``.
``_normalize_clips_stats_kernel`` writes exact per-program integer sums of x and x^2 per channel
(for ``standardize``; the launcher folds the batch statistics into scale/shift), and
``_normalize_clips_fwd_kernel`` writes the output once. There is no backward (uint8 input).
"""
import triton
import triton.language as tl


@triton.jit
def _offsets(pid_n, pid_p, T, H, W, sN, sT, sH, sW, BLOCK: tl.constexpr):
    p = pid_p * BLOCK + tl.arange(0, BLOCK)
    mask = p < T * H * W
    w = p % W
    h = (p // W) % H
    t = p // (W * H)
    # int64 throughout: a permuted view of a large store has strides whose products pass 2^31
    off = (pid_n.to(tl.int64) * sN + t.to(tl.int64) * sT + h.to(tl.int64) * sH
           + w.to(tl.int64) * sW)
    return p, mask, off


@triton.jit
def _normalize_clips_stats_kernel(x_ptr, sums_ptr, T, H, W, sN, sT, sH, sW, sC,
                                  C: tl.constexpr, BLOCK: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_p = tl.program_id(1)
    p, mask, off = _offsets(pid_n, pid_p, T, H, W, sN, sT, sH, sW, BLOCK)
    base = sums_ptr + (pid_n.to(tl.int64) * tl.num_programs(1) + pid_p) * (2 * C)
    src = x_ptr + off  # channel c at off + c * sC, stepped so that no int32 product is formed
    for c in tl.static_range(C):
        # integer sums are exact: 255^2 * BLOCK fits int32 for BLOCK <= 32768
        x = tl.load(src, mask=mask, other=0).to(tl.int32)
        tl.store(base + 2 * c, tl.sum(x, axis=0).to(tl.int64))
        tl.store(base + 2 * c + 1, tl.sum(x * x, axis=0).to(tl.int64))
        src += sC


@triton.jit
def _normalize_clips_fwd_kernel(x_ptr, out_ptr, scale_ptr, shift_ptr, T, H, W, sN, sT, sH, sW, sC,
                                C: tl.constexpr, BLOCK: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_p = tl.program_id(1)
    p, mask, off = _offsets(pid_n, pid_p, T, H, W, sN, sT, sH, sW, BLOCK)
    P = T * H * W
    acc_ty = scale_ptr.dtype.element_ty  # float32, or float64 for a float64 output
    src = x_ptr + off
    for c in tl.static_range(C):
        x = tl.load(src, mask=mask, other=0).to(acc_ty)
        src += sC
        y = x * tl.load(scale_ptr + c) + tl.load(shift_ptr + c)
        dst = out_ptr + (pid_n.to(tl.int64) * C + c) * P + p
        tl.store(dst, y.to(out_ptr.dtype.element_ty), mask=mask)
