"""compose: teacher-guided real-clip composition. The pieces against plain computations (segment
starts, the teacher's segment scores, the choice of videos), the synset against the store's own
frames, resume after an interrupt, a user's teacher file, the evaluation's same-teacher baseline,
the one-line errors, and 2 gloo ranks against 1."""
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vdfast
from vdfast import evaluation
from vdfast.config import ConfigError, EvalConfig
from vdfast.data.store import ClipStore
from vdfast.engine import checkpoint
from vdfast.engine.train import train_stats
from vdfast.methods import compose, coreset
from vdfast.ops import normalize_clips

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny shapes (see conftest)

SMALL = {"compose.teacher_epochs": 2, "net.width": 4, "net.depth": 2, "eval.batch": 16}


@pytest.fixture(scope="module")
def store():
    return ClipStore.builtin(train_per_class=6, test_per_class=2, frames=4, size=16)


@pytest.fixture(scope="module")
def run(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("compose") / "run"
    return vdfast.distill(store, method="compose", ipc=2, out=out, progress=False, **SMALL)


def test_segment_starts():
    assert compose.segment_starts(8, 2) == [0, 2, 4]
    assert compose.segment_starts(8, 2, stride=4) == [0, 4]
    assert compose.segment_starts(8, 1) == [0]
    assert compose.segment_starts(9, 2, stride=3) == [0, 3, 5]  # the last one ends at the clip's end
    assert compose.segment_starts(4, 4) == [0, 1, 2, 3]


def test_compose_class_takes_different_videos_best_first_round_robin():
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.2], [0.8, 0.3], [0.0, 0.05], [0.7, 0.6]])
    slots = compose.compose_class(scores, ipc=2, segments=2)
    # best segment per video: 0.9 (v0, p1), 0.5 (v1, p0), 0.8 (v2, p0), 0.05 (v3, p1), 0.7 (v4, p0)
    # ranking v0, v2, v4, v1: slot 0 of the 2 instances gets v0, v2; slot 1 gets v4, v1
    assert slots.tolist() == [[[0, 1], [4, 0]], [[2, 0], [1, 0]]]
    vids = slots[..., 0].flatten().tolist()
    assert len(set(vids)) == len(vids)


def test_compose_class_diverse_selection_is_herding_or_kcenter_among_the_pool():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(12, 3, generator=g)
    feats = torch.randn(12, 3, 5, generator=g)
    best, pos = scores.max(1)
    order = torch.sort(best, descending=True, stable=True).indices
    f = feats[torch.arange(12), pos]
    for select, fn in (("herding", coreset.herding), ("kcenter", coreset.kcenter)):
        slots = compose.compose_class(scores, 2, 2, feats, select, pool=2.0)
        cand = order[:8]  # pool 2 x ipc 2 x 2 segments
        want = cand[sorted(fn(f[cand], 4, f.mean(0)))]  # chosen, back in score order
        assert slots[..., 0].t().flatten().tolist() == want.tolist()
        assert slots[..., 1].flatten().tolist() == pos[slots[..., 0].flatten()].tolist()
    # pool 1 chooses among exactly the best: the same set as "top"
    top = compose.compose_class(scores, 2, 2)
    assert torch.equal(compose.compose_class(scores, 2, 2, feats, "herding", pool=1.0), top)
    # herding towards the class mean, written out: the first pick is the candidate nearest it
    cand = order[:8]
    first = int((f[cand] - f.mean(0)).pow(2).sum(1).argmin())
    assert int(cand[first]) in compose.compose_class(scores, 2, 2, feats, "herding", 2.0)[..., 0]


