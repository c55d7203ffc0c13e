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
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from vdfast.methods.base import Method
from vdfast.methods.experts import BufferError, ExpertBuffer, build_net, train_experts, unflatten
from vdfast.ops import trajectory_loss


def unroll(net, names, params, syn, labels, syn_lr, syn_steps: int, batch_syn: int = 0,
           gen: torch.Generator | None = None) -> list[torch.Tensor]:
    """``syn_steps`` differentiable SGD steps of ``net`` from ``params`` on ``(syn, labels)``.

    Args:
        net: the student module (its own parameters are ignored; ``functional_call`` uses
            ``params``); in eval mode.
        names: parameter names, in the order of ``params``.
        params: per-layer starting tensors (requiring grad).
        syn: ``[N, C, T, H, W]`` synthetic videos; labels ``[N]``.
        syn_lr: 0-d step size tensor (may require grad).
        batch_syn: videos per step (0 or >= N: all of them every step; otherwise consecutive
            chunks of a random permutation drawn from ``gen`` on ``syn``'s device, redrawn when
            used up).
    Returns:
        The per-layer parameters after the last step, differentiable w.r.t. ``syn``, ``syn_lr``
        and ``params`` (second order: ``create_graph=True`` at every step).
    """
    n = syn.shape[0]
    chunks: list[torch.Tensor] = []
    for _ in range(syn_steps):
        if batch_syn and batch_syn < n:
            if not chunks:
                chunks = list(torch.randperm(n, generator=gen, device=syn.device).split(batch_syn))
            idx = chunks.pop()
            x, y = syn[idx], labels[idx]
        else:
            x, y = syn, labels
        out = functional_call(net, dict(zip(names, params)), (x,))
        ce = F.cross_entropy(out, y)
        grads = torch.autograd.grad(ce, params, create_graph=True)
        params = [p - syn_lr * g for p, g in zip(params, grads)]
    return params


def default_buffer_dir(store, cfg) -> Path:
    """``$VDFAST_BUFFERS`` (or ``./buffers``) / a name that spells out what defines the experts."""
    m, n = cfg.mtt, cfg.net
    name = (f"{store.name}-n{sum(store.counts('train'))}-{store.frames}x{store.size}"
            f"-convnet3d-w{n.width}d{n.depth}-{n.norm}"
            f"-e{m.buffer_epochs}-lr{m.buffer_lr:g}-b{m.buffer_batch}-m{m.buffer_momentum:g}"
            f"-s{m.buffer_seed}")
    return Path(os.environ.get("VDFAST_BUFFERS", "buffers")) / name


def prepare_buffer(store, cfg, device, progress: bool = True) -> ExpertBuffer:
    """The expert buffer of ``cfg.mtt.buffer`` (or the default directory), trained or completed
    first when needed, and checked against ``store`` and ``cfg.net``.

    A directory that already holds complete experts trained with other buffer settings than
    ``cfg.mtt.buffer_*`` is used as it is (a buffer made elsewhere); an empty or missing one, or one
    trained with exactly these settings, is trained up to ``cfg.mtt.num_experts`` experts.
    """
    m = cfg.mtt
    path = Path(m.buffer) if m.buffer else default_buffer_dir(store, cfg)
    try:
        train_experts(store, path, num_experts=m.num_experts, epochs=m.buffer_epochs,
                      lr=m.buffer_lr, batch=m.buffer_batch, momentum=m.buffer_momentum,
                      net_cfg=cfg.net, seed=m.buffer_seed, device=device, progress=progress)
    except BufferError:
        if not m.buffer:
            raise
        # a buffer trained elsewhere with other settings: use it as it is, if it fits (check below)
    buf = ExpertBuffer(path)
    buf.check(store, cfg.net, need_epochs=m.max_start_epoch + m.expert_epochs)
    return buf


