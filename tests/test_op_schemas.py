"""The ops as PyTorch sees them, checked with ``torch.library.opcheck``.

* The compiled kernels (``torch.ops.vdfast.<op>_fwd`` ...), called as the fused ops call them
  (forward and backward): the schema test (an output the kernel writes must be declared
  ``Tensor(a!)``, nothing undeclared may be written), their fake kernels against the real ones, and
  a traced (AOT, dynamic shapes) call against eager. The CUDA kernels implement the same schemas;
  ``tests/test_cuda_compile.py`` checks their registrations and signatures without a GPU.
* The public fused ops (``torch.ops.vdfast.dm_loss`` ...: custom ops taking the backend's name),
  called through the public functions on the cpp backend: every opcheck test, the autograd
  registration and a compiled (AOT, dynamic shapes) forward and backward included.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vdfast.ops  # noqa: F401
from vdfast.ops.dispatch import OPS, _clone_inputs, _forward_and_grads, compiled_extension

pytestmark = pytest.mark.skipif(compiled_extension()[0] is None, reason="needs vdfast._C")

ALL_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor",
             "test_aot_dispatch_dynamic")
CPP_OPS = sorted(n for n, o in OPS.items() if "cpp" in o.impls)


def _detached(obj):
    if torch.is_tensor(obj):
        return obj.detach().clone()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detached(o) for o in obj)
    return obj


def _check_args(name, dtype=torch.float64):
    public, make = OPS[name].check
    args, kwargs = make(torch.device("cpu"), dtype, torch.Generator().manual_seed(0))
    return public, args, kwargs


class _Recorder:
    """Stands in for ``torch.ops.vdfast.<k>``: records each call (with copies of its arguments;
    kernels take no part in autograd) and runs it; anything else is the real op packet's (torch
    looks up ``.default`` of ops with a registered fake)."""

    def __init__(self, packet, k, calls):
        self._packet, self._k, self._calls = packet, k, calls

    def __getattr__(self, attr):
        return getattr(self._packet, attr)

    def __call__(self, *args):
        self._calls.append((self._k, self._packet, _detached(args)))
        return self._packet(*args)


@pytest.mark.parametrize("name", CPP_OPS)
def test_cpu_kernels(name, monkeypatch):
    o = OPS[name]
    calls = []
    for k in o.impls["cpp"].kernels:
        monkeypatch.setattr(torch.ops.vdfast, k, _Recorder(getattr(torch.ops.vdfast, k), k, calls))
    public, args, kwargs = _check_args(name)
    _forward_and_grads(public, args, kwargs, "cpp")
    assert {k for k, _, _ in calls} == set(o.impls["cpp"].kernels), "a kernel was not exercised"
    for k, real, args in calls:
        torch.library.opcheck(real.default, args, test_utils=ALL_TESTS)


class _RecordVdfastOps(TorchDispatchMode):
    """Records every ``vdfast::`` op dispatched (with copies of its arguments), below autograd:
    the public function's custom ops and, during backward, their gradient ops."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "vdfast":
            self.calls.append((func, _clone_inputs(args), _clone_inputs(kwargs)))
        return func(*args, **kwargs)


@pytest.mark.parametrize("name", CPP_OPS)
def test_public_ops_are_custom_ops(name):
    public, args, kwargs = _check_args(name)
    with _RecordVdfastOps() as rec:
        _forward_and_grads(public, args, kwargs, "cpp")
    ops = {f.name() for f, _, _ in rec.calls}
    assert f"vdfast::{name}" in ops, f"{name} did not run as the custom op vdfast::{name}: {ops}"
    kernels = {f"vdfast::{k}" for k in OPS[name].impls["cpp"].kernels}
    assert not ops & kernels, "kernels called above the custom op (not captured by torch.compile)"
    for func, a, kw in rec.calls:
        assert a[-1] == "cpp" or kw.get("backend") == "cpp", func  # the backend's name, last
        if func.name().endswith("_grad"):
            # the fused backward, first order by design (run where autograd builds no graph;
            # under create_graph the forward op's backward raises): checked on detached inputs
            a, kw = _detached(a), _detached(kw)
        torch.library.opcheck(func, a, kw, test_utils=ALL_TESTS)


def test_opcheck_catches_an_undeclared_write():
    """The schema test this file relies on fails for a kernel writing an input it does not declare."""
    lib = torch.library.Library("vdfast_test_schema", "FRAGMENT")
    lib.define("scale_(Tensor x) -> ()")
    lib.impl("scale_", lambda x: x.mul_(2.0), "CompositeExplicitAutograd")
    x = torch.ones(3)
    with pytest.raises(Exception):
        torch.library.opcheck(torch.ops.vdfast_test_schema.scale_.default, (x,),
                              test_utils="test_schema")

