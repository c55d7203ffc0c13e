"""GVD end to end at toy scale: modes keyed by label name, stage caching and resume, soft labels,
the generated synset's save/load round trip."""
import dataclasses
import json

import numpy as np
import pytest
import torch

import vdfast
from vdfast.config import GVDConfig, resolve
from vdfast.data.store import ClipStore
from vdfast.methods import get
from vdfast.methods.base import reinit_
from vdfast.engine.train import soft_labels, train_stats
from vdfast.methods.gvd import discover_modes, encode_train, train_autoencoder, train_generator
from vdfast.models.autoencoder import FrameAutoencoder
from vdfast.synsets import GeneratedSynset


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny shapes (see conftest)


@pytest.fixture(scope="module")
def store():
    return ClipStore.builtin(train_per_class=4, test_per_class=1, frames=4, size=16)


def _shuffled(store, perm):
    classes = [store.classes[i] for i in perm]
    arrays = {s: [a[i] for i in perm] for s, a in store.arrays.items()}
    return ClipStore(classes, arrays, store.frames, store.size, name=store.name, meta=store.meta)


G = GVDConfig(ae_down=4, ae_width=4, ae_steps=4, ae_batch=4, generator="tiny", gen_steps=3,
              gen_batch=4, steps=3, train_timesteps=20, checkpoint_every=2, teacher_epochs=1,
              segments=2, chunk=5, kmeans_iters=5)


def test_modes_are_keyed_by_label_name(store):
    perm = [5, 0, 11, 3, 7, 1, 2, 10, 4, 9, 6, 8]
    other = _shuffled(store, perm)
    ae = reinit_(FrameAutoencoder(down=4, width=4), torch.Generator().manual_seed(0)).eval()
    m1 = discover_modes(encode_train(ae, store), 3, 5, seed=1)
    m2 = discover_modes(encode_train(ae, other), 3, 5, seed=1)
    assert set(m1) == set(store.classes) and m1[store.classes[0]].shape == (3, 4, 4, 4, 4)
    for lab in store.classes:
        assert torch.equal(m1[lab], m2[lab])
    # and they differ between classes (k-means of each class's own clips)
    assert not torch.equal(m1[store.classes[0]], m1[store.classes[1]])
    # the autoencoder trained on a shuffled store is the same network
    a1 = train_autoencoder(store, G, 0, "cpu", progress=False)
    a2 = train_autoencoder(other, G, 0, "cpu", progress=False)
    for p1, p2 in zip(a1.state_dict().values(), a2.state_dict().values()):
        assert torch.equal(p1, p2)


