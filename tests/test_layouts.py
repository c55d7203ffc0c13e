"""Dataset readers on small real datasets written in each layout (tests/videos.py)."""
import os
import random

import numpy as np
import pytest

from vdfast.data.decode import ClipSpec, DecodeError, decode_clip
from vdfast.data.layouts import LAYOUTS, MINIUCF_CLASSES, LayoutError, Listing, VideoItem, detect_layout, \
    list_videos
from videos import (make_frame_folders, make_hmdb51, make_kinetics, make_plain_folder, make_ssv2, make_ucf101,
                    nearest_class)

SPEC = ClipSpec(frames=4, gap=2, size=16)


def pairs(listing: Listing, split: str):
    return [(it.path, it.label) for it in listing.items if it.split == split]


def problem_text(listing: Listing) -> str:
    return "\n".join(f"{e} :: {r}" for e, r in listing.problems)


def check_matches(listing: Listing, made):
    assert listing.classes == made.classes
    assert pairs(listing, "train") == made.train
    assert pairs(listing, "test") == made.test
    assert all(os.path.isabs(it.path) for it in listing.items)
    assert all(it.label in listing.classes for it in listing.items)
    text = problem_text(listing)
    for name in made.problems:
        assert name in text, (name, text)


def test_contract_constants():
    assert LAYOUTS == ("ucf101", "miniucf", "hmdb51", "kinetics", "ssv2", "frames", "folder")
    assert len(MINIUCF_CLASSES) == 50 and len(set(MINIUCF_CLASSES)) == 50
    assert MINIUCF_CLASSES[0] == "ApplyEyeMakeup" and MINIUCF_CLASSES[-1] == "WritingOnBoard"
    assert list(MINIUCF_CLASSES) == sorted(MINIUCF_CLASSES, key=str.lower)
    assert issubclass(LayoutError, ValueError)


# --------------------------------------------------------------------------- UCF101

@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    root = tmp_path_factory.mktemp("ucf")
    return make_ucf101(root, missing=2, unknown_label=1, malformed=1, corrupt=1, empty=1, short=1)


def test_ucf101_split1(ucf):
    assert detect_layout(ucf.root) == "ucf101"
    lst = list_videos(ucf.root)
    assert lst.layout == "ucf101"
    check_matches(lst, ucf)
    # groups 1,2 test, 8,9 train + the bad-but-present train files
    assert len(pairs(lst, "test")) == 4 * 2
    assert len(pairs(lst, "train")) == 4 * 2 + 3
    text = problem_text(lst)
    assert "unknown label 'NoSuchClass'" in text and "malformed" in text and "missing file" in text
    assert sum("missing file" in r for _, r in lst.problems) == 2


def test_ucf101_decode_content(ucf):
    lst = list_videos(ucf.root)
    for it in lst.items:
        if it.path in ucf.corrupt:
            with pytest.raises(DecodeError):
                decode_clip(it, SPEC)
            continue
        clip, info = decode_clip(it, SPEC)
        assert clip.shape == (4, 16, 16, 3)
        assert lst.classes[nearest_class(clip, len(lst.classes))] == it.label
        assert info["short"] == (it.path in ucf.short)


@pytest.mark.parametrize("split", [2, 3])
def test_ucf101_other_splits(tmp_path, split):
    made = make_ucf101(tmp_path, classes=("Archery", "Basketball"), groups=(1, 8, 15), split=split)
    lst = list_videos(made.root, "ucf101", split=split)
    check_matches(lst, made)
    assert len(pairs(lst, "test")) == 2


def test_ucf101_root_variants(tmp_path):
    made = make_ucf101(tmp_path / "a", classes=("Archery", "Basketball"), groups=(1, 8))
    # root = UCF-101 itself, ucfTrainTestlist beside it
    vid = os.path.join(made.root, "UCF-101")
    assert detect_layout(vid) == "ucf101"
    check_matches(list_videos(vid), made)
    # splits somewhere else, given as annotations
    made = make_ucf101(tmp_path / "b", classes=("Archery", "Basketball"), groups=(1, 8), splits_dir="separate")
    check_matches(list_videos(made.root, annotations=made.annotations), made)
    check_matches(list_videos(made.root, "ucf101", annotations=os.path.join(made.annotations, "classInd.txt")), made)


