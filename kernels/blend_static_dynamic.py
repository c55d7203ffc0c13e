"""Triton kernels of blend_static_dynamic (launchers in vdfast/ops/blend_static_dynamic.py).

The fused stage: out[n, :, t] = planes[static_idx[n], p(t)] + bias + 3x3x3 stencil (1 -> C_out) over
dynamic[dynamic_idx[n]], p(t) = 0 first frame, 1 last frame, 2 interior (T == 1: 0). Contiguous
tensors: planes [Ns, K, C_out, H, W], dynamic [Nd, T, H, W], wd [C_out, 27], out [N, C_out, T, H, W].

Each program owns one (n, t) and BLOCK flattened pixels, and all C_out channels as the rows of a
[CO_BLOCK, BLOCK] tile, so each of the 27 dynamic taps is loaded once and reused for every output
channel. Half inputs are computed in float32 (ACC), float64 in float64.
"""
import triton
import triton.language as tl


@triton.jit
def _blend_static_dynamic_fwd_kernel(planes_ptr, dyn_ptr, wd_ptr, bias_ptr, sidx_ptr, didx_ptr,
                                     out_ptr, K, T, H, W, C_OUT: tl.constexpr,
                                     CO_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
                                     ACC: tl.constexpr):
    pid_nt = tl.program_id(0).to(tl.int64)  # int64: N*C_out*T*H*W may pass 2**31
    n = pid_nt // T
    t = pid_nt % T
    HW = H * W
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < HW
    y = offs // W
    x = offs % W
    co = tl.arange(0, CO_BLOCK)
    mco = co < C_OUT
    m2 = mco[:, None] & m[None, :]
    s = tl.load(sidx_ptr + n)
    d = tl.load(didx_ptr + n)
    p = tl.where(t == 0, 0, tl.where(t == T - 1, 1, 2))
    pl = planes_ptr + (s * K + p) * C_OUT * HW
    acc = tl.load(pl + co[:, None] * HW + offs[None, :], mask=m2, other=0.0).to(ACC)
    acc += tl.load(bias_ptr + co, mask=mco, other=0.0).to(ACC)[:, None]
    dn = dyn_ptr + d * T * HW
    for kt in tl.static_range(3):
        ts = t + (kt - 1)
        tok = (ts >= 0) & (ts < T)
        for ky in tl.static_range(3):
            ys = y + (ky - 1)
            yok = m & tok & (ys >= 0) & (ys < H)
            for kx in tl.static_range(3):
                xs = x + (kx - 1)
                ok = yok & (xs >= 0) & (xs < W)
                dv = tl.load(dn + ts * HW + ys * W + xs, mask=ok, other=0.0).to(ACC)
                wv = tl.load(wd_ptr + co * 27 + (kt * 9 + ky * 3 + kx), mask=mco, other=0.0)
                acc += wv.to(ACC)[:, None] * dv[None, :]
    o = out_ptr + ((n * C_OUT + co[:, None]) * T + t) * HW + offs[None, :]
    tl.store(o, acc.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _blend_static_dynamic_bwd_kernel(grad_ptr, wd_ptr, gdyn_ptr, T, H, W, C_OUT: tl.constexpr,
                                     CO_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
                                     ACC: tl.constexpr):
    """Gradient of the gathered dynamic memory, per video: gdyn [N, T, H, W] (the transposed
    stencil, summed over output channels). Repeated dynamic indices are summed by the caller."""
    pid_nt = tl.program_id(0).to(tl.int64)
    n = pid_nt // T
    ts = pid_nt % T  # the dynamic frame receiving the gradient
    HW = H * W
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < HW
    ys = offs // W
    xs = offs % W
    co = tl.arange(0, CO_BLOCK)
    mco = co < C_OUT
    acc = tl.zeros((CO_BLOCK, BLOCK), dtype=ACC)
    gn = grad_ptr + n * C_OUT * T * HW
    for kt in tl.static_range(3):
        t = ts - (kt - 1)  # the output frame that read frame ts through tap kt
        tok = (t >= 0) & (t < T)
        for ky in tl.static_range(3):
            y = ys - (ky - 1)
            yok = m & tok & (y >= 0) & (y < H)
            for kx in tl.static_range(3):
                x = xs - (kx - 1)
                ok = yok & (x >= 0) & (x < W)
                g = tl.load(gn + (co[:, None] * T + t) * HW + (y * W + x)[None, :],
                            mask=mco[:, None] & ok[None, :], other=0.0).to(ACC)
                wv = tl.load(wd_ptr + co * 27 + (kt * 9 + ky * 3 + kx), mask=mco, other=0.0)
                acc += wv.to(ACC)[:, None] * g
    res = tl.sum(acc, axis=0)
    tl.store(gdyn_ptr + pid_nt * HW + offs, res.to(gdyn_ptr.dtype.element_ty), mask=m)


@triton.jit
def _blend_static_dynamic_bwd_planes_kernel(grad_ptr, gp_ptr, K, T, HW, C_OUT: tl.constexpr,
                                            BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Gradient of the three static planes, per video: gp [N, K, C_out, H, W] = the output
    gradient summed over the frames that read each plane (first, last, interior)."""
    pid = tl.program_id(0).to(tl.int64)  # one (n, co)
    n = pid // C_OUT
    co = pid % C_OUT
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < HW
    g = grad_ptr + pid * T * HW + offs
    dst = gp_ptr + (n * K * C_OUT + co) * HW + offs
    first = tl.load(g, mask=m, other=0.0)
    tl.store(dst, first, mask=m)
    if T > 1:
        last = tl.load(g + (T - 1) * HW, mask=m, other=0.0)
        tl.store(dst + C_OUT * HW, last, mask=m)
    if T > 2:
        acc = tl.zeros((BLOCK,), dtype=ACC)
        for t in range(1, T - 1):
            acc += tl.load(g + t * HW, mask=m, other=0.0).to(ACC)
        tl.store(dst + 2 * C_OUT * HW, acc.to(gp_ptr.dtype.element_ty), mask=m)
