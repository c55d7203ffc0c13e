"""Decode one fixed-length clip from a video file (PyAV) or a folder of frames (PIL).

Clip convention (the one behind the published video-distillation numbers):

* **Sampling** (:func:`sample_indices`): ``frames`` indices with a constant ``gap`` (default 4).  When
  the video is too short for that span, ``gap = max(1, num_frames // frames)`` instead.  The clip is
  **centred**: it starts at ``(num_frames - span) // 2`` where ``span = (frames - 1) * gap + 1``.
  A video with fewer frames than ``frames`` is **looped** (indices ``0, 1, .., n-1, 0, 1, ..``) and
  flagged ``short=True``.  Deterministic: no random offset, no RNG.
* **Several clips of one video** (:func:`sample_windows`, :func:`decode_clips`; ``vdfast prepare``
  stores ``--test-clips`` of them per test video, 3 by default, the evaluation protocol's "3 random
  clips per test video"): the window starts are drawn uniformly among all valid starts by a
  generator seeded from the video's ``key`` (its path relative to the dataset root), so a video gets
  the same clips on every run, in every worker, from either decoder.  One clip is the centred one.
* **Resize**: the short side goes to ``ClipSpec.short_side`` (default ``round(size * 120 / 112)``, so
  320x240 -> 160x120 for ``size=112``), aspect kept, with PIL's bilinear filter, which widens its
  support when shrinking (antialiased, area-like).  Frame folders use the same function, so video and
  frame inputs are resized identically.  A ``short_side`` below ``size`` is raised to ``size``.
* **Crop**: centre ``size x size`` (offsets ``(w - size) // 2``, ``(h - size) // 2``).

Decoding stops after the last needed frame.  The frame count comes from the container when it gives
one (``stream.frames``); otherwise from counting the video packets (demux only, no decode).  If decoding
then ends (end of stream, or a decode error in a truncated file) before a needed index, the true count
is what was decoded and the clip is sampled again from that count (a second pass).  A container
count that is too LOW is not detected (decoding stops at the last needed frame); the clip is then
still made of real frames, only not exactly centred.

Bad input raises :class:`DecodeError` (missing / zero-length file, not a media file, no video
stream, no decodable frame, unreadable images): a clip is never zero-filled.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DecodeError", "ClipSpec", "decode_clip", "decode_clips", "sample_indices", "sample_windows",
           "count_frames", "list_frame_files", "resize_crop", "IMAGE_EXTS"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DecodeError(Exception):
    """A file (or frame folder) that yields no clip; the message names the file and the cause."""


@dataclass(frozen=True)
class ClipSpec:
    frames: int = 16
    gap: int = 4
    size: int = 112          # output is size x size after centre crop
    short_side: int | None = None   # resize the short side to this first; default round(size*120/112)

    def __post_init__(self):
        if self.frames < 1 or self.gap < 1 or self.size < 1:
            raise ValueError(f"ClipSpec needs frames, gap and size >= 1, got {self}")
        if self.short_side is not None and self.short_side < 1:
            raise ValueError(f"ClipSpec.short_side must be >= 1, got {self.short_side}")

    @property
    def resize_short(self) -> int:
        """The short side frames are resized to before the crop (never below ``size``)."""
        s = self.short_side if self.short_side is not None else int(round(self.size * 120 / 112))
        return max(s, self.size)


def sample_indices(num_frames: int, frames: int, gap: int) -> tuple[list[int], bool]:
    """Indices of a ``frames``-long clip from a ``num_frames``-long video, and whether it was short.

    Gap ``gap`` when ``(frames - 1) * gap + 1 <= num_frames``, else ``max(1, num_frames // frames)``;
    the clip is centred in the video.  ``num_frames < frames``: gap 1, looped from the start, and
    ``short=True``.  ``num_frames < 1`` raises ``ValueError``.
    """
    if num_frames < 1:
        raise ValueError(f"cannot sample from a video of {num_frames} frames")
    if frames < 1 or gap < 1:
        raise ValueError(f"frames and gap must be >= 1 (got frames={frames}, gap={gap})")
    if num_frames < frames:
        return [i % num_frames for i in range(frames)], True
    g = _gap(num_frames, frames, gap)
    span = (frames - 1) * g + 1
    start = (num_frames - span) // 2
    return [start + i * g for i in range(frames)], False


def sample_windows(num_frames: int, frames: int, gap: int, clips: int = 1, key: str = ""
                   ) -> tuple[list[list[int]], bool]:
    """``clips`` windows of ``frames`` indices each from a ``num_frames``-long video, and whether it
    was short.

    ``clips == 1``: the centred window of :func:`sample_indices`.  ``clips > 1``: the gap of
    :func:`sample_indices`, and each window's start drawn uniformly from ``0 .. num_frames - span``
    by a generator seeded from ``key`` alone (never the global RNG), so the same ``key`` and length
    always give the same windows.  A short video gives ``clips`` copies of its looped window.
    """
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    idx, short = sample_indices(num_frames, frames, gap)
    if clips == 1 or short:
        return [idx] * clips, short
    g = _gap(num_frames, frames, gap)
    span = (frames - 1) * g + 1
    # surrogateescape: a file name that is not UTF-8 (os gives its bytes back as surrogates) seeds
    # with its own bytes; a UTF-8 name gives the same bytes, and so the same windows, as before
    seed = int.from_bytes(hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()[:8], "little")
    starts = np.random.default_rng(seed).integers(0, num_frames - span + 1, size=clips)
    return [[int(a) + i * g for i in range(frames)] for a in starts], False


def _window_info(n: int, spec: "ClipSpec", windows: list[list[int]], short: bool) -> dict[str, Any]:
    return {"num_frames": n, "short": short, "gap": _gap(n, spec.frames, spec.gap),
            "indices": windows[0], "windows": windows}


def _gap(num_frames: int, frames: int, gap: int) -> int:
    if num_frames < frames:
        return 1
    if (frames - 1) * gap + 1 <= num_frames:
        return gap
    return max(1, num_frames // frames)


# --------------------------------------------------------------------------- resize / crop

def resize_crop(frame: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3]: short side to ``spec.resize_short`` (PIL bilinear,
    antialiased), then centre crop."""
    from PIL import Image

    h, w = frame.shape[:2]
    s = spec.resize_short
    if w <= h:
        nw, nh = s, max(s, int(round(h * s / w)))
    else:
        nw, nh = max(s, int(round(w * s / h))), s
    img = Image.fromarray(np.ascontiguousarray(frame[..., :3]))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - spec.size) // 2, (nh - spec.size) // 2
    img = img.crop((left, top, left + spec.size, top + spec.size))
    return np.asarray(img, dtype=np.uint8)


