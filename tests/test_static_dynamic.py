"""StaticDynamicSynset against the literal integrator (repeat, concatenate, conv3d): videos, pairing,
gradients, storage accounting and the save/load round trip."""
import pytest
import torch
import torch.nn.functional as F

import vdfast
from tolerances import assert_close
from vdfast.config import resolve
from vdfast.reference.blend_static_dynamic import blend_static_dynamic as blend_ref
from vdfast.synsets import StaticDynamicSynset
from vdfast.synsets.static_dynamic import init_integrator

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make(gen, nc=3, ipc=2, T=5, size=7, pairing="multi", init="default"):
    k = 2 if pairing == "multi" else 1
    static = torch.randn(nc * k * ipc, 3, size, size, generator=gen)
    dynamic = torch.randn(nc * k * ipc, T, 1, size, size, generator=gen)
    weight, bias = init_integrator(3, gen, init)
    labels = torch.arange(nc).repeat_interleave(ipc)
    return StaticDynamicSynset(static, dynamic, weight, bias, labels, [f"c{i}" for i in range(nc)],
                               MEAN, STD, pairing=pairing, pairing_seed=5, meta={"ipc": ipc})


def literal(syn, sidx, didx):
    """The integrator written out: repeat the still image over T, concatenate, conv3d."""
    s = syn.static[sidx].unsqueeze(2).expand(-1, -1, syn.frames, -1, -1)
    d = syn.dynamic[didx].permute(0, 2, 1, 3, 4)
    return F.conv3d(torch.cat([s, d], 1), syn.weight, syn.bias, padding=1)


@pytest.mark.parametrize("pairing", ["multi", "1:1"])
def test_videos_equal_the_literal_integrator(gen, pairing):
    syn = make(gen, pairing=pairing)
    with torch.no_grad():
        v, y = syn.videos(deterministic=True)
        sidx, didx = syn.pairing_indices(deterministic=True)
        assert_close(v, literal(syn, sidx, didx))
        assert_close(v, blend_ref(syn.static, syn.dynamic, syn.weight, syn.bias, sidx, didx))
    assert v.shape == (6, 3, 5, 7, 7)
    assert y.tolist() == [0, 0, 1, 1, 2, 2]
    if pairing == "1:1":
        assert sidx.tolist() == didx.tolist() == list(range(6))
    else:
        assert sidx.tolist() == didx.tolist() == [0, 2, 4, 6, 8, 10]


