"""Evaluation: fresh students trained on a synthetic set, tested on the real test split.

The published protocol (spec/methods.md): SGD (momentum 0.9, weight decay 5e-4, lr 0.01), ``epochs``
epochs with the learning rate divided by 10 at half, batch 256, each batch standardised by its own
scalar mean and std (train and test alike), mean +- std over N students. vdfast reports the FINAL
accuracy of each student; no checkpoint or learning rate is chosen on the test set. The accuracy is
over every test clip: a store prepared with K clips per test video (``vdfast prepare --test-clips``,
default 3, at seeded random positions) gives the protocol's average over each video's clips; the
embedded dataset has 1 clip per test video.

Every report can carry two baselines run under the same protocol: random real clips at the same
ipc (the gain that distillation must show) and the full training set (the ceiling).

A synset with soft labels is evaluated twice, with its soft labels (KL at temperature tau) and with
its hard labels. tau is the synset's own when it records one (a GVD synset's
``meta["gvd"]["temperature"]``: the temperature its soft labels were made with), else
``cfg.soft_temperature``. For a GVD synset the baselines add random real clips labelled by the SAME
teacher at the same tau (:func:`teacher_of`), so the gain of the labels is not taken for a gain of
the data: hard labels, soft labels and random real with those soft labels side by side. A GVD
synset whose instances were chosen among R candidates by that teacher (``gvd.select`` R > 1) also
gets random real clips chosen the same way (best of R per slot, :func:`vdfast.methods.gvd.select_real`),
so the gain of the selection is not taken for a gain of the generator.

Students are seeded with :func:`torch.random.fork_rng`, so dropout is reproducible and the caller's
global RNG is left as it was.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from vdfast.config import EvalConfig
from vdfast.data.store import ClipStore
from vdfast.models import build_student
from vdfast.ops import normalize_clips


def _standardize(x: torch.Tensor, dist=None) -> torch.Tensor:
    """``x`` by its scalar mean and std; with ``dist`` (N processes each holding some rows of one
    batch) by the whole batch's, from summed float64 moments."""
    if dist is None:
        return (x - x.mean()) / x.std().clamp_min(1e-6)
    xd = x.double()
    m = dist.all_reduce_(torch.stack([xd.new_tensor(float(x.numel())), xd.sum(), xd.pow(2).sum()]))
    mean = m[1] / m[0]
    std = ((m[2] - m[0] * mean * mean) / (m[0] - 1)).clamp_min(0).sqrt()
    return (x - mean.to(x.dtype)) / std.to(x.dtype).clamp_min(1e-6)


@dataclass
class Row:
    name: str
    ipc: int | None
    accs: list[float]
    seconds: float = 0.0

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accs)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.accs) if len(self.accs) > 1 else 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "ipc": self.ipc, "accs": self.accs, "mean": self.mean,
                "std": self.std, "seconds": round(self.seconds, 2)}


@dataclass
class Report:
    dataset: str
    student: str
    rows: list[Row] = field(default_factory=list)
    test: str = ""   # the test split in words (ClipStore.describe_test)

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def table(self) -> str:
        """Markdown table of final accuracies (%), mean +- std over students."""
        lines = [f"Final test accuracy on {self.dataset} ({self.student} students, mean ± std)", ""]
        if self.test:
            lines += [f"Test split: {self.test}; the accuracy is over every clip.", ""]
        lines += ["| set | ipc | accuracy (%) | students |", "|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r.name} | {r.ipc if r.ipc is not None else 'all'} | "
                         f"{100 * r.mean:.1f} ± {100 * r.std:.1f} | {len(r.accs)} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "student": self.student, "test": self.test,
                "rows": [r.to_dict() for r in self.rows]}


