"""blend_static_dynamic: every CPU-runnable backend against the literal conv3d-of-concat reference.

Backends: "reference" (the decomposed pure-PyTorch form), "cpp" (C++/OpenMP), "triton" (under
TRITON_INTERPRET=1, set by conftest). Forward and every gradient, odd shapes, repeated indices,
non-contiguous inputs, launcher outputs pre-filled with NaN.
"""
import importlib

import pytest
import torch
from tolerances import assert_close, reduction_close
from vdfast.ops.dispatch import _triton_import_reason, compiled_extension, op
from vdfast.reference.blend_static_dynamic import blend_static_dynamic as ref

# the module (vdfast.ops re-exports the function under the module's name)
bsd = importlib.import_module("vdfast.ops.blend_static_dynamic")

NO_EXT = compiled_extension()[0] is None
NO_TRITON = _triton_import_reason() is not None

BACKENDS = [
    "reference",
    pytest.param("cpp", marks=pytest.mark.skipif(NO_EXT, reason="vdfast._C not built")),
    pytest.param("triton", marks=pytest.mark.skipif(NO_TRITON, reason="triton not importable")),
]

# (name, N, Ns, Nd, C, C_out, T, H, W, static_idx, dynamic_idx); small enough for the interpreter
CASES = {
    "n1_t1": (1, 2, 3, 3, 3, 1, 5, 6, [1], [2]),
    "t7_37_repeat": (4, 3, 2, 3, 3, 7, 37, 37, [2, 0, 2, 2], [1, 1, 0, 1]),
    "t2_cout5": (3, 3, 3, 2, 5, 2, 8, 7, [0, 1, 2], [2, 1, 0]),
    "t3_c1": (2, 1, 2, 1, 2, 3, 4, 9, [0, 0], [0, 1]),
}


@pytest.fixture(autouse=True)
def nan_fill(monkeypatch):
    monkeypatch.setenv("VDFAST_NAN_FILL", "1")


def make(case, dtype, gen, noncontig=False):
    N, Ns, Nd, C, Co, T, H, W, si, di = CASES[case]
    if noncontig:  # channels-last still images, every other frame, a transposed kernel
        static = torch.randn(Ns, H, W, C, generator=gen, dtype=torch.float64).permute(0, 3, 1, 2)
        dynamic = torch.randn(Nd, 2 * T, 1, H, W, generator=gen, dtype=torch.float64)[:, ::2]
        weight = torch.randn(C + 1, Co, 3, 3, 3, generator=gen, dtype=torch.float64).transpose(0, 1)
        bias = torch.randn(2 * Co, generator=gen, dtype=torch.float64)[::2]
        si = torch.tensor([v for s in si for v in (s, -1)])[::2]
        di = torch.tensor([v for d in di for v in (d, -1)])[::2]
        assert not (dynamic.is_contiguous() or weight.is_contiguous())
        assert C == 1 or not static.is_contiguous()
        assert si.numel() == 1 or not si.is_contiguous()
    else:
        static = torch.randn(Ns, C, H, W, generator=gen, dtype=torch.float64)
        dynamic = torch.randn(Nd, T, 1, H, W, generator=gen, dtype=torch.float64)
        weight = torch.randn(Co, C + 1, 3, 3, 3, generator=gen, dtype=torch.float64)
        bias = torch.randn(Co, generator=gen, dtype=torch.float64)
        si, di = torch.tensor(si), torch.tensor(di)
    return [t.to(dtype) for t in (static, dynamic, weight, bias)], si, di


def run(fn, tensors, si, di, grad_out=None, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves, si, di, **kw)
    if grad_out is None:
        return out, None
    out.backward(grad_out)
    return out, [t.grad for t in leaves]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("noncontig", [False, True], ids=["contig", "noncontig"])
def test_forward_and_grads_float64(backend, case, noncontig, gen):
    tensors, si, di = make(case, torch.float64, gen, noncontig)
    out_ref = ref(*tensors, si, di)
    g = torch.randn(out_ref.shape, generator=gen, dtype=torch.float64)
    out_ref, grads_ref = run(ref, tensors, si, di, g)
    out, grads = run(bsd.blend_static_dynamic, tensors, si, di, g, backend=backend)
    assert out.shape == out_ref.shape
    assert_close(out, out_ref)
    for name, a, b in zip(("static", "dynamic", "weight", "bias"), grads, grads_ref):
        assert not a.isnan().any(), name
        assert_close(a, b, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["t7_37_repeat", "n1_t1"])
