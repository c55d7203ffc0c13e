"""Read video datasets in the layouts their users have on disk (see spec/datasets.md).

:func:`list_videos` turns a dataset folder into a :class:`Listing`: the class names (label ``i`` is
``classes[i]``), the videos with their label and split, and the problems found while listing
(annotation lines naming missing files, unknown labels, malformed lines, empty classes).  Problems
are collected, never raised; :class:`LayoutError` is raised only when the dataset as a whole cannot
be read (path missing, layout unknown/undetectable, required annotation files missing).

Class order (documented, stable):

* ``ucf101``: ``classInd.txt`` index order; ``miniucf``: :data:`MINIUCF_CLASSES` order.
* ``hmdb51``: sorted class names (of the split files).
* ``kinetics``: sorted labels of ``train.csv`` (plus validation labels, which are reported as unknown
  if train.csv has none of them and then left out).
* ``ssv2``: ``something-something-v2-labels.json`` index order.
* ``frames`` and ``folder``: sorted names.
* With ``classes=[...]``: the layout's order above, restricted to those names.

Item order: annotation order (train list then test list) for annotated layouts, sorted class then
sorted file name for ``folder``.  Splits are "train" and "test"; for Kinetics and SSv2 "test" is the
labelled validation set (their test sets carry no labels).
"""
from __future__ import annotations

import csv
import difflib
import json
import os
import random
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

__all__ = ["LAYOUTS", "MINIUCF_CLASSES", "VIDEO_EXTS", "VideoItem", "Listing", "LayoutError", "detect_layout",
           "list_videos"]

LAYOUTS = ("ucf101", "miniucf", "hmdb51", "kinetics", "ssv2", "frames", "folder")

MINIUCF_CLASSES: tuple[str, ...] = (
    "ApplyEyeMakeup", "BalanceBeam", "BandMarching", "BaseballPitch", "Basketball", "BasketballDunk",
    "Biking", "Billiards", "BlowingCandles", "Bowling", "BreastStroke", "CleanAndJerk", "CliffDiving",
    "CricketShot", "Diving", "FloorGymnastics", "FrisbeeCatch", "GolfSwing", "HammerThrow", "HighJump",
    "HorseRace", "HorseRiding", "HulaHoop", "IceDancing", "JumpingJack", "Knitting", "MilitaryParade",
    "Mixing", "ParallelBars", "PlayingPiano", "PlayingViolin", "PoleVault", "PommelHorse", "Punch",
    "Rafting", "Rowing", "SkateBoarding", "Skiing", "Skijet", "SkyDiving", "SoccerPenalty", "StillRings",
    "SumoWrestling", "Surfing", "Swing", "TennisSwing", "TrampolineJumping", "UnevenBars",
    "VolleyballSpiking", "WritingOnBoard",
)

VIDEO_EXTS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ogv",
              ".3gp", ".ts")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

UCF_SPLITS_DIR = "ucfTrainTestlist"
HMDB_SPLITS_DIR = "testTrainMulti_7030_splits"
SSV2_LABELS = "something-something-v2-labels.json"
SSV2_TRAIN = "something-something-v2-train.json"
SSV2_VAL = "something-something-v2-validation.json"
SSV2_VIDEOS = "20bn-something-something-v2"
TRAIN_NAMES = ("train", "training")
TEST_NAMES = ("test", "val", "validate", "valid", "validation", "testing")


@dataclass(frozen=True)
class VideoItem:
    path: str          # absolute path of a video file, or of a frame folder when kind == "frames"
    label: str         # class name
    split: str         # "train" or "test"
    kind: str = "video"  # "video" | "frames"


@dataclass
class Listing:
    layout: str
    classes: list[str]
    items: list[VideoItem]
    problems: list[tuple[str, str]] = field(default_factory=list)

    def split(self, name: str) -> list[VideoItem]:
        return [it for it in self.items if it.split == name]

    def label_index(self, label: str) -> int:
        return self.classes.index(label)


class LayoutError(ValueError):
    """The dataset as a whole cannot be read; the message says what was expected and what to do."""


# --------------------------------------------------------------------------- small helpers

def _isdir(p: str | None) -> bool:
    return bool(p) and os.path.isdir(p)


def _isfile(p: str | None) -> bool:
    return bool(p) and os.path.isfile(p)


def _subdirs(p: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(p) if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def _files(p: str, exts: tuple[str, ...]) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(p)
                      if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(exts))
    except OSError:
        return []


