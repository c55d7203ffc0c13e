"""Starting the GVD generator from a user's local weights (``gvd.generator_init``): a diffusers
``LatteTransformer3DModel`` folder (written here by diffusers' own ``save_pretrained``) maps onto
VideoDiT where the two architectures share parts, and those parts then compute what Latte's
compute; a vdfast generator file loads where names and shapes match; the rest is reported, and
weights that match nothing are an error, not a silent random start."""
import dataclasses
import json

import diffusers
import pytest
import torch
from diffusers.models.embeddings import get_timestep_embedding

from vdfast.config import GVDConfig, resolve
from vdfast.data.store import ClipStore
from vdfast.methods.gvd import GVD, train_generator
from vdfast.models.video_dit import VideoDiT, load_matching

pytestmark = pytest.mark.usefixtures("one_thread")


def _latte(width=64, heads=4, layers=2, out_channels=8):
    torch.manual_seed(0)
    return diffusers.LatteTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=width // heads, in_channels=4,
        out_channels=out_channels, num_layers=layers, sample_size=4, patch_size=2,
        num_embeds_ada_norm=1000, caption_channels=12, cross_attention_dim=width, video_length=4).eval()


@pytest.fixture(scope="module")
def latte_dir(tmp_path_factory):
    m = _latte()
    d = tmp_path_factory.mktemp("latte")
    m.save_pretrained(d)
    return d, m


def _tiny(num_classes=3):
    torch.manual_seed(1)
    return VideoDiT.from_preset("tiny", num_classes, frames=4, latent_size=4, channels=4, patch=2)


def test_latte_parts_compute_what_latte_computes(latte_dir):
    d, latte = latte_dir
    net = _tiny()
    rep = load_matching(net, str(d))
    assert rep["format"] == "latte"
    for name in ("embed.weight", "t_embed.mlp.0.weight", "t_embed.mlp.2.bias", "out.weight",
                 "blocks.0.attn.qkv.weight", "blocks.1.attn.qkv.weight", "blocks.3.attn.proj.bias"):
        assert name in rep["loaded"]
    # what has no counterpart is reported, on both sides
    assert any(".ff." in k for k in rep["skipped"]) and any(".attn2." in k for k in rep["skipped"])
    assert "scale_shift_table" in rep["skipped"] and "y_embed.weight" in rep["not_in_source"]
    assert "blocks.0.mlp.0.weight" in rep["not_in_source"] and "blocks.0.ada.1.weight" in rep["not_in_source"]
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        z = torch.randn(3, 4, 4, 4, generator=g)
        torch.testing.assert_close(net.embed(z), latte.pos_embed.proj(z))
        tok = torch.randn(2, 5, 64, generator=g)
        for ours, theirs in ((net.blocks[0], latte.transformer_blocks[0]),
                             (net.blocks[1], latte.temporal_transformer_blocks[0]),
                             (net.blocks[3], latte.temporal_transformer_blocks[1])):
            torch.testing.assert_close(ours.attn(tok), theirs.attn1(tok), rtol=1e-4, atol=1e-5)
        t = torch.tensor([0, 17, 999])
        want = latte.adaln_single.emb.timestep_embedder(
            get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0))
        torch.testing.assert_close(net.t_embed(t), want, rtol=1e-4, atol=1e-5)
        # the output projection: Latte's noise half (learned sigma), rows in the same (p, q, c) order
        torch.testing.assert_close(net.out.weight.view(2, 2, 4, 64),
                                   latte.proj_out.weight.view(2, 2, 8, 64)[:, :, :4])


def test_vdfast_weights_load_where_shapes_match(tmp_path):
    src = _tiny(num_classes=5)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn(p.shape))
    torch.save(src.state_dict(), tmp_path / "gen_final.pt")
    net = _tiny(num_classes=3)   # another class count: only the class embedding differs
    rep = load_matching(net, str(tmp_path / "gen_final.pt"))
    assert rep["format"] == "vdfast"
    assert list(rep["skipped"]) == ["y_embed.weight"] and rep["not_in_source"] == ["y_embed.weight"]
    for k, v in net.state_dict().items():
        if k != "y_embed.weight":
            assert torch.equal(v, src.state_dict()[k]), k


def test_generator_init_in_the_gvd_stage(latte_dir, tmp_path):
    d, _ = latte_dir
    store = ClipStore.builtin(train_per_class=2, test_per_class=1, frames=4, size=16)
    lat = {lab: torch.randn(2, 4, 4, 4, 4) for lab in store.classes}
    g = GVDConfig(generator="tiny", gen_steps=1, gen_batch=2, gen_lr=1e-12, ema=0.0,
                  train_timesteps=20, steps=2, generator_init=str(d))
    net = train_generator(lat, g, 0, "cpu", tmp_path / "gen", progress=False)
    rep = json.loads((tmp_path / "gen" / "init_report.json").read_text())
    assert "blocks.0.attn.qkv.weight" in rep["loaded"]
    latte = _latte()
    q, k, v = (latte.transformer_blocks[0].attn1.__getattr__(f"to_{n}").weight for n in "qkv")
    torch.testing.assert_close(net.blocks[0].attn.qkv.weight, torch.cat([q, k, v]), rtol=0, atol=1e-6)
    # the stage key follows the weights' content, and is unchanged without an init
    cfg = resolve("builtin", method="gvd", ipc=1, gvd={"generator_init": str(d)})
    plain = resolve("builtin", method="gvd", ipc=1)
    key = GVD.stage_identities(store, cfg)["gen"]
    assert "generator_init" in key and "generator_init" not in GVD.stage_identities(store, plain)["gen"]
    other = tmp_path / "latte2"
    _latte(out_channels=4).save_pretrained(other)
    cfg2 = dataclasses.replace(cfg, gvd=dataclasses.replace(cfg.gvd, generator_init=str(other)))
    assert GVD.stage_identities(store, cfg2)["gen"]["generator_init"]["sha256"] != key["generator_init"]["sha256"]


def test_weights_that_match_nothing_are_an_error(tmp_path):
    _latte(width=32, heads=2).save_pretrained(tmp_path / "narrow")
    lat = {"a": torch.randn(2, 4, 4, 4, 4), "b": torch.randn(2, 4, 4, 4, 4)}
    g = GVDConfig(generator="tiny", gen_steps=1, gen_batch=2, train_timesteps=20, steps=2,
                  generator_init=str(tmp_path / "narrow"))
    with pytest.raises(ValueError, match="no weight matrix matches"):
        train_generator(lat, g, 0, "cpu", None, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_matching(_tiny(), str(tmp_path / "missing.pt"))
