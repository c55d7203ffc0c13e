"""GVD generator parametrisations: v-prediction sampled through the epsilon sampler, the loss
targets and min-SNR weights, the cosine schedules (noise and learning rate), class tokens."""
import math

import pytest
import torch

from vdfast.methods.gvd import _lr_factor, generator_loss
from vdfast.methods.gvd_sample import (cosine_schedule, ddpm_schedule, eps_from_output,
                                       instance_generator, noise_schedule, sample)
from vdfast.models.video_dit import VideoDiT

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny shapes (see conftest)

SHAPE = (4, 2, 3, 3)


class EpsToy(torch.nn.Module):
    def forward(self, x, t, y):
        return 0.3 * x + 0.01 * t.view(-1, 1, 1, 1, 1) / 100 + 0.2 * y.view(-1, 1, 1, 1, 1).float()


class VToy(torch.nn.Module):
    """Outputs the velocity v = sqrt(ab) eps - sqrt(1 - ab) x0 of the same prediction as EpsToy."""

    def __init__(self, ab):
        super().__init__()
        self.ab, self.eps = ab, EpsToy()

    def forward(self, x, t, y):
        a = self.ab[t].float().view(-1, 1, 1, 1, 1)
        eps = self.eps(x, t, y)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_v_prediction_samples_like_the_same_epsilon(sampler, schedule):
    ab = noise_schedule(schedule, 100)
    y = torch.tensor([0, 2, 1])
    guide = torch.randn((3,) + SHAPE, generator=torch.Generator().manual_seed(2))
    gens = lambda: [instance_generator(0, f"c{i}", 0) for i in range(3)]  # noqa: E731
    kw = dict(guide=guide, lam=0.2, t_stop=0.5)
    ref = sample(EpsToy(), y, gens(), SHAPE, ab, 10, sampler, **kw)
    got = sample(VToy(ab), y, gens(), SHAPE, ab, 10, sampler, prediction="v", **kw)
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)
    wrong = sample(VToy(ab), y, gens(), SHAPE, ab, 10, sampler, **kw)  # v read as epsilon
    assert not torch.allclose(wrong, ref, rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="prediction"):
        eps_from_output(ref, ref, 0.5, "x0")


def test_loss_targets_and_min_snr_weights(gen):
    x0, noise = torch.randn(2, 3, 4, 2, 2, generator=gen), torch.randn(2, 3, 4, 2, 2, generator=gen)
    ab = torch.tensor([0.9, 0.2]).view(-1, 1, 1, 1, 1)
    pred = torch.randn(2, 3, 4, 2, 2, generator=gen)
    per = lambda target: (pred - target).pow(2).flatten(1).mean(1)  # noqa: E731
    torch.testing.assert_close(generator_loss(pred, x0, noise, ab, "eps", 0.0), per(noise).mean())
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    torch.testing.assert_close(generator_loss(pred, x0, noise, ab, "v", 0.0), per(v).mean())
    snr = torch.tensor([0.9 / 0.1, 0.2 / 0.8])   # 9 and 0.25; gamma 5 clips the first
    w_eps, w_v = torch.tensor([5 / 9, 1.0]), torch.tensor([5 / 10, 0.25 / 1.25])
    torch.testing.assert_close(generator_loss(pred, x0, noise, ab, "eps", 5.0), (per(noise) * w_eps).mean())
    torch.testing.assert_close(generator_loss(pred, x0, noise, ab, "v", 5.0), (per(v) * w_v).mean())
    assert torch.allclose(snr.clamp(max=5) / (snr + 1), w_v)


def test_schedules():
    c = cosine_schedule(1000)
    assert c.shape == (1000,) and c.dtype == torch.float64
    assert (c[1:] < c[:-1]).all() and 0.999 < float(c[0]) < 1 and float(c[-1]) < 1e-3
    assert torch.equal(noise_schedule("linear", 50), ddpm_schedule(50))
    with pytest.raises(ValueError, match="schedule"):
        noise_schedule("sigmoid", 10)
    # lr: linear warm-up, then constant or a cosine decay reaching 0 at the last step
    assert _lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert _lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert _lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert _lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert _lr_factor(99, 100, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert _lr_factor(99, 100, 10, "constant") == 1.0


def test_class_tokens_add_the_class_to_every_token(gen):
    kw = dict(num_classes=5, frames=3, latent_size=4, channels=4, patch=2, width=16, depth=2, heads=2)
    a, b = VideoDiT(**kw), VideoDiT(**kw, class_tokens=True)
    with torch.no_grad():
        for p in a.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    b.load_state_dict(a.state_dict())   # no parameters of its own
    b.ada_out[-1].weight.data.zero_()   # the output then sees the class through the tokens only
    a.ada_out[-1].weight.data.zero_()
    for blk in list(a.blocks) + list(b.blocks):
        blk.ada[-1].weight.data.zero_()
    x, t = torch.randn(2, 3, 4, 4, 4, generator=gen), torch.tensor([3, 3])
    y0, y1 = torch.tensor([0, 0]), torch.tensor([1, 1])
    a.ada_out[-1].bias.data.zero_()
    b.ada_out[-1].bias.data.zero_()
    for blk in list(a.blocks) + list(b.blocks):
        blk.ada[-1].bias.data.zero_()
    # with every adaLN path zeroed, only the token path can carry the class
    torch.testing.assert_close(a(x, t, y0), a(x, t, y1))
    assert not torch.allclose(b(x, t, y0), b(x, t, y1))
    assert b.config["class_tokens"] and not a.config["class_tokens"]
