"""Reference-style loops: plain PyTorch written the way the papers' code works, kept only as the
baseline that the end-to-end benchmarks compare vdfast against (never used by the package).

The synthetic set, as the reference code keeps it (one of two parametrisations; both expose
``videos() -> (videos, labels)`` and ``groups``, the SGD parameter groups):

* :class:`ReferencePixels`: the videos themselves are the learned tensor.
* :class:`ReferenceS2D`: static-dynamic disentanglement the literal way: each call draws the
  pairing on the host (numpy) and copies the indices to the device, repeats each still image T times
  (``static[:, :, None].repeat(1, 1, T, 1, 1)``), concatenates the one-channel dynamic memory
  (``torch.cat``) and applies the integrator as one ``conv3d``.

DM as the reference code runs it (:class:`ReferenceDM`): a freshly constructed network every
iteration; for each class, the real clips gathered on the host from the per-class arrays,
normalised on the host, copied to the device, embedded in their own forward; the synthetic clips of
that class embedded in their own forward; the loss summed in Python; ``loss.item()`` read back every
iteration.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vdfast.models import ConvNet3D


class ReferencePixels:
    def __init__(self, data: torch.Tensor, labels: torch.Tensor, lr: float, device):
        self.syn = data.detach().clone().to(device).requires_grad_(True)
        self.labels = labels.to(device)
        self.groups = [{"params": [self.syn], "lr": lr}]

    def videos(self):
        return self.syn, self.labels


class ReferenceS2D:
    """From a vdfast :class:`~vdfast.synsets.StaticDynamicSynset` (same tensors, same learning
    rates and momentum); ``lr_d``, ``lr_h``, ``momentum`` from ``cfg.s2d.optim(objective)``."""

    def __init__(self, synset, lr_d: float, lr_h: float, momentum: float | None, device, seed: int = 0):
        self.static = synset.static.detach().clone().to(device)
        self.dynamic = synset.dynamic.detach().clone().to(device).requires_grad_(True)
        self.weight = synset.weight.detach().clone().to(device).requires_grad_(True)
        self.bias = synset.bias.detach().clone().to(device).requires_grad_(True)
        self.labels = synset.labels.to(device)
        self.multi = synset.pairing == "multi"
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        extra = {} if momentum is None else {"momentum": momentum}
        self.groups = [{"params": [self.dynamic], "lr": lr_d, **extra},
                       {"params": [self.weight, self.bias], "lr": lr_h, **extra}]

    def videos(self):
        n = self.labels.numel()
        sidx = didx = np.arange(n)
        if self.multi:  # one of the two statics and dynamics of each slot, drawn on the host
            sidx = 2 * np.arange(n) + self.rng.integers(0, 2, n)
            didx = 2 * np.arange(n) + self.rng.integers(0, 2, n)
        s = self.static[torch.from_numpy(sidx).to(self.device)]            # [N, C, H, W]
        d = self.dynamic[torch.from_numpy(didx).to(self.device)]           # [N, T, 1, H, W]
        T = d.shape[1]
        x = torch.cat([s[:, :, None].repeat(1, 1, T, 1, 1), d.permute(0, 2, 1, 3, 4)], dim=1)
        return F.conv3d(x, self.weight, self.bias, padding=1), self.labels


class ReferenceDM:
    """``syn``: a :class:`ReferencePixels` or :class:`ReferenceS2D`."""

    def __init__(self, store, syn, batch_real: int, momentum: float, width: int, depth: int,
                 device, seed: int = 0, norm: str = "none"):
        self.store, self.batch_real, self.syn, self.norm = store, batch_real, syn, norm
        self.opt = torch.optim.SGD(syn.groups, momentum=momentum)
        self.width, self.depth, self.device = width, depth, torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.mean = np.array(store.mean, np.float32).reshape(1, 3, 1, 1, 1)
        self.std = np.array(store.std, np.float32).reshape(1, 3, 1, 1, 1)

    def _real(self, c: int) -> torch.Tensor:
        clips = self.store.clips("train", c)
        idx = self.rng.permutation(clips.shape[0])[: self.batch_real]
        x = clips[np.sort(idx)].astype(np.float32).transpose(0, 4, 1, 2, 3) / 255.0
        return torch.from_numpy((x - self.mean) / self.std).to(self.device)

    def net(self) -> ConvNet3D:
        s = self.store
        net = ConvNet3D(s.num_classes, s.frames, s.size, width=self.width, depth=self.depth,
                        norm=self.norm)
        net = net.to(self.device)
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    def loss(self, net) -> torch.Tensor:
        videos, labels = self.syn.videos()
        loss = torch.zeros((), device=self.device)
        for c in range(self.store.num_classes):
            real = self._real(c)
            syn = videos[labels == c]
            loss = loss + ((net.embed(real).mean(0) - net.embed(syn).mean(0)) ** 2).sum()
        return loss

    def step(self) -> float:
        loss = self.loss(self.net())
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.item()
