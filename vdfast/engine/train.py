"""Supervised training of a classifier on clips: evaluation students, GVD's soft-label teacher and
the soft labels it gives.

* :class:`Source`: a student's training examples (float normalised videos, or uint8 clips
  normalised per batch) and :func:`train_student`: the evaluation protocol's SGD on one source,
  optionally data-parallel over several processes.
* :func:`train_teacher`: a ConvNet3D trained on a store's whole train split with that protocol,
  seeded so the same settings give the same teacher; :func:`soft_labels`,
  :func:`class_probability`, :func:`train_stats` and :func:`select_real` use it.
* :func:`teacher_record`: what a synset records about the teacher that labelled (or chose) its
  videos; :func:`soft_temperature` and :func:`teacher_of` read it (the teacher is loaded from the
  run's stage cache, or trained again from the recorded settings).

Methods, the evaluation and the API import this module; it imports none of them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vdfast.engine import checkpoint
from vdfast.ops import normalize_clips


def standardize_batch(x: torch.Tensor, dist=None) -> torch.Tensor:
    """``x`` by its scalar mean and std; with ``dist`` (N processes each holding some rows of one
    batch) by the whole batch's, from summed float64 moments."""
    if dist is None:
        return (x - x.mean()) / x.std().clamp_min(1e-6)
    xd = x.double()
    m = dist.all_reduce_(torch.stack([xd.new_tensor(float(x.numel())), xd.sum(), xd.pow(2).sum()]))
    mean = m[1] / m[0]
    std = ((m[2] - m[0] * mean * mean) / (m[0] - 1)).clamp_min(0).sqrt()
    return (x - mean.to(x.dtype)) / std.to(x.dtype).clamp_min(1e-6)


def rng_devices(device) -> list:
    """The devices whose RNG a student's ``torch.random.fork_rng`` forks (a CUDA device; none on a
    CPU)."""
    return [torch.device(device)] if torch.device(device).type == "cuda" else []


@dataclass(eq=False)
class Source:
    """A student's training examples: ``x`` float normalised videos ``[n, C, T, H, W]``, or uint8
    clips ``[n, T, H, W, C]`` normalised per batch with the store's ``mean`` and ``std``; ``y``
    class indices ``[n]`` or soft targets ``[n, K]``."""

    x: torch.Tensor
    y: torch.Tensor
    mean: object = None
    std: object = None

    def __len__(self):
        return self.x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.x.device

    def batch(self, idx):
        """The examples ``idx`` (an index tensor or a slice): (float videos, targets)."""
        x = self.x[idx]
        if x.dtype == torch.uint8:
            x = normalize_clips(x, self.mean, self.std)
        return x, self.y[idx]


class StoreSplit:
    """A store's split as training examples (hard labels) read batch by batch from its
    memory-mapped class files (:meth:`~vdfast.data.store.ClipStore.rows`): memory of one batch,
    the same batches as a :class:`Source` of the whole split (:func:`split_source` picks)."""

    def __init__(self, store, split: str, device):
        self.store, self.split, self.device = store, split, torch.device(device)
        counts = torch.tensor(store.counts(split), dtype=torch.long)
        self.y = torch.repeat_interleave(torch.arange(len(counts)), counts).to(self.device)

    def __len__(self):
        return int(self.y.numel())

    def batch(self, idx):
        x = self.store.rows(self.split, idx).to(self.device)
        return normalize_clips(x, self.store.mean, self.store.std), self.y[idx]


def split_source(store, split: str, device):
    """The whole ``split`` of ``store`` to train on: one uint8 tensor on ``device`` when it fits
    :func:`~vdfast.data.store.resident_budget` (``VDFAST_POOL_GB``), else streamed per batch
    (:class:`StoreSplit`; Kinetics-400 at 16x112² is ~140 GiB of train clips). The same training
    either way."""
    from vdfast.data.store import resident_budget

    clip = store.frames * store.size * store.size * 3
    if sum(store.counts(split)) * clip <= resident_budget(device):
        x, y = store.tensors(split, device)
        return Source(x, y, store.mean, store.std)
    return StoreSplit(store, split, device)


def student_loss(out, y, soft: bool, tau: float, total: int = 0) -> torch.Tensor:
    """A batch's loss (KL at ``tau`` for soft targets, else cross-entropy); with ``total``, this
    block's share of the loss of a batch of ``total`` rows (its sum / ``total``)."""
    if soft:
        logp = F.log_softmax(out / tau, 1)
        if total:
            return F.kl_div(logp, y, reduction="sum") * tau * tau / total
        return F.kl_div(logp, y, reduction="batchmean") * tau * tau
    return F.cross_entropy(out, y, reduction="sum") / total if total else F.cross_entropy(out, y)


