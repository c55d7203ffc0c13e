"""NVIDIA DALI video decoding for ``vdfast prepare``.

``decoder="dali"`` decodes each file with ``fn.decoders.video`` from its bytes: on a GPU with the
``mixed`` backend (NVDEC: H.264, HEVC, VP9 ...), without one on DALI's CPU backend, which reads
VP8, VP9 and MJPEG only (not H.264 or MPEG-4: use PyAV for those). Frame sampling, resizing and the
centre crop are the same functions PyAV decoding uses, so both decoders give the same clips within
decoder rounding. ``decoder="auto"`` picks DALI on a GPU and PyAV otherwise.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from vdfast.config import DECODERS
from vdfast.data.decode import ClipSpec, DecodeError, _window_info, assemble_windows, sample_windows

__all__ = ["DECODERS", "INSTALL", "dali_reason", "require_dali", "resolve_decoder", "decode_clip_dali",
           "decode_clips_dali"]


INSTALL = "pip install 'vdfast[dali]'"


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


@functools.lru_cache(maxsize=2)
def _pipeline(device: str):
    from nvidia.dali import fn, pipeline_def, types

    dev_id = 0 if device == "mixed" else None

    @pipeline_def(batch_size=1, num_threads=1, device_id=dev_id, exec_dynamic=True, prefetch_queue_depth=1)
    def pipe():
        enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
        return fn.decoders.video(enc, device=device)

    p = pipe()
    p.build()
    return p


def decode_clip_dali(path: str, spec: ClipSpec, device: str = "cpu") -> tuple[np.ndarray, dict]:
    """Like :func:`vdfast.data.decode.decode_clip` for a video file, decoded by DALI."""
    clips, info = decode_clips_dali(path, spec, device)
    return clips[0], info


def decode_clips_dali(path: str, spec: ClipSpec, device: str = "cpu", clips: int = 1,
                      key: str | None = None) -> tuple[np.ndarray, dict]:
    """Like :func:`vdfast.data.decode.decode_clips` (same windows for the same ``key``), decoded
    by DALI."""
    require_dali()
    path = os.fspath(path)
    key = path if key is None else key
    if not os.path.exists(path):
        raise DecodeError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise DecodeError(f"{path}: empty file (0 bytes)")
    p = _pipeline(device)
    try:
        p.feed_input("enc", [np.fromfile(path, dtype=np.uint8)])
        (out,) = p.run()
        if device == "mixed":
            out = out.as_cpu()
        frames = np.asarray(out[0])
    except Exception as e:
        _pipeline.cache_clear()  # a failed pipeline is not reused
        raise DecodeError(f"{path}: DALI could not decode it ({str(e).splitlines()[0][:160]})") from e
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise DecodeError(f"{path}: DALI decoded no frames (its CPU decoder reads VP8/VP9/MJPEG only; "
                          f"use --decoder pyav for H.264/MPEG-4)")
    n = frames.shape[0]
    windows, short = sample_windows(n, spec.frames, spec.gap, clips, key)
    return (assemble_windows({}, windows, spec, load=lambda i: frames[i]),
            _window_info(n, spec, windows, short))
