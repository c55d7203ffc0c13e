"""Frame folders (``<video_id>/<frame>.jpg``) with a CSV or JSON annotation file of video_id, label
and split."""
from __future__ import annotations

import csv
import json
import os
import re
from typing import Iterable

from vdfast.data.layouts.base import (
    IMAGE_EXTS, VideoItem, Listing, LayoutError, Layout, _subdirs, _files, _has_files, _ann_dirs, _norm_split)

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
            with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
                header = [h.strip().lower() for h in next(csv.reader(f), [])]
        except OSError:
            return False
        return any(k in header for k in _VID_KEYS) and any(k in header for k in _LABEL_KEYS) \
            and "youtube_id" not in header
    try:
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
            head = f.read(4096)
    except OSError:
        return False
    return any(f'"{k}"' in head for k in _LABEL_KEYS)


def _frames_rows(path: str) -> Iterable[tuple[str, dict | None]]:
    """(entry name, row dict or None if malformed) for each annotation row."""
    base = os.path.basename(path)
    if path.lower().endswith(".csv"):
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
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
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
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


def _read(root, annotations=None, **_):
    return _list_frames(root, annotations)


LAYOUT = Layout("frames", _read, _looks_frames, "<video_id>/<frame>.jpg with a video_id,label,split "
                "CSV/JSON (frames)")