def test_segment_scores_are_the_teachers_log_probability_of_the_stretched_segment(store):
    torch.manual_seed(0)
    teacher = vdfast.models.build(vdfast.config.NetConfig(width=4, depth=2), store).eval()
    u8 = torch.from_numpy(np.ascontiguousarray(store.clips("train", 3)[:3]))
    stats = train_stats(store)
    starts = compose.segment_starts(4, 2)
    got, feats = compose.score_segments(teacher, u8, 3, 2, starts, store.mean, store.std, stats)
    lm, _ = compose.score_segments(teacher, u8, 3, 2, starts, store.mean, store.std, stats, "margin")
    assert got.shape == (3, len(starts)) == lm.shape
    assert feats.shape == (3, len(starts), teacher.feat_shape[0])
    x = (normalize_clips(u8, store.mean, store.std) - stats[0]) / stats[1]
    for i in range(3):
        for j, p in enumerate(starts):
            seg = x[i:i + 1, :, p:p + 2]
            seg = torch.stack([seg[:, :, 0], seg[:, :, 0], seg[:, :, 1], seg[:, :, 1]], 2)  # stretched
            with torch.no_grad():
                logits = teacher(seg)[0]
                pooled = teacher.features(seg)[0].mean((1, 2, 3))  # the last block, over T, H, W
            torch.testing.assert_close(feats[i, j], pooled, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got[i, j], F.log_softmax(logits, 0)[3], rtol=1e-5, atol=1e-5)
            other = torch.cat([logits[:3], logits[4:]]).max()
            torch.testing.assert_close(lm[i, j], logits[3] - other, rtol=1e-5, atol=1e-5)


def test_synset_is_the_stores_frames_from_different_videos_with_soft_labels(store, run):
    syn = run.synset
    assert syn.kind == "generated" and syn.pixels.shape == (24, 4, 16, 16, 3)
    assert syn.labels.tolist() == [c for c in range(12) for _ in range(2)]
    picked = syn.meta["compose"]["picked"]
    assert syn.meta["compose"]["segment_frames"] == 2
    for k, name in enumerate(store.classes):
        slots = picked[name]  # [ipc][segments] of (video, first frame)
        vids = [v for inst in slots for v, _ in inst]
        assert len(set(vids)) == 4  # ipc 2 x 2 segments, all different videos
        clips = store.clips("train", k)
        for j, inst in enumerate(slots):
            for s, (v, p) in enumerate(inst):
                assert np.array_equal(syn.pixels[k * 2 + j, 2 * s:2 * s + 2].numpy(), clips[v, p:p + 2])
    soft = syn.soft_labels
    assert soft.shape == (24, 12)
    torch.testing.assert_close(soft.sum(1), torch.ones(24))
    rec = syn.meta["teacher"]
    assert rec["temperature"] == 1.0 and rec["recipe"]["epochs"] == 2 and rec["weights"] is None
    # the teacher and one score file per class are cached under the run
    assert len(list((run.out / "compose").glob("teacher-*/teacher.safetensors"))) == 1
    (scores,) = (run.out / "compose").glob("scores-*")
    assert len(list(scores.glob("class*.npy"))) == 12
    # the storage line counts the soft labels
    st = syn.storage()
    assert st["soft_label_bytes"] == 24 * 12 * 4


def test_interrupted_scoring_resumes_to_the_same_synset(store, run, tmp_path, monkeypatch):
    calls = {"n": 0}

    def sigint_after_five():  # the teacher asks once per epoch first, then scoring once per class
        calls["n"] += 1
        return signal.SIGINT if calls["n"] == SMALL["compose.teacher_epochs"] + 5 else 0

    monkeypatch.setattr(checkpoint, "interrupt_requested", sigint_after_five)
    out = tmp_path / "run"
    with pytest.raises(checkpoint.Interrupted, match="compose class 5"):
        vdfast.distill(store, method="compose", ipc=2, out=out, progress=False, **SMALL)
    (scores,) = (out / "compose").glob("scores-*")
    assert len(list(scores.glob("class*.npy"))) == 5
    monkeypatch.undo()
    again = vdfast.distill(store, method="compose", ipc=2, out=out, progress=False, **SMALL)
    assert torch.equal(again.synset.pixels, run.synset.pixels)
    assert torch.equal(again.synset.soft_labels, run.synset.soft_labels)