def _has_files(p: str, exts: tuple[str, ...]) -> bool:
    try:
        with os.scandir(p) as it:
            return any(e.name.lower().endswith(exts) and not e.name.startswith(".") and e.is_file() for e in it)
    except OSError:
        return False


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().splitlines()


def _ann_dirs(root: str, annotations: str | None) -> list[str]:
    """Where to look for annotation files: ``annotations`` (a dir, or a file's dir) first, then root."""
    out = []
    if annotations:
        a = os.path.abspath(annotations)
        out.append(a if os.path.isdir(a) else os.path.dirname(a))
    out.append(root)
    return out


def _dedup(seq: Iterable[str]) -> list[str]:
    seen, out = set(), []
    for s in seq:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def _norm_split(s: str) -> str | None:
    s = s.strip().lower()
    if s in TRAIN_NAMES:
        return "train"
    if s in TEST_NAMES:
        return "test"
    return None


def _check_split(split: int, layout: str) -> None:
    if split not in (1, 2, 3):
        raise LayoutError(f"{layout} has official splits 1, 2 and 3; got split={split!r}")


# --------------------------------------------------------------------------- UCF101

def _ucf_video_dir(root: str) -> str | None:
    for name in ("UCF-101", "UCF101", "ucf101"):
        if _isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


def _ucf_splits_dir(root: str, annotations: str | None) -> str | None:
    cands = []
    if annotations:
        a = os.path.abspath(annotations)
        a = a if os.path.isdir(a) else os.path.dirname(a)
        cands += [a, os.path.join(a, UCF_SPLITS_DIR)]
    parent = os.path.dirname(root)
    cands += [os.path.join(root, UCF_SPLITS_DIR), os.path.join(parent, UCF_SPLITS_DIR),
              os.path.join(root, "UCF101TrainTestSplits-RecognitionTask", UCF_SPLITS_DIR),
              os.path.join(parent, "UCF101TrainTestSplits-RecognitionTask", UCF_SPLITS_DIR), root]
    for c in cands:
        if _isfile(os.path.join(c, "classInd.txt")):
            return c
    return None


def _looks_ucf(root: str, annotations: str | None) -> bool:
    if _ucf_video_dir(root) or _isfile(os.path.join(root, UCF_SPLITS_DIR, "classInd.txt")):
        return True
    if annotations and _ucf_splits_dir(root, annotations):
        return True
    # root is UCF-101 itself, with ucfTrainTestlist beside it
    return _isfile(os.path.join(os.path.dirname(root), UCF_SPLITS_DIR, "classInd.txt")) and \
        any(_has_files(os.path.join(root, d), VIDEO_EXTS) for d in _subdirs(root)[:3])


class _CaseInsensitiveFinder:
    """Resolve ``<dir>/<name>`` with an exact match first, then case-insensitively (UCF101's lists spell
    ``HandStandPushups`` where the files say ``HandstandPushups``)."""

    def __init__(self, base: str):
        self.base = base
        self._dirs: dict[str, dict[str, str]] = {}

    def _listing(self, d: str) -> dict[str, str]:
        if d not in self._dirs:
            try:
                self._dirs[d] = {n.lower(): n for n in os.listdir(d)}
            except OSError:
                self._dirs[d] = {}
        return self._dirs[d]

    def find(self, rel: str) -> str | None:
        p = os.path.join(self.base, rel)
        if os.path.isfile(p):
            return p
        cur = self.base
        for part in rel.replace("\\", "/").split("/"):
            hit = self._listing(cur).get(part.lower())
            if hit is None:
                return None
            cur = os.path.join(cur, hit)
        return cur if os.path.isfile(cur) else None


