"""FRePo, dataset distillation by neural feature regression (Zhou, Nezhadarya & Ba, NeurIPS 2022),
for any synset parametrisation.

Each step (one distillation update):

1. take the next model of a pool of ``pool_size`` online ConvNet3D (round-robin; the paper samples
   uniformly, round-robin gives every model the same share without a host-side random draw). A
   model is (re)initialised from the run's generator on first use and after ``reset_every`` of its
   own updates; the first lifetimes are staggered (model i starts at age ``i * reset_every //
   pool_size``) so the pool always holds networks at different stages of training;
2. features ``phi = net.embed`` of ``batch_real`` real clips (``batch_real // nc`` per class, no
   gradient) and of the synthetic videos;
3. kernel ridge regression from synthetic to real features (:func:`krr_predict`):
   ``pred = K_ts (K_ss + lambda I)^-1 Y_s`` with linear kernels ``K = phi phi^T`` and
   ``lambda = reg * tr(K_ss) / N``;
4. loss = ``0.5 * mean_i ||pred_i - y_i||^2`` to the real labels ``y = onehot - 1/nc``
   + ``margin_weight * mean_j relu(label_margin - (Y_s[j, c_j] - max_{c != c_j} Y_s[j, c]))``:
   the label-margin term keeps each learned label's own class ``label_margin`` above every other
   class (it is 0 at the initial labels, whose gap is 1, and only acts when a label drifts toward
   another class, which would make the hard labels and the evaluation soft labels disagree);
5. Adam step on the synset's parameters (``lr_img`` for pixels) and on the label targets
   (``lr_label``), cosine schedule over the run;
6. the model (or with ``train_all`` every pool model) takes one Adam step (``lr_net``) on the
   synthetic set with the same MSE loss to the current label targets.

Labels: the learnable targets ``Y_s`` live on the synset as ``synset.label_targets`` (saved and
loaded with it). They are regression targets, not probabilities, so for evaluation (which trains
students with KL on ``synset.soft_labels`` when present) the synset also carries
``soft_labels = softmax(Y_s / tau)``, refreshed every step, with ``tau`` chosen so that the initial
labels give probability ``label_confidence`` (0.9) to their own class (:func:`label_temperature`).
With ``learn_labels=False`` the labels stay fixed and the synset keeps hard labels only.

The networks run in eval mode (dropout off) so nothing draws from the global RNG.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from vdfast.data.store import ClipPool
from vdfast.methods.base import Method, check_net_norm, empty_net, reinit_
from vdfast.ops import normalize_clips
from vdfast.profiling import span, traced


@traced("vdfast.frepo.krr")
def krr_predict(feat_t: torch.Tensor, feat_s: torch.Tensor, y_s: torch.Tensor,
                reg: float = 1e-6) -> torch.Tensor:
    """Kernel ridge regression with a linear kernel on features.

    ``pred = K_ts (K_ss + lambda I)^-1 Y_s``, ``K_ts = feat_t feat_s^T``, ``K_ss = feat_s
    feat_s^T``, ``lambda = reg * tr(K_ss) / N``. The N x N system is solved in float64 (lambda is
    tiny, K_ss is badly conditioned); the result comes back in ``feat_t``'s dtype.

    Args:
        feat_t: ``[B, D]`` target (real) features.
        feat_s: ``[N, D]`` support (synthetic) features.
        y_s: ``[N, nc]`` support labels.
        reg: relative ridge.

    Returns:
        ``[B, nc]`` predictions, differentiable w.r.t. all three inputs.
    """
    fs = feat_s.double()
    k_ss = fs @ fs.T
    n = k_ss.shape[0]
    lam = reg * torch.diagonal(k_ss).sum() / n
    eye = torch.eye(n, dtype=k_ss.dtype, device=k_ss.device)
    alpha = torch.linalg.solve(k_ss + lam * eye, y_s.double())
    return ((feat_t.double() @ fs.T) @ alpha).to(feat_t.dtype)


def centered_onehot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``onehot - 1/nc`` ``[N, nc]`` float."""
    return F.one_hot(labels, num_classes).float() - 1.0 / num_classes


