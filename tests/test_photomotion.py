"""The PhotoMotion benchmark dataset (benchmarks/photomotion.py) and the quality harness
(benchmarks/quality.py): real videos in the UCF101 layout, read through ``vdfast prepare``; the
harness's rows, resume and outputs."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("skimage", reason="the bench extra (scikit-image) is part of make test's install")
pytest.importorskip("skvideo", reason="the bench extra (scikit-video) is part of make test's install")

import photomotion as pm  # noqa: E402  (benchmarks/ is on sys.path: conftest)
import quality  # noqa: E402

import vdfast  # noqa: E402


def test_classes_have_the_documented_groups():
    names = pm.class_names()
    assert len(names) >= 20 and len(set(names)) == len(names)
    assert len(pm.MOTION_ONLY) * 4 >= len(names)  # at least a quarter differ only by motion
    for obj in pm.MOTION_ONLY_OBJECTS:  # each motion-only group: one object, four motions
        assert sum(n.startswith(obj) for n in pm.MOTION_ONLY) == len(pm.MOTION_ONLY_MOTIONS)


@pytest.mark.parametrize("a,b,coord", [("SlideLeft", "SlideRight", "x"),
                                       ("SpinClockwise", "SpinCounter", "angle")])
def test_motion_only_pairs_differ_in_direction_not_in_a_still_frame(a, b, coord):
    def draws(motion):
        paths = [pm.motion_path(motion, np.random.default_rng([7, i])) for i in range(400)]
        vals = np.stack([getattr(p, coord) for p in paths])
        return vals, np.diff(vals, axis=1).mean(1)

    va, da = draws(a)
    vb, db = draws(b)
    if coord == "x":  # a wrap-around jumps back once: the median step shows the direction
        da, db = np.median(np.diff(va, axis=1), 1), np.median(np.diff(vb, axis=1), 1)
    assert (np.sign(da) == np.sign(da[0])).all() and (np.sign(db) == -np.sign(da[0])).all()
    if coord == "x":  # the position of a frame has the same distribution in both directions
        for t in (0, pm.FRAMES // 2, pm.FRAMES - 1):
            assert abs(va[:, t].mean() - vb[:, t].mean()) < 8.0  # uniform over 170 px: s.e. ~2.5
            assert abs(va[:, t].std() - vb[:, t].std()) < 6.0
    else:  # the angle of a frame is uniform on the circle in both
        for v in (va, vb):
            ang = np.deg2rad(v[:, pm.FRAMES // 2])
            assert abs(np.cos(ang).mean()) < 0.12 and abs(np.sin(ang).mean()) < 0.12


def test_written_in_the_ucf101_layout_and_read_by_prepare(tmp_path):
    root = tmp_path / "pm"
    d = pm.generate(str(root), classes=5, train=3, test=2, val=1, frames=24, workers=0, progress=False)
    assert d["videos"] == 5 * 5
    lists = root / "ucfTrainTestlist"
    assert (lists / "classInd.txt").read_text().splitlines()[0] == "1 CatSlideLeft"
    train1 = (lists / "trainlist01.txt").read_text().splitlines()
    test1 = (lists / "testlist01.txt").read_text().splitlines()
    train2 = (lists / "trainlist02.txt").read_text().splitlines()
    val = (lists / "testlist02.txt").read_text().splitlines()
    assert len(train1) == 15 and len(test1) == 10 and len(train2) == 10 and len(val) == 5
    assert {x.split()[0] for x in train2} | set(val) == {x.split()[0] for x in train1}
    assert not {x.split()[0] for x in train1} & set(test1)  # the test videos are never in train

    with pytest.raises(SystemExit, match="not empty"):  # it refuses a non-empty folder
        pm.generate(str(root), classes=2, train=2, test=1, val=1, progress=False)

    store = vdfast.prepare(str(root), str(tmp_path / "store"), frames=4, gap=4, size=16, test_clips=1,
                           progress=False)
    assert list(store.classes) == pm.class_names()[:5]
    x, y = store.tensors("train", "cpu")
    assert x.shape == (15, 4, 16, 16, 3) and sorted(y.tolist()) == sorted(list(range(5)) * 3)
    assert x.float().std() > 10  # real content, not a blank frame
    val_store = vdfast.prepare(str(root), str(tmp_path / "val"), split=2, frames=4, gap=4, size=16,
                               test_clips=1, progress=False)
    assert val_store.tensors("train", "cpu")[0].shape[0] == 10
    assert val_store.tensors("test", "cpu")[0].shape[0] == 5


def test_the_same_seed_writes_the_same_videos(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for r in (a, b):
        pm.generate(str(r), seed=3, classes=2, train=2, test=1, val=1, frames=12, progress=False)
    f = pm.video_name(1, 2)
    assert (a / "UCF-101" / f).read_bytes() == (b / "UCF-101" / f).read_bytes()
    r0 = pm.render(0, np.random.default_rng([3, 0, 1]), 6)
    r1 = pm.render(0, np.random.default_rng([4, 0, 1]), 6)
    assert r0.shape == (6, pm.H, pm.W, 3) and not np.array_equal(r0, r1)


def test_quality_harness_writes_rows_and_resumes(tmp_path):
    args = ["--methods", "random,herding", "--ipcs", "1", "--seeds", "0", "--students", "2",
            "--dataset", str(tmp_path / "pm"), "--stores", str(tmp_path / "stores"),
            "--workdir", str(tmp_path / "runs"), "--json", str(tmp_path / "q.json"),
            "--doc", str(tmp_path / "q.md"), "--frames", "4", "--size", "16",
            "--set", "eval.epochs=3", "--set", "eval.full_epochs=1", "--device", "cpu"]
    pm.generate(str(tmp_path / "pm"), classes=3, train=4, test=2, val=1, frames=24, progress=False)
    rows = quality.main(args)
    got = {(r["method"], r["ipc"], r["student"]) for r in rows}
    assert got == {("full train set", None, 0), ("random", 1, 0), ("random", 1, 1), ("herding", 1, 0),
                   ("herding", 1, 1)}
    for r in rows:
        assert 0 <= r["accuracy"] <= 100 and r["git_sha"] and r["data"].startswith("photomotion")
    saved = json.loads((tmp_path / "q.json").read_text())
    assert saved["rows"] == rows and saved["split"] == "test"
    doc = (tmp_path / "q.md").read_text()
    assert "| herding |" in doc and "| random |" in doc and os.path.exists(tmp_path / "q.png")
    # each student's accuracy per class (the 3 classes written, all motion-only), whose mean is
    # its accuracy (every class has the same test clips); the document's motion-only table
    names = pm.class_names()[:3]
    for r in rows:
        assert sorted(r["per_class"]) == sorted(names)
        assert all(0 <= a <= 100 for a in r["per_class"].values())
        assert r["accuracy"] == pytest.approx(np.mean(list(r["per_class"].values())), abs=0.02)
    assert "motion-only classes (%)" in doc
    assert "| random | 1 |" in doc and "| full train set | all |" in doc

    # a torn last line (a kill while appending) is ignored; the job it held runs again
    jl = tmp_path / "runs" / "rows.jsonl"
    lines = jl.read_text().splitlines()
    assert len(lines) == 3
    jl.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    assert set(quality.done_rows(str(jl))) == {"full", "random-ipc1-seed0"}
    again = quality.main(args)

    def key(rs):
        return sorted(json.dumps({k: v for k, v in r.items() if not k.endswith("_s")}) for r in rs)
    assert key(again) == key(rows)  # herding's rerun gives the same accuracies
    assert len(quality.done_rows(str(jl))) == 3

    # --report on rows written before per-class accuracies: the table, no motion-only table
    old = quality.done_rows(str(jl))
    for rs in old.values():
        for r in rs:
            del r["per_class"]
    jl.write_text("".join(json.dumps({"job": k, "rows": rs}) + "\n" for k, rs in old.items()))
    assert all("per_class" not in r for r in quality.main(args + ["--report"]))
    doc = (tmp_path / "q.md").read_text()
    assert "| herding |" in doc and "motion-only classes (%)" not in doc


def test_quality_harness_puts_random_real_with_composes_teacher_beside_it(tmp_path):
    args = ["--methods", "compose", "--ipcs", "1", "--seeds", "0", "--students", "2",
            "--dataset", str(tmp_path / "pm"), "--stores", str(tmp_path / "stores"),
            "--workdir", str(tmp_path / "runs"), "--json", str(tmp_path / "q.json"),
            "--doc", str(tmp_path / "q.md"), "--frames", "4", "--size", "16",
            "--set", "eval.epochs=3", "--set", "eval.full_epochs=1", "--set",
            "compose:compose.teacher_epochs=2", "--device", "cpu"]
    pm.generate(str(tmp_path / "pm"), classes=3, train=4, test=2, val=1, frames=24, progress=False)
    rows = quality.main(args)
    by = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)
    same = quality.SAME_TEACHER.format("compose")
    assert sorted(by) == sorted(["full train set", "compose", same])
    assert len(by["compose"]) == len(by[same]) == 2
    assert all("accuracy_hard_labels" in r for r in by["compose"])
    assert all(r["distill_s"] == 0.0 for r in by[same])  # its cost is the evaluation's only
    doc = (tmp_path / "q.md").read_text()
    assert f"| {same} |" in doc and "| compose |" in doc
    assert "--methods compose " in quality.command(rows, "test")  # the pseudo-method is no flag


def test_motion_only_table_of_per_class_rows():
    """Per student the mean of its motion-only and of its other class accuracies, then mean ± std
    over the students of every seed, per method and ipc; rows without per_class left out."""
    def row(method, ipc, seed, pc):
        return {"method": method, "ipc": ipc, "seed": seed, "accuracy": 0.0, "per_class": pc}

    rows = [row("dm", 1, 0, {"A": 100.0, "B": 50.0, "X": 10.0}),
            row("dm", 1, 1, {"A": 0.0, "B": 50.0, "X": 30.0}),
            row("random", 1, 0, {"A": 20.0, "B": 40.0, "X": 60.0}),
            {"method": "random", "ipc": 1, "seed": 1, "accuracy": 99.0},   # an old row: skipped
            row("dm", 5, 0, {"A": 80.0, "B": 80.0}),                       # no other class
            row("full train set", None, 0, {"A": 90.0, "B": 70.0, "X": 50.0})]
    s = quality.motion_split(rows, ("A", "B"))
    assert s[("dm", 1)]["motion"] == {"mean": 50.0, "std": 25.0, "n": 2}
    assert s[("dm", 1)]["other"] == {"mean": 20.0, "std": 10.0, "n": 2}
    assert s[("random", 1)]["motion"]["n"] == 1 and s[("random", 1)]["motion"]["mean"] == 30.0
    assert s[("dm", 5)]["other"] is None and s[("dm", 1)]["classes"] == (2, 1)
    t = quality.motion_table(rows, ("A", "B")).splitlines()
    assert t[2:] == ["| dm | 1 | 50.0 ± 25.0 | 20.0 ± 10.0 | 2 |",
                     "| dm | 5 | 80.0 ± 0.0 | – | 1 |",
                     "| random | 1 | 30.0 ± 0.0 | 60.0 ± 0.0 | 1 |",
                     "| full train set | all | 80.0 ± 0.0 | 50.0 ± 0.0 | 1 |"]
    assert quality.motion_table([r for r in rows if "per_class" not in r]) is None
    default = quality.motion_split(rows)  # photomotion.MOTION_ONLY: none of A, B, X
    assert default[("dm", 1)]["motion"] is None and default[("dm", 1)]["other"]["n"] == 2
