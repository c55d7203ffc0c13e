"""MTT against the plain flat-vector unroll of vdfast/reference/mtt.py."""
import pytest
import torch

from tolerances import TOL

from vdfast.config import NetConfig, resolve
from vdfast.data.store import ClipStore
from vdfast.methods import get
from vdfast.methods.experts import BufferError, ExpertBuffer, build_net, train_experts, unflatten
from vdfast.methods.mtt import unroll
from vdfast.ops import trajectory_loss
from vdfast.reference.mtt import mtt_loss

WIDTH = 4
MTT = {"num_experts": 3, "buffer_epochs": 3, "buffer_batch": 16, "max_start_epoch": 2,
       "expert_epochs": 1, "syn_steps": 3, "buffer_lr": 0.01, "lr_teacher": 0.01}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store():
    return ClipStore.builtin(train_per_class=3, test_per_class=1, frames=4, size=16)


@pytest.fixture(scope="module")
def buffer_dir(store, tmp_path_factory):
    d = tmp_path_factory.mktemp("experts")
    train_experts(store, d, num_experts=3, epochs=3, batch=16,
                  net_cfg=NetConfig(width=WIDTH, depth=2, norm="none"), progress=False)  # builtin's net
    return d


def config(buffer_dir, **mtt):
    return resolve("builtin", method="mtt", ipc=1, **{"net.width": WIDTH},
                   mtt={**MTT, "buffer": str(buffer_dir), **mtt})


def _batches(n, b, steps, gen):
    """The index chunks ``unroll`` draws for batch size ``b`` (same generator, same order)."""
    out, chunks = [], []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.randperm(n, generator=gen).split(b))
        out.append(chunks.pop())
    return out