def _list_ucf101(root: str, split: int, annotations: str | None) -> Listing:
    _check_split(split, "ucf101")
    vdir = _ucf_video_dir(root)
    if vdir is None:
        vdir = root   # root is UCF-101 itself
    sdir = _ucf_splits_dir(root, annotations)
    need = f"classInd.txt, trainlist0{split}.txt and testlist0{split}.txt"
    if sdir is None:
        raise LayoutError(
            f"ucf101: no {UCF_SPLITS_DIR}/classInd.txt found in {root}, its parent, or annotations="
            f"{annotations!r}. Expected {UCF_SPLITS_DIR}/ ({need}) beside UCF-101/; download "
            "UCF101TrainTestSplits-RecognitionTask.zip and pass its folder with --splits DIR (annotations=DIR)")
    for name in (f"trainlist0{split}.txt", f"testlist0{split}.txt"):
        if not _isfile(os.path.join(sdir, name)):
            raise LayoutError(f"ucf101: {os.path.join(sdir, name)} is missing (expected {need} in {sdir}); "
                              "pass the full ucfTrainTestlist folder with --splits DIR")
    problems: list[tuple[str, str]] = []
    by_index: dict[int, str] = {}
    for ln, line in enumerate(_read_lines(os.path.join(sdir, "classInd.txt")), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].isdigit():
            problems.append((f"classInd.txt:{ln}: {line.strip()}", "malformed line (expected '<index> <ClassName>')"))
            continue
        by_index[int(parts[0])] = parts[1]
    classes = [by_index[i] for i in sorted(by_index)]
    if not classes:
        raise LayoutError(f"ucf101: {os.path.join(sdir, 'classInd.txt')} lists no classes")
    lower = {c.lower(): c for c in classes}
    finder = _CaseInsensitiveFinder(vdir)
    items: list[VideoItem] = []
    for split_name, fname in (("train", f"trainlist0{split}.txt"), ("test", f"testlist0{split}.txt")):
        for ln, line in enumerate(_read_lines(os.path.join(sdir, fname)), 1):
            parts = line.split()
            if not parts:
                continue
            rel = parts[0].replace("\\", "/")
            if len(parts) > 2 or "/" not in rel or not rel.lower().endswith(VIDEO_EXTS):
                problems.append((f"{fname}:{ln}: {line.strip()}", "malformed line (expected '<Class>/<file>.avi [index]')"))
                continue
            label = lower.get(rel.split("/")[0].lower())
            if label is None:
                problems.append((rel, f"unknown label {rel.split('/')[0]!r} (not in classInd.txt; {fname}:{ln})"))
                continue
            path = finder.find(rel)
            if path is None:
                problems.append((rel, f"missing file (listed in {fname}:{ln}, not under {vdir})"))
                continue
            items.append(VideoItem(os.path.abspath(path), label, split_name))
    have = {it.label for it in items}
    problems += [(c, "empty class: none of its listed videos was found") for c in classes if c not in have]
    return Listing("ucf101", classes, items, problems)


# --------------------------------------------------------------------------- HMDB51

def _hmdb_split_files(dirs: Sequence[str], split: int) -> tuple[str | None, dict[str, str]]:
    suffix = f"_test_split{split}.txt"
    for d in dirs:
        for cand in (os.path.join(d, HMDB_SPLITS_DIR), d):
            names = _files(cand, (suffix,))
            if names:
                return cand, {n[: -len(suffix)]: os.path.join(cand, n) for n in names}
    return None, {}


def _hmdb_dirs(root: str, annotations: str | None) -> list[str]:
    return _dedup(_ann_dirs(root, annotations) + [os.path.dirname(root)])


def _looks_hmdb(root: str, annotations: str | None) -> bool:
    d, files = _hmdb_split_files(_hmdb_dirs(root, annotations), 1)
    if not files:
        return False
    subs = set(_subdirs(root))
    return any(c in subs for c in files) or d is not None and os.path.dirname(d) == root