# --------------------------------------------------------------------------- videos

def _open(path: str):
    import av

    try:
        return av.open(path, mode="r")
    except Exception as e:  # av.error.InvalidDataError, OSError, ...
        raise DecodeError(f"{path}: cannot open as a video ({type(e).__name__}: {e})") from e


def _video_stream(container, path: str):
    streams = container.streams.video
    if not streams:
        container.close()
        raise DecodeError(f"{path}: no video stream")
    return streams[0]


def _container_count(path: str) -> int:
    """Frame count from the container header, else from counting video packets (no decoding)."""
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        n = int(stream.frames or 0)
        if n > 0:
            return n
        count = 0
        try:
            for packet in container.demux(stream):
                if packet.size:   # the flushing packet at the end has size 0
                    count += 1
        except Exception:
            pass   # a truncated file: the decode pass finds the true count
        return count
    finally:
        container.close()


def _decode_frames(path: str, wanted: set[int], to_end: bool = False, convert=None
                   ) -> tuple[dict[int, np.ndarray], int, str | None]:
    """Decode ``path`` up to max(wanted) (or to the end with ``to_end``); return
    ({index: rgb frame, or ``convert(frame)`` when given}, frames decoded, error text if decoding
    failed part-way). ``convert`` runs as each frame is decoded, so only its (small) output is
    kept: a 4K video holds one full-resolution frame at a time."""
    last = max(wanted) if wanted and not to_end else None
    got: dict[int, np.ndarray] = {}
    n = 0
    error = None
    # a converter of this call's own: PyAV (>= 18) keeps one per thread, whose swscale slice
    # threads a forked ``prepare --workers`` decoder inherits without the threads, and waits on
    # forever (the parent had converted frames, e.g. written videos, before the fork)
    from av.video.reformatter import VideoReformatter

    to_rgb = VideoReformatter()
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        try:
            for frame in container.decode(stream):
                if n in wanted:
                    rgb = to_rgb.reformat(frame, format="rgb24").to_ndarray()
                    got[n] = rgb if convert is None else convert(rgb)
                n += 1
                if last is not None and n > last:
                    break
        except Exception as e:  # corrupt data part-way: what was decoded before it stands
            error = f"{type(e).__name__}: {e}"
    finally:
        container.close()
    return got, n, error


def count_frames(path: str) -> int:
    """The number of frames that actually decode (decodes the whole file)."""
    _check_file(path)
    _, n, error = _decode_frames(path, set(), to_end=True)
    if n == 0:
        raise DecodeError(f"{path}: no decodable frame" + (f" ({error})" if error else ""))
    return n


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise DecodeError(f"{path}: file not found")
    if os.path.isdir(path):
        raise DecodeError(f"{path}: is a folder, not a video file (frame folders need kind='frames')")
    if os.path.getsize(path) == 0:
        raise DecodeError(f"{path}: zero-length file")


