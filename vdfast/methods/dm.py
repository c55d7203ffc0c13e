"""DM, distribution matching (Zhao & Bilen), on pixel synsets.

Each iteration: a NEW randomly initialised ConvNet3D (weights redrawn in place, no gradient on
them); loss = sum over classes c of || mean_i embed(real_i of c) - mean_j embed(syn_j of c) ||^2 with
``batch_real`` real clips per class; SGD(momentum) on the synset's learnable tensors (the pixels, or with ``s2d-dm``
the dynamic memory and integrator).

Where the reference spends its time (~97 %: 50 per-class forwards, real clips gathered on the host)
vdfast embeds every class's real clips together (ConvNet3D has no normalisation layer, so this is
exactly the per-class result; chunks sized from the free memory on a GPU, cache-sized on a
CPU: :mod:`vdfast.memory`), real clips sampled on the device from a uint8
:class:`~vdfast.data.store.ClipPool` and normalised in one fused pass, and the per-class means and
distances in one fused ``dm_loss``. Nothing in ``step`` reads a value back to the host.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from vdfast import augment
from vdfast.data.store import ClipPool
from vdfast.memory import auto_chunk
from vdfast.methods.base import Method, reinit_
from vdfast.models import build
from vdfast.ops import dm_loss, normalize_clips
from vdfast.profiling import span

if TYPE_CHECKING:
    from vdfast.distributed import Dist


def embed(net, x: torch.Tensor, chunk: int = 0, transform=None) -> torch.Tensor:
    """``net.embed`` of ``transform(x)``, ``chunk`` clips per forward (0: all at once). On a GPU one
    batch is fastest; on a CPU, batches of hundreds of clips run out of cache and are ~30 % slower
    than chunks of 16 (measured at 8x32² and 8x64²). ``transform`` (e.g. uint8 -> normalised float)
    is applied per chunk, so only one chunk is ever held in float. ConvNet3D has no normalisation
    layer, so the result does not depend on the chunking."""
    f = transform or (lambda t: t)
    if not chunk or x.shape[0] <= chunk:
        return net.embed(f(x))
    return torch.cat([net.embed(f(x[i:i + chunk])) for i in range(0, x.shape[0], chunk)])


@dataclass
class DMState:
    """What DM's steps share: the real clips of this process's classes, the random network, the
    synset's optimizer, and DM's network bank when one is used."""

    pool: ClipPool
    net: nn.Module
    opt: torch.optim.Optimizer
    chunk: int                    # real clips per embedding forward (0: all at once)
    batch_real: int
    mean: tuple
    std: tuple
    dist: Dist
    own: torch.Tensor | None      # this process's synthetic rows (None: all of them)
    params: list                  # the synset's learnable tensors (their gradients summed)
    bank: object = None           # a vdfast.methods.dm_bank.Bank (None: a new network each step)
    bank_seed: int = 0
    bank_it: int = 0              # the bank's schedule position (saved in checkpoints)
    heldout: object = None        # a vdfast.methods.dm_bank.HeldOut (None: not measured)
    dsa: str = ""                 # siamese augmentation of both batches (vdfast.augment; "": off)


class DM(Method):
    name = "dm"
    iterative = True
    shardable = True  # classes split across processes (see vdfast.distributed)
    class_sharded = True

    def setup(self, synset, store, cfg, device) -> DMState:
        state = self._setup(synset, store, cfg, device)
        if cfg.dm_bank:  # the bank of random networks with cached real means (vdfast.methods.dm_bank)
            from vdfast.methods import dm_bank

            state.bank = dm_bank.setup_dm(self, store, cfg, device, state.net, state.pool,
                                          state.pool.classes, state.chunk, state.dist.main)
            state.bank_seed = cfg.seed
            if cfg.dm_bank_heldout:  # the loss on networks the bank never shows the synset
                state.heldout = dm_bank.setup_heldout(store, cfg, device, state.net, state.pool,
                                                      state.pool.classes, state.chunk,
                                                      state.dist.main)
        return state

    def _setup(self, synset, store, cfg, device):
        dist = self.process_group(device)
        classes = dist.shard(store.num_classes)
        net = build(cfg.net, store, device=device)
        net.requires_grad_(False)
        groups = synset.param_groups(cfg)
        opt = torch.optim.SGD(groups, momentum=cfg.momentum)
        labels = synset.labels
        own = torch.nonzero((labels >= classes.start) & (labels < classes.stop)).flatten()
        # clips per embedding forward: cache-sized on a CPU, from the free memory on a GPU
        chunk = auto_chunk(net, (3, store.frames, store.size, store.size), device,
                           total=len(classes) * cfg.batch_real, requested=cfg.embed_chunk)
        return DMState(pool=ClipPool(store, "train", device, classes=classes), net=net, opt=opt,
                       chunk=chunk, batch_real=cfg.batch_real, mean=store.mean, std=store.std,
                       dist=dist, own=None if len(own) == len(labels) else own,
                       params=[p for g in groups for p in g["params"]], dsa=cfg.dsa)

    def step(self, synset, state: DMState, gen):
        net, opt, pool = state.net, state.opt, state.pool
        aug = {}  # no augmentation unless state.dsa names one
        if state.bank is not None:  # the real side read from the bank; draws nothing from gen
            from vdfast.methods.dm_bank import measure_heldout, real_means

            if state.heldout is not None and state.bank_it == 0:  # the curve's start
                measure_heldout(state, synset, 0)
            real_feat, real_labels = real_means(state)
        else:
            reinit_(net, gen)
            real_u8, real_labels = pool.sample(state.batch_real, gen)
            if state.dsa:  # one transformation for both sides of this step
                aug = augment.draw(state.dsa, gen, real_u8.device)
            with torch.no_grad(), span("vdfast.dm.embed_real"):  # normalised one chunk at a time
                real_feat = embed(net, real_u8, state.chunk,
                                  lambda u: augment.apply(normalize_clips(u, state.mean, state.std), aug))
        syn, syn_labels = synset.videos()
        if state.own is not None:  # this process's classes only
            syn, syn_labels = syn[state.own], syn_labels[state.own]
        with span("vdfast.dm.embed_syn"):
            syn_feat = embed(net, augment.apply(syn, aug))
        loss = dm_loss(real_feat.to(syn_feat.dtype), real_labels, syn_feat, syn_labels, pool.num_classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        state.dist.sum_grads_(state.params)
        opt.step()
        if state.heldout is not None and state.heldout.due(state.bank_it):
            from vdfast.methods.dm_bank import measure_heldout

            measure_heldout(state, synset, state.bank_it)
        return loss.detach()

    def state_dict(self, state: DMState):
        extra = {"bank_it": state.bank_it} if state.bank is not None else {}
        if state.heldout is not None:
            extra["heldout"] = state.heldout.state_dict()
        return {"opt": state.opt.state_dict(), **extra}

    def load_state_dict(self, state: DMState, saved):
        state.opt.load_state_dict(saved["opt"])
        if state.bank is not None:
            state.bank_it = saved["bank_it"]
        if state.heldout is not None:
            state.heldout.load_state_dict(saved["heldout"])

    def report(self, state: DMState) -> dict:
        """The network bank's size, build time and cache use (when DM runs with a bank), and the
        held-out-network curve (``heldout``: when measured)."""
        if state.bank is None:
            return {}
        rep = state.bank.report()
        if state.heldout is not None:
            rep["heldout"] = state.heldout.report()
        return {"dm_bank": rep}
