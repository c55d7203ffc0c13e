"""DC, dataset condensation with gradient matching (Zhao, Mopuri & Bilen, ICLR 2021), for any
synset parametrisation and any classifier (Conv3d videos or Conv2d still frames).

For each class c, the cross-entropy gradients of a network's parameters on a real batch of class c
and on the synthetic clips of class c are matched layer by layer with
:func:`vdfast.ops.gradient_match`: ``sum_layers sum_out-channels (1 - cos(g_real, g_syn))``; 1-D
parameters (biases, norm affines) contribute 0. The synthetic gradients are built with
``create_graph=True`` so the distance differentiates back to the synthetic clips.

One :meth:`DC.step` is one iteration of the paper's algorithm (one of its ``Iteration`` loop):

1. the network is re-drawn at random (in place, from the run's generator);
2. ``outer_loop`` times: sample ``batch_real`` real clips per class, accumulate the per-class
   matching losses, update the synset (SGD, momentum ``cfg.momentum``); then, except after the last
   outer step, train the network for ``inner_loop`` epochs on the (detached) synthetic set with
   plain SGD (``lr_net``), batches of ``batch_train``.

``outer_loop``/``inner_loop`` default to the paper's table by ipc (:data:`DC_LOOPS`). The returned
loss is the mean over the outer steps of the summed per-class distance.

Batching: the real clips of all classes are drawn in one device-side sample, but gradients are
needed PER CLASS, so the forward/backward pairs run in a loop over classes. To keep memory at one
class's double-backward graph, each class's distance is backpropagated at once into a detached copy
of ``synset.videos()``; the accumulated gradient then goes through the synset's own graph (pixels,
or the static-dynamic blend) in a single backward: exactly the gradient of the summed loss.

The network runs in eval mode (dropout off): the matched gradients are then a deterministic
function of the batch, and nothing draws from the global RNG. Batch norm is refused (per-class
batches would each get their own statistics; the paper computes them on mixed real data).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from vdfast.data.store import ClipPool
from vdfast.methods.base import Method, check_net_norm, empty_net, reinit_
from vdfast.ops import gradient_match, normalize_clips
from vdfast.profiling import span

# ipc -> (outer_loop, inner_loop), from the DC paper's settings
DC_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def dc_loops(ipc: int, outer_loop: int = 0, inner_loop: int = 0) -> tuple[int, int]:
    """(outer_loop, inner_loop): the explicit values where > 0, else the paper's entry for ``ipc``
    (the largest tabulated ipc at or below it)."""
    key = max(k for k in DC_LOOPS if k <= max(1, ipc))
    outer, inner = DC_LOOPS[key]
    return (outer_loop or outer, inner_loop or inner)


def dc_class_loss(net: nn.Module, real_x: torch.Tensor, real_y: torch.Tensor, syn_x: torch.Tensor,
                  syn_y: torch.Tensor, params: list[torch.Tensor] | None = None,
                  backend: str | None = None) -> torch.Tensor:
    """DC's gradient-matching distance for ONE group of clips (usually one class).

    Network-agnostic: ``net`` maps a batch to logits ``[n, nc]`` (ConvNet3D on ``[n, C, T, H, W]``
    videos, ConvNet2D on ``[n, C, H, W]`` frames, ...).

    Args:
        net: the classifier; its parameters need ``requires_grad``.
        real_x, real_y: the real batch and its int64 labels ``[n_r]``.
        syn_x, syn_y: the synthetic batch (differentiable) and labels ``[n_s]``.
        params: the parameters whose gradients are matched (default: all of ``net``'s that
            require grad).
        backend: for :func:`vdfast.ops.gradient_match`.

    Returns:
        0-d tensor ``sum_layers sum_o (1 - cos(g_real_o, g_syn_o))``, differentiable w.r.t.
        ``syn_x`` (the real gradients are detached).

    Example::

        >>> loss = dc_class_loss(net, real[labels == c], labels[labels == c], syn[c_slice], syn_labels[c_slice])
        >>> loss.backward(inputs=[syn])
    """
    if params is None:
        params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("dc_class_loss: the network has no parameters that require grad")
    loss_real = F.cross_entropy(net(real_x), real_y)
    g_real = [g.detach() for g in torch.autograd.grad(loss_real, params)]
    loss_syn = F.cross_entropy(net(syn_x), syn_y)
    g_syn = torch.autograd.grad(loss_syn, params, create_graph=True)
    return gradient_match(g_real, g_syn, backend=backend)


def dc_loss(net: nn.Module, real_x: torch.Tensor, syn_x: torch.Tensor, num_classes: int,
            params: list[torch.Tensor] | None = None, backend: str | None = None,
            backward: bool = False, real_transform=None, batched: bool = False,
            first_class: int = 0) -> torch.Tensor:
    """DC's loss summed over classes, for CLASS-MAJOR batches with equal counts per class.

    Args:
        real_x: ``[nc * n_r, ...]`` real inputs, class c in rows ``c*n_r : (c+1)*n_r``.
        syn_x: ``[nc * n_s, ...]`` synthetic inputs laid out the same way.
        num_classes: nc, the classes in the batches: labels ``first_class ... first_class+nc-1``
            (a block of the network's classes, for class-sharded multi-process runs).
        backward: if True, each class's distance is backpropagated into ``syn_x`` (which must be
            a leaf) as soon as it is computed, so only one class's double-backward graph is alive
            at a time; the returned loss is then detached.
        real_transform: applied to each class's slice of ``real_x`` before the network (e.g.
            ``normalize_clips`` on uint8 clips, so only one class is ever held in float).
        batched: compute every class's gradients at once with ``torch.func.vmap(grad(...))``
            over a class axis (one batched forward/backward per layer instead of nc); exact
            (tested against the loop), but it holds all classes' double-backward graphs and all
            real clips in float at once. On a CPU it is not faster; meant for GPUs with many classes.

    Returns:
        0-d tensor ``sum_c dc_class_loss(net, real_c, c, syn_c, c)``.
    """
    nr, ns = real_x.shape[0] // num_classes, syn_x.shape[0] // num_classes
    if nr * num_classes != real_x.shape[0] or ns * num_classes != syn_x.shape[0] or not nr or not ns:
        raise ValueError(f"dc_loss needs class-major batches with equal counts per class: "
                         f"{real_x.shape[0]} real and {syn_x.shape[0]} synthetic rows for "
                         f"{num_classes} classes")
    if params is None:
        params = [p for p in net.parameters() if p.requires_grad]
    if batched:
        if real_transform is not None:
            real_x = real_transform(real_x)
        loss = _dc_loss_vmap(net, real_x, syn_x, num_classes, params, backend, first_class)
        if backward:
            loss.backward(inputs=[syn_x])
            loss = loss.detach()
        return loss
    total = syn_x.new_zeros(())
    dev = syn_x.device
    for c in range(num_classes):
        real_c = real_x[c * nr:(c + 1) * nr]
        if real_transform is not None:
            real_c = real_transform(real_c)
        label = first_class + c
        loss = dc_class_loss(net, real_c,
                             torch.full((nr,), label, dtype=torch.long, device=dev),
                             syn_x[c * ns:(c + 1) * ns],
                             torch.full((ns,), label, dtype=torch.long, device=dev), params, backend)
        if backward:
            loss.backward(inputs=[syn_x])
            loss = loss.detach()
        total = total + loss
    return total


def _dc_loss_vmap(net, real_x, syn_x, nc, params, backend, first_class=0):
    """All classes at once: per-class gradients from vmap over a leading class axis."""
    from torch.func import functional_call, grad, vmap

    wanted = {id(p) for p in params}
    names = [n for n, p in net.named_parameters() if id(p) in wanted]
    frozen = {n: p.detach() for n, p in net.named_parameters()}

    def ce(trainable, x, y):
        return F.cross_entropy(functional_call(net, {**frozen, **trainable}, (x,)), y)

    def per_class(x):
        x = x.reshape(nc, x.shape[0] // nc, *x.shape[1:])
        y = torch.arange(first_class, first_class + nc, device=x.device)[:, None].expand(nc, x.shape[1])
        return vmap(grad(ce), in_dims=(None, 0, 0))({n: frozen[n] for n in names}, x, y)

    g_real, g_syn = per_class(real_x), per_class(syn_x)
    # [nc, O, ...] -> [nc * O, ...]: the sum over (class, out-channel) rows is the sum over classes
    keep = [n for n in names if g_real[n].dim() > 2]
    return gradient_match([g_real[n].detach().flatten(0, 1) for n in keep],
                          [g_syn[n].flatten(0, 1) for n in keep], backend=backend)


def train_epochs(net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int,
                 lr: float, gen: torch.Generator) -> None:
    """The inner loop: ``epochs`` shuffled passes of plain SGD over (x, y) (detached)."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    n = x.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen, device=gen.device).to(x.device)
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


