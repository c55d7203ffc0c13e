"""A reference-style MTT iteration: plain PyTorch written the way the papers' code works, kept only
as the baseline that ``benchmarks/step_mtt.py`` compares vdfast against (never used by the package).

As the reference code runs it: the whole buffer (every expert, every epoch, as lists of per-layer
tensors) held in host memory; each iteration the expert and start epoch drawn on the host, the
start and target re-flattened with ``torch.cat`` of per-layer copies moved to the device; a student
whose forward re-slices one flat vector into layers every step, gradients taken w.r.t. the whole flat
vector (each slice's backward zero-fills a ``[P]`` buffer), every intermediate flat vector kept in a
list; the unfused ``mse_loss(sum)`` ratio as the loss; ``.item()`` read back every iteration.
The student runs in eval mode, like vdfast's, so both compute the same function.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F


class FlatStudent(torch.nn.Module):
    """A module whose forward takes its parameters as one flat vector (the reference's
    ReparamModule, written plainly)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.layout = [(n, p.shape, p.numel()) for n, p in net.named_parameters()]

    def forward(self, x, flat_param):
        params, off = {}, 0
        for name, shape, n in self.layout:
            params[name] = flat_param[off:off + n].view(shape)
            off += n
        return torch.func.functional_call(self.net, params, (x,))


class ReferenceMTT:
    def __init__(self, net, trajectories, syn, lr_lr, lr_teacher, momentum, syn_steps,
                 expert_epochs, max_start_epoch, batch_syn, device, seed=0):
        """``trajectories``: list over experts of lists over epochs of lists of per-layer CPU
        tensors (the reference's in-memory buffer). ``syn``: a
        :class:`reference_loops.ReferencePixels` or :class:`reference_loops.ReferenceS2D` (its
        ``groups`` carry the learning rates)."""
        self.student = FlatStudent(net.to(device).eval())
        self.buffer = trajectories
        self.syn = syn
        self.syn_lr = torch.tensor(lr_teacher, device=device).requires_grad_(True)
        self.opt_img = torch.optim.SGD(syn.groups, momentum=momentum)
        self.opt_lr = torch.optim.SGD([self.syn_lr], lr=lr_lr, momentum=0.5)
        self.syn_steps, self.expert_epochs, self.max_start = syn_steps, expert_epochs, max_start_epoch
        self.batch_syn = batch_syn
        self.device = torch.device(device)
        self.rng = random.Random(seed)

    def loss(self) -> torch.Tensor:
        dev = self.device
        traj = self.buffer[self.rng.randrange(len(self.buffer))]
        start_epoch = self.rng.randrange(self.max_start)
        starting_params = traj[start_epoch]
        target_params = traj[start_epoch + self.expert_epochs]
        target_params = torch.cat([p.data.to(dev).reshape(-1) for p in target_params], 0)
        student_params = [torch.cat([p.data.to(dev).reshape(-1) for p in starting_params], 0)
                          .requires_grad_(True)]
        starting_params = torch.cat([p.data.to(dev).reshape(-1) for p in starting_params], 0)
        num_params = sum(p.numel() for p in traj[0])
        syn, labels = self.syn.videos()
        batch_syn = self.batch_syn or len(syn)
        indices_chunks = []
        for _ in range(self.syn_steps):
            if not indices_chunks:
                indices_chunks = list(torch.randperm(len(syn)).split(batch_syn))
            idx = indices_chunks.pop().to(dev)
            x = self.student(syn[idx], flat_param=student_params[-1])
            ce = F.cross_entropy(x, labels[idx])
            grad = torch.autograd.grad(ce, student_params[-1], create_graph=True)[0]
            student_params.append(student_params[-1] - self.syn_lr * grad)
        param_loss = F.mse_loss(student_params[-1], target_params, reduction="sum") / num_params
        param_dist = F.mse_loss(starting_params, target_params, reduction="sum") / num_params
        return param_loss / param_dist

    def step(self) -> float:
        loss = self.loss()
        self.opt_img.zero_grad()
        self.opt_lr.zero_grad()
        loss.backward()
        self.opt_img.step()
        self.opt_lr.step()
        return loss.item()
