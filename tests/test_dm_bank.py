"""DM's bank of random networks with cached real means (vdfast.methods.dm_bank)."""
import json
import os
import signal

import numpy as np
import pytest
import torch

import vdfast
from vdfast.config import ConfigError, resolve
from vdfast.data.store import ClipPool, ClipStore
from vdfast.methods import dm_bank, get
from vdfast.methods.static import _net2d, _static_step, learn_static, random_frames
from vdfast.models import ConvNet3D
from vdfast.reference.dm_loss import dm_loss_loop


@pytest.fixture(scope="module")
def store():
    return ClipStore.builtin(train_per_class=6, test_per_class=1)


def _cfg(method="dm", **kw):
    base = {"ipc": 2, "batch_real": 3, "net.width": 8, "s2d.static_iterations": 0, "seed": 5}
    return resolve("builtin", method=method, **{**base, **kw})


@pytest.mark.parametrize("method", ["dm", "s2d-dm"])
def test_bank_equals_standard_dm_with_the_same_draws(store, method):
    # K = iterations, M = batch_real: the bank's network k draws its weights and then its real
    # clips from network_generator(seed, k); standard DM stepped with that generator at the
    # iteration that uses network k makes the same draws, so losses and synsets agree
    iters = 5
    std_cfg = _cfg(method)
    bank_cfg = _cfg(method, dm_bank=iters, dm_bank_clips=3)
    m_std, m_bank = get(method), get(method)
    syn_std = m_std.init(store, std_cfg, "cpu", torch.Generator().manual_seed(0))
    syn_bank = m_bank.init(store, bank_cfg, "cpu", torch.Generator().manual_seed(0))
    st_std = m_std.setup(syn_std, store, std_cfg, "cpu")
    st_bank = m_bank.setup(syn_bank, store, bank_cfg, "cpu")
    assert st_bank.bank.cache == "memory" and st_bank.bank.K == iters
    start = [p.detach().clone() for g in syn_bank.param_groups(bank_cfg) for p in g["params"]]
    run_gen = torch.Generator().manual_seed(0)
    order = [dm_bank.schedule(5, iters, i) for i in range(iters)]
    assert sorted(order) == list(range(iters))  # a permutation of the bank
    for i in range(iters):
        g = dm_bank.network_generator(5, order[i])
        ls = m_std.step(syn_std, st_std, g)
        lb = m_bank.step(syn_bank, st_bank, run_gen)
        torch.testing.assert_close(lb, ls, rtol=1e-4, atol=1e-6)
    for a, b in zip(syn_bank.param_groups(bank_cfg), syn_std.param_groups(std_cfg)):
        for pa, pb in zip(a["params"], b["params"]):
            torch.testing.assert_close(pa.detach(), pb.detach(), rtol=1e-4, atol=1e-5)
    assert not all(torch.allclose(p.detach(), q) for p, q in zip(  # it did move
        [p for g in syn_bank.param_groups(bank_cfg) for p in g["params"]], start))


def test_static_learning_bank_equals_the_standard_loop(store):
    K, M, spc = 4, 3, 1
    opts = dict(iterations=K, batch_real=M, width=8, depth=2, seed=3)
    bank = learn_static(store, spc, "dm", bank=K, bank_clips=M, **opts)
    # the standard loop body (learn_static's), stepped with network k's generator
    gen_cpu = torch.Generator().manual_seed(3)
    clips, labels = store.random_clips(spc, gen_cpu)
    x = random_frames(clips, store.mean, store.std, gen_cpu).requires_grad_(True)
    net = _net2d(12, store.size, 8, 2, "instance", "cpu")
    pool = ClipPool(store, "train", "cpu")
    opt = torch.optim.SGD([x], lr=1.0, momentum=0.5)
    from vdfast.methods.base import reinit_

    for i in range(K):
        g = dm_bank.network_generator(3, dm_bank.schedule(3, K, i))
        reinit_(net, g)
        opt.zero_grad(set_to_none=True)
        _static_step(net, pool, store, x, labels, range(12), spc, M, g, None)
        opt.step()
    torch.testing.assert_close(bank, x.detach(), rtol=1e-4, atol=1e-5)
    standard = learn_static(store, spc, "dm", **opts)
    assert not torch.allclose(bank, standard)  # the run generator's draws are other draws


