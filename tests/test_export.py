"""Results users can take elsewhere: `vdfast export` (mp4 files in a Hugging Face VideoFolder tree),
`Synset.dataset()` for a plain torch loop, and the synset's safetensors header metadata."""
import json

import av
import numpy as np
import pytest
import torch

import vdfast
from vdfast.cli import main
from vdfast.synsets import GeneratedSynset, PixelSynset, StaticDynamicSynset, SynsetError
from vdfast.synsets.static_dynamic import init_integrator
from vdfast.videofolder import ExportError, pick_codec

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny shapes (see conftest)

# lossy codecs: the decoded frames against the rendered uint8 pixels, mean |error| in grey levels
# (0..255) per video and over the whole export. Measured at 16x16, 4 frames, on the builtin clips:
# libx264 crf 17 yuv420p 3.7 mean / 5.6 worst video; yuv444p 2.8 / 3.3 (chroma is not halved);
# mpeg4 (the fallback without libx264) at the same crf, yuv420p: 3.9 / 5.9
MEAN_ERR = {"yuv420p": 6.0, "yuv444p": 4.5}
VIDEO_ERR = {"yuv420p": 10.0, "yuv444p": 8.0}
MPEG4_ERR = (MEAN_ERR["yuv420p"], VIDEO_ERR["yuv420p"])


@pytest.fixture(scope="module")
def store():
    return vdfast.ClipStore.builtin(train_per_class=4, test_per_class=1, frames=4, size=16)


@pytest.fixture(scope="module")
def synset(store):
    """A pixel synset of real builtin clips (random coreset), 2 per class, with soft labels."""
    s = vdfast.distill(store, method="random", ipc=2, progress=False).synset
    gen = torch.Generator().manual_seed(3)
    s.soft_labels = torch.softmax(torch.randn(len(s.labels), s.num_classes, generator=gen), 1)
    return s


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _errors(out, synset):
    """(rows of metadata.jsonl, mean |decoded - rendered| per video)."""
    rows = [json.loads(line) for line in (out / "train" / "metadata.jsonl").read_text().splitlines()]
    u8, labels = synset.render(uint8=True)
    errs = []
    for n, row in enumerate(rows):
        ref = u8[n].permute(1, 2, 3, 0).numpy().astype(np.int16)  # [T, H, W, C]
        got = _decode(out / "train" / row["file_name"]).astype(np.int16)
        assert got.shape == ref.shape, row["file_name"]
        errs.append(float(np.abs(got - ref).mean()))
    return rows, np.array(errs)


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv444p"])
def test_export_writes_a_videofolder_tree(synset, tmp_path, pix_fmt):
    if pix_fmt == "yuv444p" and pick_codec() != "libx264":
        pytest.skip("yuv444p needs libx264")
    out = tmp_path / "export"
    r = vdfast.export(synset, out, pix_fmt=pix_fmt)
    assert r["videos"] == len(synset.labels) == 24 and r["codec"] == pick_codec()
    info = json.loads((out / "vdfast_export.json").read_text())
    assert info["codec"] == r["codec"] in ("libx264", "mpeg4") and info["pix_fmt"] == pix_fmt
    assert info["classes"] == synset.classes and info["kind"] == "pixel" and info["soft_labels"]
    assert info["normalization"] == {"mean": list(synset.mean), "std": list(synset.std)}
    rows, errs = _errors(out, synset)
    labels = synset.labels.tolist()
    for n, row in enumerate(rows):
        c = synset.classes[labels[n]]
        assert row["file_name"] == f"{c}/{c}_{n % 2}.mp4" and row["label"] == c
        assert row["label_id"] == labels[n]
        np.testing.assert_allclose(row["soft_label"], synset.soft_labels[n].tolist(), atol=1e-6)
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(synset.classes + ["metadata.jsonl"])
    if r["codec"] == "libx264":
        assert errs.mean() <= MEAN_ERR[pix_fmt] and errs.max() <= VIDEO_ERR[pix_fmt], errs
    else:
        assert errs.mean() <= MPEG4_ERR[0] and errs.max() <= MPEG4_ERR[1], errs


def test_export_without_libx264_falls_back_to_mpeg4(synset, tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules["vdfast.videofolder"], "pick_codec", lambda: "mpeg4")
    r = vdfast.export(synset, tmp_path / "e")
    assert r["codec"] == "mpeg4"
    assert json.loads((tmp_path / "e" / "vdfast_export.json").read_text())["codec"] == "mpeg4"
    with av.open(str(tmp_path / "e" / "train" / json.loads(
            (tmp_path / "e" / "train" / "metadata.jsonl").read_text().splitlines()[0])["file_name"])) as c:
        assert c.streams.video[0].codec_context.name == "mpeg4"
    _, errs = _errors(tmp_path / "e", synset)
    assert errs.mean() <= MPEG4_ERR[0] and errs.max() <= MPEG4_ERR[1], errs
    with pytest.raises(ExportError, match="yuv444p needs libx264"):
        vdfast.export(synset, tmp_path / "f", pix_fmt="yuv444p")


