"""vdfast.ops.gradient_match: every CPU-usable backend against the reference, including DC's
meta-gradient (d matching loss / d synthetic data through create_graph gradients)."""
import pytest
import torch
import torch.nn.functional as F

from tolerances import fused_op_env, needs_backend as _needs  # noqa: F401 (fused_op_env: autouse)
from tolerances import assert_close, reduction_close
from vdfast.ops import BackendUnavailable
from vdfast.ops.dispatch import op
from vdfast.ops.gradient_match import gradient_match
from vdfast.reference.gradient_match import gradient_match as ref

FUSED = ["cpp", "triton"]
# Conv3d, Conv2d, Linear weights, a bias, and a 1x1 Linear
SHAPES = [(4, 3, 3, 5, 5), (6, 2, 3, 3), (5, 37), (4,), (1, 1)]
# Triton 3.6's interpreter turns the kernel's run-time loop bound into an int via a 1-element array
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")


def _grads(gen, shapes=SHAPES, dtype=torch.float64):
    real = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    syn = [(r.double() * 0.5 + torch.randn(s, generator=gen, dtype=torch.float64)).to(dtype)
           for r, s in zip(real, shapes)]
    return real, syn


def _run(fn, real, syn, real_grad=True, **kw):
    r = [x.detach().requires_grad_(real_grad) for x in real]
    s = [x.detach().requires_grad_(True) for x in syn]
    loss = fn(r, s, **kw)
    leaves = (r if real_grad else []) + s
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves)]
    return [loss.detach()] + grads


def _loop(real, syn, eps=1e-6):
    """Row by row, as DC's published code (independent of the reference's vectorisation)."""
    total = torch.zeros((), dtype=torch.float64)
    for r, s in zip(real, syn):
        if r.dim() < 2:
            continue
        for a, b in zip(r.reshape(r.shape[0], -1), s.reshape(s.shape[0], -1)):
            total = total + 1 - torch.dot(a, b) / (a.norm() * b.norm() + eps)
    return total


def test_reference_matches_row_loop(gen):
    real, syn = _grads(gen)
    for g, w in zip(_run(ref, real, syn), _run(_loop, real, syn)):
        assert_close(g, w)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("real_grad", [False, True])
def test_float64_matches_reference(backend, real_grad, gen):
    _needs(backend)
    real, syn = _grads(gen)
    got = _run(gradient_match, real, syn, real_grad, backend=backend)
    want = _run(ref, real, syn, real_grad)
    for g, w in zip(got, want):
        assert not torch.isnan(g).any()
        assert_close(g, w)


@pytest.mark.parametrize("backend", FUSED)
def test_zero_rows_and_biases_only(backend, gen):
    _needs(backend)
    real, syn = _grads(gen, [(3, 4), (2,)])
    syn[0][1] = 0   # a zero row: distance 1, finite gradient (norm's gradient at 0 taken as 0)
    real[0][2] = 0
    got = _run(gradient_match, real, syn, backend=backend)
    want = _run(ref, real, syn)
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        assert_close(g, w)
    loss = gradient_match([torch.ones(3)], [torch.ones(3)], backend=backend)
    assert loss.item() == 0