def test_bank_loss_is_dm_loss_of_the_class_means(gen):
    means = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    syn = torch.randn(7, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    sl = torch.tensor([3, 3, 4, 5, 6, 6, 6])  # classes 3..6 of 9; a class of 9 outside the block
    for backend in ("reference", "cpp"):
        got = dm_bank.bank_dm_loss(means, range(3, 7), syn, sl, 9, backend=backend)
        want = dm_loss_loop(means, torch.arange(3, 7), syn, sl, 9)
        torch.testing.assert_close(got, want)
        g1, = torch.autograd.grad(got, syn)
        g2, = torch.autograd.grad(want, syn)
        torch.testing.assert_close(g1, g2)
    with pytest.raises(ValueError, match="one row per class"):
        dm_bank.bank_dm_loss(means[:3], range(3, 7), syn, sl, 9)


def _means_fn(store, width=8, seed=0, M=3, classes=range(12), calls=None, fail_after=None):
    net = ConvNet3D(12, store.frames, store.size, width=width, depth=2).requires_grad_(False)
    pool = ClipPool(store, "train", "cpu", classes=classes)
    inner = dm_bank.dm_means_fn(net, store, pool, classes, M, seed, "cpu", 4)

    def fn(k):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt("killed mid-build")
        if calls is not None:
            calls.append(k)
        return inner(k)
    return fn


def _key(store, width=8, seed=0, M=3, K=5, dtype="float32"):
    return dm_bank.bank_key(store, "convnet3d", {"width": width, "depth": 2, "norm": "none"}, K, M,
                            seed, dtype, "cpu")


def test_cache_key_names_data_network_and_seed(store, tmp_path):
    base = dm_bank.key_dir(tmp_path, _key(store))
    other = ClipStore.builtin(seed=1, train_per_class=6, test_per_class=1)
    changed = [_key(other), _key(store, width=16), _key(store, seed=1), _key(store, M=0),
               _key(store, K=6), _key(store, dtype="float16")]
    dirs = {dm_bank.key_dir(tmp_path, k) for k in changed}
    assert base not in dirs and len(dirs) == len(changed)
    assert dm_bank.key_dir(tmp_path, _key(store)) == base  # the same request, the same bank

    calls = []
    b1 = dm_bank.build_bank(_key(store), range(12), "cpu", _means_fn(store, calls=calls), tmp_path)
    assert b1.cache == "miss" and len(calls) == 5 and (base / "class_0011.npy").exists()
    b2 = dm_bank.build_bank(_key(store), range(12), "cpu", _means_fn(store, calls=calls), tmp_path)
    assert b2.cache == "hit" and len(calls) == 5
    torch.testing.assert_close(b1.data, b2.data)
    b3 = dm_bank.build_bank(_key(store, width=16), range(12), "cpu",
                            _means_fn(store, width=16, calls=calls), tmp_path)
    assert b3.cache == "miss" and len(calls) == 10 and b3.D != b1.D
    b4 = dm_bank.build_bank(_key(store, seed=1), range(12), "cpu",
                            _means_fn(store, seed=1, calls=calls), tmp_path)
    assert b4.cache == "miss" and not torch.allclose(b4.data, b1.data)


def test_half_built_bank_resumes_from_its_finished_networks(store, tmp_path):
    calls = []
    with pytest.raises(KeyboardInterrupt):
        dm_bank.build_bank(_key(store), range(12), "cpu", _means_fn(store, calls=calls, fail_after=3),
                           tmp_path)
    folder = dm_bank.key_dir(tmp_path, _key(store))
    assert len(list((folder / "partial").glob("k*.npy"))) == 3
    assert not list(folder.glob("class_*.npy"))
    again = []
    b = dm_bank.build_bank(_key(store), range(12), "cpu", _means_fn(store, calls=again), tmp_path)
    assert again == [3, 4] and b.cache == "resumed" and b.built_now == 2
    assert not list((folder / "partial").glob("k*.npy"))
    fresh = dm_bank.build_bank(_key(store), range(12), "cpu", _means_fn(store), None)
    torch.testing.assert_close(b.data, fresh.data)
    meta = json.loads((folder / "bank.json").read_text())
    seconds = json.loads((folder / "build_c0-12.json").read_text())["seconds"]
    assert meta["key"] == _key(store) and seconds > 0
    assert dm_bank.list_banks(tmp_path)[0]["build_seconds"] == seconds
    hit = dm_bank.build_bank(_key(store), range(12), "cpu", _means_fn(store), tmp_path)
    assert hit.cache == "hit" and hit.build_seconds == seconds


def test_memory_mapped_bank_and_class_blocks_and_fp16(store, tmp_path):
    full = dm_bank.build_bank(_key(store), range(12), "cpu", _means_fn(store), tmp_path)
    mapped = dm_bank.build_bank(_key(store), range(12), "cpu", _means_fn(store), tmp_path,
                                resident=False)
    assert mapped.cache == "hit" and not mapped.resident and mapped.nbytes == full.nbytes
    for k in range(5):
        torch.testing.assert_close(mapped.means(k), full.means(k))
    # a process of a class-sharded run builds its block only, with the same means
    block = dm_bank.build_bank(_key(store), range(4, 9), "cpu",
                               _means_fn(store, classes=range(4, 9)), None)
    torch.testing.assert_close(block.data, full.data[:, 4:9])
    half = dm_bank.build_bank(_key(store, dtype="float16"), range(12), "cpu", _means_fn(store), None)
    assert half.data.dtype == torch.float16 and half.nbytes * 2 == full.nbytes
    torch.testing.assert_close(half.means(2), full.means(2), rtol=2e-3, atol=2e-3)


def test_all_clips_bank_is_the_mean_over_every_train_clip(store):
    from vdfast.methods.base import reinit_
    from vdfast.ops import normalize_clips

    b = dm_bank.build_bank(_key(store, M=0, K=2), range(12), "cpu", _means_fn(store, M=0), None)
    net = ConvNet3D(12, store.frames, store.size, width=8, depth=2)
    reinit_(net, dm_bank.network_generator(0, 1))
    u8, y = store.tensors("train")
    with torch.no_grad():
        f = net.embed(normalize_clips(u8, store.mean, store.std))
    want = torch.stack([f[y == c].mean(0) for c in range(12)])
    torch.testing.assert_close(b.means(1), want, rtol=1e-4, atol=1e-6)


def test_bad_bank_options_fail_before_work(store, tmp_path):
    for kw, msg in (({"dm_bank": -1}, "dm_bank must be"), ({"dm_bank": 4, "dm_bank_clips": -2}, "clips"),
                    ({"dm_bank_clips": 4}, "needs a bank"),
                    ({"dm_bank": 4, "dm_bank_dtype": "int8"}, "float16"),
                    ({"dm_bank": 4, "method": "mtt"}, "serves DM")):
        with pytest.raises(ConfigError, match=msg):
            resolve("builtin", **{"method": "dm", **kw})
    resolve("builtin", method="s2d-mtt", dm_bank=4)  # static learning with dm (the builtin preset)
    with pytest.raises(dm_bank.BankError, match="at least 1 network"):
        dm_bank.build_bank(_key(store, K=0), range(12), "cpu", _means_fn(store), None)
    with pytest.raises(dm_bank.BankError, match="at most 6"):
        vdfast.distill(store, method="dm", iterations=2, out=tmp_path / "r", dm_bank=2,
                       dm_bank_clips=7, progress=False)
    assert not (tmp_path / "r").exists()  # refused before any work
    with pytest.raises(ValueError, match="method 'dm'"):
        learn_static(store, 1, "dc", iterations=1, bank=2)


def test_distill_with_a_bank_reports_caches_and_resumes(store, tmp_path, monkeypatch):
    monkeypatch.setenv("VDFAST_BANK_CACHE", str(tmp_path / "cache"))
    opts = dict(method="dm", ipc=1, lr_img=1.0, dm_bank=3, dm_bank_clips=4, progress=False,
                **{"net.width": 8})
    full = vdfast.distill(store, iterations=6, out=tmp_path / "a", **opts)
    rep = json.loads((tmp_path / "a" / "metrics.json").read_text())["history"]["dm_bank"]
    D = full.history["dm_bank"]["dim"]
    assert rep["cache"] == "miss" and rep["bytes"] == 3 * 12 * D * 4 and rep["build_seconds"] > 0
    # the same bank from the cache; stopped at 4 then continued to 6 = the run straight through
    vdfast.distill(store, iterations=4, out=tmp_path / "b", checkpoint_every=2, **opts)
    part = vdfast.distill(store, iterations=6, out=tmp_path / "b", **opts)
    assert part.history["dm_bank"]["cache"] == "hit"
    np.testing.assert_allclose(part.history["loss"], full.history["loss"], rtol=1e-5)
    torch.testing.assert_close(part.synset.videos()[0], full.synset.videos()[0])
    # the bank is part of the checkpoint's identity
    with pytest.raises(RuntimeError, match="dm_bank"):
        vdfast.distill(store, iterations=8, out=tmp_path / "b", **{**opts, "dm_bank": 4})


def _launch(out, nproc, args, cache):
    """``vdfast distill`` on ``nproc`` gloo ranks (torchrun, a free port), the banks in ``cache``."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", VDFAST_PROGRESS="0",
               VDFAST_BANK_CACHE=str(cache))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(port), "-m", "vdfast", "distill", "--out", str(out), *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[:3000] + "\n...\n" + r.stderr[-1500:]
    return r.stdout


@pytest.mark.slow
def test_two_ranks_build_their_classes_and_give_the_one_rank_synset(tmp_path):
    pytest.importorskip("accelerate")
    args = ["--method", "dm", "--ipc", "2", "--iterations", "4", "--batch-real", "3",
            "--net-width", "8", "--dm-bank", "3", "--dm-bank-clips", "3", "--no-evaluate",
            "--no-preview"]
    out2 = _launch(tmp_path / "two", 2, args, tmp_path / "cache")
    assert "cache miss" in out2
    (folder,) = (tmp_path / "cache").glob("bank-*")
    # each rank built its own block and recorded its time in its own file
    assert {f.name for f in folder.glob("build_*.json")} == {"build_c0-6.json", "build_c6-12.json"}
    assert len(list(folder.glob("class_*.npy"))) == 12
    out1 = _launch(tmp_path / "one", 1, args, tmp_path / "cache")  # reads the 2 blocks' classes
    assert "cache hit" in out1
    one, two = vdfast.load(tmp_path / "one" / "synset"), vdfast.load(tmp_path / "two" / "synset")
    torch.testing.assert_close(two.data, one.data, rtol=1e-4, atol=1e-5)
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())["history"]
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())["history"]
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-4)
    assert m2["dm_bank"]["classes"] == [0, 6] and m1["dm_bank"]["classes"] == [0, 12]


def _heldout_run(store, out, iterations, heldout=2, **kw):
    opts = dict(method="dm", ipc=1, lr_img=1.0, dm_bank=2, dm_bank_clips=3, progress=False,
                **{"net.width": 8})
    if heldout:
        opts.update(dm_bank_heldout=heldout, dm_bank_heldout_every=2)
    return vdfast.distill(store, iterations=iterations, out=out, **{**opts, **kw})


def test_heldout_networks_measure_what_the_bank_does_not_show(store, tmp_path, monkeypatch):
    """--dm-bank-heldout H: the synset's DM loss on H fresh networks beside its loss on the bank's,
    at the start, every N iterations and at the end, in the history and metrics.json; finite, not
    the bank's; the measurement changes nothing (the same synset and losses as without it); a
    resumed run (also one given more iterations) records the run straight through's curve."""
    monkeypatch.setenv("VDFAST_BANK_CACHE", str(tmp_path / "cache"))
    full = _heldout_run(store, tmp_path / "a", 5)
    ho = full.history["dm_bank"]["heldout"]
    assert ho["networks"] == 2 and ho["every"] == 2 and ho["at_iteration"] == [0, 2, 4, 5]
    vals = ho["bank_loss"] + ho["heldout_loss"]
    assert all(np.isfinite(v) and v > 0 for v in vals)
    assert all(abs(b - h) > 1e-3 * max(b, h) for b, h in zip(ho["bank_loss"], ho["heldout_loss"]))
    assert ho["bank_loss"][-1] < ho["bank_loss"][0]  # the synset fits the bank it is trained on
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())["history"]["dm_bank"]
    assert saved["heldout"] == ho
    # measured or not: the same steps (nothing drawn from the run's generators, no gradient)
    plain = _heldout_run(store, tmp_path / "p", 5, heldout=0)
    assert "heldout" not in plain.history["dm_bank"]
    assert plain.history["loss"] == full.history["loss"]
    for k, v in plain.synset.state_dict().items():
        assert torch.equal(v, full.synset.state_dict()[k]), k
    # a signal during iteration 3 (a checkpoint there), resumed: the same record
    from vdfast.engine import checkpoint
    from vdfast.methods.dm import DM

    step = DM.step

    def stopped(self, synset, state, gen):
        if state.bank_it == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, synset, state, gen)

    monkeypatch.setattr(DM, "step", stopped)
    with pytest.raises(checkpoint.Interrupted) as e:
        _heldout_run(store, tmp_path / "b", 5)
    assert e.value.iteration == 3
    monkeypatch.setattr(DM, "step", step)
    assert _heldout_run(store, tmp_path / "b", 5).history["dm_bank"]["heldout"] == ho
    # a run of 3 (an end there), extended to 5: the record of the run straight through
    short = _heldout_run(store, tmp_path / "c", 3)
    assert short.history["dm_bank"]["heldout"]["at_iteration"] == [0, 2, 3]
    assert _heldout_run(store, tmp_path / "c", 5).history["dm_bank"]["heldout"] == ho
    # another H is another measurement: part of the checkpoint's identity
    with pytest.raises(RuntimeError, match="dm_bank_heldout"):
        _heldout_run(store, tmp_path / "c", 7, heldout=3)