def _list_hmdb51(root: str, split: int, annotations: str | None) -> Listing:
    _check_split(split, "hmdb51")
    sdir, files = _hmdb_split_files(_hmdb_dirs(root, annotations), split)
    if not files:
        raise LayoutError(
            f"hmdb51: no {HMDB_SPLITS_DIR}/<class>_test_split{split}.txt found in {root}, its parent, or "
            f"annotations={annotations!r}. Download test_train_splits.rar, extract it, and pass "
            "--layout hmdb51 --splits DIR (annotations=DIR)")
    # the videos: root/<class>/, or one level down (hmdb51_org/, videos/)
    vroot = root
    if not any(_isdir(os.path.join(root, c)) for c in files):
        for sub in _subdirs(root):
            if any(_isdir(os.path.join(root, sub, c)) for c in files):
                vroot = os.path.join(root, sub)
                break
    classes = sorted(files)
    problems: list[tuple[str, str]] = []
    train: list[VideoItem] = []
    test: list[VideoItem] = []
    for c in classes:
        fname = os.path.basename(files[c])
        n_listed = 0
        for ln, line in enumerate(_read_lines(files[c]), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                problems.append((f"{fname}:{ln}: {line.strip()}", "malformed line (expected '<name>.avi <0|1|2>')"))
                continue
            name, tag = parts
            if tag == "0":
                continue
            path = os.path.join(vroot, c, name)
            if not os.path.isfile(path):
                problems.append((f"{c}/{name}", f"missing file (listed in {fname}:{ln})"))
                continue
            n_listed += 1
            (train if tag == "1" else test).append(VideoItem(os.path.abspath(path), c, "train" if tag == "1" else "test"))
        if n_listed == 0:
            problems.append((c, f"empty class: no video of {fname} found"))
    for d in _subdirs(vroot):
        if d not in files and _has_files(os.path.join(vroot, d), VIDEO_EXTS):
            problems.append((d, f"class folder without a split file ({d}_test_split{split}.txt); skipped"))
    return Listing("hmdb51", classes, train + test, problems)


# --------------------------------------------------------------------------- Kinetics

_KIN_TRAIN = ("train.csv", "kinetics_train.csv", "kinetics-400_train.csv", "kinetics-600_train.csv",
              "kinetics-700_train.csv", "kinetics700_2020_train.csv")
_KIN_VAL = ("validate.csv", "val.csv", "valid.csv", "validation.csv", "kinetics_val.csv", "kinetics-400_val.csv",
            "kinetics-600_val.csv", "kinetics-700_val.csv", "kinetics700_2020_validate.csv")


def _kinetics_csv_dir(root: str, annotations: str | None) -> tuple[str | None, str | None, str | None]:
    dirs = []
    if annotations and os.path.isfile(annotations):
        dirs.append(os.path.dirname(os.path.abspath(annotations)))
    for d in _ann_dirs(root, annotations):
        dirs += [d, os.path.join(d, "annotations"), os.path.join(d, "annotation")]
    for d in _dedup(dirs):
        tr = next((os.path.join(d, n) for n in _KIN_TRAIN if _isfile(os.path.join(d, n))), None)
        va = next((os.path.join(d, n) for n in _KIN_VAL if _isfile(os.path.join(d, n))), None)
        if (tr and _csv_has(tr, "youtube_id")) or (va and _csv_has(va, "youtube_id")):
            return d, tr, va
    return None, None, None


def _csv_has(path: str, column: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            header = next(csv.reader(f), [])
    except OSError:
        return False
    return column in [h.strip().lower() for h in header]


def _index_videos(dirs: Sequence[str], depth: int = 2) -> dict[str, str]:
    """stem -> path for video files in ``dirs`` and their subdirs (to ``depth``); first found wins."""
    out: dict[str, str] = {}
    for d in dirs:
        stack = [(d, 0)]
        while stack:
            cur, lvl = stack.pop(0)
            try:
                entries = sorted(os.scandir(cur), key=lambda e: e.name)
            except OSError:
                continue
            for e in entries:
                if e.name.startswith("."):
                    continue
                if e.is_dir():
                    if lvl + 1 < depth:
                        stack.append((e.path, lvl + 1))
                elif e.name.lower().endswith(VIDEO_EXTS):
                    stem = os.path.splitext(e.name)[0]
                    out.setdefault(stem, e.path)
    return out


def _list_kinetics(root: str, annotations: str | None) -> Listing:
    adir, tr_csv, va_csv = _kinetics_csv_dir(root, annotations)
    if adir is None:
        raise LayoutError(
            f"kinetics: no train.csv / validate.csv (or val.csv) with a youtube_id column in {root}, "
            f"{os.path.join(root, 'annotations')} or annotations={annotations!r}; pass --layout kinetics "
            "--annotations DIR")
    problems: list[tuple[str, str]] = []
    if tr_csv is None:
        problems.append(("train.csv", f"missing in {adir}: no train split"))
    if va_csv is None:
        problems.append(("validate.csv", f"missing in {adir} (also looked for val.csv): no test split"))
    bases = _dedup([root, os.path.dirname(adir) if os.path.basename(adir).startswith("annotation") else adir,
                    os.path.join(root, "videos")])
    rows: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for split_name, path in (("train", tr_csv), ("test", va_csv)):
        rows[split_name] = []
        if path is None:
            continue
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            reader = csv.DictReader(f)
            reader.fieldnames = [h.strip().lower() for h in (reader.fieldnames or [])]
            missing_cols = {"label", "youtube_id", "time_start", "time_end"} - set(reader.fieldnames)
            if missing_cols:
                raise LayoutError(f"kinetics: {path} lacks column(s) {sorted(missing_cols)}; expected "
                                  "label,youtube_id,time_start,time_end,split")
            for ln, row in enumerate(reader, 2):
                rows[split_name].append((ln, row))
    train_labels = {(r.get("label") or "").strip() for _, r in rows["train"]} - {""}
    if not train_labels:   # no train csv: the validation labels define the classes
        train_labels = {(r.get("label") or "").strip() for _, r in rows["test"]} - {""}
    classes = sorted(train_labels)
    known = set(classes)
    items: list[VideoItem] = []
    for split_name, path in (("train", tr_csv), ("test", va_csv)):
        if path is None:
            continue
        # split folders: train, train_256, ... / val, validate, valid, validation, val_256, ...
        prefix = "train" if split_name == "train" else "val"
        sdirs = [os.path.join(b, n) for b in bases for n in _subdirs(b) if n.lower().startswith(prefix)]
        index = _index_videos(sdirs or bases, depth=2 if sdirs else 3)
        fname = os.path.basename(path)
        for ln, row in rows[split_name]:
            label = (row.get("label") or "").strip()
            ytid = (row.get("youtube_id") or "").strip()
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (TypeError, ValueError, KeyError):
                problems.append((f"{fname}:{ln}: {','.join(str(v) for v in row.values())}",
                                 "malformed line (bad youtube_id/time_start/time_end)"))
                continue
            if not ytid or not label:
                problems.append((f"{fname}:{ln}: {','.join(str(v) for v in row.values())}",
                                 "malformed line (empty label or youtube_id)"))
                continue
            stem = f"{ytid}_{start:06d}_{end:06d}"
            if label not in known:
                problems.append((stem, f"unknown label {label!r} (not in {os.path.basename(tr_csv or '')}; {fname}:{ln})"))
                continue
            p = index.get(stem) or index.get(ytid)
            if p is None:
                problems.append((stem, f"missing file ({label}, {fname}:{ln})"))
                continue
            items.append(VideoItem(os.path.abspath(p), label, split_name))
    have = {it.label for it in items}
    for c in classes:
        if c not in have:
            problems.append((c, "empty class: none of its listed videos was found"))
    return Listing("kinetics", classes, items, problems)


# --------------------------------------------------------------------------- Something-Something V2

def _ssv2_dir(root: str, annotations: str | None) -> str | None:
    dirs = []
    for d in _ann_dirs(root, annotations):
        dirs += [d, os.path.join(d, "labels"), os.path.join(d, "annotations")]
    dirs.append(os.path.join(os.path.dirname(root), "labels"))
    for d in _dedup(dirs):
        if _isfile(os.path.join(d, SSV2_LABELS)):
            return d
    return None


def _template_class(template: str) -> str:
    return re.sub(r"\[([^\]]*)\]", r"\1", template).strip()


def _norm_text(s: str) -> str:
    return " ".join(s.lower().split())


def _list_ssv2(root: str, annotations: str | None) -> Listing:
    ldir = _ssv2_dir(root, annotations)
    if ldir is None:
        raise LayoutError(f"ssv2: no {SSV2_LABELS} in {root}, {os.path.join(root, 'labels')} or annotations="
                          f"{annotations!r}; pass --layout ssv2 --annotations DIR (the labels folder)")
    try:
        with open(os.path.join(ldir, SSV2_LABELS), encoding="utf-8") as f:
            labels = json.load(f)
        order = sorted(labels.items(), key=lambda kv: int(kv[1]))
    except (ValueError, TypeError, AttributeError) as e:
        raise LayoutError(f"ssv2: {os.path.join(ldir, SSV2_LABELS)} is not a {{\"template\": \"index\"}} JSON: {e}")
    classes = [k for k, _ in order]
    exact = set(classes)
    loose = {_norm_text(c): c for c in classes}
    problems: list[tuple[str, str]] = []
    vdirs = [d for d in (os.path.join(root, SSV2_VIDEOS), os.path.join(os.path.dirname(ldir), SSV2_VIDEOS),
                         os.path.join(os.path.dirname(root), SSV2_VIDEOS), root) if _isdir(d)]
    index = _index_videos(_dedup(vdirs[:1]), depth=1) if vdirs else {}
    items: list[VideoItem] = []
    found_any = False
    for split_name, fname in (("train", SSV2_TRAIN), ("test", SSV2_VAL)):
        path = os.path.join(ldir, fname)
        if not _isfile(path):
            problems.append((fname, f"missing in {ldir}: no {split_name} split"))
            continue
        found_any = True
        with open(path, encoding="utf-8") as f:
            try:
                entries = json.load(f)
            except ValueError as e:
                raise LayoutError(f"ssv2: {path} is not valid JSON: {e}")
        if not isinstance(entries, list):
            raise LayoutError(f"ssv2: {path} should be a JSON list of {{id, label, template, placeholders}}")
        for k, e in enumerate(entries):
            if not isinstance(e, dict) or "id" not in e or not isinstance(e.get("template"), str):
                problems.append((f"{fname}[{k}]: {str(e)[:80]}", "malformed entry (expected id and template)"))
                continue
            vid = str(e["id"])
            cls = _template_class(e["template"])
            if cls not in exact:
                cls = loose.get(_norm_text(cls))
            if cls is None:
                problems.append((vid, f"unknown label {e['template']!r} (not in {SSV2_LABELS}; {fname})"))
                continue
            p = index.get(vid)
            if p is None:
                problems.append((vid, f"missing file ({vid}.webm, {fname})"))
                continue
            items.append(VideoItem(os.path.abspath(p), cls, split_name))
    if not found_any:
        raise LayoutError(f"ssv2: neither {SSV2_TRAIN} nor {SSV2_VAL} in {ldir}")
    return Listing("ssv2", classes, items, problems)


# --------------------------------------------------------------------------- frame folders

_VID_KEYS = ("video_id", "video", "id", "path", "folder", "vid")
_LABEL_KEYS = ("label", "class", "class_name", "category")


def _frames_ann_files(root: str, annotations: str | None) -> list[str]:
    if annotations and os.path.isfile(annotations):
        return [os.path.abspath(annotations)]
    out = []
    for d in _ann_dirs(root, annotations):
        for n in _files(d, (".csv", ".json")):
            p = os.path.join(d, n)
            if _frames_ann_ok(p):
                out.append(p)
        if out:
            break
    return out


def _frames_ann_ok(path: str) -> bool:
    if path.lower().endswith(".csv"):
        try:
            with open(path, encoding="utf-8", errors="replace", newline="") as f:
                header = [h.strip().lower() for h in next(csv.reader(f), [])]
        except OSError:
            return False
        return any(k in header for k in _VID_KEYS) and any(k in header for k in _LABEL_KEYS) \
            and "youtube_id" not in header
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
    except OSError:
        return False
    return any(f'"{k}"' in head for k in _LABEL_KEYS)


def _frames_rows(path: str) -> Iterable[tuple[str, dict | None]]:
    """(entry name, row dict or None if malformed) for each annotation row."""
    base = os.path.basename(path)
    if path.lower().endswith(".csv"):
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            for ln, row in enumerate(reader, 2):
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) < len(header) - (1 if "split" in header else 0):
                    yield f"{base}:{ln}: {','.join(row)}", None
                    continue
                yield f"{base}:{ln}", dict(zip(header, (c.strip() for c in row)))
        return
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except ValueError as e:
            raise LayoutError(f"frames: {path} is not valid JSON: {e}")
    if isinstance(data, dict):   # {video_id: {"label":.., "split":..}} or {video_id: label}
        data = [dict(v, video_id=k) if isinstance(v, dict) else {"video_id": k, "label": v} for k, v in data.items()]
    if not isinstance(data, list):
        raise LayoutError(f"frames: {path} should be a JSON list of {{video_id, label, split}}")
    for k, row in enumerate(data):
        yield (f"{base}[{k}]", {str(a).lower(): str(b) for a, b in row.items()}) if isinstance(row, dict) \
            else (f"{base}[{k}]: {str(row)[:80]}", None)


def _looks_frames(root: str, annotations: str | None) -> bool:
    if not _frames_ann_files(root, annotations):
        return False
    subs = _subdirs(root)
    return any(_has_files(os.path.join(root, s), IMAGE_EXTS) for s in subs[:20])


def _list_frames(root: str, annotations: str | None) -> Listing:
    files = _frames_ann_files(root, annotations)
    if not files:
        raise LayoutError(
            f"frames: no annotation file (CSV or JSON with video_id,label,split) in {root} or annotations="
            f"{annotations!r}; pass --layout frames --annotations FILE")
    problems: list[tuple[str, str]] = []
    rows: list[tuple[str, str, str]] = []   # (video_id, label, split)
    for path in files:
        fsplit = _norm_split(next((t for t in re.split(r"[^a-z]+", os.path.basename(path).lower())
                                   if _norm_split(t)), "") or "")
        for entry, row in _frames_rows(path):
            if row is None:
                problems.append((entry, "malformed line (expected video_id,label,split)"))
                continue
            vid = next((row[k] for k in _VID_KEYS if row.get(k)), "")
            label = next((row[k] for k in _LABEL_KEYS if row.get(k)), "")
            raw_split = row.get("split", "")
            split = _norm_split(raw_split) if raw_split else fsplit
            if not vid or not label:
                problems.append((f"{entry}: {vid or '?'}", "malformed line (empty video_id or label)"))
                continue
            if split is None:
                problems.append((vid, f"unknown split {raw_split!r} ({entry}); expected train/test/val"))
                continue
            rows.append((vid, label, split))
    classes = sorted({r[1] for r in rows})
    items: list[VideoItem] = []
    for vid, label, split in sorted(rows, key=lambda r: r[2] != "train"):
        d = os.path.join(root, vid)
        if not os.path.isdir(d):
            problems.append((vid, f"missing frame folder ({d})"))
            continue
        if not _has_files(d, IMAGE_EXTS):
            problems.append((vid, f"frame folder without images ({d})"))
            continue
        items.append(VideoItem(os.path.abspath(d), label, split, kind="frames"))
    have = {it.label for it in items}
    problems += [(c, "empty class: none of its frame folders was found") for c in classes if c not in have]
    return Listing("frames", classes, items, problems)


# --------------------------------------------------------------------------- plain folder

def _split_dirs(root: str) -> tuple[str | None, str | None]:
    subs = _subdirs(root)
    low = {s.lower(): s for s in subs}
    tr = next((low[n] for n in TRAIN_NAMES if n in low), None)
    te = next((low[n] for n in TEST_NAMES if n in low), None)
    return tr, te


def _looks_folder(root: str) -> bool:
    tr, te = _split_dirs(root)
    if tr:
        base = os.path.join(root, tr)
        return any(_has_files(os.path.join(base, c), VIDEO_EXTS) for c in _subdirs(base))
    return any(_has_files(os.path.join(root, c), VIDEO_EXTS) for c in _subdirs(root))


def _list_folder(root: str, test_fraction: float, seed: int) -> Listing:
    if not 0.0 <= test_fraction < 1.0:
        raise LayoutError(f"folder: test_fraction must be in [0, 1), got {test_fraction}")
    problems: list[tuple[str, str]] = []
    items: list[VideoItem] = []
    tr, te = _split_dirs(root)
    if tr:
        per_split = {"train": os.path.join(root, tr)}
        if te:
            per_split["test"] = os.path.join(root, te)
        else:
            problems.append(("test", f"no test/val folder beside {tr}/: no test split"))
        classes = sorted(set().union(*(_subdirs(d) for d in per_split.values())))
        for split, d in per_split.items():
            for c in classes:
                vids = _files(os.path.join(d, c), VIDEO_EXTS)
                if not vids:
                    problems.append((c, f"empty class: no video in {os.path.join(d, c)}"))
                items += [VideoItem(os.path.abspath(os.path.join(d, c, v)), c, split) for v in vids]
    else:
        classes = []
        for c in _subdirs(root):
            vids = _files(os.path.join(root, c), VIDEO_EXTS)
            if not vids:
                problems.append((c, f"empty class: no video in {os.path.join(root, c)}"))
                continue
            classes.append(c)
            test = _held_out(vids, c, test_fraction, seed)
            items += [VideoItem(os.path.abspath(os.path.join(root, c, v)), c, "test" if v in test else "train")
                      for v in vids]
        items.sort(key=lambda it: it.split != "train")   # stable: train then test, each by class, name
    if not classes:
        raise LayoutError(f"folder: no <class>/<video> files ({', '.join(VIDEO_EXTS)}) under {root}")
    return Listing("folder", classes, items, problems)


def _held_out(names: list[str], cls: str, fraction: float, seed: int) -> set[str]:
    """Deterministic held-out subset of one class: round(n * fraction) names (at least 1 and at most n-1
    when fraction > 0 and n >= 2) chosen by ``random.Random(f"{seed}/{cls}")`` (no global RNG)."""
    n = len(names)
    if fraction <= 0 or n < 2:
        return set()
    k = min(n - 1, max(1, int(round(n * fraction))))
    rng = random.Random(f"{seed}/{cls}")
    return set(rng.sample(sorted(names), k))


# --------------------------------------------------------------------------- public API

def _detect(root: str, annotations: str | None = None) -> str:
    if _looks_ucf(root, annotations):
        return "ucf101"
    if _ssv2_dir(root, annotations) is not None:
        return "ssv2"
    if _kinetics_csv_dir(root, annotations)[0] is not None:
        return "kinetics"
    if _looks_hmdb(root, annotations):
        return "hmdb51"
    if _looks_frames(root, annotations):
        return "frames"
    if _looks_folder(root):
        return "folder"
    raise LayoutError(
        f"cannot tell the dataset layout of {root}. Looked for: UCF-101/ or {UCF_SPLITS_DIR}/classInd.txt "
        f"(ucf101); {SSV2_LABELS} (ssv2); train.csv/validate.csv with youtube_id (kinetics); "
        f"{HMDB_SPLITS_DIR}/<class>_test_split1.txt (hmdb51); <video_id>/<frame>.jpg with a video_id,label,split "
        "CSV/JSON (frames); <class>/<video> or train|test/<class>/<video> files (folder). "
        f"Pass --layout one of {', '.join(LAYOUTS)} (and --splits/--annotations DIR where it has annotation files)")


def _check_root(root) -> str:
    if root is None:
        raise LayoutError("no dataset path given")
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.exists(root):
        raise LayoutError(f"dataset path {root} does not exist; pass the folder you downloaded")
    if not os.path.isdir(root):
        raise LayoutError(f"dataset path {root} is a file; pass the dataset folder")
    return root


def detect_layout(root: str) -> str:
    """The layout of ``root`` (one of LAYOUTS, never "miniucf"), from its characteristic annotation
    files; :class:`LayoutError` (listing what was looked for) when none matches."""
    return _detect(_check_root(root))


def list_videos(root: str, layout: str = "auto", split: int = 1, classes: Sequence[str] | None = None,
                test_fraction: float = 0.2, seed: int = 0, annotations: str | None = None) -> Listing:
    """List the videos of a dataset folder.  ``layout``: "auto" or one of LAYOUTS.  ``split``: the
    official split (1-3) for ucf101/miniucf/hmdb51.  ``classes``: restrict to these names (unknown ones
    raise).  ``test_fraction``/``seed``: held-out share per class for a plain class folder.
    ``annotations``: a folder (or file) with the annotation/split files when they are not in ``root``."""
    root = _check_root(root)
    if annotations is not None:
        annotations = os.path.abspath(os.path.expanduser(os.fspath(annotations)))
        if not os.path.exists(annotations):
            raise LayoutError(f"annotations path {annotations} does not exist")
    if layout in (None, "", "auto"):
        layout = _detect(root, annotations)
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; expected 'auto' or one of {', '.join(LAYOUTS)}")
    if layout in ("ucf101", "miniucf"):
        listing = _list_ucf101(root, split, annotations)
        if layout == "miniucf":
            listing = _restrict(listing, MINIUCF_CLASSES, "miniucf (MINIUCF_CLASSES)", keep_order=True)
            listing.layout = "miniucf"
    elif layout == "hmdb51":
        listing = _list_hmdb51(root, split, annotations)
    elif layout == "kinetics":
        listing = _list_kinetics(root, annotations)
    elif layout == "ssv2":
        listing = _list_ssv2(root, annotations)
    elif layout == "frames":
        listing = _list_frames(root, annotations)
    else:
        listing = _list_folder(root, test_fraction, seed)
    if classes is not None:
        listing = _restrict(listing, list(classes), "classes")
    return listing


def _restrict(listing: Listing, wanted: Sequence[str], what: str, keep_order: bool = False) -> Listing:
    valid = set(listing.classes)
    unknown = [c for c in wanted if c not in valid]
    if unknown:
        hints = {c: difflib.get_close_matches(c, listing.classes, n=3) for c in unknown}
        shown = ", ".join(listing.classes[:60]) + (" ..." if len(listing.classes) > 60 else "")
        raise LayoutError(
            f"{what}: unknown class name(s) {unknown} for {listing.layout}"
            + "".join(f"; did you mean {h} for {c!r}" for c, h in hints.items() if h)
            + f". Valid names ({len(listing.classes)}): {shown}")
    keep = set(wanted)
    cls = list(wanted) if keep_order else [c for c in listing.classes if c in keep]
    cls = _dedup(cls)
    items = [it for it in listing.items if it.label in keep]
    # problems about other classes' files are dropped; the rest (malformed lines, ...) stay
    others = valid - keep
    problems = [(e, r) for e, r in listing.problems
                if not (e in others or e.replace("\\", "/").split("/")[0] in others)]
    return Listing(listing.layout, cls, items, problems)
