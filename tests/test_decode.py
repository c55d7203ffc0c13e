"""Clip decoding: real encoded files (PyAV-written), frame sampling, resize/crop, frame folders, bad input."""
import os
import random

import av
import numpy as np
import pytest

from vdfast.data.decode import ClipSpec, DecodeError, count_frames, decode_clip, decode_clips, list_frame_files, \
    resize_crop, sample_indices, sample_windows
from vdfast.data.layouts import VideoItem
from videos import (CODEC_EXT, class_color, color_frames, decoded_index, index_frames, write_corrupt, write_empty,
                    write_frame_folder, write_index_video, write_video)

SMALL = ClipSpec(frames=8, gap=4, size=32)


# --------------------------------------------------------------------------- sample_indices

@pytest.mark.parametrize("n,frames,gap,expect_gap,expect_start", [
    (100, 16, 4, 4, 19),     # span 61, centred: (100 - 61) // 2
    (61, 16, 4, 4, 0),       # exactly fits
    (60, 16, 4, 3, 7),       # too short for gap 4: gap 60 // 16 = 3, span 46
    (40, 16, 4, 2, 4),
    (16, 16, 4, 1, 0),
    (31, 16, 4, 1, 7),       # 31 // 16 = 1
    (5, 1, 4, 4, 2),         # a single frame: the middle one
])
def test_sample_indices_gap_and_centre(n, frames, gap, expect_gap, expect_start):
    idx, short = sample_indices(n, frames, gap)
    assert not short
    assert len(idx) == frames
    assert idx[0] == expect_start
    assert all(b - a == expect_gap for a, b in zip(idx, idx[1:]))
    assert 0 <= idx[0] and idx[-1] < n
    # centred: the margins before and after differ by at most one frame
    assert abs(idx[0] - (n - 1 - idx[-1])) <= 1
    assert sample_indices(n, frames, gap) == (idx, short)   # deterministic


def test_sample_indices_short_loops():
    idx, short = sample_indices(6, 16, 4)
    assert short
    assert idx == [0, 1, 2, 3, 4, 5] * 2 + [0, 1, 2, 3]
    assert sample_indices(1, 4, 4) == ([0, 0, 0, 0], True)


def test_sample_indices_rejects_empty():
    with pytest.raises(ValueError):
        sample_indices(0, 16, 4)
    with pytest.raises(ValueError):
        sample_indices(10, 0, 4)


def test_sample_indices_does_not_touch_global_rng():
    state = random.getstate()
    np_state = np.random.get_state()[1].copy()
    sample_indices(100, 16, 4)
    assert random.getstate() == state
    assert (np.random.get_state()[1] == np_state).all()


# --------------------------------------------------------------------------- sample_windows

def test_sample_windows_one_clip_is_the_centred_one():
    assert sample_windows(100, 16, 4, 1, "a") == ([sample_indices(100, 16, 4)[0]], False)


@pytest.mark.parametrize("n,frames,gap", [(100, 16, 4), (60, 16, 4), (200, 8, 4), (9, 8, 1)])
def test_sample_windows_random_starts_seeded_by_key(n, frames, gap):
    state, np_state = random.getstate(), np.random.get_state()[1].copy()
    windows, short = sample_windows(n, frames, gap, 5, "UCF-101/Biking/v_Biking_g01_c01.avi")
    assert random.getstate() == state and (np.random.get_state()[1] == np_state).all()
    assert not short and len(windows) == 5
    g = sample_indices(n, frames, gap)[0]
    g = g[1] - g[0] if frames > 1 else gap
    for w in windows:
        assert len(w) == frames and 0 <= w[0] and w[-1] < n
        assert all(b - a == g for a, b in zip(w, w[1:]))   # the gap of the centred clip
    # the same key gives the same windows; another key, other windows
    assert sample_windows(n, frames, gap, 5, "UCF-101/Biking/v_Biking_g01_c01.avi")[0] == windows
    others = [sample_windows(n, frames, gap, 5, f"other{i}")[0] for i in range(3)]
    assert any(o != windows for o in others)


def test_sample_windows_cover_the_valid_starts():
    # 100 frames, span 61: starts 0..39, drawn uniformly; over many keys every start shows up
    starts = {w[0] for i in range(400) for w in sample_windows(100, 16, 4, 3, str(i))[0]}
    assert starts == set(range(40))


def test_sample_windows_short_video_and_bad_count():
    windows, short = sample_windows(6, 16, 4, 3, "k")
    assert short and windows == [sample_indices(6, 16, 4)[0]] * 3
    with pytest.raises(ValueError, match="clips"):
        sample_windows(100, 16, 4, 0, "k")


