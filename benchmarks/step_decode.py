"""Decoding: frames per second of PyAV, DALI's CPU reader and (with CUDA) DALI's GPU reader
("mixed": NVDEC, resize and crop on the GPU) on the same real video files, through the same harness,
with their agreement.

    python benchmarks/step_decode.py --smoke
    python benchmarks/step_decode.py --workloads vp9-320x240 --json runs/decode.json

The files are written with PyAV (tests/videos.py): a moving colour gradient with noise, ``videos``
files of ``frames`` frames at ``width`` x ``height``, in ``codec`` (VP9: every decoder reads it; DALI's
CPU backend reads VP8/VP9/MJPEG only, so on H.264 its row is skipped and NVDEC is compared with PyAV).
One call decodes one clip of every file as ``vdfast prepare`` does: PyAV file after file
(:func:`vdfast.data.decode.decode_clip`), DALI all files in one call of
:func:`vdfast.data.dali.decode_videos_dali` (reader batches of 8). The ``ClipSpec``'s sampled frames
span the whole video, so every decoder decodes every frame; "frames/s" counts the files' frames.
PyAV decodes in one process; DALI's CPU reader gets one thread, so both use one core. "mean |diff|"
is the mean absolute difference from PyAV's clips in uint8 levels. A decoder that cannot run here
(no DALI, no CUDA, a codec DALI's CPU backend does not read) is reported as skipped.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from harness_steps import Skipped, Step, StepCase, step_main  # noqa: E402

from vdfast.data.dali import DALI_CPU_CODECS, dali_reason, decode_videos_dali  # noqa: E402
from vdfast.data.decode import ClipSpec, DecodeError, decode_clip  # noqa: E402

WORKLOADS = {
    # UCF101's resolution, 2 s at 25 fps, clips of 16 frames (gap 3) at 112²
    "vp9-320x240": dict(videos=8, frames=48, width=320, height=240, clip=16, gap=3, size=112, codec="vp9"),
    # Kinetics-like 340x256 sources, 8-frame clips at 64²
    "vp9-340x256": dict(videos=8, frames=48, width=340, height=256, clip=8, gap=6, size=64, codec="vp9"),
    # H.264 (Kinetics' and most web video's codec): PyAV against NVDEC (DALI's CPU reader refuses it)
    "h264-320x240": dict(videos=8, frames=48, width=320, height=240, clip=16, gap=3, size=112, codec="h264"),
}
SMOKE = {"smoke-vp9-320x240": dict(videos=2, frames=16, width=64, height=48, clip=8, gap=2, size=32,
                                   codec="vp9")}
ENCODERS = {"vp9": ("libvpx-vp9", ".webm"), "h264": ("libx264", ".mp4")}
DALI_BATCH = 8


def write_videos(w: dict, folder: str) -> list[str]:
    from videos import write_video  # tests/videos.py

    encoder, ext = ENCODERS[w.get("codec", "vp9")]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:w["height"], 0:w["width"]]
    paths = []
    for i in range(w["videos"]):
        frames = np.empty((w["frames"], w["height"], w["width"], 3), np.uint8)
        for t in range(w["frames"]):
            base = (xx * 255 // w["width"] + 4 * t + 40 * i) % 256
            frames[t, ..., 0] = base
            frames[t, ..., 1] = (yy * 255 // w["height"] + 3 * t) % 256
            frames[t, ..., 2] = 255 - base
        frames = np.clip(frames + rng.integers(-8, 9, frames.shape), 0, 255).astype(np.uint8)
        paths.append(write_video(os.path.join(folder, f"v{i}{ext}"), frames, encoder))
    return paths


def dali_decoder(paths: list[str], spec: ClipSpec, device: str, readers: int | None):
    """One call: every file's clip through DALI's reader, in batches (what ``vdfast prepare`` does)."""
    def run():
        out = decode_videos_dali(paths, spec, device, batch_size=DALI_BATCH, readers=readers)
        bad = [o for o in out if isinstance(o, DecodeError)]
        if bad:
            raise bad[0]
        return [clips[0] for clips, _ in out]
    return run


def build(method: str, w: dict, device, tmp) -> StepCase:
    os.makedirs(tmp, exist_ok=True)
    paths = write_videos(w, tmp)
    spec = ClipSpec(frames=w["clip"], gap=w["gap"], size=w["size"])
    codec = w.get("codec", "vp9")
    why = dali_reason()
    providers = [
        ("pyav", lambda: [decode_clip(p, spec)[0] for p in paths]),
        ("dali cpu", Skipped(why) if why else
         Skipped(f"DALI's CPU reader does not read {codec}") if codec not in DALI_CPU_CODECS
         else dali_decoder(paths, spec, "cpu", readers=1)),
        ("dali gpu (mixed)", Skipped(why) if why else
         Skipped("no CUDA device") if not torch.cuda.is_available()
         else dali_decoder(paths, spec, "mixed", readers=None)),
    ]
    pyav = providers[0][1]()
    extra = {}
    for name, fn in providers:
        extra[name] = {"items_per_call": w["videos"] * w["frames"]}
        if not isinstance(fn, Skipped):
            diff = np.mean([np.abs(a.astype(np.int16) - b).mean() for a, b in zip(pyav, fn())])
            extra[name]["mean_abs_diff"] = float(diff)
    return StepCase(providers, extra)


STEP = Step("decode", ("decode",), build, "Decoding (VP9 and H.264 files written with PyAV)",
            os.path.abspath(__file__), reference="pyav", workloads=WORKLOADS, smoke=SMOKE,
            extra_cols=(("frames/s", "items_per_s", ".0f"),
                        ("mean abs diff vs PyAV", "mean_abs_diff", ".2f")))


def main(argv=None):
    return step_main(STEP, argv)


if __name__ == "__main__":
    main()
