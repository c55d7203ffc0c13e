"""vdfast.ops.dm_loss: every CPU-usable backend against the reference (forward and both gradients)."""
import pytest
import torch

from tolerances import fused_op_env, needs_backend as _needs  # noqa: F401 (fused_op_env: autouse)
from tolerances import TOL, assert_close, reduction_close
from vdfast.ops import BackendUnavailable
from vdfast.ops.dispatch import op
from vdfast.ops.dm_loss import dm_loss
from vdfast.reference.dm_loss import dm_loss as ref_dm_loss
from vdfast.reference.dm_loss import dm_loss_loop

FUSED = ["cpp", "triton"]
# (Nr, Ns, D, num_classes): batch 1, odd D, more classes than rows, a D above one tile
SHAPES = [(1, 1, 1, 1), (1, 1, 37, 3), (20, 6, 37, 5), (64, 10, 129, 7)]


def _inputs(gen, nr, ns, d, nc, dtype=torch.float64):
    real = torch.randn(nr, d, generator=gen, dtype=torch.float64).to(dtype)
    syn = torch.randn(ns, d, generator=gen, dtype=torch.float64).to(dtype)
    rl = torch.randint(0, nc, (nr,), generator=gen)
    sl = torch.randint(0, nc, (ns,), generator=gen)
    if nc >= 3 and nr > 1 and ns > 1:
        rl[rl == nc - 1] = 0  # class nc-1 only on the synthetic side
        sl[0] = nc - 1
        sl[sl == 1] = 2       # class 1 only on the real side
        rl[0] = 1
    return real, rl, syn, sl


def _loss_and_grads(fn, real, rl, syn, sl, nc, **kw):
    r = real.detach().requires_grad_(True)
    s = syn.detach().requires_grad_(True)
    loss = fn(r, rl, s, sl, nc, **kw)
    gr, gs = torch.autograd.grad(loss, [r, s])
    return loss.detach(), gr, gs


def test_reference_matches_per_class_loop(gen):
    real, rl, syn, sl = _inputs(gen, 40, 9, 13, 6)
    a = _loss_and_grads(ref_dm_loss, real, rl, syn, sl, 6)
    b = _loss_and_grads(dm_loss_loop, real, rl, syn, sl, 6)
    for x, y in zip(a, b):
        assert_close(x, y)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float64_matches_reference(backend, shape, gen):
    _needs(backend)
    real, rl, syn, sl = _inputs(gen, *shape)
    nc = shape[3]
    got = _loss_and_grads(dm_loss, real, rl, syn, sl, nc, backend=backend)
    want = _loss_and_grads(ref_dm_loss, real, rl, syn, sl, nc)
    for g, w in zip(got, want):
        assert not torch.isnan(g).any()
        assert_close(g, w)


@pytest.mark.parametrize("backend", FUSED)
def test_class_sorted_and_mixed_tiles(backend, gen):
    """Class-sorted rows (tiles of one or a few labels: the fused forwards reduce per label before
    their atomics), runs shorter than a tile, and an unsorted tail, in one batch."""
    _needs(backend)
    nc, d = 9, 45
    rl = torch.cat([torch.arange(6).repeat_interleave(20), torch.tensor([6, 6, 7, 6, 7, 7, 8]),
                    torch.randint(0, nc, (23,), generator=gen)])
    sl = torch.arange(nc).repeat_interleave(3)
    real = torch.randn(len(rl), d, generator=gen, dtype=torch.float64)
    syn = torch.randn(len(sl), d, generator=gen, dtype=torch.float64)
    got = _loss_and_grads(dm_loss, real, rl, syn, sl, nc, backend=backend)
    want = _loss_and_grads(ref_dm_loss, real, rl, syn, sl, nc)
    for g, w in zip(got, want):
        assert_close(g, w)


