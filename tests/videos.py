"""Helpers that WRITE small real videos (PyAV) in each dataset's real on-disk layout.

Other test modules import these (``from videos import make_ucf101, ...``; pytest puts ``tests/`` on
``sys.path`` because it has no ``__init__.py``).  Every video is tiny (64x48 px by default, 12-40
frames) and its content encodes what a test needs to check:

* ``content="color"``: every frame is the solid colour ``class_color(class_index)``, so a decoded clip
  tells which class it came from (``nearest_class``).
* ``content="index"``: frame ``i`` is a solid grey of value ``index_value(i)`` (4 + 6*i), so a decoded
  clip tells which frame indices were sampled (``decoded_index``).

Each ``make_*`` returns a :class:`Made` record saying what was written: the root to pass to
``list_videos``, the class list in the layout's documented order, the expected train/test items as
``(abs_path, label)`` and the names of the bad entries that the listing must report as problems.
Bad input on request: corrupt files (random bytes with a video name), zero-length files, too-short
videos, annotation lines naming missing files, unknown labels and malformed lines.
"""
from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Sequence

import av
import numpy as np

W, H = 64, 48

# distinct, saturated-enough colours that survive YUV 4:2:0 and a lossy codec
PALETTE = [
    (220, 40, 40), (40, 200, 60), (40, 70, 220), (230, 210, 40), (200, 50, 200), (40, 200, 210),
    (240, 140, 30), (120, 120, 120), (250, 250, 250), (20, 20, 20), (130, 60, 20), (100, 160, 240),
]

CODEC_EXT = {"mpeg4": ".avi", "h264": ".mp4", "libx264": ".mp4", "libvpx-vp9": ".webm", "mjpeg": ".avi"}


def class_color(i: int) -> tuple[int, int, int]:
    if i < len(PALETTE):
        return PALETTE[i]
    r = random.Random(i)
    return (r.randrange(20, 236), r.randrange(20, 236), r.randrange(20, 236))


def index_value(i: int) -> int:
    """Grey value of frame ``i`` in an index video (distinct and < 256 for i < 42)."""
    return 4 + 6 * i


def decoded_index(frame: np.ndarray) -> int:
    """Frame index encoded in a decoded index-video frame (inverse of ``index_value``)."""
    return int(round((float(np.asarray(frame, dtype=np.float64).mean()) - 4.0) / 6.0))


def nearest_class(clip: np.ndarray, n_classes: int) -> int:
    mean = np.asarray(clip, dtype=np.float64).reshape(-1, 3).mean(0)
    d = [np.abs(mean - np.array(class_color(i))).sum() for i in range(n_classes)]
    return int(np.argmin(d))


def color_frames(color, n: int, h: int = H, w: int = W) -> np.ndarray:
    out = np.empty((n, h, w, 3), np.uint8)
    out[:] = np.array(color, np.uint8)
    return out


def index_frames(n: int, h: int = H, w: int = W) -> np.ndarray:
    assert n <= 42, "index videos hold at most 42 distinct frames"
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i] = index_value(i)
    return out


