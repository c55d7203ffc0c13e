"""DALI's CPU video decoder (VP9) against PyAV: same sampling, same clips within decoder rounding."""
import numpy as np
import pytest
from videos import make_plain_folder, write_index_video, write_video

from vdfast.data.decode import ClipSpec, DecodeError, decode_clip, decode_clips

from vdfast.data.dali import dali_reason, decode_clip_dali, decode_clips_dali, resolve_decoder

# DALI is the optional extra vdfast[dali], not a test dependency: these tests need it installed
needs_dali = pytest.mark.skipif(dali_reason() is not None,
                                     reason="NVIDIA DALI not installed (pip install 'vdfast[dali]')")


def test_dali_missing_names_the_extra(tmp_path, monkeypatch):
    """Without DALI (simulated when it is installed), asking for it says which extra to install."""
    import sys

    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # `import nvidia.dali` raises ImportError
    assert "vdfast[dali]" in dali_reason()
    with pytest.raises(RuntimeError, match=r"pip install 'vdfast\[dali\]'"):
        resolve_decoder("dali")
    with pytest.raises(RuntimeError, match=r"vdfast\[dali\]"):
        decode_clip_dali(tmp_path / "v.webm", ClipSpec(frames=4, size=16))
    assert resolve_decoder("auto") == ("pyav", "cpu") and resolve_decoder("pyav") == ("pyav", "cpu")


def _moving_frames(n=24, h=48, w=64, seed=0):
    # smooth content (8x upsampled noise): per-pixel random colours would measure the decoders'
    # different 4:2:0 chroma upsampling rather than decoding
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (h // 8, w // 8, 3)).astype(np.float32)
    base = np.kron(low, np.ones((8, 8, 1), np.float32)).astype(np.uint8)
    return np.stack([np.roll(base, 2 * i, axis=1) for i in range(n)])


@needs_dali
@pytest.mark.parametrize("spec", [ClipSpec(frames=8, gap=2, size=32), ClipSpec(frames=16, gap=4, size=24)])
def test_dali_cpu_matches_pyav_on_vp9(tmp_path, spec):
    path = write_video(tmp_path / "v.webm", _moving_frames(), codec="libvpx-vp9")
    a, ia = decode_clip(path, spec)
    b, ib = decode_clip_dali(path, spec, device="cpu")
    assert a.shape == b.shape == (spec.frames, spec.size, spec.size, 3)
    assert ia["indices"] == ib["indices"] and ia["num_frames"] == ib["num_frames"]
    # both decode the same VP9 bitstream, but convert YUV 4:2:0 to RGB with different code (chroma
    # upsampling and rounding): measured mean |diff| 3.1-3.8 levels, 99th percentile <= 23. A wrong
    # frame or a shifted crop would give tens of levels on this moving texture.
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.mean() < 5.0 and np.percentile(diff, 99) <= 28, (diff.mean(), np.percentile(diff, 99))


@needs_dali
def test_dali_windows_are_pyavs(tmp_path):
    path = write_index_video(tmp_path / "i.webm", n=40, codec="libvpx-vp9")
    spec = ClipSpec(frames=4, gap=3, size=16)
    a, ia = decode_clips(path, spec, clips=3, key="i.webm")
    b, ib = decode_clips_dali(path, spec, device="cpu", clips=3, key="i.webm")
    assert ia["windows"] == ib["windows"] and a.shape == b.shape == (3, 4, 16, 16, 3)
    from videos import decoded_index
    assert [[decoded_index(f) for f in clip] for clip in b] == ib["windows"]


@needs_dali
def test_dali_frame_order_and_errors(tmp_path):
    path = write_index_video(tmp_path / "i.webm", n=20, codec="libvpx-vp9")
    clip, info = decode_clip_dali(path, ClipSpec(frames=4, gap=3, size=16), device="cpu")
    from videos import decoded_index
    assert [decoded_index(f) for f in clip] == info["indices"]
    bad = tmp_path / "bad.webm"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(DecodeError):
        decode_clip_dali(bad, ClipSpec(frames=4, size=16))
    (tmp_path / "empty.webm").write_bytes(b"")
    with pytest.raises(DecodeError, match="empty"):
        decode_clip_dali(tmp_path / "empty.webm", ClipSpec(frames=4, size=16))


@needs_dali
def test_prepare_with_dali_decoder(tmp_path):
    import vdfast

    made = make_plain_folder(tmp_path / "ds", codec="libvpx-vp9")
    s1 = vdfast.prepare(made.root, tmp_path / "a", frames=4, gap=1, size=16, decoder="dali")
    s2 = vdfast.prepare(made.root, tmp_path / "b", frames=4, gap=1, size=16, decoder="pyav")
    assert s1.test_clips == s2.test_clips == 3
    for split in ("train", "test"):
        assert s1.counts(split) == s2.counts(split)
        for c in range(s1.num_classes):
            d = np.abs(s1.clips(split, c).astype(int) - s2.clips(split, c).astype(int))
            assert d.mean() < 5.0
    assert s1.meta["decoder"].startswith("dali") and resolve_decoder("auto")[0] == "pyav"
