"""FRePo: kernel ridge regression against a direct solve, learnable labels, a short run."""
import pytest
import torch

import vdfast
from vdfast.config import resolve
from vdfast.data.store import ClipStore
from vdfast.methods import get
from vdfast.methods.base import reinit_
from vdfast.methods.frepo import (centered_onehot, frepo_loss, krr_predict, label_margin_loss,
                                  label_temperature)
from vdfast.models import ConvNet3D
from vdfast.ops import normalize_clips
from vdfast.synsets import load


pytestmark = pytest.mark.usefixtures("one_thread")


def krr_reference(ft, fs, ys, reg):
    """The formula, in float64, with a direct solve."""
    ft, fs, ys = ft.double(), fs.double(), ys.double()
    k_ss = fs @ fs.T
    lam = reg * torch.trace(k_ss) / k_ss.shape[0]
    return ft @ fs.T @ torch.linalg.solve(k_ss + lam * torch.eye(k_ss.shape[0], dtype=torch.float64), ys)


@pytest.mark.parametrize("n,d", [(5, 40), (12, 7)])  # N < D (the usual case) and N > D (rank deficient)
def test_krr_matches_direct_solve(gen, n, d):
    ft = torch.randn(9, d, generator=gen)
    fs = torch.randn(n, d, generator=gen, requires_grad=True)
    ys = torch.randn(n, 4, generator=gen, requires_grad=True)
    pred = krr_predict(ft, fs, ys, 1e-6)
    fs64 = fs.detach().double().requires_grad_(True)
    ys64 = ys.detach().double().requires_grad_(True)
    ref = krr_reference(ft, fs64, ys64, 1e-6)
    assert pred.dtype == torch.float32
    # tolerance: the N > D system is conditioned ~1/reg, float32 features limit the agreement
    tol = dict(rtol=1e-4, atol=1e-4) if n < d else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(pred.double(), ref, **tol)
    w = torch.randn(pred.shape, generator=gen)
    (pred * w).sum().backward()
    (ref * w.double()).sum().backward()
    torch.testing.assert_close(ys.grad.double(), ys64.grad, **tol)
    torch.testing.assert_close(fs.grad.double(), fs64.grad, rtol=1e-3, atol=1e-3 * fs64.grad.abs().max().item())


def test_krr_interpolates_its_support(gen):
    fs = torch.randn(6, 50, generator=gen, dtype=torch.float64)
    ys = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(krr_predict(fs, fs, ys, 1e-9), ys, rtol=1e-5, atol=1e-5)


def test_labels_and_margin():
    y = torch.tensor([0, 2])
    t = centered_onehot(y, 4)
    torch.testing.assert_close(t[0], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    assert float(label_margin_loss(t, y, 0.5)) == 0.0      # initial gap 1 >= margin
    t2 = t.clone()
    t2[1, 1] = 0.6                                          # class 1 now 0.15 below class 2
    assert float(label_margin_loss(t2, y, 0.5)) == pytest.approx((0.5 - 0.15) / 2)
    tau = label_temperature(4, 0.9)
    assert float(torch.softmax(t / tau, 1)[0, 0]) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="label-confidence"):
        label_temperature(4, 0.2)
    # perfect prediction, margin satisfied: zero loss
    assert float(frepo_loss(t, y, t, y)) == 0.0


def _setup(gen, **over):
    store = ClipStore.builtin(train_per_class=4, test_per_class=1)
    opts = {"net.width": 8, "frepo.batch_real": 24, "frepo.pool_size": 2, "frepo.reset_every": 3,
            "frepo.lr_img": 0.01, "frepo.lr_label": 0.01, **over}
    cfg = resolve("builtin", method="frepo", ipc=1, iterations=20, **opts)
    m = get("frepo")
    syn = m.init(store, cfg, "cpu", gen)
    return store, cfg, m, syn, m.setup(syn, store, cfg, "cpu")


