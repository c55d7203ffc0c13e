"""Batched students (vdfast.models.batched, evaluation.train_students): N students trained as one
network give, student by student, what N students trained one by one give (train_student, the
reference), with dropout, soft labels, the batch standardisation, an lr step and SGD momentum and
weight decay on; float64 for the strict check, float32 through the whole evaluation."""
import dataclasses

import pytest
import torch

import vdfast
from vdfast import evaluation
from vdfast.cli import build_parser
from vdfast.config import ConfigError, EvalConfig, NetConfig, resolve
from vdfast.data.store import ClipStore
from vdfast.engine.train import Source, train_student
from vdfast.evaluation import train_students
from vdfast.models import build_student
from vdfast.models.batched import group_batches, stack
from tolerances import TOL

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny shapes (see conftest)

T, S, K = 4, 16, 12


@pytest.fixture(scope="module")
def store():
    return ClipStore.builtin(train_per_class=4, test_per_class=2, frames=T, size=S)


def _students(name, seeds, norm="none", dtype=torch.float64):
    """Students as the evaluation seeds them, and each one's RNG state right after (its dropout)."""
    nets, states = [], []
    with torch.random.fork_rng(devices=[]):
        for s in seeds:
            torch.manual_seed(s)
            nets.append(build_student(name, K, T, S, width=4, depth=2, norm=norm).to(dtype))
            states.append((torch.get_rng_state(), None))
    return nets, states


@pytest.mark.parametrize("name,norm", [("convnet3d", "none"), ("convnet3d", "instance"),
                                       ("convnet3d", "batch"), ("cnn_gru", "none"),
                                       ("cnn_lstm", "none")])
