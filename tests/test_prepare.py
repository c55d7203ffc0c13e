"""prepare: real encoded videos in real layouts -> ClipStore, with skips reported and resume."""
import json
import os

import numpy as np
import pytest
import torch
from videos import decoded_index, make_hmdb51, make_kinetics, make_ucf101, nearest_class

import vdfast
import vdfast.data.store as store_mod
from vdfast.cli import main
from vdfast.data.store import ClipStore, StoreError


def _check_store(store: ClipStore, made, size):
    assert store.classes == made.classes
    assert sum(store.counts("train")) + sum(store.counts("test")) > 0
    for split in ("train", "test"):
        for c in range(store.num_classes):
            clips = store.clips(split, c)
            assert clips.dtype == np.uint8 and clips.shape[2:] == (size, size, 3)
            for clip in clips:  # the decoded content is the class's colour
                assert nearest_class(clip, len(made.classes)) == c


def test_prepare_ucf101_reports_bad_files(tmp_path):
    made = make_ucf101(tmp_path / "ucf", corrupt=1, empty=1, short=1, missing=1)
    store = vdfast.prepare(made.root, tmp_path / "store", frames=4, gap=2, size=16)
    _check_store(store, made, 16)
    meta = json.loads((tmp_path / "store" / "store.json").read_text())
    skipped = " ".join(p for p, _ in meta["skipped"])
    for bad in made.corrupt:
        assert bad in skipped
    assert len(meta["short"]) == len(made.short) >= 1
    assert any("missing" in why.lower() or "not found" in why.lower() or "exist" in why.lower()
               for _, why in meta["listing_problems"])
    assert meta["decode_frames_per_s"] > 0


@pytest.mark.parametrize("maker", [make_hmdb51, make_kinetics])
def test_prepare_other_layouts(tmp_path, maker):
    made = maker(tmp_path / "ds")
    store = vdfast.prepare(made.root, tmp_path / "store", frames=4, gap=1, size=16,
                           annotations=made.annotations)
    _check_store(store, made, 16)


def test_prepare_resumes_after_interruption(tmp_path, monkeypatch):
    made = make_ucf101(tmp_path / "ucf")
    real = store_mod._decode_one
    calls = {"n": 0, "die": True}

    def dying(args):
        calls["n"] += 1
        if calls["die"] and calls["n"] > 3:
            raise KeyboardInterrupt  # the user hits ^C part-way through
        return real(args)

    monkeypatch.setattr(store_mod, "_decode_one", dying)
    with pytest.raises(KeyboardInterrupt):
        vdfast.prepare(made.root, tmp_path / "store", frames=4, size=16)
    with pytest.raises(StoreError, match="incomplete"):
        ClipStore.open(tmp_path / "store")
    done = list((tmp_path / "store").rglob("*.npy"))
    assert done and not any(".tmp" in p.name for p in done)  # only finished classes are on disk
    videos_done = sum(len(json.loads(p.with_suffix(".json").read_text())["used"]) for p in done)

    calls.update(n=0, die=False)
    store = vdfast.prepare(made.root, tmp_path / "store", frames=4, size=16)
    total = len(made.train) + len(made.test)
    assert calls["n"] == total - videos_done  # finished classes are not decoded again
    _check_store(store, made, 16)
    # the same directory with other settings is refused rather than mixed
    with pytest.raises(StoreError, match="other settings"):
        vdfast.prepare(made.root, tmp_path / "store", frames=8, size=16)