def test_a_signal_during_the_teachers_training_stops_it_after_the_epoch(store, run, tmp_path,
                                                                       monkeypatch):
    # a SIGTERM must not wait for the whole teacher: it stops after the current epoch, keeps no
    # half-trained teacher, and the same command then gives the same synset
    calls = {"n": 0}

    def sigterm_at_first_epoch():
        calls["n"] += 1
        return signal.SIGTERM if calls["n"] == 1 else 0

    monkeypatch.setattr(checkpoint, "interrupt_requested", sigterm_at_first_epoch)
    out = tmp_path / "run"
    with pytest.raises(checkpoint.Interrupted, match="epoch 1; the teacher's 2 epochs") as e:
        vdfast.distill(store, method="compose", ipc=2, out=out, progress=False, **SMALL)
    assert e.value.exit_code == 143 and calls["n"] == 1
    assert not list((out / "compose").glob("teacher-*/teacher.safetensors"))
    monkeypatch.undo()
    again = vdfast.distill(store, method="compose", ipc=2, out=out, progress=False, **SMALL)
    assert torch.equal(again.synset.pixels, run.synset.pixels)
    assert torch.equal(again.synset.soft_labels, run.synset.soft_labels)


def test_a_users_teacher_file_gives_the_trained_teachers_synset(store, run, tmp_path):
    (f,) = (run.out / "compose").glob("teacher-*/teacher.safetensors")
    mine = tmp_path / "my_teacher.safetensors"
    mine.write_bytes(f.read_bytes())
    res = vdfast.distill(store, method="compose", ipc=2, progress=False,
                         **{**SMALL, "compose.teacher": str(mine)})
    assert torch.equal(res.synset.pixels, run.synset.pixels)
    torch.testing.assert_close(res.synset.soft_labels, run.synset.soft_labels)
    assert res.synset.meta["teacher"]["weights"] == str(mine.resolve())
    # the evaluation finds that teacher for its same-soft-labels baseline
    assert evaluation.teacher_of(res.synset, store, "cpu", progress=False) is not None
    with pytest.raises(ValueError, match="do not fit the --net ConvNet3D"):
        vdfast.distill(store, method="compose", ipc=2, progress=False,
                       **{**SMALL, "net.width": 8, "compose.teacher": str(mine)})


def test_kcenter_selection_reuses_the_cached_teacher_and_scores(store, run):
    """Another selection over the same run folder: no new teacher or scores, videos from the pool."""
    out = run.out
    again = vdfast.distill(store, method="compose", ipc=1, out=out.parent / "kc", progress=False,
                           **{**SMALL, "compose.workdir": str(out / "compose"),
                              "compose.select": "kcenter", "compose.pool": 2})
    assert len(list((out / "compose").glob("teacher-*"))) == 1
    assert len(list((out / "compose").glob("scores-*"))) == 1
    meta = again.synset.meta["compose"]
    assert meta["select"] == "kcenter" and meta["pool"] == 2
    scores = {k: np.load(next((out / "compose").glob("scores-*")) / f"class{k:06d}.npy")
              for k in range(12)}
    for k, name in enumerate(store.classes):
        best = scores[k].max(1)
        pool = set(np.argsort(-best, kind="stable")[:4].tolist())  # 2 x ipc 1 x 2 segments
        assert {v for inst in meta["picked"][name] for v, _ in inst} <= pool


