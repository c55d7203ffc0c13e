"""NVIDIA DALI video decoding for ``vdfast prepare``: batches of files through DALI's video reader.

:func:`decode_videos_dali` reads the clips of many files with ``fn.experimental.readers.video``
(DALI's current video reader; the legacy ``fn.readers.video`` is GPU-only) in batches of
``batch_size`` sequences, with up to ``readers`` reader pipelines at once (DALI's reader decodes its
samples one after another on one thread). Every clip is one line of the reader's file list,
``file label first-frame end-frame`` in frame numbers, with ``sequence_length`` = the clip's frames
and ``stride`` = its gap: the reader decodes only up to the clip's last frame and returns only its
frames. The resize (short side to :attr:`ClipSpec.resize_short`, antialiased bilinear) and
the centre crop run inside the same pipeline, so with ``device="mixed"`` they run on the GPU and only
the ``size x size`` uint8 clips are copied to the host.

Devices:

* ``"mixed"``: the reader's GPU backend (NVDEC: H.264, HEVC, MPEG-4, VP8, VP9, AV1, MJPEG), resize
  and crop on the GPU. Needs a CUDA device; CI has none, so only the GPU test checks it.
* ``"cpu"``: the reader's CPU backend (libavcodec) and CPU resize. DALI 2.4's CPU backend reads
  VP8, VP9 and MJPEG only: any other codec is refused up front with a :class:`DecodeError` that
  says to use PyAV.

The clip convention is PyAV's (:mod:`vdfast.data.decode`): the same frame count (PyAV counts the
container's packets before DALI reads anything), the same windows (:func:`sample_windows`, keyed the
same way), short videos looped the same way, the same output size and crop offsets. What differs is
decoder arithmetic: YUV->RGB conversion and the resampling filter's rounding (the test states the
tolerance). A file whose decoded length is shorter than its container says (DALI pads the missing
frames; they are detected by their frame number -1) is counted again by decoding it, as the PyAV
path does, and read a second time.

``decoder="auto"`` (:func:`resolve_decoder`) picks DALI on a GPU when it is installed, PyAV
otherwise.
"""
from __future__ import annotations

import itertools
import math
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from vdfast.config import DECODERS
from vdfast.data.decode import (ClipSpec, DecodeError, _check_file, _container_count, _gap, _open,
                                _video_stream, _window_info, count_frames, sample_windows)

__all__ = ["DECODERS", "INSTALL", "DALI_CPU_CODECS", "dali_reason", "require_dali", "resolve_decoder",
           "decode_clip_dali", "decode_clips_dali", "decode_videos_dali"]


INSTALL = "pip install 'vdfast[dali]'"
DALI_CPU_CODECS = ("vp8", "vp9", "mjpeg")  # what DALI 2.4's CPU video backend decodes
DALI_DEVICES = ("cpu", "mixed")

# DALI's crop places its window at round(crop_pos * (input - crop)), rounding .5 up; PyAV's path
# (resize_crop) uses (input - crop) // 2. Just under 0.5 rounds the same way as the floor division
# for any input under 10^5 pixels.
_CENTRE = 0.5 - 1e-6
_PLAIN_EXT = re.compile(r"\.[A-Za-z0-9]{1,8}")


def dali_reason() -> str | None:
    """None when DALI is importable, else why not (and how to install it: DALI is an optional extra)."""
    try:
        import nvidia.dali  # noqa: F401
    except Exception as e:
        return (f"NVIDIA DALI is not installed (import nvidia.dali: {type(e).__name__}); install the "
                f"optional extra with `{INSTALL}`, or decode with --decoder pyav")
    return None


def require_dali() -> None:
    """RuntimeError saying how to install DALI when it is not importable."""
    why = dali_reason()
    if why:
        raise RuntimeError(f"the DALI decoder was asked for, but {why}")


