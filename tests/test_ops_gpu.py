"""Every fused backend of every op against the plain-PyTorch reference, on the device it runs on:
the CUDA and Triton kernels on a GPU (marker ``gpu``; run them with ``benchmarks/gpu_check.sh``),
and the same assertions for the C++ CPU kernels here, which keeps this file's own logic tested on
the CPU machine.

One case per op comes from its benchmark (``benchmarks/bench_<op>.py``: inputs, the reference, the
vdfast call), at odd shapes (batch 1, T = 1 and 7, 37 x 37 frames, sizes just past a block; on the
GPU also grids past 65535 blocks on an axis), in every dtype the backend registers, contiguous and
not. Forward and the gradient to every floating-point input are compared with the reference run
in float64 on the same (rounded) inputs, within the dtype's tolerance (``tolerances.TOL``) relative to each tensor's largest value. A fused
backend without double backward must refuse it loudly.
"""
import os

import pytest
import torch
from harness_ops import discover  # benchmarks/ is on sys.path (conftest.py)
from tolerances import TOL

import vdfast.ops  # noqa: F401  (registers the ops)
from vdfast.ops.dispatch import compiled_extension, op

BENCHES = {b.op: b for b in discover()}
SHAPES = {
    "blend_static_dynamic": [dict(N=1, Ns=1, Nd=1, T=1, H=37, W=37),
                             dict(N=4, Ns=3, Nd=2, T=7, H=37, W=37),
                             dict(N=3, Ns=2, Nd=2, T=7, H=19, W=23, C=5, C_out=4)],
    "dm_loss": [dict(nc=1, real_per_class=1, ipc=1, D=1),
                dict(nc=7, real_per_class=3, ipc=2, D=129),
                dict(nc=20, real_per_class=8, ipc=1, D=1100)],  # loss ~2.5e4 < float16's max
    "gradient_match": [dict(nc=3, width=(8,), feat=37),
                       dict(nc=10, width=(8, 16, 16), feat=1025)],
    "guided_step": [dict(B=1, F=1, C=4, h=37, w=37),
                    dict(B=2, F=7, C=4, h=37, w=37),
                    dict(B=3, F=8, C=4, h=19, w=19, segments=2)],
    "normalize_clips": [dict(N=1, T=1, H=37, W=37, standardize=False),
                        dict(N=2, T=7, H=37, W=37, standardize=True)],
    "trajectory_loss": [dict(P=1), dict(P=37), dict(P=70001)],
}
# GPU only, float32: a grid axis past 65535 blocks (CUDA caps gridDim.y and .z there)
LARGE = {
    "dm_loss": [dict(nc=1, real_per_class=64 * 65535 + 1, ipc=1, D=1)],  # > 65535 row blocks
    "gradient_match": [dict(nc=70001, width=(8,), feat=3)],               # a head of 70001 rows
    "normalize_clips": [dict(N=70001, T=1, H=1, W=1, standardize=True)],  # 70001 clips
}
# (backend, device): the GPU kernels, and the C++ kernels as this file's check on the CPU machine
TARGETS = [pytest.param("cuda", "cuda", marks=pytest.mark.gpu, id="cuda"),
           pytest.param("triton", "cuda", marks=pytest.mark.gpu, id="triton-gpu"),
           pytest.param("cpp", "cpu", id="cpp")]


def _params():
    out = []
    for name in sorted(BENCHES):
        assert name in SHAPES, f"tests/test_ops_gpu.py has no shapes for op {name}"
        for target in TARGETS:
            backend, device = target.values
            impl = op(name).impls.get(backend)
            assert impl is not None, f"{name} has no {backend} backend"
            for dtype in impl.dtypes:
                for i, shape in enumerate(SHAPES[name]):
                    for strided in (False, True):
                        out.append(pytest.param(
                            name, backend, device, dtype, shape, strided, marks=target.marks,
                            id=f"{name}-{target.id}-{str(dtype)[6:]}-s{i}"
                               f"{'-strided' if strided else ''}"))
            if device == "cuda":
                for i, shape in enumerate(LARGE.get(name, [])):
                    out.append(pytest.param(name, backend, device, torch.float32, shape, False,
                                            marks=target.marks,
                                            id=f"{name}-{target.id}-float32-large{i}"))
    return out


def _needs(backend, device):
    if backend in ("cuda", "cpp") and compiled_extension()[0] is None:
        pytest.fail(f"the compiled extension is missing: {compiled_extension()[1]}")
    if backend == "cuda" and not getattr(compiled_extension()[0], "WITH_CUDA", False):
        pytest.fail("vdfast._C was built without CUDA on a machine with a GPU: rebuild it "
                    "(pip install --no-build-isolation -e . with a CUDA torch)")
    if backend == "triton" and device == "cuda":
        pytest.importorskip("triton")
        if os.environ.get("TRITON_INTERPRET") == "1":
            pytest.fail("run the GPU tests with TRITON_INTERPRET=0: the interpreter is not the GPU")


