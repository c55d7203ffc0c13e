"""GVD sampling: the guided sampler against a textbook DDPM/DDIM loop, the per-step decay
coefficients, chunk independence, k-means."""
import math

import pytest
import torch

from vdfast.config import GVDConfig
from vdfast.methods.gvd import generate, mvic_guides
from vdfast.methods.gvd_sample import (ddpm_schedule, instance_generator, kmeans, sample,
                                       sampling_timesteps, step_lams)
from vdfast.models.autoencoder import FrameAutoencoder
from vdfast.methods.base import reinit_
from vdfast.models.video_dit import VideoDiT

SHAPE = (4, 2, 3, 3)  # F, C, h, w


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny shapes (see conftest)


class Toy(torch.nn.Module):
    """eps depends on x, t and y, so every input path matters."""

    def forward(self, x, t, y):
        return 0.3 * x + 0.01 * t.view(-1, 1, 1, 1, 1) / 100 + 0.2 * y.view(-1, 1, 1, 1, 1).float()


def _textbook(model, y, gens, ab, steps, sampler):
    """Plain DDPM (alpha/beta form of the posterior) and DDIM, no guidance."""
    x = torch.stack([torch.randn(SHAPE, generator=g) for g in gens])
    ts = sampling_timesteps(ab.shape[0], steps)
    for i, t in enumerate(ts):
        a_t = float(ab[t])
        a_p = float(ab[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        eps = model(x, torch.full((x.shape[0],), t), y)
        if sampler == "ddpm":
            alpha = a_t / a_p
            beta = 1 - alpha
            mean = (x - beta / math.sqrt(1 - a_t) * eps) / math.sqrt(alpha)
            var = (1 - a_p) / (1 - a_t) * beta
            x = mean
            if i + 1 < len(ts):
                x = x + math.sqrt(var) * torch.stack([torch.randn(SHAPE, generator=g) for g in gens])
        else:
            x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            x = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p) * eps
    return x


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_lambda_zero_is_the_unguided_sampler(sampler):
    ab = ddpm_schedule(100)
    y = torch.tensor([0, 2, 1])
    guide = torch.randn((3,) + SHAPE, generator=torch.Generator().manual_seed(9))
    gens = lambda: [instance_generator(0, f"c{i}", 0) for i in range(3)]  # noqa: E731
    ref = _textbook(Toy(), y, gens(), ab, 10, sampler)
    got = sample(Toy(), y, gens(), SHAPE, ab, 10, sampler, guide=guide, lam=0.0, t_stop=0.0)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    unguided = sample(Toy(), y, gens(), SHAPE, ab, 10, sampler, guide=None)
    torch.testing.assert_close(got, unguided, rtol=0, atol=0)
    # guidance pulls the sample towards its mode
    guided = sample(Toy(), y, gens(), SHAPE, ab, 10, sampler, guide=guide, lam=0.5, t_stop=0.0)
    assert (guided - guide).norm() < (unguided - guide).norm()


def test_step_lams_decay_and_t_stop():
    T = 1000
    # guidance only in the noisier part: t >= t_stop * T
    assert torch.equal(step_lams(499, 0.1, 0.0, 0.5, T, 8), torch.zeros(8))
    on = step_lams(500, 0.1, 0.0, 0.5, T, 8)
    f = torch.arange(8.0)
    torch.testing.assert_close(on, 0.1 * (1 - f / 7))
    # MVIC: the decay restarts at each segment's first frame; rho is the last frame's share
    two = step_lams(900, 0.2, 0.25, 0.5, T, 8, segments=2)
    fs = torch.arange(4.0)
    seg = 0.2 * (1 - 0.75 * fs / 3)
    torch.testing.assert_close(two, torch.cat([seg, seg]))
    assert two[0] == pytest.approx(0.2) and two[3] == pytest.approx(0.05)
    # rho = 1: no decay; lam = 0: off everywhere
    torch.testing.assert_close(step_lams(900, 0.1, 1.0, 0.5, T, 8), torch.full((8,), 0.1))
    assert step_lams(999, 0.0, 0.0, 0.0, T, 8).abs().sum() == 0


def test_mvic_guides_take_a_different_mode_per_segment():
    modes = torch.arange(6 * 4 * 1 * 1 * 1, dtype=torch.float32).view(6, 4, 1, 1, 1)
    g = mvic_guides(modes, slot=1, segments=2)          # modes 2 and 3
    assert torch.equal(g[:2], modes[2, :2]) and torch.equal(g[2:], modes[3, 2:])
    assert torch.equal(mvic_guides(modes, 4, 1), modes[4])


def _tiny_models():
    gen = torch.Generator().manual_seed(3)
    dit = VideoDiT(3, frames=4, latent_size=4, channels=4, patch=2, width=16, depth=2, heads=2)
    with torch.no_grad():  # leave adaLN-zero's identity start: random everything
        for p in dit.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    ae = reinit_(FrameAutoencoder(down=4, width=8), gen).eval()
    return dit.eval(), ae


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_chunked_generation_equals_unchunked(sampler):
    dit, ae = _tiny_models()
    classes = ["b", "a", "c"]
    modes = {c: torch.randn(4, 4, 4, 4, 4, generator=torch.Generator().manual_seed(i))
             for i, c in enumerate("abc")}
    outs = []
    for chunk in (1, 4, 6):
        g = GVDConfig(generator="tiny", steps=4, train_timesteps=50, chunk=chunk, segments=2,
                      lam=0.2, sampler=sampler, cfg_scale=2.0)
        outs.append(generate(dit, ae, modes, classes, 2, g, seed=5, device="cpu", progress=False))
    for v, y, z in outs[1:]:
        torch.testing.assert_close(z.float(), outs[0][2].float(), rtol=0, atol=1e-3)
        assert (v.int() - outs[0][0].int()).abs().max() <= 1  # uint8 rounding of equal floats
        assert torch.equal(y, outs[0][1])
    assert outs[0][0].shape == (6, 4, 16, 16, 3) and outs[0][1].tolist() == [0, 0, 1, 1, 2, 2]
    # the same label gives the same videos whatever the class order
    g = GVDConfig(generator="tiny", steps=4, train_timesteps=50, chunk=4, segments=2, lam=0.2,
                  sampler=sampler, cfg_scale=2.0)
    v2, _, z2 = generate(dit, ae, modes, ["a", "b", "c"], 2, g, seed=5, device="cpu", progress=False)
    torch.testing.assert_close(z2[:2].float(), outs[0][2][2:4].float(), rtol=0, atol=1e-3)


def test_a_part_of_the_classes_gives_those_rows_of_the_whole():
    """What a class-sharded process generates (some of the classes, ``labels`` = all of them)
    equals those classes' rows of generating every class: the generator's class index is the
    label's place among ALL its labels, not among the part's (each part's own sorted order would
    condition most classes on another class's embedding)."""
    dit, ae = _tiny_models()
    classes = ["b", "a", "c"]
    modes = {c: torch.randn(4, 4, 4, 4, 4, generator=torch.Generator().manual_seed(i))
             for i, c in enumerate("abc")}
    g = GVDConfig(generator="tiny", steps=4, train_timesteps=50, chunk=4, segments=2, lam=0.2,
                  cfg_scale=2.0)
    _, _, whole = generate(dit, ae, modes, classes, 2, g, seed=5, device="cpu", progress=False)
    for part, rows in ((["a", "c"], slice(2, 6)), (["c"], slice(4, 6)), (["b"], slice(0, 2))):
        _, _, z = generate(dit, ae, modes, part, 2, g, seed=5, device="cpu", progress=False,
                           labels=classes)
        torch.testing.assert_close(z.float(), whole[rows].float(), rtol=0, atol=1e-3)
    # without labels the part is taken for all the classes: another number of classes is an error
    with pytest.raises(ValueError, match="knows 3 classes"):
        generate(dit, ae, modes, ["a", "c"], 2, g, seed=5, device="cpu", progress=False)


def test_select_keeps_the_best_scoring_candidate():
    """select R: per instance, R draws (candidate 0 = the select-1 draw) and the highest score
    kept; chunking does not change which one; no score -> a clear error."""
    dit, ae = _tiny_models()
    classes, ALL = ["b", "a"], ["a", "b", "c"]  # two of the generator's three classes
    modes = {c: torch.randn(6, 4, 4, 4, 4, generator=torch.Generator().manual_seed(i))
             for i, c in enumerate("ab")}
    bright = lambda u8, labs: u8.float().mean((1, 2, 3, 4))  # noqa: E731  any per-video score
    kw = dict(generator="tiny", steps=3, train_timesteps=40, segments=2, lam=0.3, cfg_scale=2.0)
    cands = [generate(dit, ae, modes, classes, 3, GVDConfig(chunk=6, **kw), seed=1, device="cpu",
                      progress=False, score=bright, labels=ALL)[0]]  # select 1: candidate 0 only
    # candidates 1, 2 drawn by hand: the same sampler with the candidate's own noise
    ab = ddpm_schedule(40)
    y = torch.tensor([1, 1, 1, 0, 0, 0])  # generator classes: index in the sorted names
    guide = torch.stack([mvic_guides(modes[c], k, 2) for c in classes for k in range(3)])
    for r in (1, 2):
        gens = [instance_generator(1, c, k, candidate=r) for c in classes for k in range(3)]
        z = sample(dit, y, gens, (4, 4, 4, 4), ab, 3, "ddpm", 2.0, guide, 0.3, 0.0, 0.5, 2)
        fr = ae.decode(z.flatten(0, 1))
        cands.append(((fr.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1)
                     .view(6, 4, 16, 16, 3))
    scores = torch.stack([bright(c, None) for c in cands])      # [R, N]
    assert len(set(scores.argmax(0).tolist())) > 1              # the choice differs by instance
    want = torch.stack([cands[r][i] for i, r in enumerate(scores.argmax(0).tolist())])
    for chunk in (6, 4, 1):
        v, _, _ = generate(dit, ae, modes, classes, 3, GVDConfig(chunk=chunk, select=3, **kw),
                           seed=1, device="cpu", progress=False, score=bright, labels=ALL)
        assert (v.int() - want.int()).abs().max() <= 1          # uint8 rounding of equal floats
    with pytest.raises(ValueError, match="score"):
        generate(dit, ae, modes, classes, 3, GVDConfig(select=2, **kw), seed=1, device="cpu",
                 progress=False, labels=ALL)


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    sizes = [30, 20, 10]
    pts = torch.cat([c + 0.1 * torch.randn(n, 3, generator=g) for c, n in zip(centres, sizes)])
    c1, s1 = kmeans(pts, 3, 20, torch.Generator().manual_seed(1))
    c2, s2 = kmeans(pts, 3, 20, torch.Generator().manual_seed(1))
    assert torch.equal(c1, c2)
    assert s1.tolist() == sizes                       # sorted by size, largest first
    torch.testing.assert_close(c1, centres, atol=0.1, rtol=0)
    ck, sk = kmeans(pts[:2], 5, 5, torch.Generator())  # k > n: data points reused
    assert ck.shape == (5, 3)