@dataclasses.dataclass
class DCState:
    """What DC's steps share: the real clips of this process's classes, the network (redrawn each
    step, trained on the synset between outer steps), the synset's optimizer and the loops."""

    pool: ClipPool
    net: nn.Module
    opt: torch.optim.Optimizer
    classes: range                # this process's block of classes
    own: slice                    # its synthetic rows, in class-major order
    dist: object                  # a vdfast.distributed.Dist
    params: list                  # the synset's learnable tensors
    outer: int
    inner: int
    batch_real: int
    batch_train: int
    lr_net: float
    batched: bool
    order: torch.Tensor | None    # class-major order of the synthetic videos (None: identity)
    mean: tuple
    std: tuple


class DC(Method):
    """DC; on N processes each rank matches the gradients of its block of classes (the network
    and its inner-loop training are replicated: same draws, same synset on every rank)."""

    name = "dc"
    iterative = True
    shardable = True
    class_sharded = True

    def setup(self, synset, store, cfg, device):
        check_net_norm(cfg, "dc")
        dist = self.process_group(device)
        classes = dist.shard(store.num_classes)
        outer, inner = dc_loops(cfg.ipc, cfg.dc.outer_loop, cfg.dc.inner_loop)
        _, labels = synset.videos()
        nc = store.num_classes
        counts = torch.bincount(labels.detach().cpu(), minlength=nc)
        order = torch.argsort(labels.detach().cpu(), stable=True)
        if (counts != counts[0]).any() or counts[0] == 0:
            raise ValueError(f"dc needs the same number of synthetic videos in every class, got "
                             f"{counts.tolist()}")
        net = empty_net(store, cfg, device)
        groups = synset.param_groups(dataclasses.replace(cfg, lr_img=cfg.dc.lr_img))
        opt = torch.optim.SGD(groups, momentum=cfg.momentum)
        ipc = int(counts[0])
        return DCState(pool=ClipPool(store, "train", device, classes=classes), net=net, opt=opt,
                       classes=classes, own=slice(classes.start * ipc, classes.stop * ipc),
                       dist=dist, params=[p for g in groups for p in g["params"]],
                       outer=outer, inner=inner, batch_real=cfg.dc.batch_real,
                       batch_train=cfg.dc.batch_train, lr_net=cfg.dc.lr_net, batched=cfg.dc.batched,
                       order=None if torch.equal(order, torch.arange(len(order))) else order.to(device),
                       mean=store.mean, std=store.std)

    def step(self, synset, state, gen):
        net, opt, pool = state.net, state.opt, state.pool
        reinit_(net, gen)
        params = [p for p in net.parameters() if p.requires_grad]
        total = None
        for ol in range(state.outer):
            real_u8, _ = pool.sample(state.batch_real, gen)
            videos, labels = synset.videos()
            if state.order is not None:
                videos, labels = videos[state.order], labels[state.order]
            own, classes = state.own, state.classes
            leaf = videos[own].detach().requires_grad_(True)  # this process's classes
            loss = dc_loss(net, real_u8, leaf, len(classes), params, backward=True,
                           batched=state.batched, first_class=classes.start,
                           real_transform=lambda u: normalize_clips(u, state.mean, state.std))
            grad = leaf.grad
            if leaf.shape[0] != videos.shape[0]:  # other processes' classes: their share
                grad = torch.zeros_like(videos)
                grad[own] = leaf.grad
            opt.zero_grad(set_to_none=True)
            videos.backward(grad)
            state.dist.sum_grads_(state.params)
            opt.step()
            total = loss if total is None else total + loss
            if ol < state.outer - 1 and state.inner > 0:
                with torch.no_grad():
                    x, y = synset.videos()
                with span("vdfast.dc.inner_train"):
                    train_epochs(net, x.detach(), y, state.inner, state.batch_train,
                                 state.lr_net, gen)
        return total / state.outer

    def state_dict(self, state):
        return {"opt": state.opt.state_dict()}

    def load_state_dict(self, state, saved):
        state.opt.load_state_dict(saved["opt"])
