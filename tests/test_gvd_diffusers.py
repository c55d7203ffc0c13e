"""GVD with a user's local diffusers ``AutoencoderKL`` folder (``gvd.autoencoder``): the folder is
loaded offline, its posterior mean x scaling_factor is the latent space the generator trains and
samples in, and its decoder makes the videos. A tiny AutoencoderKL is written with diffusers'
own ``save_pretrained`` (diffusers is a test dependency in requirements.txt)."""
import diffusers  # a requirement (requirements.txt): no skip when it is missing
import pytest
import torch

from vdfast.config import resolve
from vdfast.data.store import ClipStore
from vdfast.methods import get
from vdfast.methods.gvd import encode_train
from vdfast.models.autoencoder import DiffusersAE

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.5)
    d = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(d)
    return d, vae.eval()


def test_local_autoencoder_is_the_latent_space(vae_dir, tmp_path):
    d, vae = vae_dir
    store = ClipStore.builtin(train_per_class=3, test_per_class=1, frames=4, size=16)
    cfg = resolve("builtin", method="gvd", ipc=1, **{"net.width": 4},
                  gvd=dict(autoencoder=str(d), workdir=str(tmp_path / "w"), generator="tiny",
                           gen_steps=2, gen_batch=4, steps=2, train_timesteps=20, segments=2,
                           chunk=12, kmeans_iters=2, soft_labels=False, keep_latents=True))
    syn = get("gvd").init(store, cfg, "cpu", torch.Generator())
    assert syn.pixels.shape == (12, 4, 16, 16, 3) and syn.pixels.dtype == torch.uint8
    # the generator's latents are the folder's (down 4 -> 4x4, 4 channels), and are what the
    # diffusers model gives: posterior mean x its scaling_factor
    ae = DiffusersAE(str(d))
    assert (ae.down, ae.latent_channels, ae.sf) == (4, 4, 0.5)
    lat = encode_train(ae, store)
    assert lat[store.classes[0]].shape == (3, 4, 4, 4, 4)
    x = torch.from_numpy(store.clips("train", 0)[0].copy())  # [T, H, W, 3]
    unit = x.permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        want = vae.encode(unit).latent_dist.mean * 0.5
    torch.testing.assert_close(lat[store.classes[0]][0].float(), want, rtol=1e-2, atol=2e-3)
    # the videos are the diffusers decoder's output of the sampled latents
    with torch.no_grad():
        z = syn.latents[:2].float().flatten(0, 1)
        dec = ((vae.decode(z / 0.5).sample.clamp(-1, 1) + 1) * 127.5).round()
    got = syn.pixels[:2].flatten(0, 1).permute(0, 3, 1, 2).float()
    assert (got - dec).abs().mean() < 1.0   # fp16 latents, uint8 rounding
    # the stage cache: no trained autoencoder, the folder recorded in the ae stage's identity
    (ae_stage,) = (tmp_path / "w").glob("ae-*")
    assert str(d) in (ae_stage / "identity.json").read_text()
    assert not list(ae_stage.glob("ae_final.*"))


def test_missing_or_wrong_folder_says_what_to_do(tmp_path):
    for d in (tmp_path / "nope", tmp_path):  # missing; a folder without config.json
        with pytest.raises(FileNotFoundError, match="not a local diffusers AutoencoderKL folder"):
            DiffusersAE(str(d))
