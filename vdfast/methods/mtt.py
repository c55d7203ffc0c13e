"""MTT, matching training trajectories (Cazenavette et al.), for any synset parametrisation.

Each iteration: pick an expert (uniformly among ALL experts of the buffer; the reference only ever
loaded its first buffer file) and a start epoch ``s`` in ``[0, max_start_epoch)``; from the expert's
``theta_s`` unroll ``syn_steps`` student SGD steps on the synthetic videos with a learnable step size
``alpha``, ``theta_{k+1} = theta_k - alpha * grad CE(theta_k; x_syn)``, keeping the graph
(second order); loss = ``trajectory_loss(theta_N, theta_s, theta_{s + expert_epochs})``; SGD
(momentum ``cfg.momentum``, 0.5) on ``synset.param_groups`` (pixels at ``mtt.lr_img``, or the s2d
memories at their own rates) and SGD(momentum 0.5) on ``alpha`` at ``mtt.lr_lr``.

Where vdfast differs from the reference-style loop (same mathematics):

* the student is ``torch.func.functional_call`` of one ConvNet3D with per-layer parameter tensors;
  the flat vector exists only at the two ends (start: views of the expert row; end: one ``cat`` for
  the loss). The reference re-flattens or slices a flat vector every step, and every slice's
  backward allocates and zero-fills a full ``[P]`` gradient.
* the expert rows are read lazily (two rows of one file) and the draws of expert and start epoch
  come from a CPU generator kept in the method state (checkpointed), so nothing in ``step`` reads
  a device value back to the host;
* the outer loss is the fused ``trajectory_loss`` (one pass over the three flat vectors).

The student runs in eval mode (dropout off) so the unroll is a deterministic function of the synset:
its meta-gradient is exactly testable and no global RNG is consumed. Inputs are the synset's
videos as they are (the normalised space of ``normalize_clips``), the same inputs the experts were
trained on (see :mod:`vdfast.methods.experts`).
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from vdfast.methods.base import Method
from vdfast.methods.experts import BufferError, ExpertBuffer, build_net, train_experts, unflatten
from vdfast.ops import trajectory_loss
from vdfast.profiling import span


def step_indices(n: int, syn_steps: int, batch_syn: int = 0, gen: torch.Generator | None = None,
                 device=None) -> list[torch.Tensor | None]:
    """The synthetic videos each unrolled step uses: ``None`` (all ``n``) when ``batch_syn`` is 0
    or >= n, else consecutive chunks of a random permutation drawn from ``gen`` (redrawn when used
    up). Both unroll modes draw exactly these, so they see the same batches."""
    out: list[torch.Tensor | None] = []
    chunks: list[torch.Tensor] = []
    for _ in range(syn_steps):
        if batch_syn and batch_syn < n:
            if not chunks:
                chunks = list(torch.randperm(n, generator=gen, device=device).split(batch_syn))
            out.append(chunks.pop())
        else:
            out.append(None)
    return out


def _rows(idx: torch.Tensor | None, n: int, device) -> torch.Tensor:
    return torch.arange(n, device=device) if idx is None else idx


def _ce_grads(net, names, params, x, y, denom: int, create_graph: bool):
    """Gradient of ``sum CE(net(x), y) / denom`` w.r.t. ``params`` (the mean CE of a batch of
    ``denom`` videos when summed over its micro-batches)."""
    out = functional_call(net, dict(zip(names, params)), (x,))
    ce = F.cross_entropy(out, y, reduction="sum") / denom
    return torch.autograd.grad(ce, params, create_graph=create_graph)


def _micro(rows: torch.Tensor, chunk: int) -> list[torch.Tensor]:
    return list(rows.split(chunk)) if chunk and chunk < len(rows) else [rows]


def unroll(net, names, params, syn, labels, syn_lr, syn_steps: int, batch_syn: int = 0,
           gen: torch.Generator | None = None, chunk: int = 0) -> list[torch.Tensor]:
    """``syn_steps`` differentiable SGD steps of ``net`` from ``params`` on ``(syn, labels)``,
    keeping the whole second-order graph (``mtt.unroll = "graph"``).

    Args:
        net: the student module (its own parameters are ignored; ``functional_call`` uses
            ``params``); in eval mode.
        names: parameter names, in the order of ``params``.
        params: per-layer starting tensors (requiring grad).
        syn: ``[N, C, T, H, W]`` synthetic videos; labels ``[N]``.
        syn_lr: 0-d step size tensor (may require grad).
        batch_syn: videos per step (see :func:`step_indices`).
        chunk: videos per forward inside a step (0: the step's batch at once); the step's gradient
            is the sum over micro-batches, so the result does not depend on it.
    Returns:
        The per-layer parameters after the last step, differentiable w.r.t. ``syn``, ``syn_lr``
        and ``params`` (second order: ``create_graph=True`` at every step).
    """
    for idx in step_indices(syn.shape[0], syn_steps, batch_syn, gen, syn.device):
        if idx is None and not chunk:
            x, y = syn, labels
            grads = _ce_grads(net, names, params, x, y, x.shape[0], create_graph=True)
        else:
            rows = _rows(idx, syn.shape[0], syn.device)
            grads = None
            for r in _micro(rows, chunk):
                g = _ce_grads(net, names, params, syn[r], labels[r], len(rows), create_graph=True)
                grads = g if grads is None else [a + b for a, b in zip(grads, g)]
        params = [p - syn_lr * g for p, g in zip(params, grads)]
    return params


def _all_reduce_list(dist, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum a list of tensors across ranks in one flat all-reduce (no-op on one process)."""
    if not dist.active:
        return tensors
    flat = dist.all_reduce_(torch.cat([t.reshape(-1) for t in tensors]))
    return [v.view_as(t) for v, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def meta_gradient(net, names, start: torch.Tensor, target: torch.Tensor, layout, syn, labels,
                  syn_lr, syn_steps: int, batch_syn: int = 0, gen: torch.Generator | None = None,
                  chunk: int = 0, dist=None):
    """MTT's loss and its exact gradients w.r.t. the videos and the step size, with memory bounded
    by ONE step of ONE micro-batch (``mtt.unroll = "recompute"``).

    Forward: the unroll without any graph, keeping only each step's parameters ``theta_k``
    (``syn_steps x P`` floats). Backward, step k = N-1 .. 0, recomputing step k's inner gradient
    ``G = sum_c G_c`` per micro-batch ``c`` with ``create_graph=True`` and pulling
    ``gbar = dL/dtheta_{k+1}`` back through ``theta_{k+1} = theta_k - a G(theta_k, x)``::

        dL/dtheta_k = gbar - a * d<gbar, G>/dtheta_k     dL/dx_c += -a * d<gbar, G_c>/dx_c
        dL/da      += -<gbar, G>

    This is reverse-mode differentiation of the same function as :func:`unroll` (exact, not an
    approximation), trading one extra forward+backward per step for memory that depends on neither
    ``syn_steps`` (beyond the saved parameters) nor the synset size (beyond ``chunk``).

    With ``dist`` (N processes), rank r computes the micro-batches of its share of each step's
    videos; the inner gradients and the pulled-back ``dL/dtheta`` are summed across ranks every
    step (one all-reduce each), so every rank follows the same trajectory; the returned
    ``dL/dsyn`` holds only this rank's rows (sum it across ranks after pulling it back into the
    synset's parameters).

    Args:
        start, target: flat ``[P]`` expert parameters (constants); ``layout`` their split.
        syn: ``[N, C, T, H, W]`` videos (only their values are read); labels ``[N]``.
        syn_lr: 0-d step size (its value is used; its gradient is returned).
    Returns:
        ``(loss, dL/dsyn, dL/dsyn_lr)``, detached.
    """
    from vdfast.distributed import Dist

    dist = dist or Dist()  # one process: every row is this process's, all-reduces are no-ops
    syn = syn.detach()
    n, dev = syn.shape[0], syn.device
    a = syn_lr.detach()
    sizes = [math.prod(s) for _, s in layout]
    plan = []  # per step: (this rank's micro-batches, the step's batch size)
    for idx in step_indices(n, syn_steps, batch_syn, gen, dev):
        rows = _rows(idx, n, dev)
        own = dist.shard(len(rows))
        plan.append((_micro(rows[own.start:own.stop], chunk), len(rows)))

    theta = [t.detach() for t in start.to(syn.dtype).split(sizes)]
    theta = [t.view(s) for t, (_, s) in zip(theta, layout)]
    saved = []
    for micro, denom in plan:
        saved.append(theta)
        th = [t.requires_grad_() for t in (p.detach() for p in theta)]
        grads = [torch.zeros_like(t) for t in theta]
        for r in micro:
            for acc, g in zip(grads, _ce_grads(net, names, th, syn[r], labels[r], denom, False)):
                acc += g
        grads = _all_reduce_list(dist, grads)
        theta = [p - a * g for p, g in zip(theta, grads)]

    student = torch.cat([t.reshape(-1) for t in theta]).requires_grad_()
    loss = trajectory_loss(student, start.to(syn.dtype), target.to(syn.dtype))
    (gbar,) = torch.autograd.grad(loss, student)
    gbar = [g.view(s) for g, (_, s) in zip(gbar.split(sizes), layout)]

    gx = torch.zeros_like(syn)
    glr = torch.zeros((), dtype=syn.dtype, device=dev)
    for k in reversed(range(len(plan))):
        micro, denom = plan[k]
        th = [t.detach().requires_grad_() for t in saved[k]]
        pulled = [torch.zeros_like(t) for t in th]
        dot_sum = torch.zeros((), dtype=syn.dtype, device=dev)
        for r in micro:
            xc = syn[r].requires_grad_()
            g = _ce_grads(net, names, th, xc, labels[r], denom, True)
            dot = sum((gb * gi).sum() for gb, gi in zip(gbar, g))
            *d_theta, d_x = torch.autograd.grad(dot, th + [xc])
            for acc, d in zip(pulled, d_theta):
                acc += d
            gx.index_add_(0, r, -a * d_x)
            dot_sum += dot.detach()
        *pulled, dot_sum = _all_reduce_list(dist, pulled + [dot_sum])
        glr -= dot_sum
        gbar = [gb - a * p for gb, p in zip(gbar, pulled)]
    return loss.detach(), gx, glr


def default_buffer_dir(store, cfg) -> Path:
    """``$VDFAST_BUFFERS`` (or ``./buffers``) / a name that spells out what defines the experts."""
    m, n = cfg.mtt, cfg.net
    name = (f"{store.name}-n{sum(store.counts('train'))}-{store.frames}x{store.size}"
            f"-convnet3d-w{n.width}d{n.depth}-{n.norm}"
            f"-e{m.buffer_epochs}-lr{m.buffer_lr:g}-b{m.buffer_batch}-m{m.buffer_momentum:g}"
            f"-s{m.buffer_seed}")
    return Path(os.environ.get("VDFAST_BUFFERS", "buffers")) / name


def prepare_buffer(store, cfg, device, progress: bool = True, dist=None) -> ExpertBuffer:
    """The expert buffer of ``cfg.mtt.buffer`` (or the default directory), trained or completed
    first when needed, and checked against ``store`` and ``cfg.net``. With ``dist`` (N
    processes), each process trains its share of the missing experts, then all wait for each other.

    A directory that already holds complete experts trained with other buffer settings than
    ``cfg.mtt.buffer_*`` is used as it is (a buffer made elsewhere); an empty or missing one, or one
    trained with exactly these settings, is trained up to ``cfg.mtt.num_experts`` experts.
    """
    m = cfg.mtt
    path = Path(m.buffer) if m.buffer else default_buffer_dir(store, cfg)
    shard = (dist.rank, dist.world) if dist is not None else (0, 1)
    try:
        train_experts(store, path, num_experts=m.num_experts, epochs=m.buffer_epochs,
                      lr=m.buffer_lr, batch=m.buffer_batch, momentum=m.buffer_momentum,
                      net_cfg=cfg.net, seed=m.buffer_seed, device=device,
                      progress=progress and (dist is None or dist.main), shard=shard,
                      flag="--mtt-buffer")
    except BufferError:
        if not m.buffer:
            raise
        # a buffer trained elsewhere with other settings: use it as it is, if it fits (check below)
    if dist is not None:
        dist.barrier()
    buf = ExpertBuffer(path)
    buf.check(store, cfg.net, need_epochs=m.max_start_epoch + m.expert_epochs)
    return buf


@dataclasses.dataclass
class MTTState:
    """What MTT's steps share: the expert buffer, the functional student, the synset's optimizer
    and the learnable student step size (with its own optimizer when ``mtt.learn_lr``)."""

    buffer: ExpertBuffer
    net: torch.nn.Module
    names: list                   # the student's parameter names, in the buffer's layout order
    opt: torch.optim.Optimizer
    opt_lr: torch.optim.Optimizer | None
    syn_lr: torch.Tensor          # the student's step size (a leaf when it is learned)
    draw: torch.Generator         # expert / start epoch draws, on the host
    device: torch.device
    synset: object
    syn_steps: int
    expert_epochs: int
    max_start: int
    batch_syn: int
    unroll: str
    chunk: int
    dist: object                  # a vdfast.distributed.Dist
    params: list                  # the synset's learnable tensors
    last: tuple | None = None     # (expert, start epoch) of the last step


class MTT(Method):
    name = "mtt"
    iterative = True
    shardable = True  # with mtt.unroll = "recompute": each step's videos split across processes
    partial_loss = False  # every process computes the whole trajectory loss

    def setup(self, synset, store, cfg, device) -> MTTState:
        device = torch.device(device)
        dist = self.process_group(device)
        if cfg.net.norm == "batch":
            raise ValueError("MTT unrolls a functional student; batch norm's running statistics are "
                             "not part of the expert trajectories. Use --net-norm none or instance")
        m = cfg.mtt
        if dist.active and m.unroll != "recompute":
            raise ValueError(f"MTT on {dist.world} processes splits each unrolled step's videos "
                             "across them, which needs the step-by-step reverse pass: add "
                             "--mtt-unroll recompute")
        buf = prepare_buffer(store, cfg, device, dist=dist)  # missing experts: split across processes
        net = build_net(buf.net).to(device).eval()
        net.requires_grad_(False)
        names = [n for n, _ in buf.layout]
        # pixels at mtt.lr_img (the top-level lr_img is DM's); other parametrisations keep their own
        groups = synset.param_groups(dataclasses.replace(cfg, lr_img=m.lr_img))
        opt = torch.optim.SGD(groups, momentum=cfg.momentum)
        syn_lr = torch.tensor(m.lr_teacher, device=device, requires_grad=m.learn_lr)
        opt_lr = torch.optim.SGD([syn_lr], lr=m.lr_lr, momentum=0.5) if m.learn_lr else None
        draw = torch.Generator().manual_seed(cfg.seed + 0x4D5454)  # expert/start draws, on the host
        return MTTState(buffer=buf, net=net, names=names, opt=opt, opt_lr=opt_lr, syn_lr=syn_lr,
                        draw=draw, device=device, synset=synset, syn_steps=m.syn_steps,
                        expert_epochs=m.expert_epochs, max_start=m.max_start_epoch,
                        batch_syn=m.batch_syn, unroll=m.unroll, chunk=m.chunk, dist=dist,
                        params=[p for g in groups for p in g["params"]])

    def draw(self, state) -> tuple[int, int]:
        """(expert, start epoch) for the next iteration, from the state's CPU generator."""
        g = state.draw
        e = int(torch.randint(len(state.buffer), (1,), generator=g))
        s = int(torch.randint(state.max_start, (1,), generator=g))
        return e, s

    def step(self, synset, state, gen):
        e, s = self.draw(state)
        state.last = (e, s)
        buf = state.buffer
        with span("vdfast.mtt.expert_pair"):
            start, target = buf.pair(e, s, s + state.expert_epochs)
        dev = state.device
        syn, labels = synset.videos()
        start = start.to(dev, syn.dtype, non_blocking=True)
        target = target.to(dev, syn.dtype, non_blocking=True)
        state.opt.zero_grad(set_to_none=True)
        if state.opt_lr is not None:
            state.opt_lr.zero_grad(set_to_none=True)
        if state.unroll == "recompute":
            with span("vdfast.mtt.meta_gradient"):  # the unroll and its pull-back, step by step
                loss, gx, glr = meta_gradient(state.net, state.names, start, target,
                                              buf.layout, syn, labels, state.syn_lr,
                                              state.syn_steps, state.batch_syn, gen,
                                              state.chunk, state.dist)
            if syn.requires_grad:
                syn.backward(gx)
            state.dist.sum_grads_(state.params)  # each process pulled back its own videos
            if state.opt_lr is not None:
                state.syn_lr.grad = glr
        else:
            params = [p.detach().requires_grad_() for p in unflatten(start, buf.layout)]
            with span("vdfast.mtt.unroll"):
                params = unroll(state.net, state.names, params, syn, labels,
                                state.syn_lr, state.syn_steps, state.batch_syn, gen,
                                state.chunk)
            student = torch.cat([p.reshape(-1) for p in params])
            loss = trajectory_loss(student, start, target)
            loss.backward()
        state.opt.step()
        if state.opt_lr is not None:
            state.opt_lr.step()
        return loss.detach()

    def learned_lr(self, state) -> float:
        """The student step size learned so far (reads it back to the host)."""
        return float(state.syn_lr.detach())

    def finalize(self, synset, state) -> None:
        """Record the learned step size in the synset (``meta["syn_lr"]``): the evaluation protocol
        trains students at this lr instead of 0.01 when the method learned one."""
        synset.meta["syn_lr"] = self.learned_lr(state)

    def state_dict(self, state):
        out = {"opt": state.opt.state_dict(), "syn_lr": state.syn_lr.detach().cpu(),
               "draw": state.draw.get_state()}
        if state.opt_lr is not None:
            out["opt_lr"] = state.opt_lr.state_dict()
        if state.synset is not None:
            self.finalize(state.synset, state)
        return out

    def load_state_dict(self, state, saved):
        state.opt.load_state_dict(saved["opt"])
        with torch.no_grad():
            state.syn_lr.copy_(saved["syn_lr"])
        state.draw.set_state(saved["draw"])
        if state.opt_lr is not None and "opt_lr" in saved:
            state.opt_lr.load_state_dict(saved["opt_lr"])


__all__ = ["MTT", "unroll", "meta_gradient", "step_indices", "prepare_buffer", "default_buffer_dir"]
