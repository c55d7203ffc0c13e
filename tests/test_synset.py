import json

import pytest
import torch

import vdfast
from vdfast.synsets import PixelSynset, SynsetError, check_matches, load


def _synset(gen, soft=False):
    data = torch.randn(6, 3, 4, 16, 16, generator=gen)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    sl = torch.softmax(torch.randn(6, 3, generator=gen), 1) if soft else None
    return PixelSynset(data, labels, ["a", "b", "c"], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
                       soft_labels=sl, meta={"method": "dm", "ipc": 2, "config": {"lr_img": 1.0}})


@pytest.mark.parametrize("soft", [False, True])
def test_save_load_round_trip(tmp_path, gen, soft):
    s = _synset(gen, soft)
    s.save(tmp_path / "syn")
    assert (tmp_path / "syn" / "synset.safetensors").exists()
    header = json.loads((tmp_path / "syn" / "synset.json").read_text())
    for key in ("method", "ipc", "classes", "frames", "size", "normalization", "storage", "vdfast",
                "config"):
        assert key in header
    t = load(tmp_path / "syn")
    assert isinstance(t, PixelSynset)
    v0, y0 = s.videos()
    v1, y1 = t.videos()
    assert torch.equal(v0, v1) and torch.equal(y0, y1)
    assert t.classes == ["a", "b", "c"] and t.ipc == 2 and t.mean == s.mean
    assert (t.soft_labels is None) == (not soft)
    if soft:
        assert torch.equal(t.soft_labels, s.soft_labels)
    assert vdfast.load(tmp_path / "syn" / "synset.json").meta["config"] == {"lr_img": 1.0}
    # saving over an existing synset replaces it whole
    s.data.data.add_(1)
    s.save(tmp_path / "syn")
    assert torch.equal(load(tmp_path / "syn").videos()[0], s.data.detach())


def test_storage_counts_bytes(gen):
    s = _synset(gen)
    st = s.storage()
    assert st["bytes"] == 6 * 3 * 4 * 16 * 16 * 4
    assert st["video_bytes_uint8"] == 6 * 3 * 4 * 16 * 16
    assert st["ratio_vs_fp32_videos"] == pytest.approx(1.0)


def test_load_errors(tmp_path):
    with pytest.raises(SynsetError, match="not a synset directory"):
        load(tmp_path)
    (tmp_path / "synset.json").write_text(json.dumps({"kind": "hologram"}))
    with pytest.raises(SynsetError, match="unknown"):
        load(tmp_path)


def test_mismatched_classes_and_format(gen):
    s = _synset(gen)
    with pytest.raises(SynsetError, match="not in the synset: d"):
        check_matches(s, ["a", "b", "c", "d"], 4, 16)
    with pytest.raises(SynsetError, match="another order"):
        check_matches(s, ["c", "b", "a"], 4, 16)
    with pytest.raises(SynsetError, match="--frames 4 --size 16"):
        check_matches(s, ["a", "b", "c"], 8, 16)


def test_preview_writes_gif_and_png(tmp_path, gen):
    from PIL import Image

    from vdfast.preview import preview

    paths = preview(_synset(gen), tmp_path)
    gif = Image.open(paths["gif"])
    assert gif.n_frames == 4
    png = Image.open(paths["png"])
    assert png.size[0] > 4 * 16 and png.size[1] >= 6 * 16