@pytest.mark.parametrize("backend", FUSED)
def test_float32_against_float64(backend, gen):
    _needs(backend)
    real, rl, syn, sl = _inputs(gen, 64, 10, 129, 7)
    ref64 = _loss_and_grads(ref_dm_loss, real, rl, syn, sl, 7)
    r32, s32 = real.float(), syn.float()
    ref32 = _loss_and_grads(ref_dm_loss, r32, rl, s32, sl, 7)
    got = _loss_and_grads(dm_loss, r32, rl, s32, sl, 7, backend=backend)
    assert got[0].dtype == torch.float32
    for g, lo, hi in zip(got, ref32, ref64):
        reduction_close(g, lo, hi)
        assert_close(g, hi.float(), dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", FUSED)
def test_half_inputs(backend, dtype, gen):
    _needs(backend)
    real, rl, syn, sl = _inputs(gen, 20, 6, 37, 5, dtype=dtype)
    got = _loss_and_grads(dm_loss, real, rl, syn, sl, 5, backend=backend)
    want = _loss_and_grads(ref_dm_loss, real.double(), rl, syn.double(), sl, 5)
    assert got[1].dtype == dtype and got[2].dtype == dtype
    for g, w in zip(got, want):
        # the fused paths accumulate in float32; only the final rounding to `dtype` differs
        assert_close(g, w, dtype=dtype)


@pytest.mark.parametrize("backend", FUSED)
def test_non_contiguous_inputs(backend, gen):
    _needs(backend)
    nr, ns, d, nc = 12, 5, 37, 4
    real_t = torch.randn(d, nr, generator=gen, dtype=torch.float64).t()      # column stride != 1
    syn_big = torch.randn(2 * ns, d + 3, generator=gen, dtype=torch.float64)
    syn = syn_big[::2, 1:d + 1]                                               # strided rows, offset
    rl = torch.randint(0, nc, (2 * nr,), generator=gen)[::2]
    sl = torch.randint(0, nc, (ns,), generator=gen)
    got = _loss_and_grads(dm_loss, real_t, rl, syn, sl, nc, backend=backend)
    want = _loss_and_grads(ref_dm_loss, real_t.contiguous(), rl.contiguous(), syn.contiguous(), sl, nc)
    for g, w in zip(got, want):
        assert_close(g, w)


@pytest.mark.parametrize("backend", FUSED)
def test_empty_side_gives_zero(backend, gen):
    _needs(backend)
    real, rl, _, _ = _inputs(gen, 8, 1, 5, 3)
    syn = torch.zeros(0, 5, dtype=torch.float64)
    sl = torch.zeros(0, dtype=torch.int64)
    loss, gr, gs = _loss_and_grads(dm_loss, real, rl, syn, sl, 3, backend=backend)
    assert loss.item() == 0 and gr.abs().max().item() == 0 and gs.shape == (0, 5)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_label_out_of_range_raises(backend, gen):
    _needs(backend)
    real, rl, syn, sl = _inputs(gen, 6, 3, 4, 3)
    rl[2] = 3
    with pytest.raises((RuntimeError, IndexError)):
        dm_loss(real, rl, syn, sl, 3, backend=backend)


def test_reference_gradcheck_and_gradgradcheck(gen):
    real, rl, syn, sl = _inputs(gen, 7, 4, 3, 3)
    r = real.requires_grad_(True)
    s = syn.requires_grad_(True)
    f = lambda a, b: dm_loss(a, rl, b, sl, 3, backend="reference")  # noqa: E731
    assert torch.autograd.gradcheck(f, (r, s))
    assert torch.autograd.gradgradcheck(f, (r, s))


@pytest.mark.parametrize("backend", FUSED)
def test_fused_gradcheck(backend, gen):
    _needs(backend)
    real, rl, syn, sl = _inputs(gen, 7, 4, 3, 3)
    f = lambda a, b: dm_loss(a, rl, b, sl, 3, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(f, (real.requires_grad_(True), syn.requires_grad_(True)))


def test_fused_backward_refuses_create_graph(gen):
    _needs("cpp")
    real, rl, syn, sl = _inputs(gen, 7, 4, 3, 3)
    s = syn.requires_grad_(True)
    with pytest.raises(RuntimeError, match="has no double backward"):
        torch.autograd.grad(dm_loss(real, rl, s, sl, 3, backend="cpp"), [s], create_graph=True)


def test_second_derivative_is_never_silently_partial(gen):
    """With another term in the loss, torch's once_differentiable let a create_graph gradient
    through: its second derivative lacked dm_loss's part (2 instead of 4 per element here)."""
    _needs("cpp")
    real, rl, syn, sl = _inputs(gen, 7, 4, 3, 3)
    s = syn.requires_grad_(True)
    loss = dm_loss(real, rl, s, sl, 3, backend="reference") + s.square().sum()
    (g,) = torch.autograd.grad(loss, [s], create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), [s])
    assert torch.allclose(h[1], torch.full_like(h[1], 4.0))  # syn row 1: alone in its class
    with pytest.raises(RuntimeError, match="has no double backward"):
        torch.autograd.grad(dm_loss(real, rl, s, sl, 3, backend="cpp") + s.square().sum(), [s],
                            create_graph=True)


def test_explicit_unavailable_backend_raises_with_reasons():
    x = torch.zeros(2, 3)
    lab = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(BackendUnavailable, match=r"(?s)'cuda' cannot run.*cuda:.*reference: usable"):
        dm_loss(x, lab, x, lab, 1, backend="cuda")


def test_automatic_choice_on_cpu_is_cpp():
    _needs("cpp")
    assert op("dm_loss").select([torch.zeros(2, 3)]).name == "cpp"


def test_shape_errors_name_the_problem():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="share D"):
        dm_loss(x, torch.zeros(2, dtype=torch.int64), torch.zeros(2, 4), torch.zeros(2, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="int64"):
        dm_loss(x, torch.zeros(2, dtype=torch.int32), x, torch.zeros(2, dtype=torch.int64), 1)


def test_tolerance_table_covers_dtypes():
    assert {torch.float64, torch.float32, torch.float16, torch.bfloat16} <= set(TOL)


def test_a_loss_beyond_float_range_is_inf_not_an_error():
    """A diverged DM run's loss (features ~1e20) overflows float32: the fused op returns inf, which
    the run reports as divergence, instead of raising a conversion error from inside the kernel."""
    real = torch.full((4, 8), 1e20)
    syn = torch.zeros(2, 8, requires_grad=True)
    for backend in ("reference", "cpp"):
        loss = dm_loss(real, torch.tensor([0, 0, 1, 1]), syn, torch.tensor([0, 1]), 2, backend=backend)
        assert torch.isinf(loss), backend
