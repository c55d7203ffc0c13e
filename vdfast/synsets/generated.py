"""GeneratedSynset (kind ``generated``): videos made by a generator (GVD), not optimised further.

What is stored (``store_as``):

* ``uint8`` (default): the decoded videos quantised like real clips, ``pixels`` uint8
  ``[N, T, H, W, 3]`` (the ClipStore layout); ``videos()`` normalises them with the synset's
  mean/std, exactly as real clips are normalised.
* ``fp16``: the decoded videos in normalised space, ``data`` fp16 ``[N, C, T, H, W]``.

Optionally the generator's latents, ``latents`` fp16 ``[N, F, c, h, w]`` (frame-major), which a
user with the same autoencoder can decode again (16 frames at 112² through a /8 autoencoder:
4 x 14² fp16 per frame, 25 KB per video against 602 KB of uint8 pixels). Hard labels always; soft labels (teacher probabilities) when the method made them.

``storage()`` reports the stored bytes and, in the papers' unit, the decoded videos as fp32 MiB,
plus the same videos as uint8 and the latents (fp16) — see :meth:`GeneratedSynset.storage`.
"""
from __future__ import annotations

import torch

from vdfast.profiling import traced
from vdfast.synsets.base import Synset, register

STORE_AS = ("uint8", "fp16")
_HEADER_KEYS = ("format", "kind", "vdfast", "classes", "frames", "size", "normalization",
                "num_videos", "soft_labels", "storage", "store_as")


@register("generated")
class GeneratedSynset(Synset):
    """Args:
        videos: uint8 ``[N, T, H, W, 3]`` (``store_as="uint8"``) or float normalised
            ``[N, C, T, H, W]`` (``store_as="fp16"``; a float input is cast).
        labels: ``[N]`` hard labels; ``soft_labels``: ``[N, nc]`` probabilities or None.
        latents: optional ``[N, F, c, h, w]`` (stored fp16).
    """

    def __init__(self, videos: torch.Tensor, labels: torch.Tensor, classes, mean, std,
                 soft_labels: torch.Tensor | None = None, latents: torch.Tensor | None = None,
                 store_as: str = "uint8", meta: dict | None = None):
        if store_as not in STORE_AS:
            raise ValueError(f"store_as must be one of {STORE_AS}, got {store_as!r}")
        if videos.ndim != 5:
            raise ValueError(f"generated videos must be 5-D, got {tuple(videos.shape)}")
        if store_as == "uint8":
            if videos.dtype != torch.uint8 or videos.shape[-1] != 3:
                raise ValueError("store_as='uint8' takes uint8 [N, T, H, W, 3] videos, got "
                                 f"{videos.dtype} {tuple(videos.shape)}")
            frames, size = videos.shape[1], videos.shape[2]
        else:
            frames, size = videos.shape[2], videos.shape[3]
        super().__init__(classes, frames, size, mean, std, labels, soft_labels, meta)
        self.store_as = store_as
        if store_as == "uint8":
            self.register_buffer("pixels", videos.clone())
        else:
            self.register_buffer("data", videos.half().clone())
        self.register_buffer("latents", None if latents is None else latents.half().clone())

    @traced("vdfast.synset.videos")
    def videos(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.store_as == "uint8":
            from vdfast.ops import normalize_clips

            return normalize_clips(self.pixels, self.mean, self.std), self.labels
        return self.data.float(), self.labels

    def param_groups(self, cfg) -> list[dict]:
        return []  # generated, not optimised

    def storage(self) -> dict:
        """Stored bytes (``bytes``, ``fp32_mib`` = stored bytes in MiB as the base reports) plus:
        ``decoded_fp32_mib`` (the decoded videos counted as fp32, the papers' unit),
        ``decoded_uint8_bytes`` and ``latent_bytes_fp16`` (0 when latents are not kept)."""
        s = super().storage()
        n = int(self.labels.numel())
        pixels = n * 3 * self.frames * self.size * self.size
        s.update(store_as=self.store_as, decoded_fp32_mib=pixels * 4 / 2**20,
                 decoded_uint8_bytes=pixels,
                 latent_bytes_fp16=0 if self.latents is None else self.latents.numel() * 2)
        return s

    def without_soft_labels(self) -> "GeneratedSynset":
        """The same videos with hard labels only (for the hard-vs-soft comparison)."""
        v = self.pixels if self.store_as == "uint8" else self.data
        meta = dict(self.meta, soft_labels_removed=True)
        return GeneratedSynset(v, self.labels, self.classes, self.mean, self.std, None, self.latents,
                               self.store_as, meta)

    def header(self) -> dict:
        return {**super().header(), "store_as": self.store_as}

    @classmethod
    def _from_header(cls, header, tensors):
        norm = header["normalization"]
        meta = {k: v for k, v in header.items() if k not in _HEADER_KEYS}
        store_as = header.get("store_as", "uint8")
        videos = tensors["pixels"] if store_as == "uint8" else tensors["data"]
        return cls(videos, tensors["labels"], header["classes"], norm["mean"], norm["std"],
                   soft_labels=tensors.get("soft_labels"), latents=tensors.get("latents"),
                   store_as=store_as, meta=meta)
