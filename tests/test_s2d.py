"""Static learning, static memory files, the s2d init and the s2d-<objective> methods end to end."""
import json

import pytest
import torch

import vdfast
from vdfast.config import resolve
from vdfast.data.store import ClipPool, ClipStore
from vdfast.methods import OBJECTIVES, get
from vdfast.methods.base import reinit_
from vdfast.methods.static import (StaticMemoryError, learn_static, load_static, random_frames,
                                   save_static)
from vdfast.models import ConvNet2D
from vdfast.synsets import StaticDynamicSynset

TINY = {"net.width": 8, "s2d.static_method": "dm", "s2d.static_iterations": 1,
        "s2d.static_width": 8, "s2d.static_depth": 2, "s2d.static_batch_real": 2}


def small_store(nc=3, train=4, test=2):
    """The builtin dataset's first ``nc`` classes (cheap: fewer per-class forwards)."""
    b = ClipStore.builtin(train_per_class=train, test_per_class=test)
    return ClipStore(b.classes[:nc], {k: v[:nc] for k, v in b.arrays.items()}, b.frames, b.size,
                     name="builtin-small", meta=b.meta)


def test_learn_static_dm_step_matches_per_class_reference():
    store = small_store()
    s0 = learn_static(store, 2, "dm", iterations=0, seed=3)
    s1 = learn_static(store, 2, "dm", iterations=1, lr=1.0, batch_real=3, width=8, depth=2, seed=3)
    assert s0.shape == s1.shape == (6, 3, 32, 32)

    # the same draws, written out: a random frame per clip, one forward per class
    gen = torch.Generator().manual_seed(3)
    net = ConvNet2D(3, 32, width=8, depth=2)
    reinit_(net, gen)
    u8, y = ClipPool(store, "train").sample(3, gen)
    pick = torch.randint(0, u8.shape[1], (u8.shape[0],), generator=gen)
    frames = u8[torch.arange(u8.shape[0]), pick].permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(store.mean).view(1, 3, 1, 1), torch.tensor(store.std).view(1, 3, 1, 1)
    real = (frames - mean) / std
    x = s0.clone().requires_grad_(True)
    labels = torch.arange(3).repeat_interleave(2)
    loss = sum(((net.embed(real[y == c]).mean(0) - net.embed(x[labels == c]).mean(0)) ** 2).sum()
               for c in range(3))
    loss.backward()
    torch.testing.assert_close(s1, s0 - 1.0 * x.grad, rtol=1e-4, atol=1e-5)


def test_random_frames_picks_one_frame_of_each_clip(gen):
    store = small_store()
    u8 = torch.from_numpy(store.clips("train", 0)[:3].copy())
    f = random_frames(u8, store.mean, store.std, gen)
    assert f.shape == (3, 3, 32, 32)
    every = vdfast.ops.normalize_clips(u8, store.mean, store.std)  # [3, 3, T, 32, 32]
    for i in range(3):
        assert min(float((every[i, :, t] - f[i]).abs().max()) for t in range(u8.shape[1])) == 0


def test_learn_static_is_seeded_and_leaves_the_global_rng_alone():
    store = small_store()
    state = torch.random.get_rng_state()
    a = learn_static(store, 1, "dm", iterations=2, batch_real=2, width=8, depth=2, seed=7)
    b = learn_static(store, 1, "dm", iterations=2, batch_real=2, width=8, depth=2, seed=7)
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.equal(a, b)
    assert not torch.equal(a, learn_static(store, 1, "dm", iterations=2, batch_real=2, width=8,
                                           depth=2, seed=8))


def test_learn_static_with_dc_moves_the_images():
    store = small_store(nc=2)
    s0 = learn_static(store, 1, "dc", iterations=0, seed=1)
    s1 = learn_static(store, 1, "dc", iterations=1, batch_real=2, width=4, depth=1, seed=1)
    assert s1.shape == (2, 3, 32, 32) and torch.isfinite(s1).all()
    assert (s1 - s0).abs().max() > 0


def test_static_memory_file_round_trip_and_checks(tmp_path):
    store = small_store()
    s = torch.randn(6, 3, 32, 32)
    save_static(tmp_path / "mem", s, store.classes, store.mean, store.std, meta={"note": "x"})
    assert sorted(p.name for p in (tmp_path / "mem").iterdir()) == ["static.json", "static.safetensors"]
    back, header = load_static(tmp_path / "mem" / "static.safetensors", store, spc=2)
    assert torch.equal(back, s) and header["spc"] == 2 and header["note"] == "x"
    with pytest.raises(StaticMemoryError, match="2 still images per class, 1 are needed"):
        load_static(tmp_path / "mem", store, spc=1)
    with pytest.raises(StaticMemoryError, match="classes do not match"):
        load_static(tmp_path / "mem", small_store(nc=2))
    with pytest.raises(StaticMemoryError, match="no static memory"):
        load_static(tmp_path)
    save_static(tmp_path / "mem", 2 * s, store.classes, store.mean, store.std)  # overwrite
    assert torch.equal(load_static(tmp_path / "mem")[0], 2 * s)


