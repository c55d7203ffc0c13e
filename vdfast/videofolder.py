"""Export a synset as video files others can open, share and load without vdfast.

``vdfast export SYNSET DIR`` (:func:`export`, ``vdfast.export``) renders every video of a synset
of any kind (pixel, static-dynamic, generated: what :meth:`vdfast.Synset.render` gives, as uint8
pixels) and writes a Hugging Face VideoFolder tree::

    DIR/train/<class>/<class>_<i>.mp4     one file per video, i = its index within the class
    DIR/train/metadata.jsonl              file_name, label (the class folder's name), label_id
                                          (its index in the synset's classes), soft_label (the
                                          soft label vector in that class order, where the
                                          synset has soft labels)
    DIR/vdfast_export.json                the codec, pixel format, fps, quality, class names and
                                          folders, normalisation, and the synset's header

``datasets.load_dataset("videofolder", data_dir=DIR)`` loads it: a ``video`` column and the
metadata's columns (with a metadata file the loader takes ``label`` from it, as a string; cast it
with ``ds.cast_column("label", ClassLabel(names=info["folders"]))`` for class indices in vdfast's
order). The codec is H.264 (``libx264``) where the installed PyAV/ffmpeg has that encoder, else
MPEG-4 Part 2 (``mpeg4``); ``vdfast_export.json`` says which. Both are lossy: at the default
quality (``crf`` 17, yuv420p) the decoded frames differ from the rendered uint8 pixels by a few
grey levels on average (bounded in tests/test_export.py); ``pix_fmt="yuv444p"`` (libx264) keeps
full colour resolution, which fewer players support.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np

from vdfast.version import __version__

FORMATS = ("mp4",)
METADATA = "metadata.jsonl"
INFO = "vdfast_export.json"


class ExportError(ValueError):
    """An export that cannot be done as asked (a non-empty folder, an unknown format)."""


def pick_codec() -> str:
    """``libx264`` when this PyAV/ffmpeg can encode H.264 with it, else ``mpeg4``."""
    import av

    try:
        av.Codec("libx264", "w")
        return "libx264"
    except Exception:  # an ffmpeg built without libx264 (a GPL component)
        return "mpeg4"


def _folder_names(classes) -> list[str]:
    """A safe, distinct folder name per class (the class name, with path separators and characters
    that file systems refuse replaced by ``_``)."""
    out, seen = [], set()
    for i, c in enumerate(classes):
        name = re.sub(r'[\\/:*?"<>|\x00-\x1f]', "_", str(c)).strip().lstrip(".") or f"class_{i}"
        base, k = name, 1
        while name in seen:
            name, k = f"{base}_{k}", k + 1
        seen.add(name)
        out.append(name)
    return out


def _write_mp4(path: Path, frames: np.ndarray, codec: str, fps: int, crf: int, pix_fmt: str) -> None:
    """``frames`` uint8 ``[T, H, W, 3]`` RGB into ``path``."""
    import av

    t, h, w, _ = frames.shape
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "medium"}
        else:  # mpeg4: a constant quantiser (ffmpeg's -q:v); crf 0..51 mapped onto q 1..31
            q = max(1, min(31, round(1 + 30 * crf / 51)))
            stream.options = {"flags": "+qscale", "global_quality": str(q * 118)}  # FF_QP2LAMBDA
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def export(synset, out, format: str = "mp4", fps: int = 8, crf: int = 17,
           pix_fmt: str = "yuv420p", split: str = "train") -> dict:
    """Write every video of ``synset`` (a :class:`vdfast.Synset`, or a saved synset's directory)
    into ``out`` as a Hugging Face VideoFolder tree (see the module docstring).

    Args:
        format: ``mp4`` (the only one so far).
        fps: frame rate written into the files (the clips have no native rate).
        crf: quality, lower is better (libx264's constant rate factor; for mpeg4 mapped onto its
            quantiser). 17 is close to visually lossless.
        pix_fmt: ``yuv420p`` (plays everywhere; needs even frame sizes) or ``yuv444p`` (libx264).
        split: the split folder (``train``).

    Returns ``{"dir", "videos", "codec", "pix_fmt", "metadata", "info"}``. Raises
    :class:`ExportError` when ``out`` exists and is not an empty folder (nothing is overwritten).
    """
    from vdfast.synsets import Synset, load

    if format not in FORMATS:
        raise ExportError(f"export format {format!r} is not one of: {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} is not empty; export writes into a new or empty folder "
                          f"(nothing is overwritten)")
    if not isinstance(synset, Synset):
        synset = load(synset)
    codec = pick_codec()
    if pix_fmt not in ("yuv420p", "yuv444p"):
        raise ExportError(f"pix_fmt {pix_fmt!r} is not one of: yuv420p, yuv444p")
    if pix_fmt == "yuv444p" and codec != "libx264":
        raise ExportError(f"pix_fmt yuv444p needs libx264, which this PyAV/ffmpeg lacks ({codec} "
                          f"is used); export with pix_fmt yuv420p")
    if pix_fmt == "yuv420p" and synset.size % 2:
        raise ExportError(f"yuv420p needs even frame sizes, the synset's are {synset.size}px; "
                          f"export with pix_fmt yuv444p" + ("" if codec == "libx264" else
                                                             " (needs libx264)"))
    videos, labels = synset.render(uint8=True)  # [N, C, T, H, W] uint8
    arr = videos.permute(0, 2, 3, 4, 1).contiguous().numpy()  # [N, T, H, W, C]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, -1)
    soft = None if synset.soft_labels is None else synset.soft_labels.detach().float().cpu()
    folders = _folder_names(synset.classes)
    created = not out.exists()
    root = out / split
    rows, count = [], [0] * synset.num_classes
    try:
        for f in folders:
            (root / f).mkdir(parents=True, exist_ok=True)
        for n, y in enumerate(labels.tolist()):
            i, count[y] = count[y], count[y] + 1
            rel = f"{folders[y]}/{folders[y]}_{i}.mp4"
            _write_mp4(root / rel, arr[n], codec, fps, crf, pix_fmt)
            row = {"file_name": rel, "label": folders[y], "label_id": int(y)}
            if soft is not None:
                row["soft_label"] = [round(float(p), 7) for p in soft[n]]
            rows.append(row)
        (root / METADATA).write_text("".join(json.dumps(r) + "\n" for r in rows))
        header = synset.header()
        info = {"vdfast": __version__, "format": format, "codec": codec, "pix_fmt": pix_fmt,
                "fps": fps, "crf": crf, "container": "mp4", "split": split,
                "videos": len(rows), "kind": synset.kind, "method": synset.meta.get("method"),
                "ipc": synset.ipc, "classes": synset.classes, "folders": folders,
                "frames": synset.frames, "size": synset.size,
                "normalization": {"mean": list(synset.mean), "std": list(synset.std)},
                "soft_labels": soft is not None,
                "note": "pixels are round(255 * denormalize(video)); the codec is lossy",
                "synset": {k: v for k, v in header.items() if k not in ("config",)}}
        (out / INFO).write_text(json.dumps(info, indent=1, default=str))
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        else:  # it was an empty folder: empty it again
            for p in out.iterdir():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        raise
    return {"dir": str(out), "videos": len(rows), "codec": codec, "pix_fmt": pix_fmt,
            "metadata": os.fspath(root / METADATA), "info": os.fspath(out / INFO)}
