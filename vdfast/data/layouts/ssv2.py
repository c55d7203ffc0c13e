"""Something-Something V2 (the labels / train / validation JSON files and
``20bn-something-something-v2/<id>.webm``); "test" is the labelled validation set."""
from __future__ import annotations

import json
import os
import re

from vdfast.data.layouts.base import (
    VideoItem, Listing, LayoutError, Layout, _isdir, _isfile, _ann_dirs, _dedup, _index_videos, add_item)

SSV2_LABELS = "something-something-v2-labels.json"
SSV2_TRAIN = "something-something-v2-train.json"
SSV2_VAL = "something-something-v2-validation.json"
SSV2_VIDEOS = "20bn-something-something-v2"


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
        with open(os.path.join(ldir, SSV2_LABELS), encoding="utf-8-sig", errors="surrogateescape") as f:
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
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
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
            add_item(items, problems, vid, cls, lambda: index.get(vid), split_name,
                     unknown=f"{e['template']!r} (not in {SSV2_LABELS}; {fname})",
                     missing=f"{vid}.webm, {fname}")
    if not found_any:
        raise LayoutError(f"ssv2: neither {SSV2_TRAIN} nor {SSV2_VAL} in {ldir}")
    return Listing("ssv2", classes, items, problems)


def _read(root, annotations=None, **_):
    return _list_ssv2(root, annotations)


def _looks(root, annotations):
    return _ssv2_dir(root, annotations) is not None


LAYOUT = Layout("ssv2", _read, _looks, f"{SSV2_LABELS} (ssv2)")