@pytest.mark.parametrize("batch_syn", [0, 5])
def test_meta_gradient_matches_reference_float64(store, buffer_dir, gen, batch_syn):
    buf = ExpertBuffer(buffer_dir)
    net = build_net(buf.net).double().eval()
    names = [n for n, _ in buf.layout]
    start, target = (t.double() for t in buf.pair(2, 1, 2))
    syn = torch.randn(12, 3, 4, 16, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(12)
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    steps = 4

    g_fast = torch.Generator().manual_seed(7)
    params = [p.detach().requires_grad_() for p in unflatten(start, buf.layout)]
    out = unroll(net, names, params, syn, labels, lr, steps, batch_syn, g_fast)
    loss = trajectory_loss(torch.cat([p.reshape(-1) for p in out]), start, target)  # fused (cpp)
    gx, glr = torch.autograd.grad(loss, (syn, lr))

    batches = _batches(12, batch_syn, steps, torch.Generator().manual_seed(7)) if batch_syn else None
    ref = mtt_loss(net, buf.layout, syn, labels, start, target, lr, steps, batches)
    rx, rlr = torch.autograd.grad(ref, (syn, lr))
    torch.testing.assert_close(loss, ref, **TOL[torch.float64])
    assert gx.abs().max() > 0 and glr.abs() > 0
    torch.testing.assert_close(gx, rx, **TOL[torch.float64])
    torch.testing.assert_close(glr, rlr, **TOL[torch.float64])

    # and the reference's meta-gradient is the true derivative: central differences along random
    # directions (float64; what gradcheck does, restricted to a few directions of the 37k inputs).
    # h stays tiny: the loss depends on the inner gradient, which jumps where a ReLU or max-pool
    # switches, so a wide difference quotient straddles discontinuities of the loss itself
    with torch.no_grad():
        for i in range(2):
            v = torch.randn(syn.shape, generator=gen, dtype=torch.float64)
            h = 1e-6
            with torch.enable_grad():
                fp = mtt_loss(net, buf.layout, syn + h * v, labels, start, target, lr, steps, batches)
                fm = mtt_loss(net, buf.layout, syn - h * v, labels, start, target, lr, steps, batches)
            fd = (fp - fm) / (2 * h)
            torch.testing.assert_close(fd, (rx * v).sum(), rtol=1e-5, atol=1e-9)  # O(h^2) + rounding/h


def test_step_matches_reference_and_updates_synset_and_lr(store, buffer_dir, gen):
    cfg = config(buffer_dir, lr_img=100.0, lr_lr=1e-3)
    m = get("mtt")
    syn = m.init(store, cfg, "cpu", gen)
    state = m.setup(syn, store, cfg, "cpu")
    before = syn.data.detach().clone()
    draws = torch.Generator()
    draws.set_state(state.draw.get_state())
    loss = m.step(syn, state, gen)
    e = int(torch.randint(3, (1,), generator=draws))
    s = int(torch.randint(2, (1,), generator=draws))
    assert state.last == (e, s)

    buf = state.buffer
    start, target = buf.pair(e, s, s + 1)
    x = before.clone().requires_grad_(True)
    lr = torch.tensor(cfg.mtt.lr_teacher, requires_grad=True)
    ref = mtt_loss(build_net(buf.net).eval(), buf.layout, x, syn.labels, start, target, lr, 3)
    gx, glr = torch.autograd.grad(ref, (x, lr))
    torch.testing.assert_close(loss, ref.detach(), **TOL[torch.float32])
    # SGD with momentum, first step: p <- p - lr * grad
    torch.testing.assert_close(syn.data.detach(), before - 100.0 * gx, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state.syn_lr.detach(), lr.detach() - 1e-3 * glr, rtol=1e-5, atol=1e-7)


def test_all_experts_and_start_epochs_are_used(store, buffer_dir, gen):
    cfg = config(buffer_dir, syn_steps=1, max_start_epoch=2)
    m = get("mtt")
    syn = m.init(store, cfg, "cpu", gen)
    state = m.setup(syn, store, cfg, "cpu")
    seen = set()
    for _ in range(24):
        m.step(syn, state, gen)
        seen.add(state.last)
    assert seen == {(e, s) for e in range(3) for s in range(2)}


def test_short_run_lowers_the_matching_loss(store, buffer_dir, gen):
    # per-iteration losses are noisy (another expert and start each time): measure the loss on
    # every (expert, start) pair, before and after
    cfg = config(buffer_dir, lr_img=300.0, lr_lr=1e-4)
    m = get("mtt")
    syn = m.init(store, cfg, "cpu", gen)
    state = m.setup(syn, store, cfg, "cpu")
    buf = state.buffer
    net = build_net(buf.net).eval()

    def total():
        lr = state.syn_lr.detach()
        out = 0.0
        for e in range(3):
            for s in range(2):
                a, b = buf.pair(e, s, s + 1)
                out += mtt_loss(net, buf.layout, syn.data.detach(), syn.labels, a, b, lr, 3).item()
        return out

    before = total()
    for _ in range(20):
        m.step(syn, state, gen)
    after = total()
    assert after < 0.97 * before, (before, after)


def test_checkpoint_keeps_learned_lr_and_draws(store, buffer_dir, gen):
    cfg = config(buffer_dir, syn_steps=1, lr_lr=1e-3)
    m = get("mtt")
    syn = m.init(store, cfg, "cpu", gen)
    state = m.setup(syn, store, cfg, "cpu")
    for _ in range(2):
        m.step(syn, state, gen)
    saved = m.state_dict(state)
    assert syn.meta["syn_lr"] == pytest.approx(float(state.syn_lr.detach()))
    assert float(state.syn_lr.detach()) != cfg.mtt.lr_teacher
    fresh = m.setup(syn, store, cfg, "cpu")
    m.load_state_dict(fresh, saved)
    assert float(fresh.syn_lr.detach()) == float(state.syn_lr.detach())
    assert m.draw(fresh) == m.draw(state)


def test_mismatched_buffer_raises_naming_the_fix(store, buffer_dir, gen):
    m = get("mtt")
    cfg = resolve("builtin", method="mtt", ipc=1, **{"net.width": 8},
                  mtt={**MTT, "buffer": str(buffer_dir)})
    syn = m.init(store, cfg, "cpu", gen)
    with pytest.raises(BufferError, match="width 4 vs 8.*--mtt-buffer"):
        m.setup(syn, store, cfg, "cpu")
    cfg = config(buffer_dir, max_start_epoch=2, expert_epochs=2, buffer_epochs=5)
    with pytest.raises(BufferError, match="needs 4"):
        m.setup(syn, store, cfg, "cpu")


def test_distill_mtt_resumes_to_the_same_result(store, buffer_dir, tmp_path):
    import vdfast

    opts = dict(method="mtt", ipc=1, progress=False, checkpoint_every=2, preset="builtin",
                **{"net.width": WIDTH}, mtt={**MTT, "syn_steps": 1, "buffer": str(buffer_dir)})
    full = vdfast.distill(store, iterations=4, out=tmp_path / "a", **opts)
    vdfast.distill(store, iterations=2, out=tmp_path / "b", **opts)
    resumed = vdfast.distill(store, iterations=4, out=tmp_path / "b", **opts)
    torch.testing.assert_close(resumed.synset.data, full.synset.data)
    assert resumed.history["loss"] == pytest.approx(full.history["loss"])
    assert resumed.synset.meta["syn_lr"] == pytest.approx(full.synset.meta["syn_lr"])


@pytest.mark.parametrize("batch_syn,chunk", [(0, 0), (0, 5), (5, 2)])
def test_recompute_meta_gradient_equals_the_full_graph_float64(buffer_dir, gen, batch_syn, chunk):
    """mtt.unroll=recompute (step-by-step reverse pass, micro-batches) is the same derivative as
    differentiating the whole second-order graph."""
    from vdfast.methods.mtt import meta_gradient

    buf = ExpertBuffer(buffer_dir)
    net = build_net(buf.net).double().eval()
    names = [n for n, _ in buf.layout]
    start, target = (t.double() for t in buf.pair(1, 0, 1))
    syn = torch.randn(12, 3, 4, 16, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(12) % 12
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    steps = 4

    params = [p.detach().requires_grad_() for p in unflatten(start, buf.layout)]
    out = unroll(net, names, params, syn, labels, lr, steps, batch_syn,
                 torch.Generator().manual_seed(3))
    loss = trajectory_loss(torch.cat([p.reshape(-1) for p in out]), start, target)
    gx, glr = torch.autograd.grad(loss, (syn, lr))

    loss2, gx2, glr2 = meta_gradient(net, names, start, target, buf.layout, syn, labels, lr, steps,
                                     batch_syn, torch.Generator().manual_seed(3), chunk)
    assert gx.abs().max() > 0 and glr.abs() > 0
    torch.testing.assert_close(loss2, loss.detach(), **TOL[torch.float64])
    torch.testing.assert_close(gx2, gx, **TOL[torch.float64])
    torch.testing.assert_close(glr2, glr, **TOL[torch.float64])


def test_unroll_chunk_does_not_change_the_result(buffer_dir, gen):
    buf = ExpertBuffer(buffer_dir)
    net = build_net(buf.net).double().eval()
    names = [n for n, _ in buf.layout]
    start = buf.pair(0, 0, 1)[0].double()
    syn = torch.randn(12, 3, 4, 16, 16, generator=gen, dtype=torch.float64)
    labels = torch.arange(12)
    lr = torch.tensor(0.05, dtype=torch.float64)

    def run(chunk):
        params = [p.detach().requires_grad_() for p in unflatten(start, buf.layout)]
        return unroll(net, names, params, syn, labels, lr, 2, chunk=chunk)

    for a, b in zip(run(0), run(5)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_recompute_step_updates_like_the_graph_step(store, buffer_dir, gen):
    results = []
    for mode in ("graph", "recompute"):
        cfg = config(buffer_dir, lr_img=100.0, lr_lr=1e-3, unroll=mode, chunk=5 if mode == "recompute" else 0)
        m = get("mtt")
        syn = m.init(store, cfg, "cpu", torch.Generator().manual_seed(0))
        state = m.setup(syn, store, cfg, "cpu")
        losses = [m.step(syn, state, torch.Generator().manual_seed(1)) for _ in range(2)]
        results.append((torch.stack(losses), syn.data.detach().clone(), state.syn_lr.detach()))
    (l1, x1, a1), (l2, x2, a2) = results
    torch.testing.assert_close(l2, l1, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(x2, x1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a2, a1, rtol=1e-5, atol=1e-8)
    assert not torch.equal(a1, torch.tensor(cfg.mtt.lr_teacher))


def test_unknown_unroll_mode_is_a_config_error():
    from vdfast.config import ConfigError

    with pytest.raises(ConfigError, match="unroll"):
        resolve("builtin", method="mtt", mtt={"unroll": "checkpoint"})


@pytest.mark.parametrize("mode, phase", [("graph", "vdfast.mtt.unroll"),
                                         ("recompute", "vdfast.mtt.meta_gradient")])
def test_profiled_mtt_names_its_phases(store, buffer_dir, tmp_path, mode, phase):
    import json

    import vdfast

    vdfast.distill(store, method="mtt", ipc=1, iterations=3, profile=1, out=tmp_path,
                   progress=False, checkpoint_every=0, preset="builtin", **{"net.width": WIDTH},
                   mtt={**MTT, "syn_steps": 1, "buffer": str(buffer_dir), "unroll": mode})
    names = {e.get("name") for e in
             json.loads((tmp_path / "profile" / "trace.json").read_text())["traceEvents"]}
    assert {phase, "vdfast.mtt.expert_pair", "vdfast.synset.videos"} <= names
    if mode == "graph":  # the recompute mode computes the loss inside its own pass
        assert any(n and n.startswith("vdfast.trajectory_loss[") for n in names)
