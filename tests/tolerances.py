"""One tolerance table, keyed by dtype, for comparing a fast path with the plain-PyTorch reference.

For reductions use ``reduction_close``: error(fast vs float64 reference) must be at most
2 x error(reference run in the fast path's dtype) + a small floor.
"""
import pytest
import torch

TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float32: dict(atol=1e-5, rtol=1e-4),
    # half types: 10 and 7 mantissa bits; inputs are rounded before the kernel sees them
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}


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