def test_cli_prepare_then_distill(tmp_path, capsys):
    made = make_ucf101(tmp_path / "ucf", corrupt=1)
    assert main(["prepare", made.root, "--out", str(tmp_path / "s"), "--frames", "8",
                 "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "classes" in out
    assert main(["distill", "--data", str(tmp_path / "s"), "--method", "random", "--out",
                 str(tmp_path / "r"), "--net-width", "8", "--net-depth", "2", "--no-evaluate"]) == 0
    assert vdfast.load(tmp_path / "r" / "synset").classes == made.classes
    with pytest.raises(StoreError, match="not a prepared store"):
        vdfast.distill(made.root)


def test_a_run_on_a_prepared_store_repeats_from_its_config_json(tmp_path, capsys):
    """config.json records where the store is: ``--config`` alone finds it again; a store that is
    gone, or another store in its place, is a one-line error asking for --data."""
    made = make_ucf101(tmp_path / "ucf")
    vdfast.prepare(made.root, tmp_path / "s", frames=4, size=16)
    run = ["--method", "random", "--net-width", "4", "--net-depth", "1", "--no-evaluate",
           "--no-preview"]
    assert main(["distill", "--data", str(tmp_path / "s"), "--out", str(tmp_path / "a"), *run]) == 0
    cfg = tmp_path / "a" / "config.json"
    assert json.loads(cfg.read_text())["data"]["path"] == str((tmp_path / "s").resolve())
    assert main(["distill", "--config", str(cfg), "--out", str(tmp_path / "b"), "--no-evaluate",
                 "--no-preview"]) == 0
    a, b = (vdfast.load(tmp_path / r / "synset") for r in "ab")
    assert torch.equal(a.data, b.data) and b.classes == made.classes
    capsys.readouterr()
    (tmp_path / "s").rename(tmp_path / "moved")
    vdfast.prepare(made.root, tmp_path / "s", frames=4, size=8)  # another store in its place
    for expect in ("is not the one the run distilled", "holds no store now"):
        rc = main(["distill", "--config", str(cfg), "--out", str(tmp_path / "c"), "--no-evaluate"])
        err = capsys.readouterr().err
        assert rc == 2 and expect in err and "--data STORE" in err, err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "c").exists()
        if (tmp_path / "s").exists():
            (tmp_path / "s").rename(tmp_path / "other")  # then: nothing at the recorded path
    # --data beside --config: the moved store
    assert main(["distill", "--config", str(cfg), "--data", str(tmp_path / "moved"), "--out",
                 str(tmp_path / "d"), "--no-evaluate", "--no-preview"]) == 0


def test_prepare_stores_random_test_clips_per_video(tmp_path):
    """Each test video gives ``test_clips`` clips at seeded random positions (the evaluation
    protocol's 3 random clips per test video), train videos their centred clip; the same store on
    every preparation, with any number of workers, wherever the dataset lives."""
    import shutil

    from vdfast.data.decode import sample_indices, sample_windows

    made = make_ucf101(tmp_path / "ucf", frames=40, content="index")
    store = vdfast.prepare(made.root, tmp_path / "s", frames=4, gap=3, size=16)
    assert store.test_clips == 3 and store.meta["test_clips"] == 3
    n_test = 0
    for c in range(store.num_classes):
        used = json.loads((tmp_path / "s" / "test" / f"{c:04d}.json").read_text())["used"]
        clips = store.clips("test", c)
        assert clips.shape[0] == 3 * len(used) and used
        n_test += len(used)
        for v, path in enumerate(used):
            key = os.path.relpath(path, made.root).replace(os.sep, "/")
            windows = sample_windows(40, 4, 3, 3, key)[0]
            got = [[decoded_index(f) for f in clip] for clip in clips[3 * v:3 * v + 3]]
            assert got == windows
        train = store.clips("train", c)
        assert all([decoded_index(f) for f in clip] == sample_indices(40, 4, 3)[0] for clip in train)
    assert store.describe_test() == f"{n_test} videos x 3 clips"
    starts = {w[0] for c in range(store.num_classes) for clip in store.clips("test", c)
              for w in [[decoded_index(f) for f in clip]]}
    assert len(starts) > 1   # random positions, not the centre every time

    # the same dataset moved elsewhere and prepared with 2 workers: the same arrays
    moved = tmp_path / "moved"
    shutil.copytree(made.root, moved)
    again = vdfast.prepare(moved, tmp_path / "s2", frames=4, gap=3, size=16, workers=2)
    for split in ("train", "test"):
        for c in range(store.num_classes):
            assert np.array_equal(store.clips(split, c), again.clips(split, c))

    # one clip per test video: the centred clip
    one = vdfast.prepare(made.root, tmp_path / "s1", frames=4, gap=3, size=16, test_clips=1)
    assert one.test_clips == 1 and sum(one.counts("test")) == n_test
    assert one.describe_test() == f"{n_test} clips (1 per video)"
    with pytest.raises(StoreError, match="other settings"):   # resuming with another count
        vdfast.prepare(made.root, tmp_path / "s1", frames=4, gap=3, size=16, test_clips=3)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="test_clips"):
            vdfast.prepare(made.root, tmp_path / "bad", frames=4, size=16, test_clips=bad)