def test_ucf101_case_mismatch_in_lists(tmp_path):
    """UCF101's lists spell HandStandPushups where the files say HandstandPushups."""
    made = make_ucf101(tmp_path, classes=("HandstandPushups",), groups=(1, 8))
    tl = os.path.join(made.root, "ucfTrainTestlist", "trainlist01.txt")
    txt = open(tl).read().replace("v_HandstandPushups", "v_HandStandPushups")
    open(tl, "w").write(txt)
    lst = list_videos(made.root)
    check_matches(lst, made)
    assert lst.problems == []


def test_ucf101_missing_split_files(tmp_path):
    made = make_ucf101(tmp_path, classes=("Archery",), groups=(1, 8), splits_dir="none")
    assert detect_layout(made.root) == "ucf101"   # UCF-101/ is there: the split lists are what is missing
    with pytest.raises(LayoutError, match="ucfTrainTestlist"):
        list_videos(made.root)
    made = make_ucf101(tmp_path / "b", classes=("Archery",), groups=(1, 8))
    os.remove(os.path.join(made.root, "ucfTrainTestlist", "testlist02.txt"))
    list_videos(made.root, split=1)
    with pytest.raises(LayoutError, match="testlist02.txt"):
        list_videos(made.root, split=2)
    with pytest.raises(LayoutError, match="split"):
        list_videos(made.root, split=4)


def test_miniucf(tmp_path):
    present = ("ApplyEyeMakeup", "Archery", "Basketball", "Bowling")     # Archery is not in MiniUCF
    class_ind = sorted(set(MINIUCF_CLASSES) | {"Archery", "YoYo"}, key=str.lower)
    made = make_ucf101(tmp_path, classes=present, groups=(1, 8), all_class_ind=class_ind, missing=1)
    full = list_videos(made.root, "ucf101")
    assert full.classes == class_ind
    lst = list_videos(made.root, "miniucf")
    assert lst.layout == "miniucf"
    assert lst.classes == list(MINIUCF_CLASSES)
    assert {it.label for it in lst.items} == {"ApplyEyeMakeup", "Basketball", "Bowling"}
    assert len(lst.items) == 6
    text = problem_text(lst)
    assert "v_ApplyEyeMakeup_g20_c01.avi" in text
    assert "empty class" in text and "Archery" not in text and "YoYo" not in text
    sub = list_videos(made.root, "miniucf", classes=["Bowling", "Basketball"])
    assert sub.classes == ["Basketball", "Bowling"]
    assert {it.label for it in sub.items} == {"Basketball", "Bowling"}
    with pytest.raises(LayoutError, match="Valid names"):
        list_videos(made.root, "miniucf", classes=["Archery"])   # in UCF101, not in MiniUCF
    with pytest.raises(LayoutError, match="Basketball"):
        list_videos(made.root, classes=["Basketbal"])


# --------------------------------------------------------------------------- HMDB51

def test_hmdb51_inside(tmp_path):
    made = make_hmdb51(tmp_path, missing=1, malformed=1, corrupt=1)
    assert detect_layout(made.root) == "hmdb51"
    lst = list_videos(made.root)
    check_matches(lst, made)
    assert lst.classes == ["brush_hair", "cartwheel", "catch"]
    assert len(pairs(lst, "train")) == 3 * 2 + 1 and len(pairs(lst, "test")) == 3
    assert "garbage0" in problem_text(lst) and "brush_hair/brush_hair_missing_0.avi" in problem_text(lst)
    for it in lst.items:
        if it.path in made.corrupt:
            continue
        clip, _ = decode_clip(it, SPEC)
        assert nearest_class(clip, 3) == ("brush_hair", "cartwheel", "catch").index(it.label)


def test_hmdb51_splits_beside_and_separate(tmp_path):
    made = make_hmdb51(tmp_path / "a", classes=("wave", "climb"), splits_dir="beside", split=2)
    assert detect_layout(made.root) == "hmdb51"
    check_matches(list_videos(made.root, split=2), made)
    made1 = make_hmdb51(tmp_path / "b", classes=("wave", "climb"), splits_dir="separate")
    check_matches(list_videos(made1.root, "hmdb51", annotations=made1.annotations), made1)
    assert list_videos(made1.root, annotations=made1.annotations).layout == "hmdb51"


