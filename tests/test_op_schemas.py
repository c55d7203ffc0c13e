"""The compiled kernels' schemas: every ``torch.ops.vdfast.*_cpu`` kernel, called as the fused ops
call it (forward and backward), passes ``torch.library.opcheck``'s schema test (an output the
kernel writes must be declared ``Tensor(a!)``, nothing undeclared may be written). The CUDA
twins' schemas are checked for parsing and declared writes in ``tests/test_cuda_compile.py``."""
import pytest
import torch

import vdfast.ops  # noqa: F401
from vdfast.ops.dispatch import OPS, _clone_inputs, _forward_and_grads, compiled_extension

pytestmark = pytest.mark.skipif(compiled_extension()[0] is None, reason="needs vdfast._C")


@pytest.mark.parametrize("name", sorted(n for n, o in OPS.items() if "cpp" in o.impls))
def test_cpu_kernel_schemas(name, monkeypatch):
    o = OPS[name]
    calls = []
    for k in o.impls["cpp"].kernels:
        real = getattr(torch.ops.vdfast, k)

        def record(*args, _real=real, _k=k):
            calls.append((_k, _real, _clone_inputs(args)))
            return _real(*args)
        monkeypatch.setattr(torch.ops.vdfast, k, record)
    public, make = o.check
    args, kwargs = make(torch.device("cpu"), torch.float64, torch.Generator().manual_seed(0))
    _forward_and_grads(public, args, kwargs, "cpp")
    assert {k for k, _, _ in calls} == set(o.impls["cpp"].kernels), "a kernel was not exercised"
    for k, real, args in calls:
        torch.library.opcheck(real.default, args, test_utils="test_schema")