def test_store_with_uneven_test_clips_is_refused(tmp_path):
    made = make_ucf101(tmp_path / "ucf")
    vdfast.prepare(made.root, tmp_path / "s", frames=4, size=16, test_clips=2)
    arr = np.load(tmp_path / "s" / "test" / "0000.npy")
    np.save(tmp_path / "s" / "test" / "0000.npy", arr[:-1])   # one clip of a video lost
    with pytest.raises(StoreError, match="multiple"):
        ClipStore.open(tmp_path / "s")


def test_evaluation_table_names_the_test_clips(tmp_path, capsys):
    made = make_ucf101(tmp_path / "ucf")
    assert main(["prepare", made.root, "--out", str(tmp_path / "s"), "--frames", "4", "--size", "16",
                 "--test-clips", "2"]) == 0
    store = ClipStore.open(tmp_path / "s")
    assert store.test_clips == 2
    assert main(["distill", "--data", str(tmp_path / "s"), "--method", "random", "--out",
                 str(tmp_path / "r"), "--net-width", "4", "--net-depth", "1", "--eval-epochs", "1",
                 "--eval-students", "1", "--no-eval-baselines", "--no-eval-full"]) == 0
    out = capsys.readouterr().out
    n = sum(store.counts("test")) // 2
    assert f"Test split: {n} videos x 2 clips" in out
    assert f"Test split: {n} videos x 2 clips" in (tmp_path / "r" / "report.md").read_text()


def test_train_fingerprint_follows_the_train_clips(tmp_path):
    """What keys the caches derived from a store (static memories, GVD stages, expert buffers)."""
    import shutil

    from vdfast.methods.static import cache_dir

    made = make_ucf101(tmp_path / "ucf")
    a = vdfast.prepare(made.root, tmp_path / "a", frames=4, gap=2, size=16)
    moved = tmp_path / "moved"
    shutil.copytree(made.root, moved)
    link = tmp_path / "link"
    link.symlink_to(made.root)
    same = [vdfast.prepare(made.root, tmp_path / "b", frames=4, gap=2, size=16, test_clips=1),
            vdfast.prepare(moved, tmp_path / "c", frames=4, gap=2, size=16),
            vdfast.prepare(link, tmp_path / "e", frames=4, gap=2, size=16)]
    assert all(s.train_fingerprint() == a.train_fingerprint() for s in same)
    for c in range(a.num_classes):   # the same random test windows through the link
        assert np.array_equal(same[2].clips("test", c), a.clips("test", c))
    gap = vdfast.prepare(made.root, tmp_path / "a2" / "a", frames=4, gap=1, size=16)
    assert gap.describe() == a.describe()           # what the caches were keyed by before
    assert gap.train_fingerprint() != a.train_fingerprint()
    settings = {"spc": 1, "method": "dm"}
    assert cache_dir("cache", gap, settings) != cache_dir("cache", a, settings)
    assert cache_dir("cache", same[1], settings) == cache_dir("cache", a, settings)
    # in memory: the clips themselves; not the order the classes are listed in
    b0, b1 = ClipStore.builtin(), ClipStore.builtin(seed=1)
    assert b0.train_fingerprint() != b1.train_fingerprint()
    order = list(range(b0.num_classes))[::-1]
    flipped = ClipStore([b0.classes[i] for i in order], {s: [b0.arrays[s][i] for i in order]
                                                         for s in b0.arrays}, b0.frames, b0.size)
    assert flipped.train_fingerprint() == b0.train_fingerprint()


FORKED_AFTER_CONVERTING = """
import sys
import numpy as np
import av
import vdfast
from videos import make_ucf101, write_video
# this process converts frames itself first (PyAV >= 18 keeps a converter per thread, with
# swscale slice threads at this size), then forks decode workers
write_video(sys.argv[1] + "/big.mp4", np.zeros((2, 256, 256, 3), np.uint8))
with av.open(sys.argv[1] + "/big.mp4") as c:
    [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
made = make_ucf101(sys.argv[1] + "/ucf")
store = vdfast.prepare(made.root, sys.argv[1] + "/store", frames=4, gap=2, size=16, workers=2)
print("clips", sum(store.counts("train")))
"""


def test_workers_forked_after_the_parent_converted_frames_do_not_hang(tmp_path):
    """prepare --workers 2 in a process that converted frames before (the quality harness writes
    its videos, then prepares): the forked decoders do not wait on the parent's converter threads."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__),
                                                         os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", FORKED_AFTER_CONVERTING, str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "clips" in r.stdout, r.stdout + r.stderr