def test_hmdb51_missing_splits(tmp_path):
    made = make_hmdb51(tmp_path, classes=("wave", "climb"), splits_dir="none")
    with pytest.raises(LayoutError, match="--annotations DIR"):
        list_videos(made.root, "hmdb51")
    # without its split files it is just a folder of class folders
    assert detect_layout(made.root) == "folder"


# --------------------------------------------------------------------------- Kinetics

@pytest.mark.parametrize("flat", [False, True])
def test_kinetics(tmp_path, flat):
    made = make_kinetics(tmp_path, flat=flat, missing=2, corrupt=1, unknown_label=1, is_cc=flat)
    assert detect_layout(made.root) == "kinetics"
    lst = list_videos(made.root)
    check_matches(lst, made)
    assert lst.classes == ["abseiling", "air drumming", "archery"]
    assert sum("missing file" in r for _, r in lst.problems) == 4    # 2 per split
    assert "unknown label 'no such label'" in problem_text(lst)
    for it in lst.items:
        if it.path in made.corrupt:
            with pytest.raises(DecodeError):
                decode_clip(it, SPEC)
        else:
            clip, _ = decode_clip(it, SPEC)
            assert lst.classes[nearest_class(clip, 3)] == it.label


def test_kinetics_variants(tmp_path):
    made = make_kinetics(tmp_path / "a", val_name="val", val_dir="validate", ext=".mkv", underscore_dirs=True)
    check_matches(list_videos(made.root), made)
    made = make_kinetics(tmp_path / "b", annotations_subdir=True, val_dir="val_256", codec="libvpx-vp9",
                         ext=".webm")
    assert detect_layout(made.root) == "kinetics"
    check_matches(list_videos(made.root), made)


def test_kinetics_missing_annotations(tmp_path):
    made = make_kinetics(tmp_path, classes=("archery",))
    for n in ("train.csv", "validate.csv", "test.csv"):
        os.remove(os.path.join(made.root, n))
    with pytest.raises(LayoutError, match="train.csv"):
        list_videos(made.root, "kinetics")


# --------------------------------------------------------------------------- Something-Something V2

def test_ssv2(tmp_path):
    made = make_ssv2(tmp_path, missing=1, unknown_label=1)
    assert detect_layout(made.root) == "ssv2"
    lst = list_videos(made.root)
    check_matches(lst, made)
    # labels.json index order, brackets removed
    assert lst.classes[:3] == ["Putting something into something", "Pushing something from right to left",
                               "Pushing something from left to right"]
    assert "Juggling [something] backwards" in problem_text(lst)
    for it in lst.items:
        clip, _ = decode_clip(it, SPEC)
        assert lst.classes[nearest_class(clip, len(lst.classes))] == it.label


def test_ssv2_labels_subdir(tmp_path):
    made = make_ssv2(tmp_path, labels_subdir=True, train=1, val=1)
    assert detect_layout(made.root) == "ssv2"
    check_matches(list_videos(made.root), made)


# --------------------------------------------------------------------------- frame folders

@pytest.mark.parametrize("annotation", ["csv", "json"])
def test_frames(tmp_path, annotation):
    made = make_frame_folders(tmp_path, annotation=annotation, missing=1, empty_folder=1, malformed=1)
    assert detect_layout(made.root) == "frames"
    lst = list_videos(made.root)
    check_matches(lst, made)
    assert all(it.kind == "frames" for it in lst.items)
    for it in lst.items:
        clip, info = decode_clip(it, SPEC)
        assert info["num_frames"] == 12
        assert lst.classes[nearest_class(clip, 3)] == it.label


def test_frames_annotation_elsewhere(tmp_path):
    made = make_frame_folders(tmp_path / "d", train=1, test=1)
    ann = tmp_path / "ann"
    ann.mkdir()
    os.rename(os.path.join(made.root, "annotations.csv"), ann / "labels.csv")
    with pytest.raises(LayoutError):
        list_videos(made.root, "frames")
    check_matches(list_videos(made.root, "frames", annotations=str(ann / "labels.csv")), made)
    check_matches(list_videos(made.root, annotations=str(ann)), made)


# --------------------------------------------------------------------------- plain folder