def _decode_video(path: str, spec: ClipSpec, clips: int, key: str) -> tuple[np.ndarray, dict[str, Any]]:
    _check_file(path)
    n = _container_count(path)
    if n < 1:   # nothing demuxed: count by decoding (raises if nothing decodes)
        n = count_frames(path)
    for _attempt in range(3):
        windows, short = sample_windows(n, spec.frames, spec.gap, clips, key)
        wanted = {i for w in windows for i in w}
        got, m, error = _decode_frames(path, wanted, convert=lambda rgb: resize_crop(rgb, spec))
        if wanted <= got.keys():
            return assemble_windows(got, windows, spec, resized=True), _window_info(n, spec, windows, short)
        if m == 0:
            raise DecodeError(f"{path}: no decodable frame" + (f" ({error})" if error else ""))
        n = m   # the container's count was too high (or the file is truncated): use what decoded
    raise DecodeError(f"{path}: frame count unstable between decode passes")  # pragma: no cover


def assemble_windows(got: dict[int, np.ndarray], windows: list[list[int]], spec: ClipSpec,
                     load=None, resized: bool = False) -> np.ndarray:
    """uint8 ``[len(windows), frames, size, size, 3]`` from decoded frames ``got`` (index -> RGB;
    already resized and cropped with ``resized``), or from ``load(index)`` when given; each frame
    is resized and cropped once however many windows share it."""
    out = np.empty((len(windows), spec.frames, spec.size, spec.size, 3), np.uint8)
    done: dict[int, np.ndarray] = {}
    for c, idx in enumerate(windows):
        for k, i in enumerate(idx):
            if i not in done:
                done[i] = got[i] if resized else resize_crop(got[i] if load is None else load(i), spec)
            out[c, k] = done[i]
    return out


# --------------------------------------------------------------------------- frame folders

def _natural_key(name: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name) if t]


def list_frame_files(folder: str) -> list[str]:
    """Image files of a frame folder in natural order (``frame9`` before ``frame10``)."""
    try:
        names = [e.name for e in os.scandir(folder)
                 if e.name.lower().endswith(IMAGE_EXTS) and not e.name.startswith(".") and e.is_file()]
    except FileNotFoundError as e:
        raise DecodeError(f"{folder}: frame folder not found") from e
    except NotADirectoryError as e:
        raise DecodeError(f"{folder}: not a folder (video files need kind='video')") from e
    names.sort(key=_natural_key)
    return [os.path.join(folder, n) for n in names]


def _decode_frames_folder(folder: str, spec: ClipSpec, clips: int, key: str
                          ) -> tuple[np.ndarray, dict[str, Any]]:
    from PIL import Image

    files = list_frame_files(folder)
    if not files:
        raise DecodeError(f"{folder}: no image files ({', '.join(IMAGE_EXTS)}) in the frame folder")
    n = len(files)
    windows, short = sample_windows(n, spec.frames, spec.gap, clips, key)

    def load(i):
        try:
            with Image.open(files[i]) as img:
                return np.asarray(img.convert("RGB"), dtype=np.uint8)
        except Exception as e:
            raise DecodeError(f"{files[i]}: unreadable image ({type(e).__name__}: {e})") from e
    return assemble_windows({}, windows, spec, load=load), _window_info(n, spec, windows, short)


# --------------------------------------------------------------------------- entry point

def decode_clip(item_or_path, spec: ClipSpec, kind: str = "video") -> tuple[np.ndarray, dict]:
    """Decode one clip (the centred window): uint8 ``[spec.frames, spec.size, spec.size, 3]`` RGB,
    and ``{"num_frames", "short", "gap", "indices", "windows"}``.

    ``item_or_path``: a path (str / PathLike), or an object with ``.path`` and ``.kind`` (a
    :class:`vdfast.data.layouts.VideoItem`, whose kind wins over ``kind``).  ``kind``: "video" or
    "frames" (a folder of images).  Raises :class:`DecodeError` for anything that yields no clip.
    """
    clips, info = decode_clips(item_or_path, spec, kind)
    return clips[0], info


def decode_clips(item_or_path, spec: ClipSpec, kind: str = "video", clips: int = 1,
                 key: str | None = None) -> tuple[np.ndarray, dict]:
    """Decode ``clips`` clips of one video in one decoding pass: uint8 ``[clips, spec.frames,
    spec.size, spec.size, 3]``, and the info of :func:`decode_clip` (``"windows"``: the indices of
    each clip).  The windows are :func:`sample_windows`'s for ``key`` (default: the path as given;
    ``vdfast prepare`` passes the path relative to the dataset root)."""
    if hasattr(item_or_path, "path"):
        path = os.fspath(item_or_path.path)
        kind = getattr(item_or_path, "kind", kind) or kind
    else:
        path = os.fspath(item_or_path)
    key = path if key is None else key
    if kind == "frames":
        return _decode_frames_folder(path, spec, clips, key)
    if kind != "video":
        raise ValueError(f"kind must be 'video' or 'frames', got {kind!r}")
    return _decode_video(path, spec, clips, key)