def test_heldout_networks_are_drawn_apart_from_the_bank(store):
    # the same loss (bank_dm_loss) on the bank's network k and on held-out network k differs: other
    # weights, other real draws
    cfg = _cfg(dm_bank=2, dm_bank_clips=3, dm_bank_heldout=2, iterations=4)
    m = get("dm")
    syn = m.init(store, cfg, "cpu", torch.Generator().manual_seed(0))
    st = m.setup(syn, store, cfg, "cpu")
    assert st.heldout.means.K == 2 and st.heldout.seed == dm_bank.heldout_seed(5) != 5
    for k in range(2):
        assert not torch.allclose(st.heldout.means.means(k), st.bank.means(k))
    dm_bank.measure_heldout(st, syn, 0)
    ((it, b, h),) = st.heldout.records
    assert it == 0 and torch.isfinite(b) and torch.isfinite(h) and not torch.isclose(b, h)


def test_heldout_options_are_checked_config_fields_and_flags(store):
    from vdfast.api import _identity
    from vdfast.cli import build_parser

    for kw, msg in (({"dm_bank_heldout": 4}, "needs --dm-bank"),
                    ({"dm_bank_heldout": -1, "dm_bank": 2}, "dm_bank_heldout must be"),
                    ({"dm_bank_heldout_every": -1}, "dm_bank_heldout_every must be"),
                    ({"dm_bank_heldout": 4, "dm_bank": 2, "method": "s2d-mtt"}, "method dm or")):
        with pytest.raises(ConfigError, match=msg):
            resolve("builtin", **{"method": "dm", **kw})
    cfg = resolve("builtin", method="s2d-dm", dm_bank=2, dm_bank_heldout=4, dm_bank_heldout_every=50)
    assert (cfg.dm_bank_heldout, cfg.dm_bank_heldout_every) == (4, 50)
    assert resolve("builtin").dm_bank_heldout == 0  # off by default
    ns = build_parser().parse_args(["distill", "--dm-bank", "8", "--dm-bank-heldout", "4",
                                    "--dm-bank-heldout-every", "50"])
    assert (ns.dm_bank_heldout, ns.dm_bank_heldout_every) == (4, 50)
    # off, the options are not part of a checkpoint's identity (runs from before them resume)
    assert "dm_bank_heldout" not in _identity(resolve("builtin", dm_bank=2), store)["config"]
    assert _identity(cfg, store)["config"]["dm_bank_heldout"] == 4