@pytest.mark.parametrize("names", [("train", "test"), ("train", "val")])
def test_folder_with_split_dirs(tmp_path, names):
    made = make_plain_folder(tmp_path, per_class=2, test_per_class=1, with_split_dirs=True, split_names=names,
                             empty_class=True, codec="h264")
    assert detect_layout(made.root) == "folder"
    lst = list_videos(made.root)
    assert lst.classes == ["birds", "cats", "dogs", "empty_cls"]
    assert sorted(pairs(lst, "train")) == sorted(made.train)
    assert sorted(pairs(lst, "test")) == sorted(made.test)
    assert "empty_cls" in problem_text(lst)


def test_folder_held_out_fraction(tmp_path):
    made = make_plain_folder(tmp_path, per_class=5, empty_class=True, corrupt=1)
    assert detect_layout(made.root) == "folder"
    state = random.getstate()
    np_state = np.random.get_state()[1].copy()
    a = list_videos(made.root, test_fraction=0.4, seed=3)
    assert random.getstate() == state and (np.random.get_state()[1] == np_state).all()
    b = list_videos(made.root, test_fraction=0.4, seed=3)
    assert a.items == b.items                      # deterministic
    assert a.classes == ["birds", "cats", "dogs"]  # empty_cls reported, not a class
    assert "empty_cls" in problem_text(a)
    assert sorted((it.path, it.label) for it in a.items) == sorted(made.train)
    counts = {c: sum(it.split == "test" and it.label == c for it in a.items) for c in a.classes}
    assert counts == {"birds": 2, "cats": 2, "dogs": 2}   # round(5 * 0.4); cats has a 6th (corrupt) file
    tests_by_seed = {s: {it.path for it in list_videos(made.root, seed=s).items if it.split == "test"}
                     for s in range(4)}
    assert len({frozenset(v) for v in tests_by_seed.values()}) > 1   # the seed matters
    none = list_videos(made.root, test_fraction=0.0)
    assert all(it.split == "train" for it in none.items)
    # train items come first, then test
    splits = [it.split for it in a.items]
    assert splits == sorted(splits, key=lambda s: s != "train")
    with pytest.raises(LayoutError):
        list_videos(made.root, test_fraction=1.0)


def test_folder_restrict_classes(tmp_path):
    made = make_plain_folder(tmp_path, per_class=2)
    lst = list_videos(made.root, classes=["dogs", "birds"])
    assert lst.classes == ["birds", "dogs"]
    assert {it.label for it in lst.items} == {"birds", "dogs"}
    with pytest.raises(LayoutError, match="cats"):
        list_videos(made.root, classes=["horses"])


# --------------------------------------------------------------------------- errors

