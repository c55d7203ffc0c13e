"""The dispatch's safety net: a fused backend is compared with the reference on its first automatic
use per (op, backend, device, dtype) and demoted, with a WARNING and a row in ``vdfast info``,
when it raises or disagrees; stale builds and GPUs without code are refused up front."""
import logging
import sys
from dataclasses import replace

import pytest
import torch

import vdfast.ops  # noqa: F401  (registers every op)
from vdfast.ops.dispatch import (OPS, _triton_import_reason, compiled_extension, cuda_arch_reason,
                                 missing_kernels, status_table)
from vdfast.ops.dm_loss import dm_loss
from vdfast.reference.dm_loss import dm_loss as ref_dm_loss

pytestmark = pytest.mark.skipif(compiled_extension()[0] is None, reason="needs vdfast._C (cpp)")


@pytest.fixture
def broken_cpp(monkeypatch):
    """Replace dm_loss's cpp backend by ``make(good_fn)`` for one test, with a fresh check record."""
    o = OPS["dm_loss"]
    good = o.impls["cpp"]
    monkeypatch.setattr(o, "checked", {})
    monkeypatch.setattr(o, "_logged", set())
    monkeypatch.delenv("VDFAST_BACKEND", raising=False)

    def install(make):
        monkeypatch.setitem(o.impls, "cpp", replace(good, fn=make(good.fn)))
        return o
    return install


def _inputs(gen, dtype=torch.float32):
    real = torch.randn(30, 17, generator=gen, dtype=dtype)
    syn = torch.randn(6, 17, generator=gen, dtype=dtype, requires_grad=True)
    return real, torch.arange(3).repeat_interleave(10), syn, torch.arange(3).repeat(2)


def _raises(fn):
    def run(*a):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
    return run


def _off_by_one_percent(fn):
    return lambda *a: fn(*a) * 1.01


def _wrong_gradient(fn):
    class Halve(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return 0.5 * g

    def run(real, rl, syn, sl, nc):
        return fn(real, rl, Halve.apply(syn), sl, nc)
    return run


@pytest.mark.parametrize("make,why", [(_raises, "no kernel image"), (_off_by_one_percent, "differs"),
                                      (_wrong_gradient, "differs")],
                         ids=["raises", "wrong-forward", "wrong-gradient"])
def test_broken_backend_is_demoted_with_a_warning(broken_cpp, make, why, gen, caplog):
    o = broken_cpp(make)
    real, rl, syn, sl = _inputs(gen)
    with caplog.at_level(logging.WARNING, logger="vdfast.ops"):
        loss = dm_loss(real, rl, syn, sl, 3)
        loss2 = dm_loss(real, rl, syn, sl, 3)  # checked once: no second warning
    want = ref_dm_loss(real, rl, syn, sl, 3)
    torch.testing.assert_close(loss, want)  # the reference served
    torch.testing.assert_close(loss2, want)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "dm_loss" in msg and "cpp" in msg and why in msg
    assert why in o.checked[("cpp", "cpu", torch.float32)]
    row = [r for r in status_table() if r[:3] == ("dm_loss", "cpp", "cpu")][0]
    assert "demoted" in row[3] and why in row[3]
    # per dtype: float64 is checked on its own (and fails on its own here)
    dm_loss(*[t.double() if t.is_floating_point() else t for t in (real, rl)],
            syn.detach().double(), sl, 3)
    assert ("cpp", "cpu", torch.float64) in o.checked


def test_explicit_request_is_not_demoted(broken_cpp, gen):
    broken_cpp(_off_by_one_percent)
    real, rl, syn, sl = _inputs(gen)
    got = dm_loss(real, rl, syn, sl, 3, backend="cpp")  # asked for: runs as asked
    torch.testing.assert_close(got, 1.01 * ref_dm_loss(real, rl, syn, sl, 3))


def test_healthy_backends_pass_their_check(monkeypatch):
    for name, o in sorted(OPS.items()):
        if "cpp" not in o.impls:
            continue
        monkeypatch.setattr(o, "checked", {})
        for dt in (torch.float32, torch.float64):
            assert o.first_call_check("cpp", torch.device("cpu"), dt) is None, (name, dt)


def test_check_runs_under_no_grad_and_inference_mode(broken_cpp, gen):
    o = broken_cpp(lambda fn: fn)  # the real kernel, a fresh record
    real, rl, syn, sl = _inputs(gen)
    with torch.inference_mode():
        dm_loss(real, rl, syn.detach(), sl, 3)
    assert o.checked == {("cpp", "cpu", torch.float32): None}


def test_stale_build_is_refused(monkeypatch, gen):
    o = OPS["dm_loss"]
    monkeypatch.setitem(o.impls, "cpp", replace(o.impls["cpp"], kernels=("dm_loss_fwd",
                                                                          "dm_loss_gone")))
    real, rl, syn, sl = _inputs(gen)
    why = o.why_not("cpp", [real, syn], explicit=True)
    assert any("dm_loss_gone" in r and "stale" in r for r in why)
    assert not any("dm_loss_fwd" in r for r in why)


def test_kernels_are_checked_per_dispatch_key():
    """One schema per kernel: the cpp backend needs its CPU kernel, the cuda backend its CUDA
    kernel (a kernel defined but without a CPU implementation is missing for cpp)."""
    assert missing_kernels(("dm_loss_fwd", "dm_loss_bwd"), "CPU") == []
    # the GPU's per-video backward has a schema in every build, a kernel only on CUDA
    assert missing_kernels(("blend_static_dynamic_bwd_dyn",), "CPU") == ["blend_static_dynamic_bwd_dyn"]
    import vdfast._C as C
    want = [] if C.WITH_CUDA else ["dm_loss_fwd"]
    assert missing_kernels(("dm_loss_fwd",), "CUDA") == want


def test_cuda_arch_reason():
    assert cuda_arch_reason((9, 0), (800, 900)) is None
    assert cuda_arch_reason((8, 6), (800,)) is None       # same major, newer minor
    assert cuda_arch_reason((10, 0), (900,)) is None      # newer GPU: tried (PTX / the check)
    why = cuda_arch_reason((7, 5), (800, 900))
    assert "sm_75" in why and "sm_80" in why and "TORCH_CUDA_ARCH_LIST=7.5" in why
    assert "stale" in cuda_arch_reason((9, 0), ())


def test_triton_reason_names_a_missing_kernels_package(monkeypatch):
    pytest.importorskip("triton")
    _triton_import_reason.cache_clear()
    monkeypatch.setitem(sys.modules, "vdfast._kernels", None)  # import of it raises ImportError
    try:
        assert "vdfast._kernels" in (_triton_import_reason() or "")
    finally:
        _triton_import_reason.cache_clear()