def test_decode_clips_one_pass_gives_each_window(tmp_path):
    p = write_index_video(tmp_path / "v.avi", n=40)
    spec = ClipSpec(frames=8, gap=2, size=32)
    clips, info = decode_clips(p, spec, clips=3, key="v.avi")
    assert clips.shape == (3, 8, 32, 32, 3) and clips.dtype == np.uint8
    assert info["windows"] == sample_windows(40, 8, 2, 3, "v.avi")[0]
    assert len({w[0] for w in info["windows"]}) > 1   # random starts (25 possible), not one clip
    for clip, w in zip(clips, info["windows"]):
        assert [decoded_index(f) for f in clip] == w
    # the key, not the path, seeds the windows: the same file elsewhere gives the same clips
    q = tmp_path / "elsewhere.avi"
    q.write_bytes(open(p, "rb").read())
    again, _ = decode_clips(q, spec, clips=3, key="v.avi")
    assert np.array_equal(again, clips)


def test_clipspec_default_short_side():
    assert ClipSpec().resize_short == 120          # 320x240 -> 160x120 -> 112x112
    assert ClipSpec(size=64).resize_short == 69
    assert ClipSpec(size=64, short_side=64).resize_short == 64
    assert ClipSpec(size=64, short_side=32).resize_short == 64   # never below the crop
    with pytest.raises(ValueError):
        ClipSpec(frames=0)


# --------------------------------------------------------------------------- resize / crop

def test_resize_crop_published_convention():
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[:, 160 - 60:160 + 60] = 200      # a centre band 120 px wide (of 320)
    out = resize_crop(frame, ClipSpec())
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    # 320x240 -> 160x120: the band becomes 60 px wide, centred in the 112 crop (26..85)
    assert out[:, 30:82].min() >= 190
    assert out[:, :22].max() <= 10 and out[:, 90:].max() <= 10


def test_resize_crop_portrait():
    frame = np.full((100, 50, 3), 77, np.uint8)
    out = resize_crop(frame, ClipSpec(size=20, short_side=25))
    assert out.shape == (20, 20, 3)
    assert np.abs(out.astype(int) - 77).max() <= 1


# --------------------------------------------------------------------------- videos

@pytest.mark.parametrize("codec", ["mpeg4", "h264", "libvpx-vp9", "mjpeg"])
def test_decode_colour_each_codec(tmp_path, codec):
    color = class_color(2)
    p = write_video(tmp_path / f"v{CODEC_EXT[codec]}", color_frames(color, 20), codec)
    clip, info = decode_clip(p, SMALL)
    assert clip.shape == (8, 32, 32, 3) and clip.dtype == np.uint8
    assert info["num_frames"] == 20 and info["short"] is False and info["gap"] == 2
    diff = np.abs(clip.astype(np.float64) - np.array(color)).mean()
    assert diff < 12, diff


@pytest.mark.parametrize("codec", ["mpeg4", "h264", "libvpx-vp9"])
def test_decode_picks_the_sampled_frames(tmp_path, codec):
    p = write_index_video(tmp_path / f"i{CODEC_EXT[codec]}", 40, codec)
    clip, info = decode_clip(p, SMALL)
    expect, short = sample_indices(40, 8, 4)
    assert info["indices"] == expect and not short
    got = [decoded_index(f) for f in clip]
    assert got == expect                         # [5, 9, ..., 33]: monotone, gap 4, centred
    # the gap falls back to n // frames for a video too short for gap 4
    clip, info = decode_clip(p, ClipSpec(frames=16, gap=4, size=32))
    assert info["gap"] == 2
    assert [decoded_index(f) for f in clip] == sample_indices(40, 16, 4)[0]


def test_decode_default_spec_shape(tmp_path):
    p = write_video(tmp_path / "big.avi", color_frames((10, 200, 30), 18, h=120, w=160), "mpeg4")
    clip, info = decode_clip(p, ClipSpec())
    assert clip.shape == (16, 112, 112, 3)
    assert info["gap"] == 1 and not info["short"]


def test_decode_centre_crop_of_wide_video(tmp_path):
    frames = np.zeros((12, 48, 96, 3), np.uint8)
    frames[:, :, :24] = (220, 40, 40)
    frames[:, :, 24:72] = (40, 200, 60)
    frames[:, :, 72:] = (40, 70, 220)
    p = write_video(tmp_path / "wide.mp4", frames, "h264")
    clip, _ = decode_clip(p, ClipSpec(frames=4, gap=2, size=32, short_side=32))
    # 96x48 -> 64x32, centre crop x 16..48 = original 24..72: all green, away from the edges
    inner = clip[:, :, 4:28].astype(np.float64)
    assert np.abs(inner - np.array((40, 200, 60))).mean() < 12


def test_short_video_loops_and_is_flagged(tmp_path):
    p = write_index_video(tmp_path / "short.avi", 5, "mpeg4")
    clip, info = decode_clip(p, SMALL)
    assert info["short"] is True and info["num_frames"] == 5 and info["gap"] == 1
    assert [decoded_index(f) for f in clip] == [0, 1, 2, 3, 4, 0, 1, 2]
    assert clip.shape == (8, 32, 32, 3)


def test_decode_accepts_video_item_and_is_deterministic(tmp_path):
    p = write_index_video(tmp_path / "x.webm", 24, "libvpx-vp9")
    item = VideoItem(path=str(p), label="a", split="train")
    a, ia = decode_clip(item, SMALL)
    b, ib = decode_clip(str(p), SMALL)
    assert ia == ib and np.array_equal(a, b)


