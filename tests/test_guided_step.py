"""guided_step: every CPU-runnable backend against the plain-PyTorch reference, plus checks of the
reference itself against independently written samplers (lam = 0, DDIM lam = 1) and frame_decay.

Backends: "reference", "cpp" (C++/OpenMP), "triton" (under TRITON_INTERPRET=1, set by conftest).
"""
import math

import pytest
import torch

from tolerances import assert_close, reduction_close
from vdfast.ops.dispatch import BackendUnavailable, _triton_import_reason, compiled_extension, op
from vdfast.ops.guided_step import StepCoefs, frame_decay, guided_step
from vdfast.reference.guided_step import guided_step as ref

NO_EXT = compiled_extension()[0] is None
NO_TRITON = _triton_import_reason() is not None

BACKENDS = [
    "reference",
    pytest.param("cpp", marks=pytest.mark.skipif(NO_EXT, reason="vdfast._C not built")),
    pytest.param("triton", marks=pytest.mark.skipif(NO_TRITON, reason="triton not importable")),
]
FUSED = [b for b in BACKENDS if b != "reference"]
SHAPES = {"b1_f7_odd": (1, 7, 3, 5, 7), "b3_f1": (3, 1, 4, 6, 6), "b2_f4": (2, 4, 2, 3, 5)}
COEFS = StepCoefs.from_schedule(torch.tensor([0.9, 0.6, 0.5]), t=2, t_prev=1)  # 0.5 -> 0.6


@pytest.fixture(autouse=True)
def nan_fill(monkeypatch):
    monkeypatch.setenv("VDFAST_NAN_FILL", "1")


def make(shape, gen, per_frame_guide=False, noncontig=False, dtype=torch.float64):
    B, F, C, h, w = shape

    def rnd(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64)

    if noncontig:  # channel-major storage seen through a permuted view, a sliced guide
        x, eps, z = (rnd(B, C, F, h, w).permute(0, 2, 1, 3, 4) for _ in range(3))
        m = rnd(B, F, C, h, 2 * w)[..., ::2] if per_frame_guide else rnd(B, C, h, 2 * w)[..., ::2]
    else:
        x, eps, z = rnd(B, F, C, h, w), rnd(B, F, C, h, w), rnd(B, F, C, h, w)
        m = rnd(B, F, C, h, w) if per_frame_guide else rnd(B, C, h, w)
    lam = frame_decay(0.3, 0.25, F, dtype=torch.float64)
    return [t.to(dtype) for t in (x, eps, m, lam, z)]


# ---------------------------------------------------------------------------------------------
# frame_decay
# ---------------------------------------------------------------------------------------------
def test_frame_decay_values():
    assert_close(frame_decay(0.1, 0.0, 4, dtype=torch.float64),
                 torch.tensor([0.1, 0.2 / 3, 0.1 / 3, 0.0], dtype=torch.float64))
    assert_close(frame_decay(0.1, 0.5, 3, dtype=torch.float64),
                 torch.tensor([0.1, 0.075, 0.05], dtype=torch.float64))
    # MVIC: the decay restarts at each segment's first frame
    two = frame_decay(0.1, 0.0, 8, segments=2, dtype=torch.float64)
    assert_close(two, frame_decay(0.1, 0.0, 4, dtype=torch.float64).repeat(2))
    # one-frame segments (and a one-frame video) keep the full lambda
    assert_close(frame_decay(0.1, 0.0, 4, segments=4, dtype=torch.float64),
                 torch.full((4,), 0.1, dtype=torch.float64))
    assert_close(frame_decay(0.1, 0.0, 1, dtype=torch.float64), torch.tensor([0.1], dtype=torch.float64))
    assert_close(frame_decay(0.1, 1.0, 5, dtype=torch.float64), torch.full((5,), 0.1, dtype=torch.float64))
    with pytest.raises(ValueError, match="segments"):
        frame_decay(0.1, 0.0, 7, segments=2)
    with pytest.raises(ValueError, match="rho"):
        frame_decay(0.1, 1.5, 4)


