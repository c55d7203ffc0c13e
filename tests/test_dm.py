"""DM against a plain per-class loop written like the reference code."""
import torch

from vdfast.config import resolve
from vdfast.data.store import ClipStore
from vdfast.methods import get
from vdfast.methods.base import reinit_
from vdfast.models import ConvNet3D
from vdfast.ops import dm_loss, normalize_clips


def per_class_loop_loss(net, real_u8, real_labels, syn, syn_labels, nc, mean, std):
    """The reference's shape: one forward per class for real and synthetic, then the distance."""
    loss = syn.new_zeros(())
    for c in range(nc):
        r = normalize_clips(real_u8[real_labels == c], mean, std)
        s = syn[syn_labels == c]
        loss = loss + ((net.embed(r).mean(0) - net.embed(s).mean(0)) ** 2).sum()
    return loss


def test_dm_step_matches_per_class_reference(gen):
    store = ClipStore.builtin(train_per_class=6, test_per_class=1)
    cfg = resolve("builtin", method="dm", ipc=2, batch_real=3, **{"net.width": 8})
    m = get("dm")
    syn = m.init(store, cfg, "cpu", gen)
    state = m.setup(syn, store, cfg, "cpu")
    before = syn.data.detach().clone()

    # replay the same random draws for the reference: clone the generator state
    g_ref = torch.Generator().manual_seed(0)
    g_ref.set_state(gen.get_state())
    loss = m.step(syn, state, gen)

    net = ConvNet3D(12, 8, 32, width=8, depth=2)
    reinit_(net, g_ref)
    real_u8, real_labels = state.pool.sample(3, g_ref)
    x = before.clone().requires_grad_(True)
    ref = per_class_loop_loss(net, real_u8, real_labels, x, syn.labels, 12, store.mean, store.std)
    ref.backward()
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-4, atol=1e-5)
    # SGD with momentum, first step: x <- x - lr * grad
    torch.testing.assert_close(syn.data.detach(), before - cfg.lr_img * x.grad, rtol=1e-4, atol=1e-5)


def test_dm_moves_class_means_toward_the_real_ones(gen):
    # per-iteration losses are noisy (a new network and new real clips each time), so measure the
    # DM distance to ALL real clips of each class under fixed held-out random networks
    store = ClipStore.builtin(train_per_class=8, test_per_class=1)
    cfg = resolve("builtin", method="dm", ipc=1, batch_real=8, lr_img=10.0, **{"net.width": 8})
    m = get("dm")
    syn = m.init(store, cfg, "cpu", gen)
    state = m.setup(syn, store, cfg, "cpu")
    u8, y = store.tensors("train")
    real = normalize_clips(u8, store.mean, store.std)
    nets = [reinit_(ConvNet3D(12, 8, 32, width=8, depth=2), torch.Generator().manual_seed(99 + i))
            for i in range(3)]

    @torch.no_grad()
    def distance():
        v, lab = syn.videos()
        return sum(float(dm_loss(n.embed(real), y, n.embed(v), lab, 12)) for n in nets)

    before = distance()
    for _ in range(30):
        m.step(syn, state, gen)
    assert distance() < 0.9 * before  # measured: 0.83 after 30 steps
