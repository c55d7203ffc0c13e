"""What every dataset layout shares: the listing types, :class:`LayoutError`, the file-system
helpers, and :class:`Layout` (one registry entry: how to recognise a layout and how to list it)."""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

VIDEO_EXTS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ogv",
              ".3gp", ".ts")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

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


class LayoutError(ValueError):
    """The dataset as a whole cannot be read; the message says what was expected and what to do."""


@dataclass(frozen=True)
class Layout:
    """One dataset layout of the registry (:data:`vdfast.data.layouts.REGISTRY`).

    ``read(root, split=, annotations=, test_fraction=, seed=)`` lists a folder in this layout (each
    layout uses the options that apply to it); ``looks(root, annotations)`` says whether a folder is
    in this layout (None: never detected, only asked for by name); ``hint`` is what detection looks
    for, for the error when no layout matches."""

    name: str
    read: Callable[..., Listing]
    looks: Callable[[str, str | None], bool] | None = None
    hint: str = ""


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
    """The lines of a text annotation file: a UTF-8 byte-order mark dropped (``utf-8-sig``); bytes
    that are not UTF-8 kept as surrogates (``surrogateescape``), so a file name written in another
    encoding still finds its file (``os`` functions encode it back to the same bytes)."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
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


def why_not_found(path: str) -> str:
    """Why a listed video ``path`` is not a readable file, in words: a dangling symbolic link, a
    folder, a folder that cannot be read, a file that cannot be read, or simply a missing file."""
    try:
        if os.path.islink(path) and not os.path.exists(path):
            return f"dangling symbolic link (to {os.readlink(path)})"
        if os.path.isdir(path):
            return "a folder, not a video file"
        if os.path.isfile(path) and not os.access(path, os.R_OK):
            return "unreadable file (permission denied)"
        parent = os.path.dirname(path)
        while parent and not os.path.isdir(parent) and parent != os.path.dirname(parent):
            parent = os.path.dirname(parent)
        if parent and os.path.isdir(parent) and not os.access(parent, os.R_OK | os.X_OK):
            return f"its folder {parent} cannot be read (permission denied)"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    return "missing file"


def add_item(items: list[VideoItem], problems: list[tuple[str, str]], entry: str, label: str | None,
             find: Callable[[], str | None], split: str, unknown: str, missing: str,
             expected: str | None = None) -> None:
    """One annotation entry: its :class:`VideoItem` appended to ``items``, or why it is left out
    appended to ``problems`` as ``(entry, reason)``: ``label`` None is an unknown label (``unknown``
    says which), else ``find()`` (the file's path) None is a missing file (``missing`` says where
    it was listed; ``expected``, the path it should have, tells a dangling link, a folder or an
    unreadable folder from a missing file)."""
    if label is None:
        problems.append((entry, f"unknown label {unknown}"))
        return
    path = find()
    if path is None:
        why = why_not_found(expected) if expected else "missing file"
        problems.append((entry, f"{why} ({missing})"))
        return
    items.append(VideoItem(os.path.abspath(path), label, split))


def check_items(listing: Listing, root: str) -> Listing:
    """The listing with every video once: a video listed again in the same split is used once;
    a video in both the train and the test list is kept in test only (a test video must never be
    trained on: the evaluation would score videos the synset was distilled from). Each dropped
    entry is reported in ``problems`` (``(path relative to root, reason)``)."""
    first: dict[tuple[str, str], VideoItem] = {}
    repeats: dict[tuple[str, str], int] = {}
    test = {it.path for it in listing.items if it.split == "test"}
    items, problems = [], list(listing.problems)
    moved = []
    for it in listing.items:
        key = (it.path, it.split)
        if key in first:
            repeats[key] = repeats.get(key, 1) + 1
            if it.label != first[key].label:
                problems.append((_rel(it.path, root), f"listed again in the {it.split} list with label "
                                 f"{it.label!r}; the first label {first[key].label!r} is used"))
            continue
        first[key] = it
        if it.split == "train" and it.path in test:
            moved.append(it)
            continue
        items.append(it)
    for (path, split), n in repeats.items():
        problems.append((_rel(path, root), f"listed {n} times in the {split} list: used once"))
    for it in moved:
        problems.append((_rel(it.path, root), "in both the train and the test list: kept in test only "
                                              "(a test video is never trained on)"))
    if len(items) == len(listing.items):
        return listing
    return Listing(listing.layout, listing.classes, items, problems)


def _rel(path: str, root: str) -> str:
    try:
        return os.path.relpath(path, root).replace(os.sep, "/")
    except ValueError:  # another drive (Windows)
        return path


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
