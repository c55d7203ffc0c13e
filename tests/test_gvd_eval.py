"""Evaluation of a generated synset with soft labels: hard labels, soft labels at the synset's own
temperature, and random real clips labelled by the same teacher, side by side."""
import dataclasses
import shutil

import pytest
import torch

import vdfast
from vdfast import evaluation
from vdfast.config import EvalConfig, GVDConfig
from vdfast.data.store import ClipStore
from vdfast.engine.train import soft_labels

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny shapes (see conftest)

G = GVDConfig(ae_down=4, ae_width=4, ae_steps=4, ae_batch=4, generator="tiny", gen_steps=3,
              gen_batch=4, steps=3, train_timesteps=20, checkpoint_every=2, teacher_epochs=1,
              segments=1, chunk=5, kmeans_iters=5, temperature=2.5)


@pytest.fixture(scope="module")
def store():
    return ClipStore.builtin(train_per_class=4, test_per_class=1, frames=4, size=16)


@pytest.fixture(scope="module")
def run(store, tmp_path_factory):
    w = tmp_path_factory.mktemp("gvd")
    small = {f"gvd.{k}": v for k, v in dataclasses.asdict(G).items()}
    res = vdfast.distill(store, method="gvd", ipc=1, progress=False,
                         **{**small, "gvd.workdir": str(w / "work"), "net.width": 4})
    return res, w / "work"


def _spy(monkeypatch):
    """Record (soft?, temperature, targets) of every student trained by the evaluation one by one
    (``batched="off"``; test_batched_eval.py shows the batched students are these)."""
    calls = []
    real = evaluation.train_student

    def spy(net, source, cfg, epochs, gen, soft=False, desc="", progress=True, dist=None):
        calls.append((soft, cfg.soft_temperature, source.y.clone(), source.x.clone()))
        return real(net, source, cfg, epochs, gen, soft=soft, desc=desc, progress=progress,
                    dist=dist)

    monkeypatch.setattr(evaluation, "train_student", spy)
    return calls


def test_report_has_hard_soft_and_random_real_with_teacher_labels(store, run, monkeypatch):
    res, work = run
    syn = res.synset
    assert syn.soft_labels is not None and syn.meta["teacher"]["temperature"] == 2.5
    calls = _spy(monkeypatch)
    cfg = EvalConfig(students=2, epochs=1, batch=16, full=False, soft_temperature=1.0, batched="off")
    rep = evaluation.evaluate(syn, store, cfg, seed=3, net_cfg=res.config.net, progress=False)
    names = [r.name for r in rep.rows]
    assert names == ["gvd (soft labels)", "gvd (hard labels)", "random real",
                     "random real (teacher soft labels)"]
    assert all(len(r.accs) == 2 for r in rep.rows)
    # every soft-label student trained at the synset's temperature, not the config's 1.0
    soft_calls = [c for c in calls if c[0]]
    assert len(soft_calls) == 4 and {c[1] for c in soft_calls} == {2.5}
    torch.testing.assert_close(soft_calls[0][2], syn.soft_labels)
    # the last two students: random real clips (the same draws as the hard-label baseline), with
    # the teacher's softmax(logits / 2.5)
    teacher = evaluation.teacher_of(syn, store, "cpu", progress=False)
    hard_real = [c for c in calls if not c[0]][-2:]
    for (_, _, y, x), (_, _, y_hard, x_hard) in zip(soft_calls[2:], hard_real):
        assert torch.equal(x, x_hard)
        torch.testing.assert_close(y, soft_labels(teacher, x, store.mean, store.std, 2.5))
        assert not torch.allclose(y, torch.nn.functional.one_hot(y_hard, 12).float())