def _strided(t):
    """The same values in a tensor whose last dimension has stride 2."""
    return torch.empty(*t.shape, 2, dtype=t.dtype, device=t.device).select(-1, 0).copy_(t)


def _map(args, f):
    return tuple([f(t) for t in a] if isinstance(a, (list, tuple)) else f(a) for a in args)


def _leaves(args):
    out = []
    for a in args:
        out.extend(t for t in (a if isinstance(a, (list, tuple)) else [a])
                   if t.is_floating_point() and t.requires_grad)
    return out


def _forward_and_grads(fn, args, mode):
    if mode == "fwd":
        with torch.no_grad():
            return [fn(*args)]
    out = fn(*args)
    leaves = _leaves(args)
    seed = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
    grads = torch.autograd.grad(out, leaves, seed, allow_unused=True)
    return [out] + [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves)]


def _check(got, want, dtype, what):
    tol = TOL[dtype]
    assert got.shape == want.shape, (what, got.shape, want.shape)
    got = got.double().cpu()
    want = want.double().cpu()
    assert not torch.isnan(got).any(), f"{what}: NaN in the fused result (an element never written)"
    scale = max(1.0, want.abs().max().item())
    torch.testing.assert_close(got, want, atol=tol["atol"] * scale, rtol=tol["rtol"],
                               msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("name,backend,device,dtype,shape,strided", _params())
def test_backend_matches_reference(name, backend, device, dtype, shape, strided, monkeypatch):
    _needs(backend, device)
    monkeypatch.setenv("VDFAST_NAN_FILL", "1")
    monkeypatch.delenv("VDFAST_BACKEND", raising=False)
    gen = torch.Generator().manual_seed(0)
    case = BENCHES[name].setup(device=torch.device(device), dtype=dtype, gen=gen, **shape)
    args = _map(case.args, _strided) if strided else case.args
    for mode in case.modes:
        def leaf(t, to=None):
            t = t.detach() if to is None else t.detach().to(to)
            return t.requires_grad_(mode != "fwd") if t.is_floating_point() else t

        fast_args = _map(args, leaf)
        ref_args = _map(args, lambda t: leaf(t, torch.float64 if t.is_floating_point() else None))
        got = _forward_and_grads(lambda *a: case.vdfast(*a, backend=backend), fast_args, mode)
        want = _forward_and_grads(case.reference, ref_args, mode)
        assert len(got) == len(want)
        assert got[0].dtype == want[0].dtype or dtype != torch.float64
        for i, (g, w) in enumerate(zip(got, want)):
            _check(g, w, dtype, f"{name} {backend} {mode} {'output' if i == 0 else f'grad {i}'}")


def _has_gradient(name):
    case = BENCHES[name].setup(device=torch.device("cpu"), dtype=torch.float64,
                               gen=torch.Generator().manual_seed(0), **SHAPES[name][0])
    return "fwd+bwd" in case.modes


def _double_backward_params():
    """The ops with a gradient (guided_step and normalize_clips are forward-only) on each target."""
    return [pytest.param(name, *target.values, marks=target.marks, id=f"{name}-{target.id}")
            for name in sorted(BENCHES) if _has_gradient(name) for target in TARGETS]


@pytest.mark.parametrize("name,backend,device", _double_backward_params())
def test_double_backward_is_exact_or_refused(name, backend, device):
    """Ops inside an unrolled student need second derivatives: a backend that has them passes
    gradgradcheck; one that has not raises at a create_graph gradient through it, instead of
    building a graph that lacks its part."""
    _needs(backend, device)
    gen = torch.Generator().manual_seed(0)
    case = BENCHES[name].setup(device=torch.device(device), dtype=torch.float64, gen=gen,
                               **SHAPES[name][0])
    args = _map(case.args, lambda t: t.detach().requires_grad_(True) if t.is_floating_point() else t)
    leaves = _leaves(args)
    if op(name).impls[backend].double_backward:
        def f(*xs):
            it = iter(xs)
            return case.vdfast(*_map(args, lambda t: next(it) if t.requires_grad else t),
                               backend=backend)
        assert torch.autograd.gradgradcheck(f, tuple(leaves))
        return
    out = case.vdfast(*args, backend=backend)
    with pytest.raises(RuntimeError, match="has no double backward"):
        torch.autograd.grad(out, leaves, torch.ones_like(out), create_graph=True, allow_unused=True)


def _first_call_params():
    return [pytest.param(name, *target.values, marks=target.marks, id=f"{name}-{target.id}")
            for name in sorted(BENCHES) for target in TARGETS]


@pytest.mark.parametrize("name,backend,device", _first_call_params())
def test_first_call_check_passes(name, backend, device, monkeypatch):
    """The dispatch's safety net on this device: each fused backend agrees with the reference on
    its own check input, in every dtype it registers (else the automatic choice would demote it)."""
    _needs(backend, device)
    o = op(name)
    monkeypatch.setattr(o, "checked", {})
    for dtype in o.impls[backend].dtypes:
        why = o.first_call_check(backend, torch.device(device), dtype)
        assert why is None, f"{name}[{backend}] {dtype}: {why}"
