"""GVD's networks: the Latte-style VideoDiT (attention axes, CFG, adaLN-zero start) and the frame
autoencoder."""
import pytest
import torch

from vdfast.models.autoencoder import FrameAutoencoder
from vdfast.config import ConfigError
from vdfast.models import video_dit
from vdfast.models.video_dit import PRESETS, VideoDiT, attention, resolve_attention


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny shapes (see conftest)


def _random_dit(depth, gen, **kw):
    net = VideoDiT(5, frames=4, latent_size=4, channels=4, patch=2, width=16, depth=depth, heads=2, **kw)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return net.eval()


def test_dit_shapes_and_adaln_zero_start(gen):
    net = VideoDiT.from_preset("tiny", num_classes=5, frames=3, latent_size=6, patch=2)
    x = torch.randn(2, 3, 4, 6, 6, generator=gen)
    out = net(x, torch.tensor([0, 999]), torch.tensor([1, 5]))  # 5 = the null class
    assert out.shape == x.shape
    assert out.abs().max() == 0  # adaLN-zero: the fresh network predicts zero noise
    assert set(PRESETS) >= {"tiny", "S", "B", "L", "XL"}
    with pytest.raises(ValueError, match="patch"):
        VideoDiT(5, 3, 5, patch=2)
    with pytest.raises(ValueError, match="unknown generator size"):
        VideoDiT.from_preset("huge", 5, 3, 6)


def test_spatial_and_temporal_attention_axes(gen):
    x = torch.randn(1, 4, 4, 4, 4, generator=gen)
    t, y = torch.tensor([10]), torch.tensor([2])
    x2 = x.clone()
    x2[0, 3, :, 0, 0] += 1.0  # change one patch of the last frame
    # one spatial block only: frames do not see each other
    sp = _random_dit(1, gen)
    d = (sp(x2, t, y) - sp(x, t, y)).abs().amax(dim=(2, 3, 4))[0]
    assert d[:3].max() == 0 and d[3] > 0
    # spatial + temporal: the change reaches the other frames
    st = _random_dit(2, gen)
    d = (st(x2, t, y) - st(x, t, y)).abs().amax(dim=(2, 3, 4))[0]
    assert (d > 0).all()
    # temporal attention is per position: with a temporal-only model (block list of one temporal
    # block) the other positions of the changed frame stay as they were
    st.blocks = st.blocks[1:]
    o1, o2 = st(x, t, y), st(x2, t, y)
    diff = (o2 - o1).abs().amax(dim=(0, 1, 2))  # over [h, w] positions
    assert diff[0:2, 0:2].max() > 0 and diff[2:, :].max() == 0 and diff[:, 2:].max() == 0


def test_classifier_free_guidance(gen):
    net = _random_dit(2, gen)
    x = torch.randn(3, 4, 4, 4, 4, generator=gen)
    t, y = torch.tensor([5, 500, 900]), torch.tensor([0, 3, 4])
    e_c, e_u = net(x, t, y), net(x, t, torch.full_like(y, net.null_class))
    # batch 6 vs two batches of 3: float32 matmuls block the sums differently, so equal up to
    # rounding of the output's magnitude
    tol = dict(rtol=1e-4, atol=1e-4 * float(e_c.detach().abs().max()))
    torch.testing.assert_close(net.forward_cfg(x, t, y, 4.0), e_u + 4.0 * (e_c - e_u), **tol)
    torch.testing.assert_close(net.forward_cfg(x, t, y, 1.0), e_c)
    # per-sample: an instance's output does not depend on the rest of its batch
    torch.testing.assert_close(net(x[1:2], t[1:2], y[1:2]), e_c[1:2], **tol)


def test_attention_matches_a_plain_softmax(gen):
    q, k, v = (torch.randn(2, 5, 3, 8, generator=gen) for _ in range(3))  # [B, L, H, d]
    w = torch.softmax(torch.einsum("blhd,bmhd->bhlm", q, k) / 8 ** 0.5, -1)
    ref = torch.einsum("bhlm,bmhd->blhd", w, v)
    torch.testing.assert_close(attention(q, k, v), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("down", [4, 8])
def test_frame_autoencoder_shapes(down, gen):
    ae = FrameAutoencoder(down=down, width=8)
    x = torch.rand(3, 3, 32, 32, generator=gen) * 2 - 1
    z = ae.encode(x)
    assert z.shape == (3, 4, 32 // down, 32 // down)
    assert ae.decode(z).shape == x.shape
    with pytest.raises(ValueError, match="down factor"):
        FrameAutoencoder(down=3)


def test_attention_is_an_explicit_choice(gen, monkeypatch):
    # CPU: auto and sdpa are SDPA; the same numbers as the per-call default
    assert resolve_attention("auto", "cpu") == "sdpa" and resolve_attention("sdpa", "cpu") == "sdpa"
    net = _random_dit(2, gen, attention="sdpa")
    assert net.attention == "sdpa" and {b.attn.backend for b in net.blocks} == {"sdpa"}
    x = torch.randn(2, 4, 4, 4, 4, generator=gen)
    t, y = torch.tensor([3, 70]), torch.tensor([1, 5])
    out = net(x, t, y)
    assert torch.equal(net.set_attention("auto")(x, t, y), out)
    with pytest.raises(ValueError, match="unknown attention backend"):
        net.set_attention("flash")
    with pytest.raises(ConfigError, match="is not one of"):
        resolve_attention("flash", "cpu")
    # xformers asked for: a one-line ConfigError where it cannot run
    monkeypatch.setattr(video_dit, "xformers_available", lambda: False)
    with pytest.raises(ConfigError, match="xformers does not import") as e:
        resolve_attention("xformers", "cuda")
    assert "\n" not in str(e.value)
    assert resolve_attention("auto", "cuda") == "sdpa"  # auto without xformers: SDPA on CUDA too
    monkeypatch.setattr(video_dit, "xformers_available", lambda: True)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        resolve_attention("xformers", "cpu")
    assert resolve_attention("auto", "cuda") == "xformers"


@pytest.mark.gpu
def test_xformers_and_sdpa_agree_on_cuda(gen):
    """The two backends compute the same attention to float rounding (fp32: 1e-4 relative / absolute
    on outputs of order 1), so a synset's numbers do not hinge on whether xformers is installed."""
    if not video_dit.xformers_available():
        pytest.skip("xformers is not installed (or has no kernels for this torch)")
    q, k, v = (torch.randn(3, 37, 4, 32, generator=gen).cuda() for _ in range(3))
    torch.testing.assert_close(attention(q, k, v, "xformers"), attention(q, k, v, "sdpa"),
                               rtol=1e-4, atol=1e-4)
    net = _random_dit(4, gen).cuda()
    x = torch.randn(2, 4, 4, 4, 4, generator=gen).cuda()
    t, y = torch.tensor([3, 700]).cuda(), torch.tensor([1, 5]).cuda()
    with torch.no_grad():
        a = net.set_attention("xformers")(x, t, y)
        b = net.set_attention("sdpa")(x, t, y)
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
