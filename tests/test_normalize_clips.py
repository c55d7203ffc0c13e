"""vdfast.ops.normalize_clips: every CPU-usable backend against the reference."""
import pytest
import torch

from tolerances import fused_op_env, needs_backend as _needs  # noqa: F401 (fused_op_env: autouse)
from tolerances import assert_close, reduction_close
from vdfast.ops import BackendUnavailable
from vdfast.ops.dispatch import op
from vdfast.ops.normalize_clips import affine, normalize_clips
from vdfast.reference.normalize_clips import normalize_clips as ref

FUSED = ["cpp", "triton"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# (N, T, H, W): batch 1, T in {1, 7}, 37x37
SHAPES = [(1, 1, 37, 37), (2, 7, 37, 37), (1, 7, 5, 3)]


def _clips(gen, n, t, h, w, c=3):
    return torch.randint(0, 256, (n, t, h, w, c), generator=gen, dtype=torch.uint8)


def test_reference_definition(gen):
    x = _clips(gen, 1, 2, 3, 4)
    y = ref(x, MEAN, STD, out_dtype=torch.float64)
    want = torch.stack([(x[..., c].double() / 255 - MEAN[c]) / STD[c] for c in range(3)], dim=1)
    assert_close(y, want)
    z = ref(x, MEAN, STD, standardize=True, out_dtype=torch.float64)
    assert_close(z, (want - want.mean()) / want.std(unbiased=True))


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float64_matches_reference(backend, shape, standardize, gen):
    _needs(backend)
    x = _clips(gen, *shape)
    got = normalize_clips(x, MEAN, STD, standardize, torch.float64, backend=backend)
    want = ref(x, MEAN, STD, standardize, torch.float64)
    assert got.shape == want.shape and got.is_contiguous()
    assert not torch.isnan(got).any()
    assert_close(got, want)


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("backend", FUSED)
def test_float32_against_float64(backend, standardize, gen):
    _needs(backend)
    x = _clips(gen, 2, 7, 37, 37)
    got = normalize_clips(x, MEAN, STD, standardize, backend=backend)
    assert got.dtype == torch.float32
    lo = ref(x, MEAN, STD, standardize, torch.float32)
    hi = ref(x, MEAN, STD, standardize, torch.float64)
    reduction_close(got, lo, hi)
    assert_close(got, hi, dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", FUSED)
def test_half_outputs(backend, dtype, gen):
    _needs(backend)
    x = _clips(gen, 1, 7, 5, 3)
    got = normalize_clips(x, MEAN, STD, True, dtype, backend=backend)
    assert got.dtype == dtype
    assert_close(got, ref(x, MEAN, STD, True, torch.float64), dtype=dtype)


@pytest.mark.parametrize("backend", FUSED)
def test_non_contiguous_inputs(backend, gen):
    _needs(backend)
    base = _clips(gen, 3, 5, 14, 12, 4)  # small: the Triton interpreter runs it
    views = [
        base[::2, 1:4, 2:13, :11, :3],                          # sliced on every axis
        base[..., :3].permute(0, 1, 3, 2, 4),                   # H and W swapped
        base[..., [2, 1, 0]],                                   # channel reorder (a copy, odd strides)
        base.permute(4, 1, 2, 3, 0)[:3].permute(4, 1, 2, 3, 0),  # channels outermost in memory
    ]
    for v in views:
        assert not v.is_contiguous() or v is views[2]
        for standardize in (False, True):
            got = normalize_clips(v, MEAN, STD, standardize, torch.float64, backend=backend)
            assert_close(got, ref(v.contiguous(), MEAN, STD, standardize, torch.float64))


def test_tensor_mean_std_and_other_channel_counts(gen):
    _needs("cpp")
    x = _clips(gen, 1, 2, 3, 4, c=1)
    m, s = torch.tensor([0.5]), torch.tensor([0.25])
    assert_close(normalize_clips(x, m, s, out_dtype=torch.float64, backend="cpp"),
                 ref(x, m, s, out_dtype=torch.float64))


def test_affine_folds_statistics():
    mean, std = torch.tensor(MEAN, dtype=torch.float64), torch.tensor(STD, dtype=torch.float64)
    x = torch.arange(256, dtype=torch.int64).repeat(3, 1)  # every value once per channel
    sums = torch.stack([x.sum(1), (x * x).sum(1)], dim=1)
    a, b = affine(mean, std, sums, 256)
    y = a[:, None] * x.double() + b[:, None]
    assert abs(y.mean().item()) < 1e-12 and abs(y.std().item() - 1) < 1e-12


def test_rejects_bad_inputs(gen):
    x = _clips(gen, 1, 1, 2, 2)
    with pytest.raises(ValueError, match="uint8"):
        normalize_clips(x.float(), MEAN, STD)
    with pytest.raises(ValueError, match="3 values"):
        normalize_clips(x, MEAN[:2], STD)
    with pytest.raises(ValueError, match="out_dtype"):
        normalize_clips(x, MEAN, STD, out_dtype=torch.int32)


def test_explicit_unavailable_backend_raises_with_reasons(gen):
    with pytest.raises(BackendUnavailable, match=r"(?s)'cuda' cannot run.*cpp:.*reference: usable"):
        normalize_clips(_clips(gen, 1, 1, 2, 2), MEAN, STD, backend="cuda")


def test_automatic_choice_on_cpu_is_cpp():
    _needs("cpp")
    assert op("normalize_clips").select([torch.zeros(1)]).name == "cpp"


def test_channel_stats_copied_once_per_device():
    """A mean/std given as a sequence is copied to the device once and remembered (a copy from a
    tuple on every call is a host synchronisation on CUDA); tensors are used as given."""
    from vdfast.ops.normalize_clips import _channel_stats

    a = _channel_stats((0.4, 0.5, 0.6), [0.2, 0.2, 0.2], torch.device("cpu"))
    b = _channel_stats((0.4, 0.5, 0.6), (0.2, 0.2, 0.2), torch.device("cpu"))
    assert a[0] is b[0] and a[1] is b[1] and a[0].dtype == torch.float64
    t = _channel_stats(torch.tensor([0.1, 0.2, 0.3]), (0.2, 0.2, 0.2), torch.device("cpu"))
    assert torch.equal(t[0], torch.tensor([0.1, 0.2, 0.3]).double())