class MTT(Method):
    name = "mtt"
    iterative = True

    def setup(self, synset, store, cfg, device):
        device = torch.device(device)
        if cfg.net.norm == "batch":
            raise ValueError("MTT unrolls a functional student; batch norm's running statistics are "
                             "not part of the expert trajectories. Use --net-norm none or instance")
        m = cfg.mtt
        buf = prepare_buffer(store, cfg, device)
        net = build_net(buf.net).to(device).eval()
        net.requires_grad_(False)
        names = [n for n, _ in buf.layout]
        # pixels at mtt.lr_img (the top-level lr_img is DM's); other parametrisations keep their own
        groups = synset.param_groups(dataclasses.replace(cfg, lr_img=m.lr_img))
        opt = torch.optim.SGD(groups, momentum=cfg.momentum)
        syn_lr = torch.tensor(m.lr_teacher, device=device, requires_grad=m.learn_lr)
        opt_lr = torch.optim.SGD([syn_lr], lr=m.lr_lr, momentum=0.5) if m.learn_lr else None
        draw = torch.Generator().manual_seed(cfg.seed + 0x4D5454)  # expert/start draws, on the host
        return {"buffer": buf, "net": net, "names": names, "opt": opt, "opt_lr": opt_lr,
                "syn_lr": syn_lr, "draw": draw, "device": device, "synset": synset,
                "syn_steps": m.syn_steps, "expert_epochs": m.expert_epochs,
                "max_start": m.max_start_epoch, "batch_syn": m.batch_syn, "last": None}

    def draw(self, state) -> tuple[int, int]:
        """(expert, start epoch) for the next iteration, from the state's CPU generator."""
        g = state["draw"]
        e = int(torch.randint(len(state["buffer"]), (1,), generator=g))
        s = int(torch.randint(state["max_start"], (1,), generator=g))
        return e, s

    def step(self, synset, state, gen):
        e, s = self.draw(state)
        state["last"] = (e, s)
        start, target = state["buffer"].pair(e, s, s + state["expert_epochs"])
        dev = state["device"]
        syn, labels = synset.videos()
        start = start.to(dev, syn.dtype, non_blocking=True)
        target = target.to(dev, syn.dtype, non_blocking=True)
        params = [p.detach().requires_grad_() for p in unflatten(start, state["buffer"].layout)]
        params = unroll(state["net"], state["names"], params, syn, labels, state["syn_lr"],
                        state["syn_steps"], state["batch_syn"], gen)
        student = torch.cat([p.reshape(-1) for p in params])
        loss = trajectory_loss(student, start, target)
        state["opt"].zero_grad(set_to_none=True)
        if state["opt_lr"] is not None:
            state["opt_lr"].zero_grad(set_to_none=True)
        loss.backward()
        state["opt"].step()
        if state["opt_lr"] is not None:
            state["opt_lr"].step()
        return loss.detach()

    def learned_lr(self, state) -> float:
        """The student step size learned so far (reads it back to the host)."""
        return float(state["syn_lr"].detach())

    def finalize(self, synset, state) -> None:
        """Record the learned step size in the synset (``meta["syn_lr"]``): the evaluation protocol
        trains students at this lr instead of 0.01 when the method learned one."""
        synset.meta["syn_lr"] = self.learned_lr(state)

    def state_dict(self, state):
        out = {"opt": state["opt"].state_dict(), "syn_lr": state["syn_lr"].detach().cpu(),
               "draw": state["draw"].get_state()}
        if state["opt_lr"] is not None:
            out["opt_lr"] = state["opt_lr"].state_dict()
        if state.get("synset") is not None:
            self.finalize(state["synset"], state)
        return out

    def load_state_dict(self, state, saved):
        state["opt"].load_state_dict(saved["opt"])
        with torch.no_grad():
            state["syn_lr"].copy_(saved["syn_lr"])
        state["draw"].set_state(saved["draw"])
        if state["opt_lr"] is not None and "opt_lr" in saved:
            state["opt_lr"].load_state_dict(saved["opt_lr"])


__all__ = ["MTT", "unroll", "prepare_buffer", "default_buffer_dir"]
