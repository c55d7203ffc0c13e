"""Read video datasets in the layouts their users have on disk, one module per layout behind a registry.

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

Every video appears once: a line listed twice is used once, and a video in both the train and the
test list is kept in test only; both are reported in ``problems``.

Item order: annotation order (train list then test list) for annotated layouts, sorted class then
sorted file name for ``folder``.  Splits are "train" and "test"; for Kinetics and SSv2 "test" is the
labelled validation set (their test sets carry no labels).

:data:`REGISTRY` maps each layout's name to its :class:`Layout` (``ucf101.py``, ``hmdb51.py``,
``kinetics.py``, ``ssv2.py``, ``frames.py``, ``folder.py``; the shared parts are in ``base.py``). A new
layout is a module defining a :class:`Layout` and one line here.
"""
from __future__ import annotations

import os
from typing import Sequence

from vdfast.data.layouts import folder, frames, hmdb51, kinetics, ssv2, ucf101
from vdfast.data.layouts.base import (VIDEO_EXTS, Layout, LayoutError, Listing, VideoItem, _restrict,
                                      check_items)
from vdfast.data.layouts.ucf101 import MINIUCF_CLASSES

__all__ = ["LAYOUTS", "MINIUCF_CLASSES", "VIDEO_EXTS", "VideoItem", "Listing", "LayoutError", "detect_layout",
           "list_videos", "Layout", "REGISTRY"]

# name -> Layout, in the order LAYOUTS lists them
REGISTRY: dict[str, Layout] = {lay.name: lay for lay in (ucf101.UCF101, ucf101.MINIUCF, hmdb51.LAYOUT,
                                                         kinetics.LAYOUT, ssv2.LAYOUT, frames.LAYOUT,
                                                         folder.LAYOUT)}
LAYOUTS = tuple(REGISTRY)

# detection tries the most specific annotation files first; a plain class folder matches last
_DETECT_ORDER = ("ucf101", "ssv2", "kinetics", "hmdb51", "frames", "folder")


def _detect(root: str, annotations: str | None = None) -> str:
    for name in _DETECT_ORDER:
        if REGISTRY[name].looks(root, annotations):
            return name
    raise LayoutError(
        f"cannot tell the dataset layout of {root}. Looked for: "
        + "; ".join(REGISTRY[n].hint for n in _DETECT_ORDER)
        + f". Pass --layout one of {', '.join(LAYOUTS)} (and --annotations DIR where it has "
          "annotation files)")


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
    if layout not in REGISTRY:
        raise LayoutError(f"unknown layout {layout!r}; expected 'auto' or one of {', '.join(LAYOUTS)}")
    listing = REGISTRY[layout].read(root, split=split, annotations=annotations, test_fraction=test_fraction,
                                    seed=seed)
    if classes is not None:
        listing = _restrict(listing, list(classes), "classes")
    return check_items(listing, root)
