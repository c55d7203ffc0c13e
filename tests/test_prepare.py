"""prepare: real encoded videos in real layouts -> ClipStore, with skips reported and resume."""
import json

import numpy as np
import pytest
from videos import make_hmdb51, make_kinetics, make_ucf101, nearest_class

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
    clips_done = sum(np.load(p, mmap_mode="r").shape[0] for p in done)

    calls.update(n=0, die=False)
    store = vdfast.prepare(made.root, tmp_path / "store", frames=4, size=16)
    total = len(made.train) + len(made.test)
    assert calls["n"] == total - clips_done  # finished classes are not decoded again
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