def test_step_coefs_from_schedule():
    ac = torch.linspace(0.99, 0.01, 50, dtype=torch.float64)
    c = StepCoefs.from_schedule(ac, t=30, t_prev=20)  # a strided step
    beta = 1 - ac[30] / ac[20]
    assert c.alpha_bar_t == pytest.approx(float(ac[30]))
    assert c.sigma_t == pytest.approx(math.sqrt((1 - ac[20]) / (1 - ac[30]) * beta))
    last = StepCoefs.from_schedule(ac, t=0, t_prev=None)
    assert last.alpha_bar_prev == 1.0 and last.sigma_t == 0.0


# ---------------------------------------------------------------------------------------------
# backends against the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("sampler,use_noise", [("ddpm", True), ("ddpm", False), ("ddim", False)])
@pytest.mark.parametrize("per_frame_guide", [False, True], ids=["guide_instance", "guide_frame"])
@pytest.mark.parametrize("noncontig", [False, True], ids=["contig", "noncontig"])
def test_matches_reference_float64(backend, shape, sampler, use_noise, per_frame_guide, noncontig,
                                   gen):
    x, eps, m, lam, z = make(SHAPES[shape], gen, per_frame_guide, noncontig)
    noise = z if use_noise else None
    expect = ref(x, eps, m, lam, COEFS, noise, sampler)
    with torch.no_grad():
        got = guided_step(x, eps, m, lam, COEFS, noise, sampler=sampler, backend=backend)
    assert got.shape == x.shape and got.dtype == x.dtype
    assert not got.isnan().any()
    assert_close(got, expect)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_matches_reference_float32(backend, sampler, gen):
    t64 = make(SHAPES["b1_f7_odd"], gen, per_frame_guide=False)
    t32 = [t.float() for t in t64]
    t64 = [t.double() for t in t32]  # the same rounded inputs
    noise = (lambda t: t[4] if sampler == "ddpm" else None)
    expect64 = ref(*t64[:4], COEFS, noise(t64), sampler)
    expect32 = ref(*t32[:4], COEFS, noise(t32), sampler)
    with torch.no_grad():
        got = guided_step(*t32[:4], COEFS, noise(t32), sampler=sampler, backend=backend)
    assert got.dtype == torch.float32
    reduction_close(got, expect32, expect64)


@pytest.mark.skipif(NO_TRITON, reason="triton not importable")
def test_triton_float16(gen):
    x, eps, m, lam, z = (t.half() for t in make(SHAPES["b2_f4"], gen))
    expect = ref(*(t.double() for t in (x, eps, m, lam)), COEFS, z.double(), "ddpm")
    got = guided_step(x, eps, m, lam, COEFS, z, backend="triton")
    assert got.dtype == torch.float16
    # computed in float32, rounded once to half at the store
    torch.testing.assert_close(got.double(), expect, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_may_alias_x(backend, gen):
    x, eps, m, lam, z = make(SHAPES["b2_f4"], gen)
    expect = ref(x, eps, m, lam, COEFS, z, "ddpm")
    buf = x.clone()
    got = guided_step(buf, eps, m, lam, COEFS, z, out=buf, backend=backend)
    assert got.data_ptr() == buf.data_ptr()
    assert_close(buf, expect)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, gen):
    x, eps, m, lam, z = make((0, 3, 2, 4, 5), gen)
    got = guided_step(x, eps, m, lam, COEFS, z, backend=backend)
    assert got.shape == x.shape


