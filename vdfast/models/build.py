"""The one constructor of the networks vdfast trains and embeds with, from a network config and the
shape of the data.

Every method (DM, DC, FRePo, herding / k-center, MTT's experts, GVD's teacher) and every
evaluation student is built by :func:`build`; what differs between them is only where the
weights come from (the global RNG at construction, a generator of the method's own afterwards, or
nothing: ``device="meta"``).

Example::

    net = build(NetConfig(width=32, depth=2), store)                  # ConvNet3D on the CPU
    gru = build(NetConfig(width=32), store, student="cnn_gru")         # an evaluation student
    net = build(cfg.net, store, device="meta").to_empty(device="cuda")  # weights drawn later
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from vdfast.models.convnet3d import build_student


@dataclass(frozen=True)
class DataShape:
    """What a network needs to know about its data: the number of classes and the clip's frames
    and (square) size. A :class:`~vdfast.data.store.ClipStore` has these attributes too."""

    num_classes: int
    frames: int
    size: int


def build(net_cfg, data, student: str = "convnet3d", device=None) -> nn.Module:
    """A fresh ``student`` network (a name of ``STUDENTS``; default ConvNet3D) with ``net_cfg``'s
    width, depth and normalisation (a :class:`~vdfast.config.NetConfig`; None: the plain network of
    width 64, depth 3, no normalisation) for ``data``'s classes, frames and size
    (a ClipStore or a :class:`DataShape`).

    The network is constructed on the CPU, its initialisation drawn from the global CPU RNG, then
    moved to ``device`` (None: left on the CPU). ``device="meta"`` allocates it without memory and
    without drawing from any RNG (``to_empty`` it, then draw its weights)."""
    width, depth, norm = (64, 3, "none") if net_cfg is None else (net_cfg.width, net_cfg.depth,
                                                                  net_cfg.norm)
    args = (student, data.num_classes, data.frames, data.size)
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            return build_student(*args, width=width, depth=depth, norm=norm)
    net = build_student(*args, width=width, depth=depth, norm=norm)
    return net if device is None else net.to(device)