def label_temperature(num_classes: int, confidence: float = 0.9) -> float:
    """The temperature tau for which ``softmax(centered_onehot / tau)`` gives ``confidence`` to the
    labelled class: the centred one-hot has a gap of 1, so ``tau = 1 / ln(conf (nc-1) / (1-conf))``."""
    ratio = confidence * (num_classes - 1) / (1 - confidence)
    if ratio <= 1:
        raise ValueError(f"label_confidence {confidence} is not above chance (1/{num_classes}); "
                         f"pass --frepo-label-confidence between {1 / num_classes:.3g} and 1")
    return 1.0 / math.log(ratio)


def label_margin_loss(targets: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """``mean_j relu(margin - (Y[j, c_j] - max_{c != c_j} Y[j, c]))`` for ``targets`` ``[N, nc]``."""
    own = targets.gather(1, labels[:, None]).squeeze(1)
    mask = F.one_hot(labels, targets.shape[1]).bool()
    other = targets.masked_fill(mask, float("-inf")).amax(1)
    return F.relu(margin - (own - other)).mean()


def frepo_loss(pred: torch.Tensor, real_labels: torch.Tensor, targets: torch.Tensor,
               syn_labels: torch.Tensor, label_margin: float = 0.5,
               margin_weight: float = 1.0) -> torch.Tensor:
    """``0.5 * mean_i ||pred_i - (onehot_i - 1/nc)||^2 + margin_weight * label_margin_loss``."""
    y = centered_onehot(real_labels, pred.shape[1]).to(pred.dtype)
    loss = 0.5 * (pred - y).pow(2).sum(1).mean()
    if margin_weight > 0:
        loss = loss + margin_weight * label_margin_loss(targets, syn_labels, label_margin)
    return loss


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out - y).pow(2).sum(1).mean()


@dataclasses.dataclass
class FRePoState:
    """What FRePo's steps share: the real clips, the pool of networks with their optimizers and
    ages (a network is redrawn when it reaches ``reset_every`` steps), the synset's optimizer and
    its lr schedule."""

    pool: ClipPool
    nets: list
    net_opts: list
    train_nets: list              # the nets as their own training step runs them (N processes: DDP)
    dist: object                  # a vdfast.distributed.Dist
    rows: int                     # real rows of the whole batch (all processes)
    params: list                  # the synset's learnable tensors (labels included when learned)
    age: list                     # steps each pool network has trained
    fresh: list                   # whether each network is to be redrawn before its next use
    next: int                     # the network the next step uses
    opt: torch.optim.Optimizer
    sched: object
    nc: int
    per_class: int
    cfg: object                   # the run's FRePoConfig
    tau: float                    # label temperature of the evaluation soft labels
    mean: tuple
    std: tuple


