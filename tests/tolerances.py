"""Comparing a fast path with the plain-PyTorch reference: the one tolerance table, keyed by dtype
(:data:`TOL`, defined in ``vdfast/ops/tolerances.py``: the dispatch's first-call check uses it too).

For reductions use ``reduction_close``: error(fast vs float64 reference) must be at most
2 x error(reference run in the fast path's dtype) + a small floor.
"""
import pytest
import torch

from vdfast.ops.tolerances import TOL


def assert_close(actual, expected, dtype=None, **override):
    dtype = dtype or actual.dtype
    tol = dict(TOL[dtype])
    tol.update(override)
    torch.testing.assert_close(actual.to(expected.dtype), expected, **tol)


def reduction_close(fast, ref_lowp, ref64, floor=1e-6):
    """fast and ref_lowp computed in the low-precision dtype, ref64 in float64."""
    err_fast = (fast.double() - ref64).abs().max().item()
    err_ref = (ref_lowp.double() - ref64).abs().max().item()
    scale = ref64.abs().max().item()
    assert err_fast <= 2 * err_ref + floor * max(1.0, scale), (err_fast, err_ref, scale)


@pytest.fixture(autouse=True)
def fused_op_env(monkeypatch):
    """For the fused ops' test modules (``_nan_outputs = fused_op_env``, autouse there): outputs
    are NaN-filled where a kernel does not write (VDFAST_NAN_FILL=1), and no backend is forced."""
    monkeypatch.setenv("VDFAST_NAN_FILL", "1")
    monkeypatch.delenv("VDFAST_BACKEND", raising=False)


def needs_backend(backend: str) -> None:
    """Skip, with the reason, a CPU test of a backend this machine cannot run."""
    from vdfast.ops.dispatch import compiled_extension

    if backend == "cpp" and compiled_extension()[0] is None:
        pytest.skip(compiled_extension()[1])
    if backend == "triton":
        pytest.importorskip("triton")
