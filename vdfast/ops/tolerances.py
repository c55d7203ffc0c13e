"""One tolerance table, by dtype, for a fast path against the plain-PyTorch reference run in float64
on the same (rounded) inputs. The tests use it (``tests/tolerances.py`` re-exports :data:`TOL`)
and so does the dispatch's first-call check (:func:`mismatch`).
"""
from __future__ import annotations

import torch

TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float32: dict(atol=1e-5, rtol=1e-4),
    # half types: 10 and 7 mantissa bits; inputs are rounded before the kernel sees them
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}

# The first-call check bounds a tensor's largest error by ``atol + rtol`` times the tensor's
# largest magnitude (floored at CHECK_FLOOR): what the tests' rule (``tests/test_ops_gpu.py``:
# atol x max(1, magnitude) + rtol x |element|) allows at the largest element, so a result those
# tests accept is not demoted. It is relative to the magnitude, not to max(1, magnitude), because
# the check's gradients can be ~1e-3 (trajectory_loss's): there an absolute 2e-3 (float16) would
# pass a zero gradient. (Before this table the check had its own, looser for the half types:
# float16 2e-2, bfloat16 5e-2; the cpp kernels' largest error on the check inputs is 6.6e-4 and
# 4.4e-3 of the magnitude, against the 4e-3 and 3.2e-2 allowed here.)
CHECK_FLOOR = 1e-3


def check_rtol(dtype: torch.dtype) -> float:
    """The first-call check's tolerance for a fast path of ``dtype``, relative to each tensor's
    largest magnitude (float32's for a dtype not in :data:`TOL`)."""
    tol = TOL.get(dtype, TOL[torch.float32])
    return tol["atol"] + tol["rtol"]


def mismatch(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> str | None:
    """None when ``got`` (the fast path, computed in ``dtype``) is within :func:`check_rtol` of
    ``want`` (the float64 reference)'s largest magnitude everywhere, else how far it is (NaN is
    never within)."""
    a, b = got.double().cpu(), want.double().cpu()
    err = (a - b).abs().max().item() if a.numel() else 0.0
    scale = max(b.abs().max().item() if b.numel() else 0.0, CHECK_FLOOR)
    bound = check_rtol(dtype) * scale
    if not (err <= bound):  # also catches NaN
        return f"differs from the reference by {err:.3g} (tolerance {bound:.3g})"
    return None