def test_training_resumes_from_checkpoints(store, tmp_path):
    a_full = train_autoencoder(store, G, 0, "cpu", tmp_path / "full", progress=False)
    (tmp_path / "cut").mkdir()
    half = dataclasses.replace(G, ae_steps=2)
    train_autoencoder(store, half, 0, "cpu", tmp_path / "cut", progress=False)  # killed at step 2
    (tmp_path / "cut" / "ae_final.safetensors").unlink()
    a_res = train_autoencoder(store, G, 0, "cpu", tmp_path / "cut", progress=False)
    for k, v in a_full.state_dict().items():
        torch.testing.assert_close(a_res.state_dict()[k], v, rtol=1e-6, atol=1e-7)

    lat = encode_train(a_full, store)
    g_full = train_generator(lat, dataclasses.replace(G, gen_steps=4), 0, "cpu", tmp_path / "gf",
                             progress=False)
    (tmp_path / "gc").mkdir()
    train_generator(lat, dataclasses.replace(G, gen_steps=2), 0, "cpu", tmp_path / "gc", progress=False)
    (tmp_path / "gc" / "gen_final.safetensors").unlink()
    g_res = train_generator(lat, dataclasses.replace(G, gen_steps=4), 0, "cpu", tmp_path / "gc",
                            progress=False)
    for k, v in g_full.state_dict().items():
        torch.testing.assert_close(g_res.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_gvd_end_to_end_caches_every_stage(store, tmp_path):
    cfg = resolve("builtin", method="gvd", ipc=2, **{"net.width": 4, "eval.batch": 16},
                  gvd=dict(dataclasses.asdict(G), workdir=str(tmp_path / "w"), keep_latents=True))
    syn = get("gvd").init(store, cfg, "cpu", torch.Generator())
    v, y = syn.videos()
    assert v.shape == (24, 3, 4, 16, 16) and y.tolist() == [c for c in range(12) for _ in range(2)]
    assert syn.soft_labels.shape == (24, 12)
    torch.testing.assert_close(syn.soft_labels.sum(1), torch.ones(24))
    stages = sorted(p.name.split("-")[0] for p in (tmp_path / "w").iterdir())
    assert stages == ["ae", "gen", "latents", "modes", "samples", "teacher"]
    again = get("gvd").init(store, cfg, "cpu", torch.Generator())  # every stage from the cache
    assert torch.equal(again.pixels, syn.pixels)
    # a run killed during sampling resumes at the first missing chunk, with the same videos
    (chunk,) = (tmp_path / "w").glob("samples-*/chunk00001.pt")
    chunk.unlink()
    resumed = get("gvd").init(store, cfg, "cpu", torch.Generator())
    assert chunk.exists() and torch.equal(resumed.pixels, syn.pixels)
    torch.testing.assert_close(again.soft_labels, syn.soft_labels)
    # guidance off: no modes stage needed, other videos, same generator
    off = dataclasses.replace(cfg, gvd=dataclasses.replace(cfg.gvd, lam=0.0))
    syn_off = get("gvd").init(store, off, "cpu", torch.Generator())
    assert len(list((tmp_path / "w").glob("gen-*"))) == 1
    assert not torch.equal(syn_off.pixels, syn.pixels)
    # select 3 with hard labels: the teacher still trained (cached: the same one), a new samples
    # stage, each instance the candidate the teacher gives the highest probability of its class
    sel = dataclasses.replace(cfg, gvd=dataclasses.replace(cfg.gvd, select=3, soft_labels=False))
    syn_sel = get("gvd").init(store, sel, "cpu", torch.Generator())
    assert syn_sel.soft_labels is None and syn_sel.meta["teacher"]["select"] == 3
    assert len(list((tmp_path / "w").glob("teacher-*"))) == 1
    assert len(list((tmp_path / "w").glob("samples-*"))) == 3
    teacher = get("gvd").teacher(store, cfg, "cpu", progress=False)
    stats = train_stats(store)
    own = lambda px: soft_labels(teacher, px, store.mean, store.std, 1.0, 2, stats=stats)[  # noqa: E731
        torch.arange(24), y]
    assert (own(syn_sel.pixels) >= own(syn.pixels) - 1e-6).all()  # candidate 0 = the select-1 video
    assert (own(syn_sel.pixels) > own(syn.pixels) + 1e-6).any()


def test_soft_labels_average_the_segments(gen):
    from vdfast.models import ConvNet3D

    torch.manual_seed(0)  # the teacher's weights; any network will do
    teacher = ConvNet3D(3, frames=4, size=16, width=4, depth=2).eval()
    u8 = torch.randint(0, 256, (5, 4, 16, 16, 3), dtype=torch.uint8, generator=gen)
    mean, std = (0.5,) * 3, (0.25,) * 3
    p = soft_labels(teacher, u8, mean, std, temperature=2.0, segments=2, standardize=False)
    from vdfast.ops import normalize_clips

    x = normalize_clips(u8, mean, std)
    with torch.no_grad():
        s0 = torch.softmax(teacher(x[:, :, :2].repeat_interleave(2, 2)) / 2.0, 1)
        s1 = torch.softmax(teacher(x[:, :, 2:].repeat_interleave(2, 2)) / 2.0, 1)
    torch.testing.assert_close(p, (s0 + s1) / 2)
    whole = soft_labels(teacher, u8, mean, std, temperature=2.0, segments=1, standardize=False)
    with torch.no_grad():
        torch.testing.assert_close(whole, torch.softmax(teacher(x) / 2.0, 1))


@pytest.mark.parametrize("store_as", ["uint8", "fp16"])
def test_generated_synset_round_trip(store_as, tmp_path, gen):
    u8 = torch.randint(0, 256, (6, 4, 8, 8, 3), dtype=torch.uint8, generator=gen)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    from vdfast.ops import normalize_clips

    videos = u8 if store_as == "uint8" else normalize_clips(u8, mean, std)
    soft = torch.softmax(torch.randn(6, 3, generator=gen), 1)
    lat = torch.randn(6, 4, 4, 2, 2, generator=gen)
    syn = GeneratedSynset(videos, torch.tensor([0, 0, 1, 1, 2, 2]), ["a", "b", "c"], mean, std,
                          soft_labels=soft, latents=lat, store_as=store_as,
                          meta={"method": "gvd", "ipc": 2})
    v, y = syn.videos()
    assert v.shape == (6, 3, 4, 8, 8) and v.dtype == torch.float32
    s = syn.storage()
    pixels = 6 * 3 * 4 * 8 * 8
    assert s["decoded_uint8_bytes"] == pixels and s["decoded_fp32_mib"] == pixels * 4 / 2**20
    assert s["latent_bytes_fp16"] == lat.numel() * 2
    assert s["bytes"] == (pixels if store_as == "uint8" else 2 * pixels) + lat.numel() * 2
    syn.save(tmp_path / "syn")
    back = vdfast.load(tmp_path / "syn")
    assert isinstance(back, GeneratedSynset) and back.store_as == store_as
    torch.testing.assert_close(back.videos()[0], v, rtol=0, atol=0)
    torch.testing.assert_close(back.soft_labels, soft)
    torch.testing.assert_close(back.latents.float(), lat.half().float())
    assert back.meta["method"] == "gvd" and back.ipc == 2
    hard = back.without_soft_labels()
    assert hard.soft_labels is None and torch.equal(hard.videos()[0], back.videos()[0])
    with pytest.raises(ValueError, match="uint8"):
        GeneratedSynset(u8.float(), y, ["a", "b", "c"], mean, std)
    assert np.isclose(s["ratio_vs_fp32_videos"], s["bytes"] / (pixels * 4))


def test_distill_gvd_saves_a_loadable_generated_synset(store, tmp_path):
    small = {f"gvd.{k}": v for k, v in dataclasses.asdict(G).items()}
    res = vdfast.distill(store, method="gvd", ipc=1, out=tmp_path / "run", progress=False,
                         **{**small, "gvd.workdir": str(tmp_path / "w"), "gvd.segments": 1,
                            "net.width": 4})
    back = vdfast.load(tmp_path / "run" / "synset")
    assert isinstance(back, GeneratedSynset) and back.meta["method"] == "gvd"
    assert torch.equal(back.pixels, res.synset.pixels.cpu())
    assert back.meta["gvd"]["stages"]["samples"] in {p.name.split("-")[1]
                                                    for p in (tmp_path / "w").glob("samples-*")}
    # the attention backend that ran (auto on a CPU: sdpa) in the synset's metadata and config.json
    assert back.meta["gvd"]["attention"] == "sdpa" and res.config.gvd.attention == "sdpa"
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["gvd"]["attention"] == "sdpa" and back.meta["config"]["gvd"]["attention"] == "sdpa"
    from vdfast.api import _identity

    assert "attention" not in _identity(res.config, store)["config"]["gvd"]  # resumes either way


def test_gvd_attention_xformers_without_it_fails_at_the_start(store, tmp_path, monkeypatch, capsys):
    from vdfast.cli import main
    from vdfast.config import ConfigError
    from vdfast.models import video_dit

    monkeypatch.setattr(video_dit, "xformers_available", lambda: False)  # as where it is missing
    with pytest.raises(ConfigError, match="xformers does not import"):
        vdfast.distill(store, method="gvd", ipc=1, out=tmp_path / "run", progress=False,
                       **{"gvd.attention": "xformers"})
    assert not (tmp_path / "run").exists()  # refused before the run directory was made
    with pytest.raises(ConfigError, match="is not one of"):
        GVDConfig(attention="flash")
    assert main(["distill", "--method", "gvd", "--gvd-attention", "xformers", "--out",
                 str(tmp_path / "cli"), "--no-evaluate", "--no-preview"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "xformers does not import" in err
    assert not (tmp_path / "cli").exists()
