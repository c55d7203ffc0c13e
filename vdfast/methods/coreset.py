"""Coreset baselines: real clips chosen per class, no optimisation.

* ``random``  — ``ipc`` random train clips per class.
* ``herding`` — greedy: each pick brings the running mean of the chosen embeddings closest to the
  class mean (Welling 2009).
* ``kcenter`` — greedy k-center: start from the clip nearest the class mean, then repeatedly add the
  clip farthest from everything chosen so far (distances to ALL chosen centres, so ipc > 1 is right,
  unlike the reference).

Embeddings come from a randomly initialised ConvNet3D (``embed``), the same network family DM uses,
drawn from the run's seed; classes are embedded in chunks so memory does not grow with class size.
"""
from __future__ import annotations

import torch

from vdfast.data.store import ClipStore
from vdfast.methods.base import Method, reinit_
from vdfast.models import build
from vdfast.ops import normalize_clips
from vdfast.synsets import PixelSynset


def herding(feats: torch.Tensor, k: int, mu: torch.Tensor | None = None) -> list[int]:
    """Indices of ``k`` rows of ``feats`` [n, d] chosen by herding towards ``mu`` [d] (None: the
    rows' mean)."""
    mu = feats.mean(0) if mu is None else mu
    chosen: list[int] = []
    acc = torch.zeros_like(mu)
    avail = torch.ones(feats.shape[0], dtype=torch.bool, device=feats.device)
    for i in range(k):
        cand = (acc[None] + feats) / (i + 1)
        dist = (cand - mu[None]).pow(2).sum(1).masked_fill(~avail, float("inf"))
        j = int(dist.argmin())
        chosen.append(j)
        avail[j] = False
        acc += feats[j]
    return chosen


def kcenter(feats: torch.Tensor, k: int, mu: torch.Tensor | None = None) -> list[int]:
    """Indices of ``k`` rows of ``feats`` [n, d] chosen by greedy k-center, starting from the row
    nearest ``mu`` [d] (None: the rows' mean)."""
    mu = feats.mean(0) if mu is None else mu
    first = int((feats - mu[None]).pow(2).sum(1).argmin())
    chosen = [first]
    mind = (feats - feats[first][None]).pow(2).sum(1)
    for _ in range(1, k):
        j = int(mind.argmax())
        chosen.append(j)
        mind = torch.minimum(mind, (feats - feats[j][None]).pow(2).sum(1))
    return chosen


@torch.no_grad()
def embed_class(net, store: ClipStore, c: int, device, chunk: int = 256) -> torch.Tensor:
    clips = store.clips("train", c)
    out = []
    for s in range(0, clips.shape[0], chunk):
        u8 = torch.from_numpy(clips[s:s + chunk].copy()).to(device)
        out.append(net.embed(normalize_clips(u8, store.mean, store.std)).float())
    return torch.cat(out)


def embedding_net(cfg, store: ClipStore, device):
    """The randomly initialised ConvNet3D that herding and k-center embed clips with, drawn from
    ``cfg.seed`` (also compose's ``features="random"``)."""
    net = build(cfg.net, store, device=device).eval()
    reinit_(net, torch.Generator(device=device).manual_seed(cfg.seed))
    return net


def select_clips(store: ClipStore, cfg, device, how: str):
    """``cfg.ipc`` train clips per class chosen by ``how`` (``herding`` or ``kcenter``) on the
    embeddings of a random ConvNet3D seeded by ``cfg.seed``: (normalised float clips, labels,
    {class name: picked indices}). Also the pixel synsets' ``init=herding|kcenter``."""
    select = {"herding": herding, "kcenter": kcenter}[how]
    net = embedding_net(cfg, store, device)
    clips, labels, picked = [], [], {}
    for c in range(store.num_classes):
        idx = sorted(select(embed_class(net, store, c, device), cfg.ipc))
        picked[store.classes[c]] = idx
        clips.append(torch.from_numpy(store.clips("train", c)[idx]))
        labels.append(torch.full((cfg.ipc,), c, dtype=torch.long))
    return normalize_clips(torch.cat(clips), store.mean, store.std), torch.cat(labels), picked


class Coreset(Method):
    iterative = False

    def init(self, store, cfg, device, gen):
        if self.name == "random":
            return super().init(store, cfg, device, gen)
        data, labels, picked = select_clips(store, cfg, device, self.name)
        return PixelSynset(data.to(device), labels.to(device), store.classes, store.mean,
                           store.std, meta={"method": self.name, "ipc": cfg.ipc, "dataset": store.name,
                                            "picked": picked})