def test_random_features_herd_with_the_herding_baselines_network(store, run):
    """features="random": herding among the teacher's pool on a random network's flattened
    embedding of each video's best segment, the network the herding coreset draws from the seed."""
    from vdfast.config import resolve
    from vdfast.methods.base import reinit_
    from vdfast.models import build

    out = run.out
    kw = {**SMALL, "compose.workdir": str(out / "compose"), "compose.select": "herding",
          "compose.pool": 2, "compose.segments": 1}
    got = vdfast.distill(store, method="compose", ipc=2, out=out.parent / "rf", progress=False,
                         **kw, **{"compose.features": "random"})
    assert got.synset.meta["compose"]["features"] == "random"
    cfg = resolve("builtin", ipc=2, **kw)
    net = build(cfg.net, store, device="cpu").eval()
    reinit_(net, torch.Generator().manual_seed(cfg.seed))
    scores = next((out / "compose").glob("scores-*"))
    for k, name in enumerate(store.classes):
        best = np.load(scores / f"class{k:06d}.npy").max(1)
        cand = np.argsort(-best, kind="stable")[:4]                      # pool 2 x ipc 2 x 1
        with torch.no_grad():
            f = net.embed(normalize_clips(torch.from_numpy(store.clips("train", k)[cand].copy()),
                                          store.mean, store.std)).float()
        all_f = net.embed(normalize_clips(torch.from_numpy(store.clips("train", k).copy()),
                                          store.mean, store.std)).float().detach()
        pick = cand[sorted(coreset.herding(f.detach(), 2, all_f.mean(0)))]
        assert sorted(v for inst in got.synset.meta["compose"]["picked"][name] for v, _ in inst) \
            == sorted(pick.tolist())
    # the teacher's features pick from the same pool, but not the same videos everywhere
    other = vdfast.distill(store, method="compose", ipc=2, out=out.parent / "tf", progress=False, **kw)
    assert other.synset.meta["compose"]["picked"] != got.synset.meta["compose"]["picked"]


def test_tiles_put_downscaled_segments_of_more_videos_in_a_grid(store, run):
    """tiles 2: each segment slot is a 2x2 grid of 4 videos, each the area mean of 2x2 pixels (one
    segment: the fixture has 6 videos per class)."""
    out = run.out
    tiled = vdfast.distill(store, method="compose", ipc=1, out=out.parent / "tiled", progress=False,
                           **{**SMALL, "compose.tiles": 2, "compose.segments": 1})
    syn, meta = tiled.synset, tiled.synset.meta["compose"]
    assert meta["tiles"] == 2 and syn.pixels.shape == (12, 4, 16, 16, 3)
    for k, name in enumerate(store.classes):
        (inst,) = meta["picked"][name]            # ipc 1: [segments x tiles² slots] of (video, frame)
        assert len(inst) == 4 and len({v for v, _ in inst}) == 4
        clips = store.clips("train", k).astype(np.float64)
        for q, (v, p) in enumerate(inst):
            seg, cell = divmod(q, 4)
            r, c = divmod(cell, 2)
            assert seg == 0 and p == 0                      # one segment: the whole clip
            piece = clips[v].reshape(4, 8, 2, 8, 2, 3).mean((2, 4))  # 2x2 area mean
            got = syn.pixels[k, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8].numpy()
            assert np.abs(got - piece).max() <= 0.5 + 1e-9   # rounded to uint8
    with pytest.raises(ValueError, match=r"ipc 2 x segments 1 x tiles 2x2 needs 8 different"):
        vdfast.distill(store, method="compose", ipc=2, progress=False,
                       **{**SMALL, "compose.tiles": 2, "compose.segments": 1})
    with pytest.raises(ValueError, match="tiles=3 must divide the clip's side of 16"):
        vdfast.distill(store, method="compose", ipc=1, progress=False,
                       **{**SMALL, "compose.tiles": 3})


