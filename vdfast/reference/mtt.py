"""MTT's inner unroll and outer loss, plain PyTorch as the papers write it: the single truth that
``vdfast.methods.mtt`` is tested against.

The student is one flat parameter vector; every step slices it back into layers for the forward,
takes the gradient w.r.t. the whole flat vector with ``create_graph=True`` and steps the flat
vector; the outer loss is the unfused ``||theta_N - theta_t||^2 / ||theta_s - theta_t||^2``.
Differentiable any number of times.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from vdfast.reference.trajectory_loss import trajectory_loss


def mtt_loss(net, layout, syn, labels, theta_start, theta_target, syn_lr, syn_steps: int,
             batches=None) -> torch.Tensor:
    """The MTT matching loss of one iteration.

    Args:
        net: the student module in eval mode (its own parameters are ignored).
        layout: ``[(name, shape), ...]`` of the flat vector, in order.
        syn: ``[N, C, T, H, W]`` synthetic videos, labels ``[N]``.
        theta_start, theta_target: ``[P]`` expert parameters at epochs ``s`` and ``s + M``.
        syn_lr: 0-d student step size.
        batches: optional list of ``syn_steps`` index tensors (the videos of each step); default
            all videos every step.
    Returns:
        0-d loss, differentiable w.r.t. ``syn`` and ``syn_lr``.
    """
    theta = theta_start.detach().clone().requires_grad_(True)
    for k in range(syn_steps):
        x, y = (syn, labels) if batches is None else (syn[batches[k]], labels[batches[k]])
        params, off = {}, 0
        for name, shape in layout:
            n = 1
            for s in shape:
                n *= s
            params[name] = theta[off:off + n].view(shape)
            off += n
        ce = F.cross_entropy(functional_call(net, params, (x,)), y)
        (g,) = torch.autograd.grad(ce, theta, create_graph=True)
        theta = theta - syn_lr * g
    return trajectory_loss(theta, theta_start, theta_target)
