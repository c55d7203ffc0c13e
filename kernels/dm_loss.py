"""Triton kernels of ``vdfast.ops.dm_loss`` (launchers in ``vdfast/ops/dm_loss.py``).

Forward: ``_dm_loss_fwd_kernel`` adds each [BLOCK_N, BLOCK_D] tile of features into per-class sums
with atomics (and counts rows per class), for the real and the synthetic side: a tile spanning at
most ``MAX_RUNS`` consecutive labels (a class-sorted batch) reduces its rows per label first and
issues one atomic per label and column, any other tile one per element; then
``_dm_loss_diff_kernel`` turns the sums into diff = mean_real - mean_syn (0 for a class absent on
either side) and per-program partial sums of diff**2. Backward: ``_dm_loss_bwd_kernel`` gathers
grad[i, :] = scale[label_i] * diff[label_i, :].
Accumulation is in float32 (float64 for float64 inputs); half inputs are cast after loading.
"""
import triton
import triton.language as tl


@triton.jit
def _dm_loss_fwd_kernel(x_ptr, lab_ptr, sums_ptr, cnt_ptr, N, D, NC, stride_n,
                        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MAX_RUNS: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    lab = tl.load(lab_ptr + rows, mask=rows < N, other=-1)
    # rows with a label outside [0, NC) are ignored (checking would need a host synchronisation)
    valid = (rows < N) & (lab >= 0) & (lab < NC)
    acc_ty = sums_ptr.dtype.element_ty
    cmask = cols < D
    m = valid[:, None] & cmask[None, :]
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_n + cols[None, :], mask=m, other=0.0)
    x = x.to(acc_ty)
    lo = tl.min(tl.where(valid, lab, NC), axis=0)
    hi = tl.max(tl.where(valid, lab, -1), axis=0)
    if hi - lo < MAX_RUNS:
        # few labels in the tile (a class-sorted batch, the usual real side): the tile's rows of
        # each label are summed first, one atomic per (label, column) instead of one per element
        row = sums_ptr + lo.to(tl.int64) * D + cols  # label c's row of sums, stepped by D
        for c in range(lo, hi + 1):
            sel = valid & (lab == c)
            n = tl.sum(sel.to(acc_ty), axis=0)
            if n > 0:
                col_sum = tl.sum(tl.where(sel[:, None], x, 0.0), axis=0)
                tl.atomic_add(row, col_sum, mask=cmask)
                if pid_d == 0:
                    tl.atomic_add(cnt_ptr + c, n)
            row += D
    else:
        tl.atomic_add(sums_ptr + lab[:, None].to(tl.int64) * D + cols[None, :], x, mask=m)
        ones = tl.full([BLOCK_N], 1.0, acc_ty)
        tl.atomic_add(cnt_ptr + lab, ones, mask=valid & (pid_d == 0))


@triton.jit
def _dm_loss_diff_kernel(sums_r_ptr, sums_s_ptr, cnt_r_ptr, cnt_s_ptr, diff_ptr, partial_ptr, D,
                         BLOCK_D: tl.constexpr):
    c = tl.program_id(0)
    pid_d = tl.program_id(1)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m = cols < D
    cr = tl.load(cnt_r_ptr + c)
    cs = tl.load(cnt_s_ptr + c)
    both = (cr > 0) & (cs > 0)  # the class is present on both sides
    base = c.to(tl.int64) * D
    sr = tl.load(sums_r_ptr + base + cols, mask=m, other=0.0)
    ss = tl.load(sums_s_ptr + base + cols, mask=m, other=0.0)
    d = sr / tl.maximum(cr, 1.0) - ss / tl.maximum(cs, 1.0)
    d = tl.where(m, d, 0.0)
    d = tl.where(both, d, 0.0)
    tl.store(diff_ptr + base + cols, d, mask=m)
    tl.store(partial_ptr + c * tl.num_programs(1) + pid_d, tl.sum(d * d, axis=0))


@triton.jit
def _dm_loss_bwd_kernel(grad_ptr, lab_ptr, diff_ptr, scale_ptr, N, D, NC,
                        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < N
    lab = tl.load(lab_ptr + rows, mask=rmask, other=-1)
    valid = rmask & (lab >= 0) & (lab < NC)  # ignored rows (see the forward) get a zero gradient
    m = rmask[:, None] & (cols < D)[None, :]
    mv = valid[:, None] & (cols < D)[None, :]
    s = tl.load(scale_ptr + lab, mask=valid, other=0.0)
    d = tl.load(diff_ptr + lab[:, None].to(tl.int64) * D + cols[None, :], mask=mv, other=0.0)
    g = s[:, None] * d
    tl.store(grad_ptr + rows[:, None].to(tl.int64) * D + cols[None, :],
             g.to(grad_ptr.dtype.element_ty), mask=m)