# ---------------------------------------------------------------------------------------------
# the samplers themselves, written independently
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_lambda_zero_is_the_unguided_update(backend, sampler, gen):
    x, eps, m, _, z = make(SHAPES["b1_f7_odd"], gen)
    ab_t, ab_prev, sigma = COEFS
    if sampler == "ddpm":  # Ho et al.: mu = (x - beta / sqrt(1 - ab_t) eps) / sqrt(alpha_t)
        alpha = ab_t / ab_prev
        expect = (x - (1 - alpha) / math.sqrt(1 - ab_t) * eps) / math.sqrt(alpha) + sigma * z
        noise = z
    else:  # Song et al., eta = 0
        x0 = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
        expect = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
        noise = None
    got = guided_step(x, eps, m, 0.0, COEFS, noise, sampler=sampler, backend=backend)
    assert_close(got, expect)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddim_lambda_one_lands_on_the_guide(backend, gen):
    x, eps, m, _, _ = make(SHAPES["b2_f4"], gen)
    ab_t, ab_prev, _ = COEFS
    got = guided_step(x, eps, m, 1.0, COEFS, sampler="ddim", backend=backend)
    m5 = m.unsqueeze(1)  # x0' = m exactly: the DDIM update from m and the eps consistent with it
    expect = math.sqrt(ab_prev) * m5 + math.sqrt(1 - ab_prev) * (x - math.sqrt(ab_t) * m5) \
        / math.sqrt(1 - ab_t)
    assert_close(got, expect.expand_as(got))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddpm_guidance_term_per_frame(backend, gen):
    """x_prev(lam) - x_prev(0) = lam_f * sigma_t * (m - x0), frame by frame."""
    x, eps, m, _, _ = make(SHAPES["b1_f7_odd"], gen)
    lam = frame_decay(0.1, 0.0, 7, dtype=torch.float64)
    diff = guided_step(x, eps, m, lam, COEFS, backend=backend) \
        - guided_step(x, eps, m, 0.0, COEFS, backend=backend)
    x0 = (x - math.sqrt(1 - COEFS.alpha_bar_t) * eps) / math.sqrt(COEFS.alpha_bar_t)
    expect = lam.view(1, -1, 1, 1, 1) * COEFS.sigma_t * (m.unsqueeze(1) - x0)
    assert_close(diff, expect, atol=1e-9)  # a difference of two O(1) results
    assert diff[:, -1].abs().max() == 0  # rho = 0: the last frame is unguided


# ---------------------------------------------------------------------------------------------
# dispatch, autograd, errors
# ---------------------------------------------------------------------------------------------
def test_requires_grad_falls_back_or_raises(gen):
    x, eps, m, lam, z = make(SHAPES["b2_f4"], gen)
    eps.requires_grad_()
    # automatic choice: the differentiable reference
    assert op("guided_step").select([x, eps, m, lam]).name == "reference"
    out = guided_step(x, eps, m, lam, COEFS, z)
    assert out.requires_grad
    if not NO_EXT:
        with pytest.raises(BackendUnavailable, match="forward only"):
            guided_step(x, eps, m, lam, COEFS, z, backend="cpp")
        with torch.no_grad():
            assert_close(guided_step(x, eps, m, lam, COEFS, z, backend="cpp"), out.detach())


def test_automatic_choice_is_cpp_when_built(gen):
    x, eps, m, lam, _ = make(SHAPES["b2_f4"], gen)
    assert op("guided_step").select([x, eps, m, lam]).name == ("reference" if NO_EXT else "cpp")


def test_errors(gen):
    x, eps, m, lam, z = make(SHAPES["b2_f4"], gen)
    with pytest.raises(ValueError, match="sampler"):
        guided_step(x, eps, m, lam, COEFS, sampler="euler")
    with pytest.raises(ValueError, match="no noise"):
        guided_step(x, eps, m, lam, COEFS, z, sampler="ddim")
    with pytest.raises(ValueError, match="guide"):
        guided_step(x, eps, m[..., :-1], lam, COEFS)
    with pytest.raises(ValueError, match="lam"):
        guided_step(x, eps, m, lam[:-1], COEFS)
    with pytest.raises(ValueError, match="alpha_bar"):
        guided_step(x, eps, m, lam, (1.0, 0.5, 0.1))