def resolve_decoder(decoder: str) -> tuple[str, str]:
    """(``pyav`` | ``dali``, DALI device ``cpu`` | ``mixed``) for a requested decoder."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder {decoder!r} is not one of {', '.join(DECODERS)}")
    import torch

    gpu = torch.cuda.is_available()
    if decoder == "pyav" or (decoder == "auto" and (not gpu or dali_reason())):
        return "pyav", "cpu"
    require_dali()
    return "dali", "mixed" if gpu else "cpu"


# --------------------------------------------------------------------------- one file

def decode_clip_dali(path: str, spec: ClipSpec, device: str = "cpu") -> tuple[np.ndarray, dict]:
    """Like :func:`vdfast.data.decode.decode_clip` for a video file, decoded by DALI: uint8
    ``[spec.frames, spec.size, spec.size, 3]`` and the same info dict."""
    clips, info = decode_clips_dali(path, spec, device)
    return clips[0], info


def decode_clips_dali(path: str, spec: ClipSpec, device: str = "cpu", clips: int = 1,
                      key: str | None = None) -> tuple[np.ndarray, dict]:
    """Like :func:`vdfast.data.decode.decode_clips` (same windows for the same ``key``), decoded
    by DALI; raises :class:`DecodeError` for a file that yields no clip. Decoding many files?
    :func:`decode_videos_dali` batches them."""
    (got,) = decode_videos_dali([path], spec, device, clips=clips, keys=None if key is None else [key])
    if isinstance(got, DecodeError):
        raise got
    return got


# --------------------------------------------------------------------------- many files

@dataclass
class _Video:
    """One file of a :func:`decode_videos_dali` call and what is known of it so far."""
    path: str
    key: str
    n: int                      # frame count the windows are sampled from
    windows: list | None = None
    short: bool = False
    error: DecodeError | None = None
    recounted: bool = False


@dataclass(frozen=True)
class _Read:
    """One line of a reader's file list: ``frames`` frames of video ``video`` from ``start``,
    every ``stride``-th."""
    video: int
    start: int
    stride: int


def decode_videos_dali(paths, spec: ClipSpec, device: str = "cpu", clips: int = 1, keys=None,
                       batch_size: int = 8, readers: int | None = None
                       ) -> list[tuple[np.ndarray, dict] | DecodeError]:
    """Decode ``clips`` clips of each video file in ``paths`` with DALI's video reader, batched.

    Returns one entry per path, in order: ``(uint8 [clips, spec.frames, spec.size, spec.size, 3],
    info)`` as :func:`vdfast.data.decode.decode_clips` gives for that file and key, or the
    :class:`DecodeError` saying why that file yields no clip (one bad file never fails the others).

    ``device``: ``"cpu"`` (VP8/VP9/MJPEG only) or ``"mixed"`` (NVDEC decode, resize and crop on the
    GPU). ``keys``: what seeds each file's random windows (default: the paths as given).
    ``batch_size``: sequences per reader batch (each holds ``spec.frames`` decoded frames at the
    file's resolution on the device before the resize). ``readers``: reader pipelines run at once,
    each on its own share of the files (default: the CPU count, at most 4).

    Example::

        out = decode_videos_dali(["a.webm", "b.webm"], ClipSpec(frames=16, gap=4, size=112))
        clips, info = out[0]          # clips: [1, 16, 112, 112, 3]
    """
    require_dali()
    if device not in DALI_DEVICES:
        raise ValueError(f"DALI device {device!r} is not one of {', '.join(DALI_DEVICES)}")
    readers = readers if readers is not None else max(1, min(4, os.cpu_count() or 1))
    if clips < 1 or batch_size < 1 or readers < 1:
        raise ValueError(f"clips, batch_size and readers must be >= 1, got clips={clips}, "
                         f"batch_size={batch_size}, readers={readers}")
    paths = [os.fspath(p) for p in paths]
    keys = list(paths) if keys is None else [os.fspath(k) for k in keys]
    if len(keys) != len(paths):
        raise ValueError(f"{len(keys)} keys for {len(paths)} paths")
    videos = [_probe(p, k, device) for p, k in zip(paths, keys)]
    done: dict[int, dict[tuple[int, int], np.ndarray]] = {}
    todo = [i for i, v in enumerate(videos) if v.error is None]
    for _round in range(2):  # a second round for files whose decoded length was wrong
        for i in todo:
            videos[i].windows, videos[i].short = sample_windows(videos[i].n, spec.frames, spec.gap,
                                                                clips, videos[i].key)
        reads = {_read_of(i, videos[i], spec, w): None for i in todo for w in videos[i].windows}
        got = _read_all(list(reads), videos, spec, device, batch_size, readers)
        again = []
        for i in todo:
            v = videos[i]
            frames = _frames_of(i, v, spec, got)
            if isinstance(frames, dict):
                done[i] = frames
            elif not v.recounted:
                # frames missing, or DALI failed part-way (a truncated file): the container's count
                # was too high. Count what decodes (PyAV, as its own path does) and read again.
                v.recounted = True
                try:
                    v.n = count_frames(v.path)
                    again.append(i)
                except DecodeError as e:
                    v.error = e
            else:
                v.error = frames or DecodeError(
                    f"{v.path}: DALI did not return the frames of windows {v.windows} ({v.n} frames "
                    f"decode with PyAV)")
        todo = again
        if not todo:
            break
    out = []
    for i, v in enumerate(videos):
        if v.error is not None:
            out.append(v.error)
            continue
        frames = done[i]
        arr = np.empty((clips, spec.frames, spec.size, spec.size, 3), np.uint8)
        for c, w in enumerate(v.windows):
            for k, f in enumerate(w):
                arr[c, k] = frames[(c, k)]
        out.append((arr, _window_info(v.n, spec, v.windows, v.short)))
    return out


def _probe(path: str, key: str, device: str) -> _Video:
    """The file checks, codec and frame count (PyAV: demux only) of one file, before DALI."""
    v = _Video(path, key, 0)
    try:
        _check_file(path)
        container = _open(path)
        try:
            # the codec's own name (vp9), not the decoder PyAV picked for it (libvpx-vp9)
            codec = _video_stream(container, path).codec_context.codec.canonical_name
        finally:
            container.close()
        if device == "cpu" and codec not in DALI_CPU_CODECS:
            raise DecodeError(f"{path}: {codec} video; DALI's CPU decoder reads "
                              f"{'/'.join(c.upper() for c in DALI_CPU_CODECS)} only (decode it with "
                              f"--decoder pyav, or with DALI on a GPU)")
        v.n = _container_count(path)
        if v.n < 1:
            v.n = count_frames(path)
            v.recounted = True
    except DecodeError as e:
        v.error = e
    return v


def _read_of(i: int, v: _Video, spec: ClipSpec, window: list[int]) -> _Read:
    """The reader line that gives ``window`` of video ``i``. A looped (short) window reads frames
    0 .. n-1 once: the reader pads past the end (frame number -1), the loop is made on the host."""
    if v.short:
        return _Read(i, 0, 1)
    return _Read(i, window[0], _gap(v.n, spec.frames, spec.gap))


def _frames_of(i: int, v: _Video, spec: ClipSpec, got: dict) -> dict | DecodeError | None:
    """{(clip, position): frame} for video ``i`` from the reads; the :class:`DecodeError` of a read
    that DALI failed on; or None when a frame it needs is missing (the reader padded past the end:
    the file has fewer frames than counted)."""
    out = {}
    for c, w in enumerate(v.windows):
        res = got[_read_of(i, v, spec, w)]
        if isinstance(res, DecodeError):
            return res
        frames, nums = res
        where = {int(f): k for k, f in enumerate(nums) if f >= 0}
        for k, f in enumerate(w):
            if f not in where:
                return None
            out[(c, k)] = frames[where[f]]
    return out


def _read_all(reads: list[_Read], videos: list[_Video], spec: ClipSpec, device: str, batch_size: int,
              readers: int) -> dict:
    """{read: (uint8 [frames, size, size, 3], frame numbers) or DecodeError}.

    The reader's ``stride`` is one value per pipeline, so each stride gets its own; and DALI's
    reader decodes its samples one after another on one thread, so each stride's reads are split
    into up to ``readers`` contiguous parts read by that many pipelines at once."""
    parts = []
    for stride in sorted({r.stride for r in reads}):
        # a file's clips in frame order: the reader keeps a file open between consecutive lines
        group = sorted((r for r in reads if r.stride == stride), key=lambda r: (r.video, r.start))
        n = min(readers, len(group))
        parts += [group[k * len(group) // n:(k + 1) * len(group) // n] for k in range(n)]
    got: dict = {}
    if len(parts) <= 1 or readers == 1:
        for part in parts:
            got.update(_read_isolated(part, videos, spec, device, batch_size))
        return got
    with ThreadPoolExecutor(min(readers, len(parts)), thread_name_prefix="vdfast-dali") as pool:
        for res in pool.map(lambda part: _read_isolated(part, videos, spec, device, batch_size), parts):
            got.update(res)
    return got


def _read_isolated(group: list[_Read], videos: list[_Video], spec: ClipSpec, device: str,
                   batch_size: int) -> dict:
    """:func:`_run_reader` on ``group``; if DALI fails on the batch as a whole (a file that breaks
    part-way), each file's reads again on their own, so that only the bad file is lost."""
    try:
        return _run_reader(group, videos, spec, device, batch_size)
    except RuntimeError as e:  # what DALI raises for a pipeline that failed
        files = sorted({r.video for r in group})
        if len(files) == 1:
            err = DecodeError(f"{videos[files[0]].path}: DALI could not decode it ({_first_line(e)})")
            return {r: err for r in group}
    got = {}
    for f in files:
        got.update(_read_isolated([r for r in group if r.video == f], videos, spec, device, batch_size))
    return got


def _first_line(e: BaseException) -> str:
    """The informative line of a DALI error (its messages start with the pipeline's traceback)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("Assert on", "Error", "Failed", "Codec", "Unable")) and "operator" not in ln:
            return ln[:200]
    return (lines[-1] if lines else type(e).__name__)[:200]


_links = itertools.count()  # DALI caches each file's frame index by file name for the whole process


def _run_reader(group: list[_Read], videos: list[_Video], spec: ClipSpec, device: str,
                batch_size: int) -> dict:
    from nvidia.dali import fn, pipeline_def, types

    stride = group[0].stride
    span = spec.frames * stride  # the reader keeps a line only if end - start >= frames * stride
    gpu = device == "mixed"
    # The reader decodes the next batch while the current one is used, and at the end of its list
    # wraps around to the start: one batch is decoded for nothing. Batches of at most a quarter of
    # the reads keep that under 25 % for short lists.
    bs = max(1, min(batch_size, math.ceil(len(group) / 4)))
    got: dict = {}
    with tempfile.TemporaryDirectory(prefix="vdfast-dali-") as tmp:
        # The file list is split on spaces: each file goes in through a link with a plain name,
        # never the same name twice in this process (DALI would reuse the cached index of another
        # file).
        links = {}
        for r in group:
            if r.video not in links:
                path = videos[r.video].path
                ext = os.path.splitext(path)[1]
                name = f"{next(_links)}{ext if _PLAIN_EXT.fullmatch(ext) else ''}"
                links[r.video] = os.path.join(tmp, name)
                os.symlink(os.path.abspath(path), links[r.video])
        file_list = os.path.join(tmp, "files.txt")
        with open(file_list, "w", encoding="utf-8") as f:
            for label, r in enumerate(group):
                f.write(f"{links[r.video]} {label} {r.start} {r.start + span}\n")

        # prefetch_queue_depth=1: a deeper queue would run more batches ahead, all of them wasted at
        # the end of the list
        @pipeline_def(batch_size=bs, num_threads=1, device_id=_cuda_device() if gpu else None,
                      exec_dynamic=True, prefetch_queue_depth=1)
        def pipe():
            video, label, nums = fn.experimental.readers.video(
                device="gpu" if gpu else "cpu", file_list=file_list, file_list_format="frames",
                file_list_include_end=False, sequence_length=spec.frames, stride=stride, step=span,
                pad_mode="constant", enable_frame_num="sequence", name="reader")
            video = fn.resize(video, resize_shorter=spec.resize_short, antialias=True,
                              interp_type=types.INTERP_LINEAR, subpixel_scale=False)
            video = fn.crop(video, crop=(spec.size, spec.size), crop_pos_x=_CENTRE, crop_pos_y=_CENTRE)
            return video, label, nums

        try:
            p = pipe()
            p.build()
        except RuntimeError as e:
            if "input samples: 0" not in str(e):
                raise
            p = None  # DALI opened none of the files
        if p is not None:
            try:
                epoch = p.reader_meta("reader")["epoch_size"]
                for _ in range(math.ceil(epoch / bs)):
                    video, label, nums = (_host(t) for t in p.run())
                    for k in range(len(video)):
                        r = group[int(np.asarray(label[k]).reshape(-1)[0])]
                        # the last batch wraps around to the start: the first copy of a line counts
                        got.setdefault(r, (np.asarray(video[k]), np.asarray(nums[k]).reshape(-1)))
            finally:
                del p
    for r in group:
        if r not in got:  # the reader skips files it cannot open (it logs why)
            got[r] = DecodeError(f"{videos[r.video].path}: DALI could not open it as a video")
    return got


def _cuda_device() -> int:
    import torch

    return torch.cuda.current_device()


def _host(tl):
    """A DALI output on the host (GPU outputs are copied)."""
    from nvidia.dali.backend import TensorListGPU

    return tl.as_cpu() if isinstance(tl, TensorListGPU) else tl