def test_nonexistent_path(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        list_videos(tmp_path / "nope")
    with pytest.raises(LayoutError, match="does not exist"):
        detect_layout(str(tmp_path / "nope"))


def test_unrecognisable_folder(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hello")
    (tmp_path / "readme.md").write_text("hi")
    with pytest.raises(LayoutError, match="--layout"):
        detect_layout(tmp_path)
    with pytest.raises(LayoutError, match="cannot tell"):
        list_videos(tmp_path)
    f = tmp_path / "file.avi"
    f.write_bytes(b"x")
    with pytest.raises(LayoutError, match="is a file"):
        list_videos(f)


def test_unknown_layout_name(tmp_path):
    with pytest.raises(LayoutError, match="unknown layout"):
        list_videos(tmp_path, layout="imagenet")


def test_explicit_layout_without_its_files(tmp_path):
    (tmp_path / "x").mkdir()
    for layout in ("ucf101", "hmdb51", "kinetics", "ssv2", "frames", "folder"):
        with pytest.raises(LayoutError):
            list_videos(tmp_path, layout)


def test_video_item_is_frozen():
    it = VideoItem("/a.avi", "x", "train")
    assert it.kind == "video"
    with pytest.raises(Exception):
        it.label = "y"


def test_registry_one_module_per_layout(tmp_path):
    """Every layout is a registry entry in its own module; detection and the error listing what it
    looked for come from the entries (the message is what the single-module reader said)."""
    import importlib

    from vdfast.data.layouts import REGISTRY

    assert tuple(REGISTRY) == LAYOUTS
    for name, lay in REGISTRY.items():
        module = importlib.import_module(lay.read.__module__)
        assert module.__name__ == "vdfast.data.layouts." + ("ucf101" if name == "miniucf" else name)
        assert (lay.looks is None) == (name == "miniucf") and (lay.hint == "") == (name == "miniucf")
    (tmp_path / "stuff").mkdir()
    with pytest.raises(LayoutError) as e:
        detect_layout(tmp_path)
    msg = str(e.value)
    assert ("Looked for: UCF-101/ or ucfTrainTestlist/classInd.txt (ucf101); something-something-v2-labels"
            ".json (ssv2); train.csv/validate.csv with youtube_id (kinetics); testTrainMulti_7030_splits/"
            "<class>_test_split1.txt (hmdb51); <video_id>/<frame>.jpg with a video_id,label,split CSV/JSON "
            "(frames); <class>/<video> or train|test/<class>/<video> files (folder). Pass --layout one of "
            "ucf101, miniucf, hmdb51, kinetics, ssv2, frames, folder (and --annotations DIR where "
            "it has annotation files)") in msg


# --------------------------------------------------------------------------- hostile split lists

def test_ucf101_lists_with_duplicates_overlap_and_bom(tmp_path):
    """A line listed twice is used once; a video in both lists is kept in test only; a UTF-8 BOM
    at the start of classInd.txt is dropped (class 1 kept, no label shifted). Each is reported."""
    made = make_ucf101(tmp_path, groups=(1, 8))
    sd = os.path.join(made.root, "ucfTrainTestlist")
    ci = os.path.join(sd, "classInd.txt")
    with open(ci, "rb") as f:
        body = f.read()
    with open(ci, "wb") as f:
        f.write(b"\xef\xbb\xbf" + body)
    c0, c1 = made.classes[0], made.classes[1]
    dup = f"{c0}/v_{c0}_g08_c01.avi 1\r\n"
    both = f"{c1}/v_{c1}_g01_c01.avi 2\r\n"   # a test video (group 1) also in the train list
    with open(os.path.join(sd, "trainlist01.txt"), "a") as f:
        f.write(dup + dup + both)
    lst = list_videos(made.root)
    assert lst.classes == made.classes
    check_matches(lst, made)
    assert len({(it.path, it.split) for it in lst.items}) == len(lst.items)
    text = problem_text(lst)
    assert f"UCF-101/{c0}/v_{c0}_g08_c01.avi :: listed 3 times in the train list: used once" in text
    assert f"UCF-101/{c1}/v_{c1}_g01_c01.avi :: in both the train and the test list: kept in test" in text


def test_annotation_files_with_bom(tmp_path):
    """Kinetics' CSVs and SSv2's JSON files with a UTF-8 BOM read as without one."""
    for maker, names in ((make_kinetics, ("train.csv", "validate.csv")),
                         (make_ssv2, ("something-something-v2-labels.json",
                                      "something-something-v2-train.json",
                                      "something-something-v2-validation.json"))):
        made = maker(tmp_path / maker.__name__)
        for dirpath, _, files in os.walk(made.root):
            for n in files:
                if n in names:
                    p = os.path.join(dirpath, n)
                    with open(p, "rb") as f:
                        body = f.read()
                    with open(p, "wb") as f:
                        f.write(b"\xef\xbb\xbf" + body)
        check_matches(list_videos(made.root, annotations=made.annotations), made)


def test_listed_video_that_is_no_file_says_what_it_is(tmp_path):
    """A listed video that is a folder, a dangling symbolic link or inside an unreadable folder is
    reported as that, not as a missing file."""
    made = make_ucf101(tmp_path, groups=(1, 8))
    vd = os.path.join(made.root, "UCF-101")
    c0, c1, c2 = made.classes[:3]
    as_dir = os.path.join(vd, c0, f"v_{c0}_g08_c01.avi")
    os.remove(as_dir)
    os.mkdir(as_dir)
    link = os.path.join(vd, c1, f"v_{c1}_g08_c01.avi")
    os.remove(link)
    os.symlink(os.path.join(tmp_path, "gone.avi"), link)
    text = problem_text(list_videos(made.root))
    assert f"{c0}/v_{c0}_g08_c01.avi :: a folder, not a video file (listed in trainlist01.txt" in text
    assert f"{c1}/v_{c1}_g08_c01.avi :: dangling symbolic link (to {tmp_path}/gone.avi)" in text
    if os.geteuid() == 0:
        return  # root reads every folder: the unreadable case cannot be made here
    locked = os.path.join(vd, c2)
    os.chmod(locked, 0)
    try:
        text = problem_text(list_videos(made.root))
    finally:
        os.chmod(locked, 0o755)
    assert f"its folder {locked} cannot be read (permission denied)" in text