class _Source:
    """Training examples for a student: float normalised videos, or uint8 clips normalised per batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean, std):
        self.x, self.y, self.mean, self.std = x, y, mean, std

    def __len__(self):
        return self.x.shape[0]

    def batch(self, idx):
        x = self.x[idx]
        if x.dtype == torch.uint8:
            x = normalize_clips(x, self.mean, self.std)
        return x, self.y[idx]


def train_student(net, source: _Source, cfg: EvalConfig, epochs: int, gen: torch.Generator,
                  soft: bool = False, desc: str = "", progress: bool = True, dist=None):
    """Train ``net`` in place on ``source``; returns the final training loss.

    With ``dist`` of N processes (all calling this with the same ``net`` and ``gen``) the training
    is data-parallel: each process takes its block of rows of every batch, the batch's
    standardisation statistics and the gradients are summed, dropout masks are drawn for the whole
    batch (:class:`~vdfast.models.RowDropout`); the same training as one process up to float
    summation order, every process ending with the same ``net``. Not with batch normalisation
    (per-process batch statistics): refused."""
    from vdfast.models import RowDropout
    from vdfast.progress import bar

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
    loss = torch.zeros(())
    try:
        with bar(total=epochs, desc=desc, unit="ep", enable=progress and (dp is None or dp.main)) as pb:
            for _ in range(epochs):
                perm = torch.randperm(n, generator=gen).to(source.x.device)
                for s in range(steps):
                    idx = perm[s * cfg.batch:(s + 1) * cfg.batch]
                    total = 0
                    if dp is not None:  # this process's rows (maybe none: zeros, same RNG draws)
                        rows, total = dp.shard(idx.numel()), idx.numel()
                        for m in drops:
                            m.split = (rows.start, rows.stop, total)
                        idx = idx[rows.start:rows.stop]
                    x, y = source.batch(idx)
                    if cfg.standardize:
                        x = _standardize(x, dp)
                    loss = _student_loss(net(x), y, soft, cfg.soft_temperature, total)
                    opt.zero_grad(set_to_none=True)
                    if dp is not None:
                        dp.backward_(loss, params)
                    else:
                        loss.backward()
                    opt.step()
                sched.step()
                pb.update(1)
    finally:
        for m in drops:
            m.split = None
    loss = loss.detach()
    return float(dp.all_reduce_(loss.double()) if dp is not None else loss)


def _student_loss(out, y, soft: bool, tau: float, total: int = 0) -> torch.Tensor:
    """A batch's loss (KL at ``tau`` for soft targets, else cross-entropy); with ``total``, this
    block's share of the loss of a batch of ``total`` rows (its sum / ``total``)."""
    if soft:
        logp = F.log_softmax(out / tau, 1)
        if total:
            return F.kl_div(logp, y, reduction="sum") * tau * tau / total
        return F.kl_div(logp, y, reduction="batchmean") * tau * tau
    return F.cross_entropy(out, y, reduction="sum") / total if total else F.cross_entropy(out, y)


@torch.no_grad()
def test_accuracy(net, test_x: torch.Tensor, test_y: torch.Tensor, mean, std, standardize: bool,
                  batch: int = 256) -> float:
    net.eval()
    correct = 0
    for s in range(0, test_x.shape[0], batch):
        x = normalize_clips(test_x[s:s + batch], mean, std)
        if standardize:
            x = _standardize(x)
        correct += int((net(x).argmax(1) == test_y[s:s + batch]).sum())
    return correct / max(1, test_x.shape[0])


class Share:
    """Which students this process trains in an N-process evaluation: the k-th student of the
    whole evaluation goes to rank ``k mod N``; the others' accuracies are left at 0 and
    :meth:`gather` sums every row across processes at the end (one all-reduce)."""

    def __init__(self, dist=None):
        self.dist, self.k = dist, 0

    def mine(self) -> bool:
        k, self.k = self.k, self.k + 1
        return self.dist is None or not self.dist.active or k % self.dist.world == self.dist.rank

    def gather(self, rows: list["Row"]) -> None:
        if self.dist is None or not self.dist.active:
            return
        flat = self.dist.all_reduce_(torch.tensor([a for r in rows for a in r.accs], dtype=torch.float64))
        o = 0
        for r in rows:
            r.accs = flat[o:o + len(r.accs)].tolist()
            o += len(r.accs)