def test_multi_pairing_redraws_every_call_and_1to1_is_fixed(gen):
    syn = make(gen, pairing="multi")
    seen_s, seen_d = set(), set()
    with torch.no_grad():
        outs = []
        for _ in range(24):
            sidx, didx = syn.pairing_indices()
            slot = torch.arange(6)
            # slot n draws from its own two statics / dynamics
            assert ((sidx // 2) == slot).all() and ((didx // 2) == slot).all()
            seen_s |= set(sidx.tolist())
            seen_d |= set(didx.tolist())
            outs.append(syn.videos()[0])
        assert seen_s == seen_d == set(range(12))
        assert not torch.equal(outs[0], outs[1]) or not torch.equal(outs[1], outs[2])
        # every random video is one of its slot's four candidates
        v = outs[-1]
        for n in range(6):
            cands = [literal(syn, torch.tensor([2 * n + a]), torch.tensor([2 * n + b]))[0]
                     for a in (0, 1) for b in (0, 1)]
            assert min(float((v[n] - c).abs().max()) for c in cands) < 1e-5
        syn.eval()  # evaluation mode: the fixed pairing, the same videos every call
        assert torch.equal(syn.videos()[0], syn.videos()[0])
        assert torch.equal(syn.videos()[0], syn.videos(deterministic=True)[0])
    one = make(gen, pairing="1:1")
    with torch.no_grad():
        assert torch.equal(one.videos()[0], one.videos()[0])


def test_pairing_draws_are_reproducible_and_leave_the_global_rng_alone(gen):
    a, b = make(torch.Generator().manual_seed(1)), make(torch.Generator().manual_seed(1))
    state = torch.random.get_rng_state()
    for _ in range(3):
        assert [t.tolist() for t in a.pairing_indices()] == [t.tolist() for t in b.pairing_indices()]
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("pairing", ["multi", "1:1"])
def test_gradients_reach_dynamic_and_integrator_not_static(gen, pairing):
    syn = make(gen, pairing=pairing)
    sidx, didx = syn.pairing_indices(deterministic=True)
    g = torch.randn(6, 3, 5, 7, 7, generator=gen)
    (syn.videos(deterministic=True)[0] * g).sum().backward()
    assert not syn.static.requires_grad and syn.static.grad is None
    d = syn.dynamic.detach().clone().requires_grad_(True)
    w = syn.weight.detach().clone().requires_grad_(True)
    b = syn.bias.detach().clone().requires_grad_(True)
    s = syn.static.unsqueeze(2).expand(-1, -1, 5, -1, -1)[sidx]
    (F.conv3d(torch.cat([s, d[didx].permute(0, 2, 1, 3, 4)], 1), w, b, padding=1) * g).sum().backward()
    for got, ref in ((syn.dynamic.grad, d.grad), (syn.weight.grad, w.grad), (syn.bias.grad, b.grad)):
        assert got is not None and got.abs().sum() > 0
        assert_close(got, ref, rtol=1e-4, atol=1e-4)  # sums over 6 videos of 5x7x7 in float32
    if pairing == "multi":  # the odd (unused) dynamic memories get no gradient this call
        assert syn.dynamic.grad[1::2].abs().sum() == 0


def test_identity_integrator_starts_from_the_still_image(gen):
    syn = make(gen, pairing="1:1", init="identity")
    with torch.no_grad():
        syn.dynamic.zero_()
        v, _ = syn.videos()
    assert_close(v, syn.static.unsqueeze(2).expand_as(v))


@pytest.mark.parametrize("pairing,T,size,expected", [
    ("multi", 16, 112, 0.79), ("multi", 8, 64, 0.92), ("1:1", 16, 112, 0.40), ("1:1", 8, 64, 0.46)])
def test_storage_matches_the_published_ratios(gen, pairing, T, size, expected):
    k = 2 if pairing == "multi" else 1
    syn = StaticDynamicSynset(torch.zeros(k, 3, size, size), torch.zeros(k, T, 1, size, size),
                              *init_integrator(3, gen), torch.zeros(1, dtype=torch.long), ["a"],
                              MEAN, STD, pairing=pairing, meta={"ipc": 1})
    s = syn.storage()
    assert s["integrator_params"] == 327
    assert s["bytes"] == s["static_bytes"] + s["dynamic_bytes"] + s["integrator_bytes"]
    assert s["bytes"] == 4 * (k * 3 * size * size + k * T * size * size + 327)
    assert s["ratio_vs_fp32_videos"] == pytest.approx(expected, abs=0.005)
    # the formula of the module docstring, plus H (327 numbers against one video here)
    hw = size * size
    assert s["ratio_vs_fp32_videos"] == pytest.approx(((3 * k + k * T) * hw + 327) / (3 * T * hw))


def test_shape_errors_name_the_pairing(gen):
    syn = make(gen, pairing="1:1")
    with pytest.raises(ValueError, match="pairing 'multi' needs 2"):
        StaticDynamicSynset(syn.static, syn.dynamic, syn.weight, syn.bias, syn.labels, syn.classes,
                            MEAN, STD, pairing="multi")
    with pytest.raises(ValueError, match="choose from multi, 1:1"):
        StaticDynamicSynset(syn.static, syn.dynamic, syn.weight, syn.bias, syn.labels, syn.classes,
                            MEAN, STD, pairing="2:1")


def test_param_groups_use_the_published_s2d_settings(gen):
    syn = make(gen)
    groups = syn.param_groups(resolve("published", method="s2d-dm"))
    assert [g["params"] for g in groups] == [[syn.dynamic], [syn.weight, syn.bias]]
    assert [(g["lr"], g["momentum"]) for g in groups] == [(1e-4, 0.95), (1e-5, 0.95)]
    cfg = resolve("published", method="s2d-dm", **{"s2d.lr_dynamic": 3.0, "s2d.momentum": 0.5})
    assert [(g["lr"], g["momentum"]) for g in syn.param_groups(cfg)] == [(3.0, 0.5), (1e-5, 0.5)]
    # an objective whose S2D momentum is its own: no momentum key in the groups
    from vdfast.config import S2DConfig
    assert S2DConfig().optim("mtt") == (1e4, 1e-3, None)


@pytest.mark.parametrize("pairing", ["multi", "1:1"])
def test_save_load_round_trip(gen, tmp_path, pairing):
    syn = make(gen, pairing=pairing)
    syn.save(tmp_path / "synset")
    back = vdfast.load(tmp_path / "synset")
    assert isinstance(back, StaticDynamicSynset) and back.pairing == pairing
    for name in ("static", "dynamic", "weight", "bias", "labels"):
        assert torch.equal(getattr(back, name), getattr(syn, name))
    assert back.pairing_seed == syn.pairing_seed and back.ipc == 2
    with torch.no_grad():
        assert torch.equal(back.videos(deterministic=True)[0], syn.videos(deterministic=True)[0])
        # same seed, same random pairings
        assert torch.equal(back.pairing_indices(False)[0], make(
            torch.Generator().manual_seed(0), pairing=pairing).pairing_indices(False)[0])
    assert back.storage() == syn.storage()