def test_evaluation_puts_random_real_with_the_same_soft_labels_beside_it(store, run):
    cfg = EvalConfig(students=1, epochs=1, batch=16, full=False, batched="off")
    rep = evaluation.evaluate(run.synset, store, cfg, seed=0, net_cfg=run.config.net, progress=False)
    assert [r.name for r in rep.rows] == ["compose (soft labels)", "compose (hard labels)",
                                          "random real", "random real (teacher soft labels)"]
    only = evaluation.evaluate(run.synset, store, cfg, seed=0, net_cfg=run.config.net,
                               progress=False, baselines="teacher")
    assert [r.name for r in only.rows] == ["compose (soft labels)", "compose (hard labels)",
                                           "random real (teacher soft labels)"]
    assert only.row("random real (teacher soft labels)").accs == \
        rep.row("random real (teacher soft labels)").accs  # the same draws and students
    with pytest.raises(ValueError, match="baselines='some'"):
        evaluation.evaluate(run.synset, store, cfg, progress=False, baselines="some")


def test_too_few_videos_and_bad_options_are_one_line_errors(store, tmp_path):
    with pytest.raises(ValueError, match=r"ipc 4 x segments 2 needs 8 different train videos") as e:
        vdfast.distill(store, method="compose", ipc=4, out=tmp_path / "x", progress=False, **SMALL)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x").exists()  # refused before any work: nothing left behind
    with pytest.raises(ValueError, match="must divide the clip's 4 frames"):
        vdfast.distill(store, method="compose", ipc=1, progress=False,
                       **{**SMALL, "compose.segments": 3})
    with pytest.raises(ConfigError, match="compose score"):
        vdfast.distill(store, method="compose", ipc=1, progress=False,
                       **{**SMALL, "compose.score": "entropy"})
    with pytest.raises(ConfigError, match="compose select"):
        vdfast.distill(store, method="compose", ipc=1, progress=False,
                       **{**SMALL, "compose.select": "random"})
    with pytest.raises(ConfigError, match="compose pool must be at least 1"):
        vdfast.distill(store, method="compose", ipc=1, progress=False,
                       **{**SMALL, "compose.pool": 0.5})
    with pytest.raises(ConfigError, match="init='herding'"):
        vdfast.distill(store, method="compose", ipc=1, progress=False, init="herding", **SMALL)


@pytest.mark.slow  # real multi-process runs (2 gloo ranks)
def test_two_ranks_give_the_one_rank_synset(tmp_path):
    pytest.importorskip("accelerate")
    from test_distributed import _launch

    args = ["--method", "compose", "--ipc", "2", "--net-width", "4", "--no-evaluate", "--no-preview",
            "--compose-teacher-epochs", "1"]
    _launch(tmp_path / "one", 1, args)
    out = _launch(tmp_path / "two", 2, args)
    assert "on 2 process(es)" in out
    one, two = vdfast.load(tmp_path / "one" / "synset"), vdfast.load(tmp_path / "two" / "synset")
    assert torch.equal(two.labels, one.labels)
    # the teacher trained data-parallel differs from the 1-rank one by float summation order only;
    # the choice of videos may then differ where two scores nearly tie, so compare most of them
    same = (two.pixels == one.pixels).flatten(1).all(1).float().mean()
    assert same > 0.8, same
    assert two.meta["compose"]["picked"].keys() == one.meta["compose"]["picked"].keys()


@pytest.mark.slow  # two child processes
def test_scale_benchmark_records_time_and_peak_memory_per_class_count(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import compose_scale

    out = compose_scale.main(["--classes", "3,6", "--per-class", "6", "--ipc", "2", "--width", "4",
                              "--work", str(tmp_path / "work"), "--json", str(tmp_path / "r.json")])
    saved = json.loads((tmp_path / "r.json").read_text())
    assert [r["classes"] for r in saved["rows"]] == [3, 6] and saved["teacher_epoch_s"] > 0
    for r in out["rows"]:
        assert r["wall_s"] > 0 and r["peak_rss_mb"] >= r["peak_anon_mb"] > 0 and r["train_clips"] == 6 * r["classes"]
    # the store is a real ClipStore the CLI can open
    store = ClipStore.open(tmp_path / "work" / "store-6c-6x8x32")
    assert store.num_classes == 6 and store.counts("train") == [6] * 6
