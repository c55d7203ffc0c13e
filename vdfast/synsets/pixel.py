"""PixelSynset: the synthetic videos themselves are the learnable tensor ``[N, C, T, H, W]``
(normalised space), ``ipc`` per class, class-major. DM, DC and MTT optimise it; coresets fill it
with real clips (their initialisation: :func:`vdfast.methods.base.init_pixel`)."""
from __future__ import annotations

import torch
import torch.nn as nn

from vdfast.profiling import traced
from vdfast.synsets.base import Synset, register


@register("pixel")
class PixelSynset(Synset):
    def __init__(self, data: torch.Tensor, labels: torch.Tensor, classes, mean, std,
                 soft_labels: torch.Tensor | None = None, meta: dict | None = None):
        if data.ndim != 5:
            raise ValueError(f"pixel synset data must be [N, C, T, H, W], got {tuple(data.shape)}")
        super().__init__(classes, data.shape[2], data.shape[3], mean, std, labels, soft_labels, meta)
        self.data = nn.Parameter(data.float().clone())

    @traced("vdfast.synset.videos")
    def videos(self):
        return self.data, self.labels

    def param_groups(self, cfg) -> list[dict]:
        return [{"params": [self.data], "lr": cfg.lr_img}]

    @classmethod
    def _from_header(cls, header, tensors):
        norm = header["normalization"]
        meta = {k: v for k, v in header.items()
                if k not in ("format", "kind", "vdfast", "classes", "frames", "size", "normalization",
                             "num_videos", "soft_labels", "storage")}
        return cls(tensors["data"], tensors["labels"], header["classes"], norm["mean"], norm["std"],
                   soft_labels=tensors.get("soft_labels"), meta=meta)