def write_video(path, frames, codec: str = "mpeg4", fps: int = 25) -> str:
    """Encode ``frames`` (uint8 [T, H, W, 3] RGB, H and W even) to ``path`` with PyAV."""
    frames = np.asarray(frames, dtype=np.uint8)
    assert frames.ndim == 4 and frames.shape[-1] == 3, frames.shape
    t, h, w, _ = frames.shape
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, mode="w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec in ("mpeg4", "mjpeg"):   # constant quantiser 2 (ffmpeg's -q:v 2); 118 = FF_QP2LAMBDA
            stream.options = {"flags": "+qscale", "global_quality": str(2 * 118)}
        elif codec in ("h264", "libx264"):
            stream.options = {"crf": "12", "preset": "ultrafast"}
        elif codec == "libvpx-vp9":
            stream.options = {"crf": "12", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        for arr in frames:
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_color_video(path, color, n: int = 16, codec: str = "mpeg4", h: int = H, w: int = W) -> str:
    return write_video(path, color_frames(color, n, h, w), codec)


def write_index_video(path, n: int = 24, codec: str = "mpeg4", h: int = H, w: int = W) -> str:
    return write_video(path, index_frames(n, h, w), codec)


def write_corrupt(path, nbytes: int = 4096, seed: int = 0) -> str:
    """Random bytes under a video file name."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(random.Random(seed).randbytes(nbytes))
    return path


def write_empty(path) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    open(path, "wb").close()
    return path


def write_frame_folder(folder, frames, pattern: str = "{i}.jpg", start: int = 1, quality: int = 95) -> str:
    """Write frames as JPEG/PNG images named ``pattern.format(i=start+k)`` (``1.jpg`` .. by default,
    so lexical order differs from natural order once there are 10 or more)."""
    from PIL import Image

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    for k, arr in enumerate(np.asarray(frames, np.uint8)):
        name = pattern.format(i=start + k)
        kw = {"quality": quality} if name.lower().endswith((".jpg", ".jpeg")) else {}
        Image.fromarray(arr).save(os.path.join(folder, name), **kw)
    return folder


@dataclass
class Made:
    root: str                                   # pass this to list_videos / detect_layout
    layout: str
    classes: list[str]                          # the expected Listing.classes
    train: list[tuple[str, str]] = field(default_factory=list)   # (abs path, label), listing order
    test: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # substrings that must appear in problems entries
    corrupt: list[str] = field(default_factory=list)    # listed paths that must fail to decode
    short: list[str] = field(default_factory=list)      # listed paths with only 2 frames
    annotations: str | None = None                      # annotation dir/file when not found by itself

    @property
    def items(self):
        return self.train + self.test


def _content(content, ci, n, codec):
    if content == "index":
        return index_frames(n)
    return color_frames(class_color(ci), n)


def _bad_video(path, kind, short_frames=2, codec="mpeg4", color=(128, 128, 128)):
    if kind == "corrupt":
        return write_corrupt(path)
    if kind == "empty":
        return write_empty(path)
    if kind == "short":
        return write_video(path, color_frames(color, short_frames), codec)
    raise ValueError(kind)


UCF_DEFAULT = ("ApplyEyeMakeup", "Archery", "BalanceBeam", "Basketball")


def ucf_test_groups(split: int) -> range:
    """Groups in the test list of official split ``split`` (1: 1-7, 2: 8-14, 3: 15-21)."""
    return range(1 + 7 * (split - 1), 8 + 7 * (split - 1))


def make_ucf101(root, classes: Sequence[str] = UCF_DEFAULT, groups: Sequence[int] = (1, 2, 8, 9),
                clips: int = 1, frames: int = 16, codec: str = "mpeg4", content: str = "color",
                missing: int = 0, unknown_label: int = 0, malformed: int = 0, corrupt: int = 0,
                empty: int = 0, short: int = 0, splits_dir: str = "beside", split: int = 1,
                all_class_ind: Sequence[str] | None = None) -> Made:
    """UCF101: ``root/UCF-101/<C>/v_<C>_gGG_cCC.avi`` + ``root/ucfTrainTestlist/*.txt``.

    ``splits_dir``: "beside" (root holds both), "separate" (splits at root/annots/ucfTrainTestlist,
    given through Made.annotations), "none" (no split lists written).  Lists for splits 1-3 are all
    written following the official group rule; ``split`` only says which one Made's train/test
    describe.  ``all_class_ind``: classInd content (defaults to ``classes``), for classes that have no
    videos on disk.  Bad entries (added to split 1..3 train lists, in class 0): ``missing`` lines
    naming absent files, ``unknown_label`` lines with class dir "NoSuchClass", ``malformed`` lines,
    ``corrupt``/``empty``/``short`` real files listed in the train list."""
    root = os.path.abspath(os.fspath(root))
    vid = os.path.join(root, "UCF-101")
    class_ind = list(all_class_ind or classes)
    made = Made(root=root, layout="ucf101", classes=class_ind)
    lists = {s: {"train": [], "test": []} for s in (1, 2, 3)}
    for ci, c in enumerate(classes):
        idx = class_ind.index(c)
        for g in groups:
            for k in range(1, clips + 1):
                rel = f"{c}/v_{c}_g{g:02d}_c{k:02d}.avi"
                p = os.path.join(vid, rel)
                write_video(p, _content(content, ci, frames, codec), codec)
                for s in (1, 2, 3):
                    which = "test" if g in ucf_test_groups(s) else "train"
                    lists[s][which].append((rel, idx + 1))
                    if s == split:
                        getattr(made, which).append((p, c))
    c0 = classes[0]
    bad_train = []
    for k in range(missing):
        rel = f"{c0}/v_{c0}_g20_c{k + 1:02d}.avi"
        bad_train.append((rel, 1))
        made.problems.append(f"v_{c0}_g20_c{k + 1:02d}.avi")
    for k in range(unknown_label):
        rel = f"NoSuchClass/v_NoSuchClass_g20_c{k + 1:02d}.avi"
        bad_train.append((rel, 999))
        made.problems.append(f"v_NoSuchClass_g20_c{k + 1:02d}.avi")
    for kind, count in (("corrupt", corrupt), ("empty", empty), ("short", short)):
        for k in range(count):
            rel = f"{c0}/v_{c0}_g2{3 + ('corrupt', 'empty', 'short').index(kind)}_c{k + 1:02d}.avi"
            p = os.path.join(vid, rel)
            _bad_video(p, kind, color=class_color(0))
            bad_train.append((rel, class_ind.index(c0) + 1))
            made.train.append((p, c0))
            (made.short if kind == "short" else made.corrupt).append(p)
    if splits_dir == "none":
        return made
    sd = os.path.join(root, "ucfTrainTestlist") if splits_dir == "beside" else \
        os.path.join(root, "annots", "ucfTrainTestlist")
    if splits_dir == "separate":
        made.annotations = sd
    os.makedirs(sd, exist_ok=True)
    with open(os.path.join(sd, "classInd.txt"), "w") as f:
        for i, c in enumerate(class_ind):
            f.write(f"{i + 1} {c}\r\n")   # the official files have CRLF line ends
    for s in (1, 2, 3):
        with open(os.path.join(sd, f"trainlist0{s}.txt"), "w") as f:
            for rel, idx in lists[s]["train"] + bad_train:
                f.write(f"{rel} {idx}\r\n")
            for k in range(malformed):
                f.write(f"this line is not a path {k} at all\r\n")
        with open(os.path.join(sd, f"testlist0{s}.txt"), "w") as f:
            for rel, _ in lists[s]["test"]:
                f.write(f"{rel}\r\n")
    if malformed:
        made.problems.append("this line is not a path")
    return made


HMDB_DEFAULT = ("brush_hair", "cartwheel", "catch")


def make_hmdb51(root, classes: Sequence[str] = HMDB_DEFAULT, train: int = 2, test: int = 1,
                unused: int = 1, frames: int = 16, codec: str = "mpeg4", content: str = "color",
                missing: int = 0, malformed: int = 0, corrupt: int = 0, splits_dir: str = "inside",
                split: int = 1) -> Made:
    """HMDB51: ``<videos>/<class>/<name>.avi`` + ``testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt``.

    ``splits_dir``: "inside" (root/testTrainMulti_7030_splits, videos at root), "beside" (videos at
    root/hmdb51_org, splits at root/testTrainMulti_7030_splits: Made.root is root/hmdb51_org, the
    splits are found in its parent), "separate" (Made.annotations), "none".  All three split files
    carry the same tags except that split 2 and 3 swap the first train and test video."""
    base = os.path.abspath(os.fspath(root))
    vid = os.path.join(base, "hmdb51_org") if splits_dir == "beside" else base
    made = Made(root=vid, layout="hmdb51", classes=sorted(classes))

    def tag_for(k: int, s: int) -> int:
        tag = 1 if k < train else (2 if k < train + test else 0)
        if s != 1 and train and test and k == 0:
            return 2            # splits 2 and 3 swap the first train and the first test video
        if s != 1 and train and test and k == train:
            return 1
        return tag

    tags: dict[str, list[tuple[str, int | None]]] = {}
    for ci, c in enumerate(classes):
        rows: list[tuple[str, int | None]] = []
        for k in range(train + test + unused):
            name = f"{c}_video_{k}_f_cm_np1_fr_med_{k}.avi"
            p = os.path.join(vid, c, name)
            write_video(p, _content(content, ci, frames, codec), codec)
            rows.append((name, k))
            tag = tag_for(k, split)
            if tag == 1:
                made.train.append((p, c))
            elif tag == 2:
                made.test.append((p, c))
        if ci == 0:
            for k in range(missing):
                name = f"{c}_missing_{k}.avi"
                rows.append((name, None))
                made.problems.append(name)
            for k in range(corrupt):
                name = f"{c}_corrupt_{k}.avi"
                p = os.path.join(vid, c, name)
                write_corrupt(p, seed=k)
                rows.append((name, None))
                made.train.append((p, c))
                made.corrupt.append(p)
        tags[c] = rows
    # listing order: classes sorted, rows in file order, train then test
    order = {c: i for i, c in enumerate(sorted(classes))}
    made.train.sort(key=lambda t: order[t[1]])
    made.test.sort(key=lambda t: order[t[1]])
    if splits_dir == "none":
        return made
    sd = os.path.join(base if splits_dir != "separate" else os.path.join(base, "annots"),
                      "testTrainMulti_7030_splits")
    if splits_dir == "separate":
        made.annotations = sd
    os.makedirs(sd, exist_ok=True)
    for c, rows in tags.items():
        for s in (1, 2, 3):
            with open(os.path.join(sd, f"{c}_test_split{s}.txt"), "w") as f:
                for name, k in rows:
                    tag = 1 if k is None else tag_for(k, s)
                    f.write(f"{name} {tag} \n")   # the official files have a trailing space
                if c == classes[0]:
                    for k in range(malformed):
                        f.write(f"garbage{k}\n")
    if malformed:
        made.problems.append("garbage0")
    return made


KINETICS_DEFAULT = ("abseiling", "air drumming", "archery")


def _ytid(r: random.Random) -> str:
    abc = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
    return "".join(r.choice(abc) for _ in range(11))


def make_kinetics(root, classes: Sequence[str] = KINETICS_DEFAULT, flat: bool = False, train: int = 2,
                  val: int = 1, frames: int = 16, codec: str = "h264", ext: str = ".mp4",
                  content: str = "color", missing: int = 0, corrupt: int = 0, val_name: str = "validate",
                  val_dir: str = "val", is_cc: bool = False, underscore_dirs: bool = False,
                  unknown_label: int = 0, annotations_subdir: bool = False, seed: int = 0) -> Made:
    """Kinetics: ``train.csv``, ``<val_name>.csv`` (+ an unlabelled ``test.csv``), videos at
    ``train/<label>/<ytid>_<start:06d>_<end:06d><ext>`` (or flat ``train/<ytid>_...``) and
    ``<val_dir>/...``.  ``missing`` rows per split point to files never written.  ``unknown_label``
    validation rows carry a label absent from train.csv (with a real file).  ``underscore_dirs``:
    label dirs use ``_`` for spaces, as some download scripts do.  ``annotations_subdir``: the CSVs
    live in ``root/annotations``."""
    root = os.path.abspath(os.fspath(root))
    r = random.Random(seed)
    made = Made(root=root, layout="kinetics", classes=sorted(classes))
    header = ["label", "youtube_id", "time_start", "time_end", "split"] + (["is_cc"] if is_cc else [])
    rows = {"train": [], "val": []}
    for split_key, n, sdir, csv_split in (("train", train, "train", "train"), ("val", val, val_dir, "val")):
        for ci, c in enumerate(classes):
            dname = c.replace(" ", "_") if underscore_dirs else c
            for k in range(n + (missing if ci == 0 else 0) + (corrupt if ci == 0 else 0)):
                y = _ytid(r)
                start = 10 * k + r.randrange(0, 5)
                stem = f"{y}_{start:06d}_{start + 10:06d}"
                rows[split_key].append([c, y, str(start), str(start + 10), csv_split] + (["0"] if is_cc else []))
                p = os.path.join(root, sdir, stem + ext) if flat else os.path.join(root, sdir, dname, stem + ext)
                if k < n:
                    write_video(p, _content(content, ci, frames, codec), codec)
                elif k < n + missing:
                    made.problems.append(stem)
                    continue
                else:
                    write_corrupt(p, seed=k)
                    made.corrupt.append(p)
                (made.train if split_key == "train" else made.test).append((p, c))
    for k in range(unknown_label):
        y = _ytid(r)
        stem = f"{y}_{0:06d}_{10:06d}"
        rows["val"].append(["no such label", y, "0", "10", "val"] + (["0"] if is_cc else []))
        p = os.path.join(root, val_dir, stem + ext) if flat else os.path.join(root, val_dir, "no such label", stem + ext)
        write_video(p, color_frames((0, 0, 0), frames), codec)
        made.problems.append(stem)
    adir = os.path.join(root, "annotations") if annotations_subdir else root
    os.makedirs(adir, exist_ok=True)
    for name, key in (("train", "train"), (val_name, "val")):
        with open(os.path.join(adir, f"{name}.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows[key])
    with open(os.path.join(adir, "test.csv"), "w", newline="") as f:   # unlabelled, must be ignored
        w = csv.writer(f)
        w.writerow(["youtube_id", "time_start", "time_end", "split"])
        w.writerow([_ytid(r), "0", "10", "test"])
    # listing order: csv row order, train then validation
    return made


SSV2_DEFAULT = (
    "Pushing [something] from left to right",
    "Pushing [something] from right to left",
    "Putting [something] into [something]",
)


def make_ssv2(root, templates: Sequence[str] = SSV2_DEFAULT, train: int = 2, val: int = 1,
              frames: int = 16, codec: str = "libvpx-vp9", content: str = "color", missing: int = 0,
              unknown_label: int = 0, extra_labels: Sequence[str] = ("Holding something",),
              labels_subdir: bool = False) -> Made:
    """Something-Something V2: ``20bn-something-something-v2/<id>.webm`` (VP9) plus
    ``something-something-v2-{labels,train,validation}.json`` (in ``root`` or ``root/labels``).
    labels.json indices are assigned in reverse template order (so index order != sorted order),
    with ``extra_labels`` (no videos) at the end.  ``unknown_label`` train entries carry a template
    absent from labels.json; ``missing`` train entries name ids never written."""
    root = os.path.abspath(os.fspath(root))
    plain = [t.replace("[", "").replace("]", "") for t in templates]
    ordered = list(reversed(plain)) + list(extra_labels)
    labels = {t: str(i) for i, t in enumerate(ordered)}
    made = Made(root=root, layout="ssv2", classes=ordered)
    vdir = os.path.join(root, "20bn-something-something-v2")
    vid_id = 1000
    entries = {"train": [], "validation": []}
    for split_key, n in (("train", train), ("validation", val)):
        for ti, t in enumerate(templates):
            ci = ordered.index(plain[ti])
            for _ in range(n):
                vid_id += 1
                p = os.path.join(vdir, f"{vid_id}.webm")
                write_video(p, _content(content, ci, frames, codec), codec)
                entries[split_key].append({"id": str(vid_id), "label": t.replace("[something]", "a pen"),
                                           "template": t, "placeholders": ["a pen"]})
                (made.train if split_key == "train" else made.test).append((p, plain[ti]))
    for _ in range(missing):
        vid_id += 1
        entries["train"].append({"id": str(vid_id), "label": "x", "template": templates[0], "placeholders": []})
        made.problems.append(str(vid_id))
    for _ in range(unknown_label):
        vid_id += 1
        write_video(os.path.join(vdir, f"{vid_id}.webm"), color_frames((0, 0, 0), frames), codec)
        entries["train"].append({"id": str(vid_id), "label": "x", "template": "Juggling [something] backwards",
                                 "placeholders": []})
        made.problems.append(str(vid_id))
    ldir = os.path.join(root, "labels") if labels_subdir else root
    os.makedirs(ldir, exist_ok=True)
    with open(os.path.join(ldir, "something-something-v2-labels.json"), "w") as f:
        json.dump(labels, f)
    for k in ("train", "validation"):
        with open(os.path.join(ldir, f"something-something-v2-{k}.json"), "w") as f:
            json.dump(entries[k], f)
    with open(os.path.join(ldir, "something-something-v2-test.json"), "w") as f:
        json.dump([{"id": "99999"}], f)
    return made


def make_frame_folders(root, classes: Sequence[str] = ("jump", "run", "sit"), train: int = 2, test: int = 1,
                       frames: int = 12, annotation: str = "csv", pattern: str = "{i}.jpg",
                       content: str = "color", missing: int = 0, empty_folder: int = 0,
                       malformed: int = 0) -> Made:
    """Pre-extracted frames: ``root/<video_id>/<frame>.jpg`` + ``root/annotations.csv``
    (``video_id,label,split``) or ``root/annotations.json`` (list of objects with those keys).
    Frames are named ``1.jpg`` .. ``12.jpg`` by default (lexical order != natural order).
    ``missing``: rows naming folders never written; ``empty_folder``: listed folders without images."""
    root = os.path.abspath(os.fspath(root))
    made = Made(root=root, layout="frames", classes=sorted(classes))
    rows = []
    for split_key, n in (("train", train), ("test", test)):
        for ci, c in enumerate(classes):
            for k in range(n):
                vid = f"{c}_{split_key}_{k:03d}"
                d = os.path.join(root, vid)
                arr = index_frames(frames) if content == "index" else color_frames(class_color(ci), frames)
                write_frame_folder(d, arr, pattern)
                rows.append((vid, c, split_key))
                (made.train if split_key == "train" else made.test).append((d, c))
    for k in range(missing):
        rows.append((f"gone_{k}", classes[0], "train"))
        made.problems.append(f"gone_{k}")
    for k in range(empty_folder):
        os.makedirs(os.path.join(root, f"hollow_{k}"), exist_ok=True)
        rows.append((f"hollow_{k}", classes[0], "train"))
        made.problems.append(f"hollow_{k}")
    # listing order: annotation row order, grouped train then test
    made.train.sort(key=lambda t: [r[0] for r in rows].index(os.path.basename(t[0])))
    if annotation == "csv":
        with open(os.path.join(root, "annotations.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["video_id", "label", "split"])
            w.writerows(rows)
            for k in range(malformed):
                w.writerow([f"broken_{k}"])
                made.problems.append(f"broken_{k}")
    else:
        objs = [{"video_id": v, "label": l, "split": s} for v, l, s in rows]
        for k in range(malformed):
            objs.append({"video_id": f"broken_{k}"})
            made.problems.append(f"broken_{k}")
        with open(os.path.join(root, "annotations.json"), "w") as f:
            json.dump(objs, f)
    return made


def make_plain_folder(root, classes: Sequence[str] = ("cats", "dogs", "birds"), per_class: int = 5,
                      with_split_dirs: bool = False, split_names: tuple[str, str] = ("train", "test"),
                      test_per_class: int = 2, frames: int = 16, codec: str = "mpeg4", ext: str | None = None,
                      content: str = "color", empty_class: bool = False, corrupt: int = 0) -> Made:
    """A user's own videos: ``root/<class>/<v>.<ext>`` (``per_class`` each; Made.train holds them all,
    the held-out split is the reader's business) or, ``with_split_dirs``,
    ``root/<train>/<class>/..`` (``per_class`` each) and ``root/<test>/<class>/..`` (``test_per_class``).
    ``empty_class`` adds a class dir with no videos (reported, not listed).  Also drops a README.txt
    that must be ignored."""
    root = os.path.abspath(os.fspath(root))
    ext = ext or CODEC_EXT[codec]
    made = Made(root=root, layout="folder", classes=sorted(classes))
    splits = [(split_names[0], per_class, made.train)]
    if with_split_dirs:
        splits.append((split_names[1], test_per_class, made.test))
    for sname, n, bucket in splits:
        for ci, c in enumerate(classes):
            base = os.path.join(root, sname, c) if with_split_dirs else os.path.join(root, c)
            for k in range(n):
                p = os.path.join(base, f"{c}_{k:02d}{ext}")
                write_video(p, _content(content, ci, frames, codec), codec)
                bucket.append((p, c))
            if ci == 0 and sname == split_names[0]:
                for k in range(corrupt):
                    p = write_corrupt(os.path.join(base, f"zz_corrupt_{k}{ext}"), seed=k)
                    bucket.append((p, c))
                    made.corrupt.append(p)
    if empty_class:
        os.makedirs(os.path.join(root, split_names[0], "empty_cls") if with_split_dirs
                    else os.path.join(root, "empty_cls"), exist_ok=True)
        made.problems.append("empty_cls")
    with open(os.path.join(root, "README.txt"), "w") as f:
        f.write("not a video\n")
    return made
