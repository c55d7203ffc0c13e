"""Reference-style loops: plain PyTorch written the way the papers' code works, kept only as the
baseline that the end-to-end benchmarks compare vdfast against (never used by the package).

DM as the reference code runs it: a freshly constructed network every iteration; for each class,
the real clips gathered on the host from the per-class arrays, normalised on the host, copied to the
device, embedded in their own forward; the synthetic clips of that class embedded in their own
forward; the loss summed in Python; ``loss.item()`` read back every iteration.
"""
from __future__ import annotations

import numpy as np
import torch

from vdfast.models import ConvNet3D


class ReferenceDM:
    def __init__(self, store, syn: torch.Tensor, syn_labels: torch.Tensor, batch_real: int, lr: float,
                 momentum: float, width: int, depth: int, device, seed: int = 0):
        self.store, self.batch_real = store, batch_real
        self.syn = syn.detach().clone().to(device).requires_grad_(True)
        self.syn_labels = syn_labels.to(device)
        self.opt = torch.optim.SGD([self.syn], lr=lr, momentum=momentum)
        self.width, self.depth, self.device = width, depth, torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.mean = np.array(store.mean, np.float32).reshape(1, 3, 1, 1, 1)
        self.std = np.array(store.std, np.float32).reshape(1, 3, 1, 1, 1)

    def _real(self, c: int) -> torch.Tensor:
        clips = self.store.clips("train", c)
        idx = self.rng.permutation(clips.shape[0])[: self.batch_real]
        x = clips[np.sort(idx)].astype(np.float32).transpose(0, 4, 1, 2, 3) / 255.0
        return torch.from_numpy((x - self.mean) / self.std).to(self.device)

    def step(self) -> float:
        s = self.store
        net = ConvNet3D(s.num_classes, s.frames, s.size, width=self.width, depth=self.depth)
        net = net.to(self.device)
        for p in net.parameters():
            p.requires_grad_(False)
        loss = torch.zeros((), device=self.device)
        for c in range(s.num_classes):
            real = self._real(c)
            syn = self.syn[self.syn_labels == c]
            loss = loss + ((net.embed(real).mean(0) - net.embed(syn).mean(0)) ** 2).sum()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.item()
