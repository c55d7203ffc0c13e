"""What a method is: a parametrisation x an objective.

Each method exposes ``init(store, cfg, device, gen) -> Synset`` and, when it iterates,
``setup(synset, store, cfg, device) -> state`` and ``step(synset, state, gen) -> loss``. The loop,
evaluation, checkpointing and the progress bar live once, in :mod:`vdfast.api`, never here.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from vdfast.data.store import ClipStore


class Method:
    name = "base"
    iterative = False

    def init(self, store: ClipStore, cfg, device, gen: torch.Generator):
        raise NotImplementedError

    def setup(self, synset, store: ClipStore, cfg, device) -> dict:
        return {}

    def step(self, synset, state: dict, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self, state: dict) -> dict:
        """What a checkpoint must keep of ``state`` besides the synset (optimizer moments ...)."""
        return {}

    def load_state_dict(self, state: dict, saved: dict) -> None:
        pass


@torch.no_grad()
def reinit_(net: nn.Module, gen: torch.Generator) -> nn.Module:
    """Re-draw every Conv/Linear parameter in place with PyTorch's default initialisation, from
    ``gen`` (a fresh random network without reallocating it and without the global RNG)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            fan_in = m.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) reduces to this bound
            m.weight.uniform_(-bound, bound, generator=gen)
            if m.bias is not None:
                m.bias.uniform_(-bound, bound, generator=gen)
        elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d, nn.BatchNorm3d)) and m.affine:
            m.weight.fill_(1.0)
            m.bias.zero_()
    return net


def real_init(store: ClipStore, ipc: int, gen_cpu: torch.Generator):
    """``ipc`` random real train clips per class: (uint8 ``[nc*ipc, T, H, W, 3]``, labels)."""
    clips, labels = [], []
    for c, n in enumerate(store.counts("train")):
        idx = torch.randperm(n, generator=gen_cpu)[:ipc].sort().values.numpy()
        clips.append(torch.from_numpy(store.clips("train", c)[idx]))
        labels.append(torch.full((ipc,), c, dtype=torch.long))
    return torch.cat(clips), torch.cat(labels)