def test_forward_and_grads_float32(backend, case, gen):
    t64, si, di = make(case, torch.float64, gen)
    t32 = [t.float() for t in t64]
    t64 = [t.double() for t in t32]  # the same rounded inputs
    g = torch.randn(ref(*t64, si, di).shape, generator=gen, dtype=torch.float64)
    out64, grads64 = run(ref, t64, si, di, g)
    out_r32, grads_r32 = run(ref, t32, si, di, g.float())
    out, grads = run(bsd.blend_static_dynamic, t32, si, di, g.float(), backend=backend)
    assert out.dtype == torch.float32
    reduction_close(out, out_r32, out64)
    for name, a, r32, r64 in zip(("static", "dynamic", "weight", "bias"), grads, grads_r32,
                                 grads64):
        assert a.dtype == torch.float32, name
        # weight and bias gradients are sums over N*T*H*W (~4*10^4) terms; the decomposition
        # orders them differently (frames first, then torch's conv2d weight gradient, and the
        # 1-channel conv3d's own bias reduction), with float32 error ~sqrt(n)*eps relative, while
        # the 4-channel conv3d's blocked reduction is unusually accurate here: a floor of 4e-6
        # of the scale (~ sqrt(4*10^4) * 2**-24 relative, with a margin of 2)
        reduction_close(a, r32, r64, floor=4e-6 if name in ("weight", "bias") else 1e-6)


@pytest.mark.skipif(NO_TRITON, reason="triton not importable")
def test_triton_float16(gen):
    """Half loads are computed in float32; compare with float64 on the same rounded inputs."""
    t64, si, di = make("t3_c1", torch.float64, gen)
    t16 = [t.half() for t in t64]
    t64 = [t.double() for t in t16]
    out64 = ref(*t64, si, di)
    out = bsd.blend_static_dynamic(*t16, si, di, backend="triton")
    assert out.dtype == torch.float16
    # output rounded to half after a ~100-term float32 sum: relative error ~ 2**-11 of the scale
    torch.testing.assert_close(out.double(), out64, atol=2e-3 * out64.abs().max().item(), rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend, gen):
    tensors, si, di = make("t3_c1", torch.float64, gen)
    tensors = [t[..., :3, :4].contiguous() if t.dim() >= 4 else t for t in tensors]
    tensors = [t.requires_grad_() for t in tensors]
    # full Jacobians for the C++ kernels; the Triton interpreter and float64 conv3d on the CPU are
    # slow (~15 s each for the full check), so those are checked on random projections
    fast = backend != "cpp"
    assert torch.autograd.gradcheck(
        lambda *a: bsd.blend_static_dynamic(*a, si, di, backend=backend), tensors, fast_mode=fast)


def test_gradgradcheck_reference(gen):
    tensors, si, di = make("t3_c1", torch.float64, gen)
    tensors = [(t[..., :3, :4].contiguous() if t.dim() >= 4 else t).requires_grad_()
               for t in tensors]
    # fast mode (random projections): the full second-order Jacobian takes ~25 s here
    assert torch.autograd.gradgradcheck(
        lambda *a: bsd.blend_static_dynamic(*a, si, di, backend="reference"), tensors,
        fast_mode=True)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_fused_backward_refuses_create_graph(backend, gen):
    tensors, si, di = make("t3_c1", torch.float64, gen)
    tensors = [t.requires_grad_() for t in tensors]
    for loss in (lambda out: out.square().sum(), lambda out: out.sum()):
        out = bsd.blend_static_dynamic(*tensors, si, di, backend=backend)
        with pytest.raises(RuntimeError, match="has no double backward"):
            torch.autograd.grad(loss(out), tensors[1], create_graph=True)


def test_planes_match_the_temporal_tap_sums(gen):
    """Frame 0 reads taps 1..2 of the static weight, the last frame taps 0..1, interior all."""
    (static, _, weight, _), _, _ = make("t7_37_repeat", torch.float64, gen)
    for T, K in ((1, 1), (2, 2), (5, 3)):
        planes = bsd.static_planes(static, weight, T)
        assert planes.shape == (static.shape[0], K, weight.shape[0], *static.shape[2:])
        assert bsd.plane_of_frame(T).tolist() == ([0] if T == 1 else [0] + [2] * (T - 2) + [1])


def test_automatic_choice_and_errors(gen):
    tensors, si, di = make("t3_c1", torch.float64, gen)
    chosen = op("blend_static_dynamic").select(tensors[:3]).name
    assert chosen == ("reference" if NO_EXT else "cpp")
    half = [t.half() for t in tensors]
    assert op("blend_static_dynamic").select(half[:3]).name == "reference"
    with pytest.raises(IndexError, match="static_idx"):
        bsd.blend_static_dynamic(*tensors, si + 5, di)
    with pytest.raises(ValueError, match="weight"):
        bsd.blend_static_dynamic(tensors[0], tensors[1], tensors[2][:, :-1], tensors[3], si, di)
    with pytest.raises(ValueError, match="dynamic"):
        bsd.blend_static_dynamic(tensors[0], tensors[1][:, :, :, :-1], *tensors[2:], si, di)
