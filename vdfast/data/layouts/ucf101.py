"""UCF101 (``UCF-101/<class>/*.avi`` with ``ucfTrainTestlist/``: classInd.txt, train/testlist0N.txt) and
miniUCF (UCF101 restricted to :data:`MINIUCF_CLASSES`, in that order)."""
from __future__ import annotations

import os

from vdfast.data.layouts.base import (
    VIDEO_EXTS, VideoItem, Listing, LayoutError, Layout, _isdir, _isfile, _subdirs, _has_files, _read_lines,
    _check_split, add_item, _restrict)

UCF_SPLITS_DIR = "ucfTrainTestlist"

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
            "UCF101TrainTestSplits-RecognitionTask.zip and pass its folder with --annotations DIR "
            "(annotations=DIR)")
    for name in (f"trainlist0{split}.txt", f"testlist0{split}.txt"):
        if not _isfile(os.path.join(sdir, name)):
            raise LayoutError(f"ucf101: {os.path.join(sdir, name)} is missing (expected {need} in {sdir}); "
                              "pass the full ucfTrainTestlist folder with --annotations DIR")
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
            add_item(items, problems, rel, lower.get(rel.split("/")[0].lower()), lambda: finder.find(rel),
                     split_name, unknown=f"{rel.split('/')[0]!r} (not in classInd.txt; {fname}:{ln})",
                     missing=f"listed in {fname}:{ln}, looked for under {vdir}",
                     expected=os.path.join(vdir, rel))
    have = {it.label for it in items}
    problems += [(c, "empty class: none of its listed videos was found") for c in classes if c not in have]
    return Listing("ucf101", classes, items, problems)


def _read_ucf101(root, split=1, annotations=None, **_):
    return _list_ucf101(root, split, annotations)


def _read_miniucf(root, split=1, annotations=None, **_):
    listing = _restrict(_list_ucf101(root, split, annotations), MINIUCF_CLASSES, "miniucf (MINIUCF_CLASSES)",
                        keep_order=True)
    listing.layout = "miniucf"
    return listing


UCF101 = Layout("ucf101", _read_ucf101, _looks_ucf, f"UCF-101/ or {UCF_SPLITS_DIR}/classInd.txt (ucf101)")
MINIUCF = Layout("miniucf", _read_miniucf)  # UCF101 restricted to MINIUCF_CLASSES; never detected
