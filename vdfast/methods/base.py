"""What a method is: a parametrisation x an objective.

Each method exposes ``init(store, cfg, device, gen) -> Synset`` and, when it iterates,
``setup(synset, store, cfg, device) -> state`` (a dataclass of the method's own: its networks,
optimizers, real-data pool ...) and ``step(synset, state, gen) -> loss``. The API calls exactly
the hooks :class:`Method` declares. The loop, checkpointing and the progress bar live once, in
:mod:`vdfast.engine.loop` and :mod:`vdfast.api`, never here.
"""
from __future__ import annotations

import importlib
import math

import torch
import torch.nn as nn

from vdfast.data.store import ClipStore
from vdfast.models import build

# parametrisation -> "module:function" (imported on use) of its starting synset:
# ``init(store, cfg, device, method, dist=None) -> Synset``
INITS = {
    "pixel": "vdfast.methods.base:init_pixel",
    "s2d": "vdfast.methods.static:init_s2d",
}


def make_synset(parametrization: str, store: ClipStore, cfg, device, method: str, dist=None):
    """A method's starting synset of ``parametrization`` (:data:`INITS`); ``dist`` (a
    :class:`vdfast.distributed.Dist`) lets an init that learns something split it across processes."""
    if parametrization not in INITS:
        raise ValueError(f"unknown parametrisation {parametrization!r}; known: {', '.join(INITS)}")
    module, fn = INITS[parametrization].split(":")
    return getattr(importlib.import_module(module), fn)(store, cfg, device, method, dist=dist)


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

    def process_group(self, device):
        """The run's process group (:attr:`dist`), or one process on ``device`` when the method
        runs outside :func:`vdfast.distill` (a test, a benchmark)."""
        from vdfast.distributed import Dist

        return self.dist if self.dist is not None else Dist(0, 1, torch.device(device))

    def stage_root(self, workdir: str):
        """The folder of a non-iterative method's cached stages (:class:`~vdfast.engine.checkpoint.
        StageCache`): ``workdir`` (its section's option) when set, else ``<run out>/<name>`` when
        the run has an output folder, else None (nothing cached, nothing resumable)."""
        from pathlib import Path

        if workdir:
            return Path(workdir)
        return Path(self.run_dir) / self.name if self.run_dir else None

    @property
    def full_name(self) -> str:
        return self.name if self.parametrization == "pixel" else f"{self.parametrization}-{self.name}"

    def for_device(self, cfg, device):
        """The config this run uses on ``device``, called by :func:`vdfast.distill` before any
        output is written: checks that need the device, and ``auto`` choices made concrete (so the
        saved config says what ran). Default: ``cfg`` as it is."""
        return cfg

    def init(self, store: ClipStore, cfg, device, gen: torch.Generator):
        return make_synset(self.parametrization, store, cfg, device, method=self.full_name,
                           dist=self.dist)

    def setup(self, synset, store: ClipStore, cfg, device):
        """The state of an iterative method's steps (a dataclass of the method's); called once
        before the first step, and again when a run resumes (then :meth:`load_state_dict`)."""
        raise NotImplementedError(f"method {self.name} does not iterate (iterative = False): "
                                  f"its synset is made in init")

    def step(self, synset, state, gen: torch.Generator) -> torch.Tensor:
        """One optimisation step of the synset; the loss as a detached scalar tensor (never read
        back to the host here: the loop reads a window of them at once)."""
        raise NotImplementedError(f"method {self.name} does not iterate (iterative = False)")

    def state_dict(self, state) -> dict:
        """What a checkpoint must keep of ``state`` besides the synset (optimizer moments ...)."""
        return {}

    def load_state_dict(self, state, saved: dict) -> None:
        """Restore what :meth:`state_dict` returned into a fresh ``setup`` state."""

    def finalize(self, synset, state) -> None:
        """After the last step: record in ``synset`` what evaluation needs of the run (MTT: its
        learned student step size). Nothing by default."""

    def report(self, state) -> dict:
        """Entries the run's history keeps beside the losses (DM's network bank:
        ``{"dm_bank": ...}``). Nothing by default."""
        return {}


def init_pixel(store: ClipStore, cfg, device, method: str, dist=None):
    """A :class:`~vdfast.synsets.PixelSynset` of ``ipc`` random real clips per class (seeded by
    ``cfg.seed``), N(0, 1) noise, or the clips herding / k-center chooses
    (:func:`vdfast.methods.coreset.select_clips`), as ``cfg.init`` says."""
    from vdfast.ops import normalize_clips
    from vdfast.synsets import PixelSynset

    meta = {"method": method, "ipc": cfg.ipc, "dataset": store.name}
    if cfg.init in ("herding", "kcenter"):
        from vdfast.methods.coreset import select_clips

        data, labels, picked = select_clips(store, cfg, device, cfg.init)
        return PixelSynset(data.to(device), labels.to(device), store.classes, store.mean, store.std,
                           meta={**meta, "init": cfg.init, "picked": picked})
    gen_cpu = torch.Generator().manual_seed(cfg.seed)
    clips, labels = store.random_clips(cfg.ipc, gen_cpu)
    data = normalize_clips(clips, store.mean, store.std)
    if cfg.init == "noise":
        data = torch.randn(data.shape, generator=gen_cpu)
    return PixelSynset(data.to(device), labels.to(device), store.classes, store.mean, store.std,
                       meta=meta)


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


def check_net_norm(cfg, method: str) -> None:
    """Refuse ``--net-norm batch`` for a method that runs ``cfg.net`` on per-class or synthetic-only
    batches (DC, FRePo): each would get its own batch statistics."""
    if cfg.net.norm == "batch":
        raise ValueError(f"{method} does not support --net-norm batch (per-class or synthetic-only "
                         f"batches would each get their own statistics); use --net-norm none or "
                         f"instance")


def empty_net(store: ClipStore, cfg, device) -> nn.Module:
    """A ConvNet3D for ``store`` with ``cfg.net``'s shape, in eval mode, allocated without drawing
    from the global RNG (its weights are drawn later with :func:`reinit_` from the run's generator)."""
    return build(cfg.net, store, device="meta").to_empty(device=device).eval()