def run_students(x, y, store: ClipStore, test, cfg: EvalConfig, epochs: int, n: int, seed: int,
                 device, soft: bool = False, name: str = "", net_cfg=None, progress=True,
                 share: Share | None = None, dp=None) -> list[float]:
    """Train ``n`` fresh students on (x, y) and return their final test accuracies (0.0 for the
    students ``share`` gives to other processes). With ``dp`` (a Dist of N processes, all calling
    this) every student is trained data-parallel by all of them instead (:func:`train_student`);
    the main process keeps the accuracies, the others 0.0 (:meth:`Share.gather` adds them up)."""
    dp = dp if dp is not None and dp.active else None
    accs = []
    for i in range(n):
        if dp is None and share is not None and not share.mine():
            accs.append(0.0)
            continue
        s = seed * 1009 + i
        with torch.random.fork_rng(devices=[torch.device(device)] if torch.device(device).type == "cuda" else []):
            torch.manual_seed(s)
            net = build_student(cfg.student, store.num_classes, store.frames, store.size,
                                width=net_cfg.width if net_cfg else 64,
                                depth=net_cfg.depth if net_cfg else 3,
                                norm=net_cfg.norm if net_cfg else "none").to(device)
            gen = torch.Generator().manual_seed(s)
            train_student(net, _Source(x, y, store.mean, store.std), cfg, epochs, gen, soft=soft,
                          desc=f"{name} student" + (f" {i + 1}/{n}" if n > 1 else ""),
                          progress=progress and (dp is None or dp.main), dist=dp)
            acc = test_accuracy(net, test[0], test[1], store.mean, store.std, cfg.standardize)
            accs.append(acc if dp is None or dp.main else 0.0)
    return accs


def soft_temperature(synset, cfg: EvalConfig) -> float:
    """The KL temperature of ``synset``'s soft labels: the one it records (GVD:
    ``meta["gvd"]["temperature"]``), else ``cfg.soft_temperature``."""
    tau = (synset.meta.get("gvd") or {}).get("temperature")
    return float(tau) if tau is not None else cfg.soft_temperature


def teacher_of(synset, store: ClipStore, device, progress: bool = True, dist=None):
    """The soft-label teacher of a GVD synset, or None when the synset records none: loaded from the
    run's stage cache (``meta["gvd"]["workdir"]``, folder ``teacher-<key>``) when it is still
    there, else trained again on ``store``'s train split with the recorded settings
    (``meta["gvd"]["teacher"]``: network, epochs, seed and optimiser; deterministic)."""
    from pathlib import Path

    from vdfast.config import NetConfig
    from vdfast.methods.gvd import train_teacher

    info = synset.meta.get("gvd") or {}
    ident = info.get("teacher")
    if not ident:
        return None
    cache = None
    key = (info.get("stages") or {}).get("teacher")
    if info.get("workdir") and key:
        d = Path(info["workdir"]) / f"teacher-{key}"
        cache = d if (d / "teacher.pt").exists() else None
    ecfg = dataclasses.replace(EvalConfig(), **ident["eval"])
    return train_teacher(store, NetConfig(**ident["net"]), ecfg, ident["epochs"], ident["seed"],
                         device, cache, progress, dist)