def test_container_count_wrong_truncated_file(tmp_path):
    """The AVI header says 40 frames; the cut file decodes fewer: the clip comes from what decodes."""
    rng = np.random.default_rng(0)
    frames = np.clip(index_frames(40).astype(np.int16) + rng.integers(-3, 4, (40, 48, 64, 3)), 0, 255)
    p = write_video(tmp_path / "full.avi", frames.astype(np.uint8), "mjpeg")
    with av.open(p) as c:
        assert c.streams.video[0].frames == 40
    data = open(p, "rb").read()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    clip, info = decode_clip(cut, SMALL)
    n = info["num_frames"]
    assert 1 <= n < 40
    assert n == count_frames(str(cut))
    assert info["indices"] == sample_indices(n, 8, 4)[0]
    assert [decoded_index(f) for f in clip] == info["indices"]


def test_webm_without_container_count(tmp_path):
    p = write_index_video(tmp_path / "nocount.webm", 30, "libvpx-vp9")
    with av.open(p) as c:
        header = c.streams.video[0].frames
    clip, info = decode_clip(p, SMALL)
    assert info["num_frames"] == 30, header
    assert [decoded_index(f) for f in clip] == sample_indices(30, 8, 4)[0]


# --------------------------------------------------------------------------- bad input

def test_corrupt_file_raises(tmp_path):
    for name in ("bad.avi", "bad.mp4", "bad.webm"):
        p = write_corrupt(tmp_path / name)
        with pytest.raises(DecodeError, match=name):
            decode_clip(p, SMALL)


def test_zero_length_file_raises(tmp_path):
    p = write_empty(tmp_path / "empty.mp4")
    with pytest.raises(DecodeError, match="zero-length"):
        decode_clip(p, SMALL)


def test_missing_file_raises(tmp_path):
    with pytest.raises(DecodeError, match="not found"):
        decode_clip(tmp_path / "nope.avi", SMALL)


def test_no_video_stream_raises(tmp_path):
    wav = str(tmp_path / "sound.wav")
    with av.open(wav, "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        fr.sample_rate = 8000
        for pk in s.encode(fr):
            c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    with pytest.raises(DecodeError, match="no video stream"):
        decode_clip(wav, SMALL)


def test_header_only_truncation_raises(tmp_path):
    p = write_index_video(tmp_path / "v.mp4", 20, "h264")
    data = open(p, "rb").read()
    cut = tmp_path / "head.mp4"
    cut.write_bytes(data[:64])
    with pytest.raises(DecodeError):
        decode_clip(cut, SMALL)


def test_bad_kind():
    with pytest.raises(ValueError):
        decode_clip("x.avi", SMALL, kind="audio")


# --------------------------------------------------------------------------- frame folders

def test_frame_folder_natural_order(tmp_path):
    d = write_frame_folder(tmp_path / "vid", index_frames(12), "{i}.jpg")   # 1.jpg .. 12.jpg
    names = [os.path.basename(f) for f in list_frame_files(d)]
    assert names == [f"{i}.jpg" for i in range(1, 13)]
    clip, info = decode_clip(d, ClipSpec(frames=12, gap=1, size=32), kind="frames")
    assert info == {"num_frames": 12, "short": False, "gap": 1, "indices": list(range(12)),
                    "windows": [list(range(12))]}
    assert [decoded_index(f) for f in clip] == list(range(12))


def test_frame_folder_prefixed_names_and_item(tmp_path):
    d = write_frame_folder(tmp_path / "vid", index_frames(20), "frame{i}.png")
    write_empty(tmp_path / "vid" / "notes.txt")       # ignored
    item = VideoItem(path=str(d), label="a", split="test", kind="frames")
    clip, info = decode_clip(item, ClipSpec(frames=4, gap=3, size=24))
    assert clip.shape == (4, 24, 24, 3)
    assert [decoded_index(f) for f in clip] == sample_indices(20, 4, 3)[0]


def test_frame_folder_short_loops(tmp_path):
    d = write_frame_folder(tmp_path / "vid", index_frames(3), "img_{i:05d}.jpg")
    clip, info = decode_clip(d, SMALL, kind="frames")
    assert info["short"] and [decoded_index(f) for f in clip] == [0, 1, 2, 0, 1, 2, 0, 1]


def test_frame_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DecodeError, match="no image"):
        decode_clip(tmp_path / "empty", SMALL, kind="frames")
    with pytest.raises(DecodeError, match="not found"):
        decode_clip(tmp_path / "absent", SMALL, kind="frames")
    d = write_frame_folder(tmp_path / "broken", index_frames(4), "{i}.jpg")
    write_corrupt(os.path.join(d, "2.jpg"))
    with pytest.raises(DecodeError, match="2.jpg"):
        decode_clip(d, ClipSpec(frames=4, gap=1, size=16), kind="frames")
