"""Triton kernels of ``vdfast.ops.trajectory_loss`` (launchers in ``vdfast/ops/trajectory_loss.py``).

Forward: ``_trajectory_loss_fwd_kernel`` writes per-program partial sums of (s - t)^2 and
(a - t)^2 (float32, float64 for float64 inputs); the launcher adds the partials (deterministic).
Backward: ``_trajectory_loss_bwd_kernel``, one elementwise pass with coef = (2 g / den,
-2 g num / den^2): grad_s = coef0 (s - t), grad_a = coef1 (a - t), grad_t = -(grad_s + grad_a).
"""
import triton
import triton.language as tl


@triton.jit
def _trajectory_loss_fwd_kernel(s_ptr, a_ptr, t_ptr, partial_ptr, P, ss, sa, st,
                                BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    i = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < P
    acc_ty = partial_ptr.dtype.element_ty
    t = tl.load(t_ptr + i * st, mask=m, other=0.0).to(acc_ty)
    ds = tl.load(s_ptr + i * ss, mask=m, other=0.0).to(acc_ty) - t
    da = tl.load(a_ptr + i * sa, mask=m, other=0.0).to(acc_ty) - t
    tl.store(partial_ptr + 2 * pid, tl.sum(ds * ds, axis=0))
    tl.store(partial_ptr + 2 * pid + 1, tl.sum(da * da, axis=0))


@triton.jit
def _trajectory_loss_bwd_kernel(s_ptr, a_ptr, t_ptr, coef_ptr, gs_ptr, ga_ptr, gt_ptr, P, ss, sa, st,
                                WRITE_S: tl.constexpr, WRITE_A: tl.constexpr, WRITE_T: tl.constexpr,
                                BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    i = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < P
    acc_ty = coef_ptr.dtype.element_ty
    c0 = tl.load(coef_ptr)
    c1 = tl.load(coef_ptr + 1)
    t = tl.load(t_ptr + i * st, mask=m, other=0.0).to(acc_ty)
    vs = c0 * (tl.load(s_ptr + i * ss, mask=m, other=0.0).to(acc_ty) - t)
    va = c1 * (tl.load(a_ptr + i * sa, mask=m, other=0.0).to(acc_ty) - t)
    if WRITE_S:
        tl.store(gs_ptr + i, vs.to(gs_ptr.dtype.element_ty), mask=m)
    if WRITE_A:
        tl.store(ga_ptr + i, va.to(ga_ptr.dtype.element_ty), mask=m)
    if WRITE_T:
        tl.store(gt_ptr + i, (-(vs + va)).to(gt_ptr.dtype.element_ty), mask=m)