def evaluate(synset, store: ClipStore, cfg: EvalConfig | None = None, seed: int = 0,
             device="cpu", net_cfg=None, progress: bool = True, baselines: bool | None = None,
             full: bool | None = None, dist=None) -> Report:
    """Evaluate ``synset`` on ``store``'s test split; see the module docstring. With ``dist`` (N
    processes, every one calling this), the students are split across the processes and every
    process returns the whole report."""
    from vdfast.synsets import check_matches

    cfg = cfg or EvalConfig()
    baselines = cfg.baselines if baselines is None else baselines
    full = cfg.full if full is None else full
    check_matches(synset, store.classes, store.frames, store.size)
    test = store.tensors("test", device)
    if test[0].shape[0] == 0:
        from vdfast.data.store import StoreError

        raise StoreError(f"store {store.name} has no test clips to evaluate on")
    rep = Report(store.name, cfg.student, test=store.describe_test())
    share = Share(dist)
    ipc = synset.ipc
    method = synset.meta.get("method", synset.kind)

    synset.eval()  # a fixed set of videos (static-dynamic synsets redraw pairings while training)
    with torch.no_grad():
        videos, labels = synset.videos()
        videos = videos.detach().to(device)
        soft = synset.soft_labels is not None
        targets = synset.soft_labels.to(device) if soft else labels.to(device)
    t0 = time.perf_counter()
    syn_cfg = cfg
    if cfg.learned_lr and synset.meta.get("syn_lr"):  # the protocol: MTT's learned step size
        syn_cfg = dataclasses.replace(cfg, lr=float(synset.meta["syn_lr"]))
    tau = soft_temperature(synset, cfg)
    soft_cfg = dataclasses.replace(syn_cfg, soft_temperature=tau)
    accs = run_students(videos, targets, store, test, soft_cfg, cfg.epochs, cfg.students, seed, device,
                        soft=soft, name=method, net_cfg=net_cfg, progress=progress, share=share)
    rep.rows.append(Row(f"{method} (soft labels)" if soft else method, ipc, accs,
                        time.perf_counter() - t0))
    if soft:  # the same videos with hard labels: the gain of the labels, shown apart from the data's
        t0 = time.perf_counter()
        accs = run_students(videos, labels.to(device), store, test, syn_cfg, cfg.epochs, cfg.students,
                            seed, device, name=f"{method} hard", net_cfg=net_cfg, progress=progress, share=share)
        rep.rows.append(Row(f"{method} (hard labels)", ipc, accs, time.perf_counter() - t0))

    if baselines and method != "random":
        t0 = time.perf_counter()
        accs = []
        for i in range(cfg.students):  # a different random coreset per student
            clips, lab = store.random_clips(ipc, torch.Generator().manual_seed(seed * 7919 + i + 1))
            accs += run_students(clips.to(device), lab.to(device), store, test, cfg, cfg.epochs, 1,
                                 seed + i, device, name=f"random real {i + 1}/{cfg.students}:",
                                 net_cfg=net_cfg, progress=progress, share=share)
        rep.rows.append(Row("random real", ipc, accs, time.perf_counter() - t0))
        select = int((synset.meta.get("gvd") or {}).get("select", 1))
        teacher = teacher_of(synset, store, device, progress, dist) if soft or select > 1 else None
        if teacher is not None and soft:  # the same random draws, labelled by the synset's own teacher
            from vdfast.methods.gvd import soft_labels

            t0 = time.perf_counter()
            accs = []
            rcfg = dataclasses.replace(cfg, soft_temperature=tau)
            for i in range(cfg.students):
                clips, _ = store.random_clips(ipc, torch.Generator().manual_seed(seed * 7919 + i + 1))
                p = soft_labels(teacher, clips, store.mean, store.std, tau, 1, cfg.standardize)
                accs += run_students(clips.to(device), p.to(device), store, test, rcfg, cfg.epochs, 1,
                                     seed + i, device, soft=True, net_cfg=net_cfg, progress=progress, share=share,
                                     name=f"random real + teacher {i + 1}/{cfg.students}:")
            rep.rows.append(Row("random real (teacher soft labels)", ipc, accs,
                                time.perf_counter() - t0))
        if teacher is not None and select > 1:  # real clips chosen by the same teacher, best of R
            from vdfast.methods.gvd import select_real, train_stats

            t0 = time.perf_counter()
            accs = []
            stats = train_stats(store) if cfg.standardize else None
            for i in range(cfg.students):
                clips, lab = select_real(teacher, store, ipc, select,
                                         torch.Generator().manual_seed(seed * 7919 + i + 1), stats)
                accs += run_students(clips.to(device), lab.to(device), store, test, cfg, cfg.epochs, 1,
                                     seed + i, device, net_cfg=net_cfg, progress=progress, share=share,
                                     name=f"random real, teacher-selected {i + 1}/{cfg.students}:")
            rep.rows.append(Row(f"random real (teacher-selected, best of {select})", ipc, accs,
                                time.perf_counter() - t0))
    if full:  # the whole train split: each student data-parallel over all processes
        t0 = time.perf_counter()
        x, y = store.tensors("train", device)
        dp = dist if dist is not None and (net_cfg is None or net_cfg.norm != "batch") else None
        accs = run_students(x, y, store, test, cfg, cfg.full_epochs, cfg.full_students, seed, device,
                            name="full train set", net_cfg=net_cfg, progress=progress, share=share,
                            dp=dp)
        rep.rows.append(Row("full train set", None, accs, time.perf_counter() - t0))
    share.gather(rep.rows)
    return rep