def test_teacher_is_rebuilt_when_the_cache_is_gone(store, run, tmp_path):
    res, work = run
    syn = res.synset
    cached = evaluation.teacher_of(syn, store, "cpu", progress=False)
    moved = tmp_path / "moved"
    shutil.copytree(work, moved)
    shutil.rmtree(work)
    try:
        rebuilt = evaluation.teacher_of(syn, store, "cpu", progress=False)
    finally:
        shutil.copytree(moved, work)
    for k, v in cached.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[k], v)
    # a synset without a recorded teacher has none; its soft students use the config's temperature
    bare = type(syn)(syn.pixels, syn.labels, syn.classes, syn.mean, syn.std,
                     soft_labels=syn.soft_labels, meta={"method": "gvd", "ipc": 1})
    assert evaluation.teacher_of(bare, store, "cpu") is None
    assert evaluation.soft_temperature(bare, EvalConfig(soft_temperature=3.0)) == 3.0
    assert evaluation.soft_temperature(syn, EvalConfig(soft_temperature=3.0)) == 2.5


def test_saved_synset_keeps_what_the_evaluation_needs(run, tmp_path):
    res, work = run
    res.synset.save(tmp_path / "syn")
    back = vdfast.load(tmp_path / "syn")
    assert back.meta["teacher"]["temperature"] == 2.5
    assert back.meta["teacher"] == res.synset.meta["teacher"]
    assert back.meta["teacher"]["recipe"]["epochs"] == res.config.gvd.teacher_epochs
    (cache,) = work.glob("teacher-*")  # the neutral record points at GVD's teacher stage
    assert evaluation.teacher_record(back).cache == cache


def test_selected_synset_gets_real_clips_selected_by_the_same_teacher(store, run, monkeypatch):
    """gvd.select R > 1: the report adds random real clips chosen by the same teacher, best of R
    per slot (select_real), so the selection's gain is not taken for the generator's."""
    from vdfast.engine.train import class_probability, select_real, train_stats

    res, _ = run
    syn = res.synset
    sel = type(syn)(syn.pixels, syn.labels, syn.classes, syn.mean, syn.std,
                    meta={**syn.meta, "teacher": {**syn.meta["teacher"], "select": 3}})
    calls = _spy(monkeypatch)
    cfg = EvalConfig(students=2, epochs=1, batch=16, full=False, batched="off")
    rep = evaluation.evaluate(sel, store, cfg, seed=3, net_cfg=res.config.net, progress=False)
    assert [r.name for r in rep.rows] == ["gvd", "random real",
                                          "random real (teacher-selected, best of 3)"]
    teacher, stats = evaluation.teacher_of(sel, store, "cpu", progress=False), train_stats(store)
    for i, (_, _, y, x) in enumerate(calls[-2:]):
        want, lab = select_real(teacher, store, 1, 3, torch.Generator().manual_seed(3 * 7919 + i + 1),
                                stats)
        assert torch.equal(x, want) and torch.equal(y, lab)
    # each chosen clip is the most probable of its class's 3 drawn clips (4 train clips a class)
    gen = torch.Generator().manual_seed(11)
    chosen, lab = select_real(teacher, store, 1, 3, gen, stats)
    gen = torch.Generator().manual_seed(11)
    for c in range(12):
        drawn = torch.randperm(4, generator=gen)[:3]
        x = torch.from_numpy(store.clips("train", c)[drawn.sort().values.numpy()])
        p = class_probability(teacher, x, [c] * 3, store, 1, stats)
        best = x[p.argmax()]
        assert torch.equal(chosen[c], best) and lab[c] == c


def test_batched_evaluation_of_a_selected_soft_label_synset_is_the_one_by_one_one(store, run):
    """Batched students (the default) report every row of a GVD synset (soft and hard labels,
    random real, with the teacher's soft labels, teacher-selected) with the one-by-one accuracies."""
    res, _ = run
    syn = res.synset
    sel = type(syn)(syn.pixels, syn.labels, syn.classes, syn.mean, syn.std, soft_labels=syn.soft_labels,
                    meta={**syn.meta, "teacher": {**syn.meta["teacher"], "select": 2}})
    reps = {}
    for b in ("on", "off"):
        cfg = EvalConfig(students=2, epochs=2, batch=8, full=False, batched=b, batch_students=3)
        reps[b] = evaluation.evaluate(sel, store, cfg, seed=3, net_cfg=res.config.net, progress=False)
    assert len(reps["on"].rows) == 5
    for a, b in zip(reps["on"].rows, reps["off"].rows):
        assert a.name == b.name and a.accs == pytest.approx(b.accs, abs=1e-9), a.name
