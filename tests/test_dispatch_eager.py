"""The fused ops in eager mode (``vdfast.ops.fused.fused``): every call goes through the op's
``torch.library.custom_op`` (forward) and its ``_grad`` custom op (backward), as under
torch.compile and under a dispatch mode. (A direct ``autograd.Function`` path, which rebuilt the
custom ops from torch's private attributes, saved 10-137 µs per call; it is gone: a DM iteration
calls one fused op, and the saving was below the iteration's noise.)"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tolerances import fused_op_env, needs_backend  # noqa: F401 (fused_op_env: autouse)
import vdfast.ops  # noqa: F401
from vdfast.ops.dispatch import OPS, _forward_and_grads, _tensors

NAMES = sorted(OPS)


def _case(name, dtype=torch.float64):
    public, make = OPS[name].check
    args, kwargs = make(torch.device("cpu"), dtype, torch.Generator().manual_seed(0))
    return public, args, kwargs


def _vdfast_events(fn):
    """The ``vdfast::`` operators a profiler sees while ``fn`` runs (custom ops and kernels)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("vdfast::")}


@pytest.mark.parametrize("name", NAMES)
def test_eager_calls_run_the_custom_ops(name):
    """Eager: the custom op (and in the backward its ``_grad`` op) runs, and inside it the
    compiled kernels."""
    needs_backend("cpp")
    public, args, kwargs = _case(name)
    events = _vdfast_events(lambda: _forward_and_grads(public, args, kwargs, "cpp"))
    kernels = {f"vdfast::{k}" for k in OPS[name].impls["cpp"].kernels}
    assert events & kernels and f"vdfast::{name}" in events, events
    if any(t.requires_grad for t in _tensors(args)):
        assert f"vdfast::{name}_grad" in events, events


def test_autograd_node_is_the_custom_ops(gen):
    real, syn = torch.randn(6, 5, generator=gen), torch.randn(3, 5, generator=gen).requires_grad_()
    rl, sl = torch.arange(6) % 3, torch.arange(3)
    loss = vdfast.ops.dm_loss(real, rl, syn, sl, 3, backend="cpp")
    assert "vdfast_dm_loss" in type(loss.grad_fn).__name__


class _Names(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.name())
        return func(*args, **(kwargs or {}))


def test_a_dispatch_mode_sees_the_custom_ops(gen):
    """Under a Python dispatch mode (make_fx, FakeTensorMode, a FlopCounter ...), the ops are the
    custom ops, as under torch.compile, forward and backward."""
    needs_backend("cpp")
    s, a, t = (torch.randn(40, generator=gen, dtype=torch.float64) for _ in range(3))
    s.requires_grad_()
    with _Names() as mode:
        torch.autograd.grad(vdfast.ops.trajectory_loss(s, a, t, backend="cpp"), [s])
    assert {"vdfast::trajectory_loss", "vdfast::trajectory_loss_grad"} <= mode.names
    assert "vdfast::trajectory_loss_fwd" not in mode.names  # inside the custom op, below the mode


@pytest.mark.parametrize("name", ["dm_loss", "trajectory_loss", "gradient_match",
                                  "blend_static_dynamic"])
def test_eager_call_refuses_create_graph(name):
    """The fused backward is first order, loud under create_graph."""
    needs_backend("cpp")
    public, args, kwargs = _case(name)
    out = public(*args, backend="cpp", **kwargs)
    leaves = [t for t in torch.utils._pytree.tree_leaves(args)
              if torch.is_tensor(t) and t.requires_grad]
    with pytest.raises(RuntimeError, match="has no double backward"):
        torch.autograd.grad(out.sum(), leaves, create_graph=True)


def test_eager_call_under_no_grad_and_inference_mode(gen):
    needs_backend("cpp")
    real, syn = torch.randn(6, 5, generator=gen), torch.randn(3, 5, generator=gen).requires_grad_()
    rl, sl = torch.arange(6) % 3, torch.arange(3)
    want = vdfast.ops.dm_loss(real, rl, syn, sl, 3, backend="cpp").detach()
    with torch.no_grad():
        got = vdfast.ops.dm_loss(real, rl, syn, sl, 3, backend="cpp")
    assert got.grad_fn is None and torch.equal(got, want)
    with torch.inference_mode():
        got = vdfast.ops.dm_loss(real, rl, syn, sl, 3, backend="cpp")
    assert torch.equal(got, want)


def test_guided_step_in_place_bumps_the_version(gen):
    """The mutating custom op writes ``out`` (its ``Tensor(a!)`` schema): its version counter
    moves."""
    needs_backend("cpp")
    public, args, kwargs = _case("guided_step")
    out = torch.zeros_like(args[0])
    v = out._version
    public(*args, out=out, backend="cpp", **kwargs)
    assert out._version > v