def train_student(net, source: Source, cfg, epochs: int, gen: torch.Generator, soft: bool = False,
                  desc: str = "", progress: bool = True, dist=None, stop_hint: str | None = None
                  ) -> float:
    """Train ``net`` in place on ``source`` with the evaluation protocol of ``cfg`` (an
    :class:`~vdfast.config.EvalConfig`: SGD with its lr, momentum and weight decay, the lr divided
    by 10 at half the ``epochs``, batches of ``cfg.batch`` in the order ``gen`` draws, each batch
    standardised when ``cfg.standardize``, KL at ``cfg.soft_temperature`` when ``soft``); returns
    the final training loss.

    With ``dist`` of N processes (all calling this with the same ``net`` and ``gen``) the training
    is data-parallel: each process takes its block of rows of every batch (maybe none), the
    batch's standardisation statistics are summed, ``net`` runs wrapped in
    ``DistributedDataParallel`` whose all-reduce sums the gradients
    (:meth:`~vdfast.distributed.Dist.data_parallel`), dropout masks are drawn for the whole batch
    (:class:`~vdfast.models.RowDropout`); the same training as one process up to float summation
    order, every process ending with the same ``net``. Not with batch normalisation (per-process
    batch statistics): refused.

    ``stop_hint``: a SIGINT / SIGTERM inside :func:`~vdfast.engine.checkpoint.handle_signals`
    stops the training after the current epoch, raising
    :class:`~vdfast.engine.checkpoint.Interrupted` with this tail (the caller says what becomes
    of the unfinished network); None: the signal waits for the training to end."""
    from vdfast.engine.loop import Loop
    from vdfast.models import RowDropout

    dp = dist if dist is not None and dist.active else None
    if dp is not None and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                              for m in net.modules()):
        raise ValueError("data-parallel student training cannot use batch normalisation (each "
                         "process would normalise by its own rows); use --net-norm none or instance")
    params = list(net.parameters())
    drops = [m for m in net.modules() if isinstance(m, RowDropout)] if dp is not None else []
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [max(1, epochs // 2)], 0.1)
    n = len(source)
    steps = math.ceil(n / cfg.batch)
    net.train()
    model = dp.data_parallel(net) if dp is not None else net  # net itself on one process
    loss = torch.zeros(())

    def epoch(_):
        nonlocal loss
        perm = torch.randperm(n, generator=gen).to(source.device)
        for s in range(steps):
            idx = perm[s * cfg.batch:(s + 1) * cfg.batch]
            total = 0
            if dp is not None:  # this process's rows (maybe none: the wrapper still runs forward
                # and backward, zero gradients, the same RNG draws)
                rows, total = dp.shard(idx.numel()), idx.numel()
                for m in drops:
                    m.split = (rows.start, rows.stop, total)
                idx = idx[rows.start:rows.stop]
            x, y = source.batch(idx)
            if cfg.standardize:
                x = standardize_batch(x, dp)
            loss = student_loss(model(x), y, soft, cfg.soft_temperature, total)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # N processes: DDP sums the gradients during the backward
            opt.step()
        sched.step()

    try:  # one epoch a step; no host sync, no checkpoint (a student is retrained, not resumed)
        Loop(total=epochs, desc=desc, unit="ep", progress=progress, dist=dp,
             stop_on_signal=stop_hint is not None, what="epoch", stop_hint=stop_hint).run(epoch)
    finally:
        for m in drops:
            m.split = None
    loss = loss.detach()
    return float(dp.all_reduce_(loss.double()) if dp is not None else loss)


# ----------------------------------------------------------------------- teacher and soft labels
def train_teacher(store, net_cfg, eval_cfg, epochs: int, seed: int, device,
                  cache: Path | None = None, progress: bool = True, dist=None):
    """A ConvNet3D (``net_cfg``) trained on ``store``'s full real train split for ``epochs`` with
    the evaluation protocol's optimiser (``eval_cfg``); initialisation, dropout and batches drawn
    from ``seed`` alone, so the same settings give the same teacher (:func:`teacher_of` rebuilds
    it when the cache is gone). ``cache``: a folder holding (or to hold) ``teacher.safetensors``. With
    ``dist`` (N processes, all calling this) it trains data-parallel (:func:`train_student`; not
    with batch normalisation: then every process trains it whole) and the main process writes
    ``cache``. Returned in eval mode."""
    from vdfast.models import build

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 31 + 4)
        net = build(net_cfg, store)
    net = net.to(device)
    f = checkpoint.weights_file(cache, "teacher")
    dp = dist if dist is not None and dist.active and net_cfg.norm != "batch" else None
    have = f is not None
    if dp is not None:  # load only where every process can (workdirs on other machines: train)
        have = int(dp.all_reduce_(torch.tensor(float(have), device=dp.device))) == dp.world
    if have:
        net.load_state_dict(checkpoint.load_weights(f, device, "the teacher is trained again"))
        return net.eval()
    source = split_source(store, "train", device)
    ecfg = dataclasses.replace(eval_cfg, epochs=epochs)
    with torch.random.fork_rng(devices=rng_devices(device)):
        torch.manual_seed(seed * 31 + 5)
        train_student(net, source, ecfg, epochs,
                      torch.Generator().manual_seed(seed * 31 + 6), desc="teacher",
                      progress=progress and (dp is None or dp.main), dist=dp,
                      stop_hint=f"the teacher's {epochs} epochs were not finished and are not kept: "
                                f"the same command trains it again from the start")
    if cache is not None and (dp is None or dp.main):
        checkpoint.save_weights(Path(cache) / "teacher.safetensors", net.state_dict())
    return net.eval()


@torch.no_grad()
def train_stats(store, per_class: int = 32) -> tuple[float, float]:
    """Scalar mean and std of the normalised train clips (the first ``per_class`` of each class):
    what the evaluation's per-batch standardisation sees on average over real batches."""
    n = s1 = s2 = 0.0
    for c in range(store.num_classes):
        k = min(per_class, store.counts("train")[c])
        x = normalize_clips(torch.from_numpy(np.array(store.clips("train", c)[:k])),
                            store.mean, store.std).double()
        n, s1, s2 = n + x.numel(), s1 + float(x.sum()), s2 + float(x.pow(2).sum())
    m = s1 / max(n, 1)
    return m, max((s2 / max(n, 1) - m * m) ** 0.5, 1e-6)


@torch.no_grad()
def soft_labels(teacher, u8: torch.Tensor, mean, std, temperature: float, segments: int = 1,
                standardize: bool = True, batch: int = 64,
                stats: tuple[float, float] | None = None) -> torch.Tensor:
    """softmax(teacher(x) / temperature) ``[N, nc]`` of uint8 videos ``[N, T, H, W, 3]``; with
    ``segments`` > 1 each segment (stretched to T frames by repeating frames) is labelled and the
    instance gets the mean of its segments' distributions. Batches are standardised like the
    evaluation's (scalar mean/std of each batch) when ``standardize``; ``stats`` = (mean, std)
    standardises every video by these fixed scalars instead (e.g. :func:`train_stats`), so a
    video's label does not depend on the other videos in its batch."""
    dev = next(teacher.parameters()).device
    teacher.eval()
    N, T = u8.shape[:2]
    seg = T // segments
    out = []
    for s in range(0, N, batch):
        x = normalize_clips(u8[s:s + batch].to(dev), mean, std)    # [b, C, T, H, W]
        probs = 0
        for m in range(segments):
            xs = x[:, :, m * seg:(m + 1) * seg].repeat_interleave(segments, dim=2) if segments > 1 else x
            if stats is not None:
                xs = (xs - stats[0]) / stats[1]
            elif standardize:
                xs = (xs - xs.mean()) / xs.std().clamp_min(1e-6)
            probs = probs + torch.softmax(teacher(xs).float() / temperature, 1)
        out.append(probs / segments)
    return torch.cat(out).cpu()


def class_probability(teacher, u8: torch.Tensor, labels, store, segments: int = 1,
                      stats: tuple[float, float] | None = None) -> torch.Tensor:
    """``[N]`` the teacher's probability (tau 1, MVIC segments averaged) of each video's class
    ``labels[i]`` (store class index): the score GVD's ``select`` ranks candidates by. Videos
    standardised by the fixed ``stats`` (:func:`train_stats`; None: not standardised), not by
    their batch."""
    p = soft_labels(teacher, u8, store.mean, store.std, 1.0, segments, False, stats=stats)
    return p[torch.arange(len(labels)), torch.as_tensor(labels, dtype=torch.long)]


def select_real(teacher, store, ipc: int, candidates: int, gen: torch.Generator,
                stats: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The real-data control of GVD's ``select``: per class, ``ipc`` groups of ``candidates``
    random train clips (fewer when the class has fewer than ``ipc * candidates``; a clip in one
    group only), of each group the clip with the highest :func:`class_probability`. Class-major
    uint8 clips and labels, like :meth:`ClipStore.random_clips`."""
    clips, labels = [], []
    for c, n in enumerate(store.counts("train")):
        r = max(1, min(candidates, n // ipc))
        idx = torch.randperm(n, generator=gen)[:min(n, ipc) * r]
        order = idx.sort()  # read the memory-mapped class in file order, then back to draw order
        x = torch.from_numpy(np.ascontiguousarray(store.clips("train", c)[order.values.numpy()]))
        x = x[order.indices.argsort()].view(-1, r, *x.shape[1:])       # [groups, r, T, H, W, 3]
        p = class_probability(teacher, x.flatten(0, 1), [c] * (x.shape[0] * r), store, 1, stats)
        clips.append(x[torch.arange(x.shape[0]), p.view(-1, r).argmax(1)])
        labels.append(torch.full((x.shape[0],), c, dtype=torch.long))
    return torch.cat(clips), torch.cat(labels)


# ------------------------------------------------------------------ what a synset records of it
@dataclass(frozen=True)
class TeacherRecord:
    """What a synset records about the teacher behind its labels or its choice of videos, under
    ``meta["teacher"]`` (the methods that use a teacher, compose and GVD, write it); other synsets
    record nothing (the defaults).

    ``temperature``: the KL temperature its soft labels were made with (None: not recorded);
    ``select``: the candidates per instance the teacher chose among (1: no choice);
    ``recipe``: how to train the teacher again (``{"net", "epochs", "seed", "eval"}``; None: no
    teacher, or a user's own weights); ``cache``: the folder of the run's cached teacher
    (``teacher.safetensors``) when it is still there; ``weights``: a user's teacher file (compose's
    ``--compose-teacher``) when it is still there."""

    temperature: float | None = None
    select: int = 1
    recipe: dict | None = None
    cache: Path | None = None
    weights: Path | None = None


def teacher_record(synset) -> TeacherRecord:
    """The :class:`TeacherRecord` of ``synset``: its ``meta["teacher"]`` (``temperature``,
    ``select``, ``recipe``, ``cache``, ``weights``), the defaults when it has none."""
    rec = synset.meta.get("teacher")
    if not isinstance(rec, dict):
        return TeacherRecord()
    cache = rec.get("cache")
    cache = Path(cache) if cache and checkpoint.weights_file(cache, "teacher") is not None else None
    weights = rec.get("weights")
    weights = Path(weights) if weights and Path(weights).is_file() else None
    tau = rec.get("temperature")
    return TeacherRecord(None if tau is None else float(tau), int(rec.get("select", 1)),
                         rec.get("recipe") or None, cache, weights)


def soft_temperature(synset, cfg) -> float:
    """The KL temperature of ``synset``'s soft labels: the one it records, else
    ``cfg.soft_temperature``."""
    tau = teacher_record(synset).temperature
    return tau if tau is not None else cfg.soft_temperature


def teacher_of(synset, store, device, progress: bool = True, dist=None):
    """The teacher ``synset`` records, or None when it records none: a user's weights file, else
    loaded from the run's stage cache when it is still there, else trained again on ``store``'s
    train split with the recorded settings (network, epochs, seed and optimiser; deterministic)."""
    from vdfast.config import EvalConfig, NetConfig

    rec = teacher_record(synset)
    if rec.weights is not None:
        return load_teacher(rec.weights, NetConfig(**(rec.recipe or {}).get("net", {})), store, device)
    if not rec.recipe or "epochs" not in rec.recipe:  # no teacher, or a user's file that is gone
        return None
    ident = rec.recipe
    ecfg = dataclasses.replace(EvalConfig(), **ident["eval"])
    return train_teacher(store, NetConfig(**ident["net"]), ecfg, ident["epochs"], ident["seed"],
                         device, rec.cache, progress, dist)


def load_teacher(path, net_cfg, store, device):
    """A user's teacher: ``net_cfg``'s ConvNet3D for ``store`` with the weights of the safetensors
    file ``path``, in eval mode; a one-line ValueError when the file does not fit that network."""
    from vdfast.models import build

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights {path} do not exist; pass a safetensors file of the "
                                f"--net ConvNet3D's state dict, or leave the teacher empty to train one")
    net = build(net_cfg, store).to(device)
    sd = checkpoint.load_weights(path, device, "pass another file")
    try:
        net.load_state_dict(sd)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise ValueError(f"teacher weights {path} do not fit the --net ConvNet3D (width "
                         f"{net_cfg.width}, depth {net_cfg.depth}, norm {net_cfg.norm}) for "
                         f"{store.num_classes} classes at {store.frames}x{store.size}²: "
                         f"{first[0].strip()}") from None
    return net.eval()
