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



# ---------------------------------------------------------------------------------------------
# the Triton backend's ops: torch.library.triton_op's (vdfast::<op>_triton, <op>_grad_triton)
# ---------------------------------------------------------------------------------------------
TRITON_OPS = sorted(n for n, o in OPS.items() if "triton" in o.impls)
# test_aot_dispatch_dynamic decomposes a triton_op into its kernels on fake tensors: the CPU
# interpreter cannot launch those (it reads the data), a GPU's Triton records them. GPU only.
TRITON_CPU_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor")


def _triton_calls(name, device):
    """The vdfast ops the public function runs on the triton backend (forward and backward)."""
    public, make = OPS[name].check
    args, kwargs = make(torch.device(device), torch.float64, torch.Generator().manual_seed(0))
    with _RecordVdfastOps() as rec:
        _forward_and_grads(public, args, kwargs, "triton")
    return rec.calls


def _opcheck_triton(name, device, tests):
    calls = _triton_calls(name, device)
    ops = {f.name() for f, _, _ in calls}
    assert f"vdfast::{name}_triton" in ops, ops
    if OPS[name].impls["triton"].double_backward is False and name not in ("guided_step",
                                                                           "normalize_clips"):
        assert f"vdfast::{name}_grad_triton" in ops, ops  # the backward is a triton_op too
    assert all(n.endswith("_triton") for n in ops), ops  # nothing opaque beside them
    for func, a, kw in calls:
        if func.name().endswith("_grad_triton"):
            a, kw = _detached(a), _detached(kw)
        torch.library.opcheck(func, a, kw, test_utils=tests)


@pytest.mark.parametrize("name", TRITON_OPS)
def test_triton_ops_opcheck_in_the_interpreter(name):
    pytest.importorskip("triton")
    import os
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the Triton kernels on CPU tensors in the interpreter")
    _opcheck_triton(name, "cpu", TRITON_CPU_TESTS)


@pytest.mark.gpu
@pytest.mark.parametrize("name", TRITON_OPS)
def test_triton_ops_opcheck_on_gpu(name):
    """Every opcheck test, AOT dispatch (the triton_op decomposed into its kernels) included."""
    pytest.importorskip("triton")
    _opcheck_triton(name, "cuda", ALL_TESTS)


_TRACE_SCRIPT = r'''
import sys, torch
import vdfast.ops
from vdfast.ops.dispatch import OPS, _forward_and_grads
from torch._functorch.aot_autograd import aot_function
from torch.utils._python_dispatch import TorchDispatchMode

class Rec(TorchDispatchMode):
    calls = []
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "vdfast":
            self.calls.append((func, [a.detach().clone() if torch.is_tensor(a) else
                                      [t.detach().clone() for t in a] if isinstance(a, list) and a
                                      and torch.is_tensor(a[0]) else a for a in args]))
        return func(*args, **(kwargs or {}))

name = sys.argv[1]
public, make = OPS[name].check
args, kwargs = make(torch.device("cpu"), torch.float64, torch.Generator().manual_seed(0))
with Rec() as rec:  # the cpp ops' arguments are the triton ops' (float64: the same dtypes)
    _forward_and_grads(public, args, kwargs, "cpp")

def meta(x):  # (fake CUDA tensors of a CPU-only torch lack a device guard for views)
    if torch.is_tensor(x):
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
    if isinstance(x, list):
        return [meta(t) for t in x]
    return "triton" if x == "cpp" else x

for func, a in rec.calls:
    op = getattr(torch.ops.vdfast, func.name().split("::")[1] + "_triton").default
    a = [meta(x) for x in a]
    flat = [t for x in a for t in (x if isinstance(x, list) else [x]) if torch.is_tensor(x) or
            isinstance(x, list)]
    graphs = []

    def fw(gm, inputs):
        graphs.append(gm)
        raise StopIteration  # captured; nothing can run without a GPU

    def f(*tensors):
        it = iter(tensors)
        b = [[next(it) for _ in x] if isinstance(x, list) else next(it) if torch.is_tensor(x)
             else x for x in a]
        return op(*b)
    try:
        aot_function(f, fw_compiler=fw)(*flat)
    except StopIteration:
        pass
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    print(op.name(), sum("triton_kernel_wrapper" in t for t in targets),
          [t for t in targets if t.startswith("vdfast.")])
'''


@pytest.mark.slow
@pytest.mark.parametrize("name", TRITON_OPS)
def test_triton_ops_trace_into_their_kernels(name, tmp_path):
    """What inductor sees of a triton_op, checked without a GPU: AOT autograd traces each Triton
    op (forward and backward) on meta tensors (the launchers take a GPU's block sizes), with
    Triton's GPU compiler rather than the interpreter (a child process: TRITON_INTERPRET is read when the kernels are defined), and the
    graph holds the kernels (``triton_kernel_wrapper_functional``), no opaque vdfast op."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", _TRACE_SCRIPT, name], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln.split(" ", 1) for ln in r.stdout.strip().splitlines()]
    assert {op for op, _ in lines} >= {f"vdfast::{name}_triton"}
    for op, rest in lines:
        kernels, opaque = rest.split(" ", 1)
        assert int(kernels) >= 1, (op, rest)
        assert opaque == "[]", (op, rest)
