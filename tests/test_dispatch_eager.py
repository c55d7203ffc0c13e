"""The fused ops' two ways of running (``vdfast.ops.dispatch.fused``): in eager mode a plain
``torch.autograd.Function`` built from the custom op's own implementation, ``setup_context`` and
``backward`` (the backward calling the ``_grad`` op's implementation directly); under torch.compile,
a dispatch mode or ``through_custom_ops()``, the custom ops. Both must give the same bits, and
each must really run where it is meant to."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tolerances import fused_op_env, needs_backend  # noqa: F401 (fused_op_env: autouse)
import vdfast.ops  # noqa: F401
from vdfast.ops.dispatch import OPS, _forward_and_grads, _tensors, through_custom_ops

BACKENDS = ["cpp", "triton"]
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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_eager_path_equals_custom_op_path(name, backend):
    """Forward and every gradient: bit-identical between the two paths."""
    needs_backend(backend)
    if backend not in OPS[name].impls:
        pytest.skip(f"{name} has no {backend} backend")
    public, args, kwargs = _case(name)
    eager = _forward_and_grads(public, args, kwargs, backend)
    with through_custom_ops():
        custom = _forward_and_grads(public, args, kwargs, backend)
    assert len(eager) == len(custom) > 0
    for a, b in zip(eager, custom):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b) or (a.isnan() == b.isnan()).all() and torch.equal(
            a.nan_to_num(0.0), b.nan_to_num(0.0))
        assert not a.isnan().any()  # VDFAST_NAN_FILL: every output element was written


@pytest.mark.parametrize("name", NAMES)
def test_each_path_runs_where_meant(name):
    """Eager: the compiled kernels run, neither the custom op nor its ``_grad`` op;
    through_custom_ops(): the custom op (and in the backward its ``_grad`` op) runs."""
    needs_backend("cpp")
    public, args, kwargs = _case(name)
    run = lambda: _forward_and_grads(public, args, kwargs, "cpp")  # noqa: E731
    has_grad = any(t.requires_grad for t in _tensors(args))
    eager = _vdfast_events(run)
    with through_custom_ops():
        custom = _vdfast_events(run)
    kernels = {f"vdfast::{k}" for k in OPS[name].impls["cpp"].kernels}
    assert eager & kernels and not eager & {f"vdfast::{name}", f"vdfast::{name}_grad"}, eager
    assert f"vdfast::{name}" in custom, custom
    if has_grad:
        assert f"vdfast::{name}_grad" in custom, custom


def test_autograd_nodes_name_the_path(gen):
    real, syn = torch.randn(6, 5, generator=gen), torch.randn(3, 5, generator=gen).requires_grad_()
    rl, sl = torch.arange(6) % 3, torch.arange(3)
    loss = vdfast.ops.dm_loss(real, rl, syn, sl, 3, backend="cpp")
    assert type(loss.grad_fn).__name__.startswith("vdfast_dm_loss_eager")
    with through_custom_ops():
        loss = vdfast.ops.dm_loss(real, rl, syn, sl, 3, backend="cpp")
    assert "vdfast_dm_loss" in type(loss.grad_fn).__name__
    assert not type(loss.grad_fn).__name__.startswith("vdfast_dm_loss_eager")


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
def test_eager_path_refuses_create_graph(name):
    """The eager path's backward is the custom op's: first order, loud under create_graph."""
    needs_backend("cpp")
    public, args, kwargs = _case(name)
    out = public(*args, backend="cpp", **kwargs)
    leaves = [t for t in torch.utils._pytree.tree_leaves(args)
              if torch.is_tensor(t) and t.requires_grad]
    with pytest.raises(RuntimeError, match="has no double backward"):
        torch.autograd.grad(out.sum(), leaves, create_graph=True)


def test_eager_path_under_no_grad_and_inference_mode(gen):
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
    """The eager path writes ``out`` through the kernel's ``Tensor(a!)`` schema: its version
    counter moves, as through the mutating custom op."""
    needs_backend("cpp")
    public, args, kwargs = _case("guided_step")
    out = torch.zeros_like(args[0])
    v = out._version
    public(*args, out=out, backend="cpp", **kwargs)
    assert out._version > v