class FRePo(Method):
    name = "frepo"
    iterative = True
    # on N processes the real batch is split by classes and the synthetic videos by rows: rank r
    # embeds its classes' real clips and its block of synthetic videos, the synthetic features are
    # gathered (Dist.gather_rows: the backward sums every rank's gradient for each row), and r
    # regresses its real rows on the whole synthetic set; its loss is scaled by its share of the
    # real rows, the label-margin term is rank 0's, and the synset's and labels' gradients are
    # summed, so every rank takes the one-process step. The pool networks train data-parallel on
    # the synthetic videos (each its block, gradients summed), identically on every rank.
    shardable = True
    class_sharded = True  # the real batch

    def init(self, store, cfg, device, gen):
        synset = super().init(store, cfg, device, gen)
        if cfg.frepo.learn_labels:
            attach_labels(synset, cfg.frepo.label_confidence)
        return synset

    def setup(self, synset, store, cfg, device):
        fc = cfg.frepo
        check_net_norm(cfg, "frepo")
        nc = store.num_classes
        dist = self.process_group(device)
        if fc.learn_labels and synset.label_targets is None:
            attach_labels(synset, fc.label_confidence)
        groups = synset.param_groups(dataclasses.replace(cfg, lr_img=fc.lr_img))
        if fc.learn_labels:
            groups.append({"params": [synset.label_targets], "lr": fc.lr_label})
        opt = torch.optim.Adam(groups)
        total = max(1, cfg.iterations)
        if fc.schedule == "cosine":
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total)))
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)
        nets = [empty_net(store, cfg, device) for _ in range(fc.pool_size)]
        net_opts = [torch.optim.Adam(n.parameters(), lr=fc.lr_net) for n in nets]
        per_class = max(1, fc.batch_real // nc)
        return FRePoState(pool=ClipPool(store, "train", device, classes=dist.shard(nc)), nets=nets,
                          net_opts=net_opts, train_nets=[dist.data_parallel(n) for n in nets],
                          dist=dist, rows=per_class * nc,
                          params=[p for g in groups for p in g["params"]],
                          age=[i * fc.reset_every // fc.pool_size for i in range(fc.pool_size)],
                          fresh=[True] * fc.pool_size, next=0, opt=opt, sched=sched,
                          nc=nc, per_class=per_class, cfg=fc,
                          tau=label_temperature(nc, fc.label_confidence),
                          mean=store.mean, std=store.std)

    def _targets(self, synset, labels, state):
        if state.cfg.learn_labels:
            return synset.label_targets
        return centered_onehot(labels, state.nc)

    def _ready(self, state, i, gen):
        if state.fresh[i]:
            reinit_(state.nets[i], gen)
            state.net_opts[i].state.clear()
            state.fresh[i] = False

    def step(self, synset, state, gen):
        fc, nets = state.cfg, state.nets
        i = state.next
        state.next = (i + 1) % len(nets)
        self._ready(state, i, gen)
        net = nets[i]

        real_u8, real_labels = state.pool.sample(state.per_class, gen)
        with torch.no_grad(), span("vdfast.frepo.embed_real"):
            feat_t = net.embed(normalize_clips(real_u8, state.mean, state.std))
        videos, labels = synset.videos()
        targets = self._targets(synset, labels, state)
        dist = state.dist
        n = videos.shape[0]
        own = dist.shard(n)  # this process embeds its block of synthetic videos; all see all features
        with span("vdfast.frepo.embed_syn"):
            feat_s = dist.gather_rows(net.embed(videos[own.start:own.stop]), n)
        pred = krr_predict(feat_t, feat_s, targets, fc.reg)
        # this process's real rows' share of the batch mean; the margin term once (rank 0)
        loss = pred.shape[0] / state.rows * frepo_loss(pred, real_labels, targets, labels,
                                                          margin_weight=0.0)
        if fc.learn_labels and fc.margin_weight > 0 and dist.main:
            loss = loss + fc.margin_weight * label_margin_loss(targets, labels, fc.label_margin)
        opt = state.opt
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=state.params)
        dist.sum_grads_(state.params)
        opt.step()
        state.sched.step()

        with torch.no_grad():
            x, y = synset.videos()
            x = x.detach()
            y_t = self._targets(synset, y, state).detach()
            if fc.learn_labels:
                synset.soft_labels = torch.softmax(y_t / state.tau, dim=1)
        with span("vdfast.frepo.pool_train"):
            for j in (range(len(nets)) if fc.train_all else [i]):
                self._ready(state, j, gen)
                nopt = state.net_opts[j]
                # data-parallel over the synthetic videos: this block's share of the mean; the
                # DDP wrapper sums the processes' gradients (Dist.data_parallel)
                nloss = len(own) / n * _mse(state.train_nets[j](x[own.start:own.stop]),
                                            y_t[own.start:own.stop])
                nopt.zero_grad(set_to_none=True)
                nloss.backward()
                nopt.step()
                state.age[j] += 1
                if state.age[j] >= fc.reset_every:
                    state.age[j], state.fresh[j] = 0, True
        return loss.detach()

    def state_dict(self, state):
        return {"opt": state.opt.state_dict(), "sched": state.sched.state_dict(),
                "nets": [n.state_dict() for n in state.nets],
                "net_opts": [o.state_dict() for o in state.net_opts],
                "age": list(state.age), "fresh": list(state.fresh), "next": state.next}

    def load_state_dict(self, state, saved):
        state.opt.load_state_dict(saved["opt"])
        state.sched.load_state_dict(saved["sched"])
        for n, sd in zip(state.nets, saved["nets"]):
            n.load_state_dict(sd)
        for o, sd in zip(state.net_opts, saved["net_opts"]):
            o.load_state_dict(sd)
        state.age, state.fresh, state.next = list(saved["age"]), list(saved["fresh"]), saved["next"]


def attach_labels(synset, confidence: float = 0.9):
    """Give ``synset`` learnable FRePo labels ``onehot - 1/nc`` and the matching evaluation soft
    labels ``softmax(labels / tau)`` (see :func:`label_temperature`)."""
    targets = synset.learn_labels(centered_onehot(synset.labels, synset.num_classes))
    tau = label_temperature(synset.num_classes, confidence)
    synset.soft_labels = torch.softmax(targets.detach() / tau, dim=1)
    return targets
