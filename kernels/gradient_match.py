"""Triton kernels of ``vdfast.ops.gradient_match`` (launchers in ``vdfast/ops/gradient_match.py``).

One launch per matrix layer, each a contiguous ``[out, K]`` view. Forward:
``_gradient_match_fwd_kernel``, one program per row, writes <r, s>, ||r||^2, ||s||^2 (float32;
float64 for float64 inputs) into that row's slot of the shared stats buffer. Backward:
``_gradient_match_bwd_kernel`` writes grad_s = c0 r + c1 s and grad_r = c2 s + c3 r per row.
"""
import triton
import triton.language as tl


@triton.jit
def _gradient_match_fwd_kernel(r_ptr, s_ptr, stats_ptr, K, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    acc_ty = stats_ptr.dtype.element_ty
    base = row.to(tl.int64) * K
    dot = tl.zeros([BLOCK], acc_ty)
    rr = tl.zeros([BLOCK], acc_ty)
    ss = tl.zeros([BLOCK], acc_ty)
    for k0 in range(0, K, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        m = k < K
        r = tl.load(r_ptr + base + k, mask=m, other=0.0).to(acc_ty)
        s = tl.load(s_ptr + base + k, mask=m, other=0.0).to(acc_ty)
        dot += r * s
        rr += r * r
        ss += s * s
    tl.store(stats_ptr + 3 * row, tl.sum(dot, axis=0))
    tl.store(stats_ptr + 3 * row + 1, tl.sum(rr, axis=0))
    tl.store(stats_ptr + 3 * row + 2, tl.sum(ss, axis=0))


@triton.jit
def _gradient_match_bwd_kernel(r_ptr, s_ptr, coef_ptr, gr_ptr, gs_ptr, K,
                               WRITE_R: tl.constexpr, WRITE_S: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    k = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = k < K
    acc_ty = coef_ptr.dtype.element_ty
    base = row.to(tl.int64) * K
    r = tl.load(r_ptr + base + k, mask=m, other=0.0).to(acc_ty)
    s = tl.load(s_ptr + base + k, mask=m, other=0.0).to(acc_ty)
    c = coef_ptr + 4 * row
    if WRITE_S:
        gs = tl.load(c) * r + tl.load(c + 1) * s
        tl.store(gs_ptr + base + k, gs.to(gs_ptr.dtype.element_ty), mask=m)
    if WRITE_R:
        gr = tl.load(c + 2) * s + tl.load(c + 3) * r
        tl.store(gr_ptr + base + k, gr.to(gr_ptr.dtype.element_ty), mask=m)
