"""Frame autoencoders for GVD's latent space (docs/gvd.md).

* :class:`FrameAutoencoder`: a small convolutional encoder/decoder applied to each frame
  independently: RGB in [-1, 1] ``[N, 3, H, W]`` <-> a 4-channel latent ``[N, 4, H/d, W/d]``
  (``d`` = 4 or 8). Deterministic (no KL term); a ``scale`` buffer (1 / the std of the training
  latents, set by :func:`vdfast.methods.gvd.train_autoencoder`) gives the diffusion model latents
  of about unit variance, as Stable Diffusion's 0.18215 does.
* :class:`DiffusersAE`: a local diffusers ``AutoencoderKL`` folder (``config.json`` + weights)
  when the user has one; loaded with ``local_files_only=True`` — nothing is ever fetched.

Both expose ``encode(frames) -> latents`` and ``decode(latents) -> frames`` (scaled latents) and
``down`` (the spatial factor).

Example::

    ae = FrameAutoencoder(down=4, width=32)
    z = ae.encode(torch.rand(6, 3, 32, 32) * 2 - 1)   # [6, 4, 8, 8]
    x = ae.decode(z)                                  # [6, 3, 32, 32]
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def _gn(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class _Res(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(_gn(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                  _gn(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class FrameAutoencoder(nn.Module):
    """Per-frame conv autoencoder: ``log2(down)`` stride-2 stages of width ``width * 2**i`` (at most
    ``4 * width``), residual blocks below full resolution only."""

    def __init__(self, channels: int = 3, latent: int = 4, down: int = 4, width: int = 32):
        super().__init__()
        if down not in (2, 4, 8, 16):
            raise ValueError(f"autoencoder down factor must be 2, 4, 8 or 16, got {down}")
        self.config = dict(channels=channels, latent=latent, down=down, width=width)
        self.down, self.latent_channels = down, latent
        stages = int(math.log2(down))
        widths = [width * min(4, 2 ** i) for i in range(stages + 1)]
        enc = [nn.Conv2d(channels, widths[0], 3, padding=1)]
        for i in range(stages):  # no residual block at full resolution (most of the cost)
            enc += ([_Res(widths[i])] if i else []) + [
                nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1)]
        enc += [_Res(widths[-1]), _gn(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], latent, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv2d(latent, widths[-1], 3, padding=1), _Res(widths[-1])]
        for i in reversed(range(stages)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(widths[i + 1], widths[i], 3, padding=1)] + ([_Res(widths[i])] if i else [])
        dec += [_gn(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("scale", torch.ones(()))

    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Frames in [-1, 1] ``[N, 3, H, W]`` -> scaled latents ``[N, 4, H/d, W/d]``."""
        return self.encoder(x) * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> frames ``[N, 3, H, W]`` (about [-1, 1]; clamp before quantising)."""
        return self.decoder(z / self.scale)


class DiffusersAE(nn.Module):
    """A local diffusers ``AutoencoderKL`` folder as a frame autoencoder (mean of the posterior,
    times the model's ``scaling_factor``). Needs ``diffusers`` installed; never downloads."""

    def __init__(self, path: str):
        super().__init__()
        try:
            from diffusers import AutoencoderKL
        except ImportError as e:
            raise ImportError(f"gvd.autoencoder={path!r} needs diffusers (pip install diffusers); "
                              f"leave it empty to train vdfast's small autoencoder") from e
        from pathlib import Path

        if not (Path(path) / "config.json").is_file():  # diffusers would talk of the Hub here
            raise FileNotFoundError(
                f"gvd.autoencoder={path!r} is not a local diffusers AutoencoderKL folder (config.json "
                f"+ diffusion_pytorch_model.safetensors, as written by save_pretrained); vdfast never "
                f"downloads weights: pass such a folder, or leave it empty to train vdfast's autoencoder")
        self.vae = AutoencoderKL.from_pretrained(path, local_files_only=True).eval()
        self.vae.requires_grad_(False)
        cfg = self.vae.config
        self.latent_channels = int(cfg.latent_channels)
        self.down = 2 ** (len(cfg.block_out_channels) - 1)
        self.sf = float(getattr(cfg, "scaling_factor", 0.18215))
        self.config = {"diffusers": str(path)}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mean * self.sf

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.sf).sample
