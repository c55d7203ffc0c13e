"""Kinetics (400/600/700: ``train.csv`` / ``validate.csv`` with a youtube_id column, videos named
``<youtube_id>_<start>_<end>.mp4`` or ``<youtube_id>.mp4``); "test" is the labelled validation set."""
from __future__ import annotations

import csv
import os

from vdfast.data.layouts.base import (
    VideoItem, Listing, LayoutError, Layout, _isfile, _subdirs, _ann_dirs, _dedup, _index_videos)

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
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            header = next(csv.reader(f), [])
    except OSError:
        return False
    return column in [h.strip().lower() for h in header]




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
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
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


def _read(root, annotations=None, **_):
    return _list_kinetics(root, annotations)


def _looks(root, annotations):
    return _kinetics_csv_dir(root, annotations)[0] is not None


LAYOUT = Layout("kinetics", _read, _looks, "train.csv/validate.csv with youtube_id (kinetics)")