def test_learnable_labels_get_gradients_and_soft_labels_follow(gen):
    store, cfg, m, syn, state = _setup(gen)
    y0 = syn.label_targets.detach().clone()
    torch.testing.assert_close(y0, centered_onehot(syn.labels, 12))
    assert syn.soft_labels is not None and float(syn.soft_labels[0, syn.labels[0]]) == pytest.approx(0.9)
    x0 = syn.data.detach().clone()
    m.step(syn, state, gen)
    assert syn.label_targets.grad is not None and syn.label_targets.grad.abs().sum() > 0
    assert not torch.equal(syn.label_targets.detach(), y0)
    assert not torch.equal(syn.data.detach(), x0)
    torch.testing.assert_close(syn.soft_labels, torch.softmax(syn.label_targets.detach() / state.tau, 1))
    torch.testing.assert_close(syn.soft_labels.sum(1), torch.ones(12))


def test_labels_are_saved_and_loaded(gen, tmp_path):
    store, cfg, m, syn, state = _setup(gen)
    m.step(syn, state, gen)
    syn.save(tmp_path / "s")
    back = load(tmp_path / "s")
    torch.testing.assert_close(back.label_targets.detach(), syn.label_targets.detach())
    torch.testing.assert_close(back.soft_labels, syn.soft_labels)
    assert isinstance(back.label_targets, torch.nn.Parameter)
    # storage counts the videos, not the labels (as for soft labels)
    assert back.storage()["bytes"] == syn.data.numel() * 4
    # synsets without learned labels still load without them
    plain = get("dm").init(store, cfg, "cpu", gen)
    plain.save(tmp_path / "p")
    assert load(tmp_path / "p").label_targets is None


def test_pool_resets_and_ages(gen):
    store, cfg, m, syn, state = _setup(gen)   # pool 2, reset every 3 updates, staggered start
    assert state.age == [0, 1]
    for _ in range(4):
        m.step(syn, state, gen)
    # model 0 took steps 1 and 3 (age 2), model 1 took 2 and 4 (1 + 2 = 3: reset to fresh)
    assert state.age == [2, 0] and state.fresh == [False, True]


def test_frepo_reduces_its_loss_on_held_out_nets(gen):
    # single-step losses are noisy (changing pool models and real batches): measure the KRR loss
    # on all real training clips under fixed held-out random networks
    store, cfg, m, syn, state = _setup(gen, **{"frepo.schedule": "constant"})
    u8, y = store.tensors("train")
    real = normalize_clips(u8, store.mean, store.std)
    nets = [reinit_(ConvNet3D(12, 8, 32, width=8, depth=cfg.net.depth).eval(),
                    torch.Generator().manual_seed(7 + i)) for i in range(3)]

    @torch.no_grad()
    def held_out():
        v, lab = syn.videos()
        return sum(float(frepo_loss(krr_predict(n.embed(real), n.embed(v), syn.label_targets, 1e-6),
                                    y, syn.label_targets, lab)) for n in nets)

    before = held_out()
    for _ in range(30):
        m.step(syn, state, gen)
    after = held_out()
    assert after < 0.93 * before, (before, after)  # measured: 0.87 after 30 steps


def test_frepo_through_distill_and_resume(tmp_path):
    store = ClipStore.builtin(train_per_class=4, test_per_class=1)
    opts = {"net.width": 8, "frepo.batch_real": 24, "frepo.pool_size": 2}
    res = vdfast.distill(store, method="frepo", ipc=1, iterations=3, progress=False,
                         out=tmp_path / "run", **opts)
    assert len(res.history["loss"]) == 3
    assert res.synset.label_targets is not None and res.synset.soft_labels is not None
    res2 = vdfast.distill(store, method="frepo", ipc=1, iterations=5, progress=False,
                          out=tmp_path / "run", **opts)
    assert len(res2.history["loss"]) == 5
    assert load(tmp_path / "run" / "synset").label_targets is not None