@pytest.mark.parametrize("backend", FUSED)
def test_float32_against_float64(backend, gen):
    _needs(backend)
    real, syn = _grads(gen)
    hi = _run(ref, real, syn)
    lo = _run(ref, [x.float() for x in real], [x.float() for x in syn])
    got = _run(gradient_match, [x.float() for x in real], [x.float() for x in syn], backend=backend)
    assert got[0].dtype == torch.float32
    for g, l, h in zip(got, lo, hi):
        reduction_close(g, l, h)
        assert_close(g, h.float(), dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", FUSED)
def test_half_inputs(backend, dtype, gen):
    _needs(backend)
    real, syn = _grads(gen, dtype=dtype)
    got = _run(gradient_match, real, syn, backend=backend)
    want = _run(ref, [x.double() for x in real], [x.double() for x in syn])
    for g, w in zip(got, want):
        assert g.dtype == dtype
        # loss: a sum of 19 rounded-once terms of size ~1, so 4x the per-element half tolerance
        tol = dict(atol=8e-3, rtol=8e-3) if dtype == torch.float16 else dict(atol=6.4e-2, rtol=6.4e-2)
        assert_close(g, w, dtype=dtype, **(tol if g.dim() == 0 else {}))


@pytest.mark.parametrize("backend", FUSED)
def test_non_contiguous_inputs(backend, gen):
    _needs(backend)
    real, syn = _grads(gen, [(3, 4, 3, 5, 5), (37, 5)])
    real = [real[0].permute(0, 2, 1, 3, 4), real[1].t()]   # [O, ...] of non-contiguous strides
    syn = [syn[0].permute(0, 2, 1, 3, 4), syn[1].t()]
    for g, w in zip(_run(gradient_match, real, syn, backend=backend), _run(ref, real, syn)):
        assert_close(g, w)


def test_reference_gradcheck_and_gradgradcheck(gen):
    real, syn = _grads(gen, [(2, 3), (3, 2, 2), (2,)])
    leaves = [x.requires_grad_(True) for x in real + syn]
    f = lambda *x: gradient_match(list(x[:3]), list(x[3:]), backend="reference")  # noqa: E731
    assert torch.autograd.gradcheck(f, leaves)
    assert torch.autograd.gradgradcheck(f, leaves)


@pytest.mark.parametrize("backend", FUSED)
def test_fused_gradcheck(backend, gen):
    _needs(backend)
    real, syn = _grads(gen, [(2, 3), (3, 2, 2), (2,)])
    leaves = [x.requires_grad_(True) for x in real[:2] + syn[:2]]
    f = lambda a, b, c, d: gradient_match([a, b], [c, d], backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("backend", FUSED)
def test_dc_meta_gradient(backend, gen):
    """d(matching loss)/d(synthetic clips) through create_graph gradients: fused vs reference."""
    _needs(backend)
    w1 = torch.randn(4, 3, 3, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b1 = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    params = [w1, b1, w2]

    def loss_on(x, y):
        h = F.relu(F.conv3d(x, w1, b1, padding=1)).mean(dim=(2, 3, 4))
        return F.cross_entropy(h @ w2.t(), y)

    x_real = torch.randn(4, 3, 3, 5, 5, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    x_syn = torch.randn(4, 3, 3, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    g_real = [g.detach() for g in torch.autograd.grad(loss_on(x_real, y), params)]
    out = {}
    for b in (backend, "reference"):
        g_syn = torch.autograd.grad(loss_on(x_syn, y), params, create_graph=True)
        out[b] = torch.autograd.grad(gradient_match(g_real, g_syn, backend=b), [x_syn])[0]
    assert_close(out[backend], out["reference"])


def test_fused_backward_refuses_create_graph(gen):
    _needs("cpp")
    real, syn = _grads(gen, [(2, 3)])
    s = syn[0].requires_grad_(True)
    with pytest.raises(RuntimeError, match="has no double backward"):
        torch.autograd.grad(gradient_match(real, [s], backend="cpp"), [s], create_graph=True)


def test_explicit_unavailable_backend_raises_with_reasons():
    x = [torch.ones(2, 3)]
    with pytest.raises(BackendUnavailable, match=r"(?s)'cuda' cannot run.*reference: usable"):
        gradient_match(x, x, backend="cuda")


def test_automatic_choice_on_cpu_is_cpp():
    _needs("cpp")
    assert op("gradient_match").select([torch.zeros(2, 3)]).name == "cpp"


def test_mismatched_lists_raise():
    with pytest.raises(ValueError, match="pair 0"):
        gradient_match([torch.zeros(2, 3)], [torch.zeros(3, 2)])
    with pytest.raises(ValueError, match="1 real and 2"):
        gradient_match([torch.zeros(2, 3)], [torch.zeros(2, 3)] * 2)