@pytest.mark.slow
def test_static_memory_written_by_two_processes_at_once(tmp_path):
    """The processes of an N-process s2d run each learn the same static memory and write it to
    the same cache: concurrent writers must neither fail nor leave a partial or stray folder."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from vdfast.methods.static import save_static, load_static\n"
            "s = torch.arange(6 * 3 * 8 * 8, dtype=torch.float32).reshape(6, 3, 8, 8)\n"
            "for _ in range(300):\n"
            "    save_static(sys.argv[1], s, ['a', 'b', 'c'], (0.5,) * 3, (0.2,) * 3)\n"
            "    assert torch.equal(load_static(sys.argv[1])[0], s)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "mem")],
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mem"]
    assert sorted(p.name for p in (tmp_path / "mem").iterdir()) == ["static.json", "static.safetensors"]


def test_bring_your_own_static_memory_and_reuse_a_synset(tmp_path):
    store = small_store()
    mine = torch.randn(6, 3, 32, 32)
    save_static(tmp_path / "mine", mine, store.classes, store.mean, store.std)
    res = vdfast.distill(store, method="s2d-dm", ipc=1, iterations=1, preset="builtin",
                         progress=False, out=tmp_path / "run", batch_real=2,
                         **{**TINY, "s2d.static_path": str(tmp_path / "mine")})
    assert torch.equal(res.synset.static, mine)
    # a saved s2d synset is itself a static memory file for the next run
    again, header = load_static(tmp_path / "run" / "synset", store, spc=2)
    assert torch.equal(again, mine) and header["kind"] == "static_dynamic"


def test_static_cache_is_shared_by_the_baseline_and_s2d_1to1(tmp_path, monkeypatch):
    store = small_store()
    opts = {**TINY, "s2d.static_cache": str(tmp_path / "cache"), "s2d.pairing": "1:1"}
    base = vdfast.distill(store, method="static", ipc=1, preset="builtin", progress=False, **opts)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    v, y = base.synset.videos()
    assert v.shape == (3, 3, 8, 32, 32) and y.tolist() == [0, 1, 2]
    assert torch.equal(v, v[:, :, :1].expand_as(v))  # the still image repeated over time

    def no_learning(*a, **k):
        raise AssertionError("the cached static memory should have been reused")

    monkeypatch.setattr("vdfast.methods.static.learn_static", no_learning)
    res = vdfast.distill(store, method="s2d-dm", ipc=1, iterations=1, preset="builtin",
                         progress=False, batch_real=2, **opts)
    assert torch.equal(res.synset.static, v[:, :, 0])


def test_s2d_dm_end_to_end_then_evaluate(tmp_path):
    store = ClipStore.builtin(train_per_class=4, test_per_class=1)
    res = vdfast.distill(store, method="s2d-dm", ipc=1, iterations=3, out=tmp_path / "run",
                         progress=False, batch_real=2, **TINY)
    syn = res.synset
    assert isinstance(syn, StaticDynamicSynset) and syn.pairing == "multi"
    assert len(res.history["loss"]) == 3 and all(v == v for v in res.history["loss"])
    assert syn.static.shape == (24, 3, 32, 32) and syn.dynamic.shape == (24, 8, 1, 32, 32)
    back = vdfast.load(tmp_path / "run" / "synset")
    assert isinstance(back, StaticDynamicSynset) and torch.equal(back.dynamic, syn.dynamic)
    saved = json.loads((tmp_path / "run" / "synset" / "synset.json").read_text())
    assert saved["method"] == "s2d-dm" and saved["storage"]["integrator_params"] == 327
    back.eval()  # evaluation sees the fixed pairing
    rep = vdfast.evaluate(back, store, students=1, epochs=1, baselines=False, full=False,
                          progress=False, net={"width": 8})
    assert rep.rows[0].name == "s2d-dm" and 0 <= rep.rows[0].mean <= 1


def test_s2d_dm_updates_only_dynamic_and_integrator(gen):
    store = small_store()
    cfg = resolve("builtin", method="s2d-dm", ipc=1, batch_real=2,
                  **{**TINY, "s2d.lr_dynamic": 1.0, "s2d.lr_integrator": 1e-3})
    m = get("s2d-dm")
    syn = m.init(store, cfg, "cpu", gen)
    state = m.setup(syn, store, cfg, "cpu")
    before = {k: v.detach().clone() for k, v in syn.state_dict().items()}
    m.step(syn, state, gen)
    after = syn.state_dict()
    assert torch.equal(after["static"], before["static"])
    for k in ("dynamic", "weight", "bias"):
        assert not torch.equal(after[k], before[k]), k
    assert [g["momentum"] for g in state.opt.param_groups] == [0.95, 0.95]


def test_cli_distill_s2d_flags(tmp_path):
    from vdfast.cli import main

    rc = main(["distill", "--method", "s2d-dm", "--iterations", "1", "--batch-real", "2",
               "--net-width", "8", "--s2d-pairing", "1:1", "--s2d-static-method", "dm",
               "--s2d-static-iterations", "0", "--s2d-lr-dynamic", "0.5", "--no-evaluate",
               "--no-preview", "--out", str(tmp_path / "run")])
    assert rc == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["s2d"]["pairing"] == "1:1" and cfg["s2d"]["lr_dynamic"] == 0.5
    assert vdfast.load(tmp_path / "run" / "synset").static.shape == (12, 3, 32, 32)


@pytest.mark.skipif("mtt" not in OBJECTIVES, reason="vdfast.methods.mtt is not registered")
def test_s2d_mtt_meta_gradient_through_the_fused_blend(tmp_path, gen):
    """MTT differentiates the unrolled student w.r.t. the videos (second order inside the
    student) and the videos w.r.t. D and H once: the once-differentiable fused blend must give the
    reference's meta-gradient, and a full s2d-mtt step must run."""
    from vdfast.methods.experts import unflatten
    from vdfast.methods.mtt import unroll
    from vdfast.ops import trajectory_loss

    store = small_store()
    cfg = resolve("builtin", method="s2d-mtt", ipc=1, **{
        **TINY, "mtt.buffer": str(tmp_path / "buf"), "mtt.num_experts": 1, "mtt.buffer_epochs": 2,
        "mtt.max_start_epoch": 1, "mtt.expert_epochs": 1, "mtt.syn_steps": 2,
        "mtt.buffer_batch": 8})
    m = get("s2d-mtt")
    syn = m.init(store, cfg, "cpu", gen)
    state = m.setup(syn, store, cfg, "cpu")
    start, target = state.buffer.pair(0, 0, 1)
    sidx, didx = syn.pairing_indices(deterministic=True)
    grads = {}
    for backend in ("cpp", "reference"):
        syn.zero_grad(set_to_none=True)
        videos, labels = syn.videos(deterministic=True, backend=backend)
        params = [p.detach().requires_grad_() for p in unflatten(start, state.buffer.layout)]
        params = unroll(state.net, state.names, params, videos, labels,
                        torch.tensor(0.05), 2)
        trajectory_loss(torch.cat([p.reshape(-1) for p in params]), start, target).backward()
        grads[backend] = [t.grad.clone() for t in (syn.dynamic, syn.weight, syn.bias)]
    for a, b in zip(grads["cpp"], grads["reference"]):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    before = syn.dynamic.detach().clone()
    loss = m.step(syn, state, gen)
    assert torch.isfinite(loss) and not torch.equal(before, syn.dynamic.detach())
    assert state.opt.param_groups[0]["lr"] == cfg.s2d.lr_dynamic  # the builtin preset's
    assert resolve("published", method="s2d-mtt").s2d.optim("mtt")[:2] == (1e4, 1e-3)


@pytest.mark.parametrize("objective", ["dc", "frepo"])
def test_s2d_objectives_train_the_memories_through_the_generic_path(objective):
    if objective not in OBJECTIVES:
        pytest.skip(f"vdfast.methods.{objective} is not registered")
    store = small_store(nc=2)
    res = vdfast.distill(store, method=f"s2d-{objective}", ipc=1, iterations=1, preset="builtin",
                         progress=False, batch_real=2, **{**TINY, "s2d.static_iterations": 0})
    syn = res.synset
    assert isinstance(syn, StaticDynamicSynset) and all(v == v for v in res.history["loss"])
    init = get(f"s2d-{objective}").init(store, res.config, "cpu", torch.Generator())
    assert torch.equal(syn.static, init.static) and not torch.equal(syn.dynamic, init.dynamic)