def test_batched_network_is_its_students(name, norm, gen):
    """Forward (train mode, dropout from each student's own RNG state; eval mode on one shared
    batch), the gradients of the summed losses, and the weights handed back: those of each student."""
    nets, states = _students(name, [5, 6, 7], norm)
    net = stack(nets)
    net.rng_states = list(states)
    x = torch.randn(3, 5, 3, T, S, S, generator=gen, dtype=torch.float64)
    out = net(group_batches(x, name == "convnet3d"))
    out.square().sum().backward()
    ref = []
    for j, m in enumerate(nets):
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(states[j][0])
            ref.append(m(x[j]))
        ref[-1].square().sum().backward()
    ref = torch.stack(ref)
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    assert not torch.allclose(ref[0], ref[1])  # the students differ (their own seeds)
    grads = {k: p.grad for k, p in net.named_parameters()}
    conv0 = grads["features.layers.0.weight" if name == "convnet3d" else "cnn.layers.0.weight"]
    for j, m in enumerate(nets):  # the first conv's gradient, student by student
        first = m.features[0] if name == "convnet3d" else m.cnn.features[0]
        torch.testing.assert_close(conv0.chunk(3)[j], first.weight.grad, **TOL[torch.float64])
    net.eval()
    for m in nets:
        m.eval()
    xt = torch.randn(4, 3, T, S, S, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(net(xt, shared=True), torch.stack([m(xt) for m in nets]),
                               **TOL[torch.float64])
    for m, sd in zip(nets, net.students()):
        assert sd.keys() == m.state_dict().keys()
        for k, v in m.state_dict().items():
            assert torch.equal(sd[k], v), k


def test_stack_refuses_students_of_different_shapes():
    a = build_student("convnet3d", K, T, S, width=4, depth=2)
    b = build_student("convnet3d", K, T, S, width=8, depth=2)
    with pytest.raises(ValueError, match="one architecture and shape"):
        stack([a, b])
    with pytest.raises(ValueError, match="one architecture"):
        stack([a, build_student("cnn_gru", K, T, S, width=4)])


@pytest.mark.parametrize("name,norm,soft,shared", [
    ("convnet3d", "none", False, True),   # the synset's row: one training set for all
    ("convnet3d", "none", True, False),   # soft labels, each student its own set (random real)
    ("convnet3d", "instance", True, True),
    ("convnet3d", "batch", False, False),
    ("cnn_gru", "none", True, True),
    ("cnn_lstm", "none", False, False),
])
def test_batched_training_gives_each_students_one_by_one_weights(name, norm, soft, shared, gen):
    """float64: 3 students, 10 clips in batches of 4 (the last of 2), 4 epochs (the lr step at 2),
    momentum, weight decay, standardisation, dropout (ConvNet3D): the final weights and losses of
    each student are those of train_student alone with the same seed. It fails if a student's
    batch order, dropout stream, standardisation or optimiser state leaks into another's."""
    seeds = [11, 12, 13]
    nets, states = _students(name, seeds, norm)
    net = stack(nets)
    net.rng_states = list(states)
    n = 10
    sets = []
    for j in range(3):
        if j == 0 or not shared:
            x = torch.randn(n, 3, T, S, S, generator=gen, dtype=torch.float64) * 2 + 1
            y = (torch.softmax(torch.randn(n, K, generator=gen, dtype=torch.float64), 1) if soft
                 else torch.randint(0, K, (n,), generator=gen))
        sets.append(Source(x, y, None, None))
    cfg = EvalConfig(batch=4, lr=0.05, standardize=True, soft_temperature=2.0)
    losses = train_students(net, sets, cfg, 4, [torch.Generator().manual_seed(s) for s in seeds],
                            soft=soft, progress=False)
    got = net.students()
    for j, m in enumerate(nets):
        start = {k: v.clone() for k, v in m.state_dict().items()}
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(states[j][0])
            loss = train_student(m, sets[j], cfg, 4, torch.Generator().manual_seed(seeds[j]),
                                 soft=soft, progress=False)
        assert losses[j] == pytest.approx(loss, rel=1e-9)
        moved = 0.0
        for k, v in m.state_dict().items():
            torch.testing.assert_close(got[j][k], v, **TOL[torch.float64], msg=f"student {j} {k}")
            if v.is_floating_point():
                moved = max(moved, (v - start[k]).abs().max().item())
        assert moved > 1e-3  # the students did train
    w = [g[next(iter(g))] for g in got]
    assert not torch.allclose(w[0], w[1])


def _dm_synset(store, soft=False, syn_lr=None):
    res = vdfast.distill(store, method="dm", ipc=1, iterations=2, progress=False,
                         **{"net.width": 4, "batch_real": 2})
    syn = res.synset
    if soft:
        syn.register_buffer("soft_labels", torch.softmax(
            3 * torch.randn(K, K, generator=torch.Generator().manual_seed(0)), 1))
    if syn_lr:
        syn.meta["syn_lr"] = syn_lr
    return syn


def _report(syn, store, batched, **kw):
    cfg = EvalConfig(**{"epochs": 3, "batch": 8, "full_epochs": 1, "batched": batched, **kw})
    return evaluation.evaluate(syn, store, cfg, seed=4, net_cfg=NetConfig(width=4, depth=2),
                               progress=False)


@pytest.mark.parametrize("students,cap,soft,syn_lr,student", [
    (3, 5, False, None, "convnet3d"),    # the dm row and random real's share networks: 5+1
    (3, 4, True, 0.02, "convnet3d"),     # soft labels, MTT's learned lr: three rows apart
    (1, 0, False, None, "convnet3d"),    # N = 1, the cap from free memory
    (2, 3, True, None, "cnn_gru"),      # hard-label rows together: 3+1
])
def test_batched_evaluation_reports_the_one_by_one_accuracies(store, students, cap, soft, syn_lr,
                                                              student):
    """The whole evaluation (synset rows, random real, the full train set) batched and one by one:
    the same rows and, student by student, the same accuracies (float32; the training differs
    only in float summation order, if at all)."""
    syn = _dm_synset(store, soft, syn_lr)
    kw = dict(students=students, batch_students=cap, student=student)
    off = _report(syn, store, "off", **kw)
    on = _report(syn, store, "on", **kw)
    assert [r.name for r in on.rows] == [r.name for r in off.rows]
    assert len(on.rows) == (4 if soft else 3)
    counts = torch.bincount(store.tensors("test")[1], minlength=K).tolist()
    assert on.classes == off.classes == list(store.classes)
    for a, b in zip(on.rows, off.rows):
        assert len(a.accs) == len(b.accs) and a.seconds > 0
        assert a.accs == pytest.approx(b.accs, abs=1e-9), a.name
        # per-class accuracies on both paths, the same ones; overall = their count-weighted mean
        assert len(a.per_class) == len(b.per_class) == len(a.accs)
        for acc, pa, pb in zip(a.accs, a.per_class, b.per_class):
            assert len(pa) == K and pa == pytest.approx(pb, abs=1e-9), a.name
            assert acc == pytest.approx(sum(p * n for p, n in zip(pa, counts)) / sum(counts),
                                        abs=1e-12)
        assert a.to_dict()["per_class"] == a.per_class
    assert 0 < sum(a for r in on.rows for a in r.accs)


def _uneven_test(store):
    """The test split less one clip of classes 0, 2, 4 and every clip of class 11: classes of 2,
    1 and 0 clips, so a count-weighted mean is not a plain one."""
    x, y = store.tensors("test")
    keep, seen = [], set()
    for i, c in enumerate(y.tolist()):
        if c == 11 or (c in (0, 2, 4) and c not in seen):
            seen.add(c)
            continue
        keep.append(i)
    keep = torch.tensor(keep)
    return x[keep], y[keep]


class _Prototypes(torch.nn.Module):
    """A classifier by the nearest prototype (``protos``, one flattened clip per class): hits on
    many classes of the test split it was made from, none on a class without a prototype."""

    def __init__(self, protos):
        super().__init__()
        self.protos = protos

    def forward(self, x):
        return x.flatten(1) @ self.protos.T


class _Stacked(torch.nn.Module):
    """N students with a batched network's test interface (``n``, ``forward(x, shared=True)``)."""

    def __init__(self, nets):
        super().__init__()
        self.nets, self.n = torch.nn.ModuleList(nets), len(nets)

    def forward(self, x, shared=True):
        return torch.stack([m(x) for m in self.nets])


def test_per_class_counts_are_each_students_hits(store, gen):
    """test_correct / students_correct count, per class, the clips each student gets right (one
    by one, batched, in pieces); the overall accuracy is their sum over the clips, as before, and
    the per-class accuracies' count-weighted mean."""
    from vdfast.engine.train import standardize_batch
    from vdfast.ops import normalize_clips

    x, y = _uneven_test(store)
    counts = torch.bincount(y, minlength=K)
    assert sorted(set(counts.tolist())) == [0, 1, 2]
    z = torch.cat([standardize_batch(normalize_clips(x[s:s + 5], store.mean, store.std)).flatten(1)
                   for s in range(0, len(y), 5)])  # test batches of 5, each standardised whole
    protos = torch.zeros(K, z.shape[1]).index_add_(0, y, z) / counts.clamp_min(1)[:, None]
    nets = [_Prototypes(protos + noise * torch.randn(protos.shape, generator=gen))
            for noise in (0.0, 0.5, 1.0)]
    want, accs = [], []
    for m in nets:
        pred = m(z).argmax(1)
        hits = [0] * K
        for p, c in zip(pred.tolist(), y.tolist()):
            hits[c] += int(p == c)
        want.append(hits)
        accs.append(sum(hits) / len(y))
        got = evaluation.test_correct(m, x, y, store.mean, store.std, True, batch=5, num_classes=K)
        assert got.dtype == torch.long and got.tolist() == hits
        assert evaluation.test_accuracy(m, x, y, store.mean, store.std, True, batch=5) == accs[-1]
    # students that differ and hit several classes, some only in part (else the test is weak)
    assert len({tuple(w) for w in want}) > 1 and all(sum(h > 0 for h in w) > 3 for w in want)
    assert 0 < min(accs) and max(accs) < 1
    net = _Stacked(nets)
    got = evaluation.students_correct(net, x, y, store.mean, store.std, True, batch=5, chunk=3,
                                      num_classes=K)
    assert got.tolist() == want
    assert evaluation.test_accuracies(net, x, y, store.mean, store.std, True, batch=5) == accs
    overall, per_class = evaluation.class_accuracies(got, y)
    assert overall == accs
    for acc, pc, hits in zip(overall, per_class, want):
        assert pc[11] == 0.0  # no test clip
        assert pc == [h / max(1, n) for h, n in zip(hits, counts.tolist())]
        assert acc == pytest.approx(sum(p * n for p, n in zip(pc, counts.tolist())) / len(y),
                                    abs=1e-12)
        assert acc != pytest.approx(sum(pc[:11]) / 11)  # the weights matter here
    one = evaluation.class_accuracies(got[1], y)
    assert one == ([overall[1]], [per_class[1]])


def test_rows_without_per_class_and_the_gather_of_n_processes():
    row = evaluation.Row("dm", 1, [0.5, 0.25])
    assert "per_class" not in row.to_dict()

    class TwoRanks:  # an all-reduce over 2 processes, the other one holding 10 x these values
        active, world, rank = True, 2, 0

        def all_reduce_(self, t):
            return t + 10 * t

    rows = [evaluation.Row("dm", 1, [0.5, 0.0], per_class=[[1.0, 0.0, 0.5], [0.0] * 3]),
            evaluation.Row("old", 1, [0.25]),
            evaluation.Row("full", None, [0.0], per_class=[[0.0, 0.1, 0.2]])]
    evaluation.StudentShard(TwoRanks()).gather(rows)
    assert rows[0].accs == pytest.approx([5.5, 0.0])
    assert rows[0].per_class == [pytest.approx([11.0, 0.0, 5.5]), [0.0] * 3]
    assert rows[1].accs == pytest.approx([2.75]) and rows[1].per_class is None
    assert rows[2].accs == [0.0] and rows[2].per_class == [pytest.approx([0.0, 1.1, 2.2])]


def test_rows_with_the_same_settings_share_batched_networks(store, monkeypatch):
    """Students of rows whose settings and training-set shapes agree (the synset's and random
    real's) go into the same batched networks, at most the cap at a time; MTT's learned lr keeps
    the synset's row apart."""
    seen = []
    real = evaluation.train_batch

    def spy(sets, seeds, *a, **kw):
        seen.append(list(seeds))
        return real(sets, seeds, *a, **kw)

    monkeypatch.setattr(evaluation, "train_batch", spy)
    syn = _dm_synset(store)
    _report(syn, store, "on", students=3, batch_students=4, epochs=1)
    # the dm row's seeds 4*1009+i, random real's (4+i)*1009, then the full-train student
    assert seen == [[4036, 4037, 4038, 4036], [5045, 6054], [4036]]
    seen.clear()
    syn.meta["syn_lr"] = 0.02
    _report(syn, store, "on", students=3, batch_students=4, epochs=1, full=False)
    assert seen == [[4036, 4037, 4038], [4036, 5045, 6054]]


def test_memory_model_sets_the_group_size(store, monkeypatch):
    from vdfast.memory import student_bytes
    from vdfast.models import build

    cfg, net = EvalConfig(), NetConfig(width=4, depth=2)
    student, clip_shape = build(net, store, cfg.student, "meta"), (3, T, S, S)
    train, clip = student_bytes(student, clip_shape, 8)
    assert train > student_bytes(student, clip_shape, 4)[0] > 0 and clip > 0
    monkeypatch.setattr(evaluation, "free_bytes", lambda device: 10 * train)
    assert evaluation.auto_batch_students(cfg, store, net, 8, "cpu") == 5
    monkeypatch.setattr(evaluation, "free_bytes", lambda device: train)
    assert evaluation.auto_batch_students(cfg, store, net, 8, "cpu") == 1
    assert evaluation.auto_batch_students(dataclasses.replace(cfg, batch_students=3), store, net, 8,
                                          "cpu") == 3


def test_batched_options_are_config_fields_and_flags():
    assert EvalConfig().batched == "on" and EvalConfig().batch_students == 0
    assert EvalConfig(batched=False).batched == "off"
    with pytest.raises(ConfigError, match="batched"):
        resolve("builtin", **{"eval.batched": "sometimes"})
    with pytest.raises(ConfigError, match="batch_students"):
        EvalConfig(batch_students=-1)
    ns = build_parser().parse_args(["eval", "syn", "--eval-batched", "off",
                                    "--eval-batch-students", "2"])
    assert ns.eval_batched == "off" and ns.eval_batch_students == 2
    ns = build_parser().parse_args(["distill", "--eval-batched", "off"])
    assert ns.eval_batched == "off"
