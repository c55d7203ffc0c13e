"""Triton kernel of guided_step (launcher in vdfast/ops/guided_step.py). Forward only: sampling
runs under no_grad, so there is no ``_guided_step_bwd_kernel``.

Latents [B, F, C, h, w] contiguous; one program per (b, f) row and BLOCK elements of it, so the
per-frame guidance lam[f] and the guide row are per-program constants.
  x0 = a * x - b * eps
  DDPM: out = c0 * x0 + c1 * x + (lam[f] * s) * (m - x0) [+ s * z]
  DDIM: out = c0 * (x0 + lam[f] * (m - x0)) + c1 * x
Triton passes Python floats as float32, so each scalar arrives as a float32 pair (hi, lo) with
hi + lo = the float64 value to ~2**-48: ACC = float64 adds them, float32 uses hi.
"""
import triton
import triton.language as tl


@triton.jit
def _scalar(hi, lo, ACC: tl.constexpr):
    # one return of one type: the GPU compiler refuses returns of two types, even in branches a
    # constexpr decides (the interpreter accepts them)
    v = tl.cast(hi, ACC)
    if ACC == tl.float64:
        v += tl.cast(lo, tl.float64)
    return v


@triton.jit
def _guided_step_fwd_kernel(x_ptr, eps_ptr, guide_ptr, lam_ptr, noise_ptr, out_ptr, F, CHW,
                            a_hi, a_lo, b_hi, b_lo, c0_hi, c0_lo, c1_hi, c1_lo, s_hi, s_lo,
                            GUIDE_PER_FRAME: tl.constexpr, HAS_NOISE: tl.constexpr,
                            DDIM: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64: B*F*CHW may pass 2**31
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < CHW
    base = row * CHW
    a = _scalar(a_hi, a_lo, ACC)
    b = _scalar(b_hi, b_lo, ACC)
    c0 = _scalar(c0_hi, c0_lo, ACC)
    c1 = _scalar(c1_hi, c1_lo, ACC)
    s = _scalar(s_hi, s_lo, ACC)
    lam = tl.load(lam_ptr + row % F).to(ACC)
    if GUIDE_PER_FRAME:
        g_base = base
    else:
        g_base = (row // F) * CHW
    x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(ACC)
    e = tl.load(eps_ptr + base + offs, mask=mask, other=0.0).to(ACC)
    m = tl.load(guide_ptr + g_base + offs, mask=mask, other=0.0).to(ACC)
    x0 = a * x - b * e
    if DDIM:
        out = c0 * (x0 + lam * (m - x0)) + c1 * x
    else:
        out = c0 * x0 + c1 * x + (lam * s) * (m - x0)
        if HAS_NOISE:
            z = tl.load(noise_ptr + base + offs, mask=mask, other=0.0).to(ACC)
            out += s * z
    tl.store(out_ptr + base + offs, out.to(out_ptr.dtype.element_ty), mask=mask)
