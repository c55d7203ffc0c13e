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
    """An objective over a parametrisation. ``init`` builds the synset of ``self.parametrization``
    (``pixel``: the videos themselves; ``s2d``: static + dynamic memory); ``step`` computes the
    objective on ``synset.videos()`` and updates ``synset.param_groups(cfg)``."""

    name = "base"
    iterative = False
    shardable = False  # True: setup splits its work across the processes of ``self.dist``
    class_sharded = False  # True: by blocks of classes (so at most one process per class)
    partial_loss = True  # on N processes, step returns this process's share of a sum (the loop adds
    #                      them up); False: every process returns the whole loss

    def __init__(self, name: str | None = None, parametrization: str = "pixel"):
        self.name = name or self.name
        self.parametrization = parametrization
        self.run_dir = None  # the run's output directory (set by distill), for caches
        self.dist = None     # the run's process group (set by distill; None: one process)

    @property
    def full_name(self) -> str:
        return self.name if self.parametrization == "pixel" else f"{self.parametrization}-{self.name}"

    def init(self, store: ClipStore, cfg, device, gen: torch.Generator):
        from vdfast.synsets import make

        return make(self.parametrization, store, cfg, device, method=self.full_name, dist=self.dist)

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
