"""HMDB51 (``<class>/*.avi`` with the ``testTrainMulti_7030_splits/<class>_test_splitN.txt`` files)."""
from __future__ import annotations

import os
from typing import Sequence

from vdfast.data.layouts.base import (
    VIDEO_EXTS, VideoItem, Listing, LayoutError, Layout, _isdir, _subdirs, _files, _has_files, _read_lines,
    why_not_found, _ann_dirs, _dedup, _check_split)

HMDB_SPLITS_DIR = "testTrainMulti_7030_splits"


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
            "--layout hmdb51 --annotations DIR (annotations=DIR)")
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
                problems.append((f"{c}/{name}", f"{why_not_found(path)} (listed in {fname}:{ln})"))
                continue
            n_listed += 1
            (train if tag == "1" else test).append(VideoItem(os.path.abspath(path), c, "train" if tag == "1" else "test"))
        if n_listed == 0:
            problems.append((c, f"empty class: no video of {fname} found"))
    for d in _subdirs(vroot):
        if d not in files and _has_files(os.path.join(vroot, d), VIDEO_EXTS):
            problems.append((d, f"class folder without a split file ({d}_test_split{split}.txt); skipped"))
    return Listing("hmdb51", classes, train + test, problems)


def _read(root, split=1, annotations=None, **_):
    return _list_hmdb51(root, split, annotations)


LAYOUT = Layout("hmdb51", _read, _looks_hmdb, f"{HMDB_SPLITS_DIR}/<class>_test_split1.txt (hmdb51)")
