"""vdfast.ops.trajectory_loss: every CPU-usable backend against the reference (forward and the
gradients to student, start and target)."""
import pytest
import torch

from tolerances import fused_op_env, needs_backend as _needs  # noqa: F401 (fused_op_env: autouse)
from tolerances import assert_close, reduction_close
from vdfast.ops import BackendUnavailable
from vdfast.ops.dispatch import op
from vdfast.ops.trajectory_loss import trajectory_loss
from vdfast.reference.trajectory_loss import trajectory_loss as ref

FUSED = ["cpp", "triton"]
SIZES = [1, 37, 3001]


def _inputs(gen, p, dtype=torch.float64):
    target = torch.randn(p, generator=gen, dtype=torch.float64)
    start = target + torch.randn(p, generator=gen, dtype=torch.float64)
    student = target + 0.5 * torch.randn(p, generator=gen, dtype=torch.float64)
    return student.to(dtype), start.to(dtype), target.to(dtype)


def _run(fn, s, a, t, which=(0, 1, 2), **kw):
    leaves = [x.detach().requires_grad_(i in which) for i, x in enumerate((s, a, t))]
    loss = fn(*leaves, **kw)
    grads = torch.autograd.grad(loss, [leaves[i] for i in which])
    return (loss.detach(),) + grads


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("p", SIZES)
def test_float64_matches_reference(backend, p, gen):
    _needs(backend)
    s, a, t = _inputs(gen, p)
    for g, w in zip(_run(trajectory_loss, s, a, t, backend=backend), _run(ref, s, a, t)):
        assert not torch.isnan(g).any()
        assert_close(g, w)


@pytest.mark.parametrize("backend", FUSED)
def test_student_only_gradient(backend, gen):
    _needs(backend)
    s, a, t = _inputs(gen, 37)
    got = _run(trajectory_loss, s, a, t, which=(0,), backend=backend)
    want = _run(ref, s, a, t, which=(0,))
    for g, w in zip(got, want):
        assert_close(g, w)


@pytest.mark.parametrize("backend", FUSED)
def test_float32_against_float64(backend, gen):
    _needs(backend)
    s, a, t = _inputs(gen, 3001)
    hi = _run(ref, s, a, t)
    lo = _run(ref, s.float(), a.float(), t.float())
    got = _run(trajectory_loss, s.float(), a.float(), t.float(), backend=backend)
    assert got[0].dtype == torch.float32
    for g, l, h in zip(got, lo, hi):
        reduction_close(g, l, h)
        assert_close(g, h.float(), dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", FUSED)
def test_half_inputs(backend, dtype, gen):
    _needs(backend)
    s, a, t = _inputs(gen, 37, dtype)
    got = _run(trajectory_loss, s, a, t, backend=backend)
    want = _run(ref, s.double(), a.double(), t.double())
    for g, w in zip(got, want):
        assert g.dtype == dtype
        assert_close(g, w, dtype=dtype)  # float32 accumulation, one rounding to `dtype`


@pytest.mark.parametrize("backend", FUSED)
def test_non_contiguous_and_multi_dim(backend, gen):
    _needs(backend)
    s, a, t = _inputs(gen, 2 * 37)
    got = _run(trajectory_loss, s[::2], a[1::2], t[:37], backend=backend)
    want = _run(ref, s[::2].contiguous(), a[1::2].contiguous(), t[:37].contiguous())
    for g, w in zip(got, want):
        assert_close(g, w)
    m = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    got = _run(trajectory_loss, m.t(), m.t() + 1, torch.zeros(5, 6, dtype=torch.float64), backend=backend)
    want = _run(ref, m.t(), m.t() + 1, torch.zeros(5, 6, dtype=torch.float64))
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert_close(g, w)


def test_reference_gradcheck_and_gradgradcheck(gen):
    s, a, t = (x.requires_grad_(True) for x in _inputs(gen, 5))
    f = lambda *x: trajectory_loss(*x, backend="reference")  # noqa: E731
    assert torch.autograd.gradcheck(f, (s, a, t))
    assert torch.autograd.gradgradcheck(f, (s, a, t))


@pytest.mark.parametrize("backend", FUSED)
def test_fused_gradcheck(backend, gen):
    _needs(backend)
    s, a, t = (x.requires_grad_(True) for x in _inputs(gen, 5))
    assert torch.autograd.gradcheck(lambda *x: trajectory_loss(*x, backend=backend), (s, a, t))


def test_gradient_flows_through_student_graph(gen):
    """MTT: the loss's gradient continues through the unrolled steps that produced the student."""
    _needs("cpp")
    s0, a, t = _inputs(gen, 37)
    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(37, generator=gen, dtype=torch.float64, requires_grad=True)
    grads = {}
    for b in ("cpp", "reference"):
        step = torch.autograd.grad(((s0 * x) ** 2).sum(), [x], create_graph=True)[0]
        student = s0 - lr * step
        grads[b] = torch.autograd.grad(trajectory_loss(student, a, t, backend=b), [lr, x])
    for g, w in zip(grads["cpp"], grads["reference"]):
        assert_close(g, w)


def test_fused_backward_refuses_create_graph(gen):
    _needs("cpp")
    s, a, t = _inputs(gen, 5)
    s.requires_grad_(True)
    with pytest.raises(RuntimeError, match="has no double backward"):
        torch.autograd.grad(trajectory_loss(s, a, t, backend="cpp"), [s], create_graph=True)


def test_explicit_unavailable_backend_raises_with_reasons():
    x = torch.zeros(3)
    with pytest.raises(BackendUnavailable, match=r"(?s)'cuda' cannot run.*reference: usable"):
        trajectory_loss(x, x, x, backend="cuda")


def test_automatic_choice_on_cpu_is_cpp_from_the_measured_crossover():
    _needs("cpp")
    o = op("trajectory_loss")
    n = o.impls["cpp"].auto_min_numel
    assert n > 0
    assert o.select([torch.zeros(n)]).name == "cpp"
    assert o.select([torch.zeros(2, n // 2)]).name == "cpp"  # numel, not the first dimension
    small = torch.zeros(n - 1)
    assert o.select([small]).name == "reference"
    reasons = o.why_not("cpp", [small])
    assert len(reasons) == 1 and f"below {n} elements" in reasons[0]
    # an explicit request still runs the fused kernel, and it agrees with the reference
    assert o.select([small], backend="cpp").name == "cpp"
    s, a, t = (torch.randn(n - 1, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(trajectory_loss(s, a, t, backend="cpp"),
                               trajectory_loss(s, a, t, backend="reference"))
    # vdfast info reports the backend as usable (the crossover is a preference, not a limit)
    from vdfast.ops.dispatch import status_table
    assert ("trajectory_loss", "cpp", "cpu", f"usable (chosen automatically from {n} elements)") \
        in status_table()


def test_mismatched_inputs_raise():
    with pytest.raises(ValueError, match="shapes"):
        trajectory_loss(torch.zeros(3), torch.zeros(4), torch.zeros(3))
    with pytest.raises(ValueError, match="dtypes"):
        trajectory_loss(torch.zeros(3), torch.zeros(3, dtype=torch.float64), torch.zeros(3))