def test_export_refuses_a_non_empty_folder(synset, tmp_path, capsys):
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        vdfast.export(synset, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    synset.save(tmp_path / "syn")
    assert main(["export", str(tmp_path / "syn"), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vdfast: error:") and "not empty" in err
    with pytest.raises(ExportError, match="format"):
        vdfast.export(synset, tmp_path / "gif", format="gif")
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is fine
    assert main(["export", str(tmp_path / "syn"), str(empty)]) == 0
    assert "wrote 24 videos" in capsys.readouterr().out
    assert len(list((empty / "train").glob("*/*.mp4"))) == 24


def test_export_other_kinds(tmp_path, gen):
    """A static-dynamic synset (rendered by its integrator) and a generated one (uint8 pixels: the
    render is exact) export the same way."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    static = torch.randn(4, 3, 8, 8, generator=gen)
    dynamic = torch.randn(4, 4, 1, 8, 8, generator=gen)
    weight, bias = init_integrator(3, gen, "default")
    s2d = StaticDynamicSynset(static, dynamic, weight, bias, torch.tensor([0, 1]), ["a/b", "c"],
                              mean, std, pairing="multi", meta={"ipc": 1})
    r = vdfast.export(s2d, tmp_path / "s2d")
    assert r["videos"] == 2 and (tmp_path / "s2d" / "train" / "a_b" / "a_b_0.mp4").exists()
    rows = [json.loads(x) for x in (tmp_path / "s2d" / "train" / "metadata.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == ["a_b", "c"] and "soft_label" not in rows[0]

    u8 = torch.randint(0, 256, (4, 4, 8, 8, 3), dtype=torch.uint8, generator=gen)
    g = GeneratedSynset(u8, torch.tensor([0, 0, 1, 1]), ["x", "y"], mean, std,
                        meta={"method": "gvd", "ipc": 2})
    rendered, labels = g.render(uint8=True)
    assert torch.equal(rendered, u8.permute(0, 4, 1, 2, 3))  # uint8 -> normalised -> uint8: exact
    g.save(tmp_path / "g")
    assert vdfast.export(tmp_path / "g", tmp_path / "gx")["videos"] == 4  # from a saved synset


def test_export_loads_with_datasets_videofolder(synset, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "hf"
    vdfast.export(synset, out)
    ds = datasets.load_dataset("videofolder", data_dir=str(out), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert len(ds) == 24 and {"video", "label", "label_id", "soft_label"} <= set(ds.column_names)
    info = json.loads((out / "vdfast_export.json").read_text())
    ds = ds.cast_column("label", datasets.ClassLabel(names=info["folders"]))
    assert ds["label"] == ds["label_id"] == synset.labels.tolist()
    np.testing.assert_allclose(np.array(ds["soft_label"]), synset.soft_labels.numpy(), atol=1e-6)
    paths = ds.cast_column("video", datasets.Video(decode=False))["video"]
    assert [p["path"].endswith(f"_{i % 2}.mp4") for i, p in enumerate(paths)] == [True] * 24


@pytest.mark.parametrize("uint8", [False, True])
def test_synset_dataset_in_a_dataloader(synset, uint8):
    ds = synset.dataset(uint8=uint8)  # soft labels present: soft targets by default
    assert len(ds) == 24 and ds.classes == synset.classes
    loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=False)
    xs, ts = zip(*loader)
    x, t = torch.cat(xs), torch.cat(ts)
    v, _ = synset.videos()
    if uint8:
        assert x.dtype == torch.uint8
        torch.testing.assert_close(x.float() / 255, synset.denormalize(v.detach()), rtol=0,
                                   atol=0.5 / 255 + 1e-6)
    else:
        assert x.dtype == torch.float32 and torch.equal(x, v.detach())
    assert x.shape == (24, 3, 4, 16, 16) and torch.equal(t, synset.soft_labels)
    hard = synset.dataset(soft=False)
    assert torch.equal(torch.stack([hard[i][1] for i in range(len(hard))]), synset.labels)


def test_synset_dataset_hard_labels_only(gen):
    s = PixelSynset(torch.randn(4, 3, 2, 8, 8, generator=gen), torch.tensor([0, 0, 1, 1]), ["a", "b"],
                    (0.5,) * 3, (0.25,) * 3, meta={"ipc": 2})
    x, y = next(iter(torch.utils.data.DataLoader(s.dataset(), batch_size=4)))
    assert y.dtype == torch.long and y.tolist() == [0, 0, 1, 1] and x.shape == (4, 3, 2, 8, 8)
    with pytest.raises(SynsetError, match="no soft labels"):
        s.dataset(soft=True)


def test_safetensors_header_carries_kind_classes_normalisation(synset, tmp_path):
    from safetensors import safe_open

    synset.save(tmp_path / "syn")
    with safe_open(str(tmp_path / "syn" / "synset.safetensors"), "np") as f:  # no vdfast, no torch
        meta = f.metadata()
    assert meta["format"] == "vdfast.synset" and meta["kind"] == "pixel"
    assert json.loads(meta["classes"]) == synset.classes
    assert json.loads(meta["mean"]) == list(synset.mean) and json.loads(meta["std"]) == list(synset.std)
    assert (meta["frames"], meta["size"], meta["num_videos"]) == ("4", "16", "24")
    assert meta["soft_labels"] == "true" and meta["vdfast"] == vdfast.__version__
    assert vdfast.load(tmp_path / "syn").classes == synset.classes  # loading is unchanged
