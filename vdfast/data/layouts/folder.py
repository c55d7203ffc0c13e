"""Plain class folders: ``<class>/<video>`` (a seeded held-out share per class is the test split) or
``train|test/<class>/<video>``."""
from __future__ import annotations

import os
import random

from vdfast.data.layouts.base import (
    VIDEO_EXTS, TRAIN_NAMES, TEST_NAMES, VideoItem, Listing, LayoutError, Layout, _subdirs, _files, _has_files)

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


def _read(root, test_fraction=0.2, seed=0, **_):
    return _list_folder(root, test_fraction, seed)


LAYOUT = Layout("folder", _read, lambda root, annotations: _looks_folder(root),
                "<class>/<video> or train|test/<class>/<video> files (folder)")
