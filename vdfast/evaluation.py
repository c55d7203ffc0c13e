"""Evaluation: fresh students trained on a synthetic set, tested on the real test split.

The published protocol: SGD (momentum 0.9, weight decay 5e-4, lr 0.01), ``epochs``
epochs with the learning rate divided by 10 at half, batch 256, each batch standardised by its own
scalar mean and std (train and test alike), mean +- std over N students. vdfast reports the FINAL
accuracy of each student; no checkpoint or learning rate is chosen on the test set. The accuracy is
over every test clip: a store prepared with K clips per test video (``vdfast prepare --test-clips``,
default 3, at seeded random positions) gives the protocol's average over each video's clips; the
embedded dataset has 1 clip per test video.

Every report can carry two baselines run under the same protocol: random real clips at the same
ipc (the gain that distillation must show) and the full training set (the ceiling).

A synset with soft labels is evaluated twice, with its soft labels (KL at temperature tau) and with
its hard labels. tau is the synset's own when it records one (a GVD synset records the temperature
its soft labels were made with, :func:`~vdfast.engine.train.teacher_record`), else
``cfg.soft_temperature``. For a synset that records its teacher the baselines add random real clips
labelled by the SAME teacher at the same tau (:func:`~vdfast.engine.train.teacher_of`), so the gain
of the labels is not taken for a gain of the data: hard labels, soft labels and random real with
those soft labels side by side. A synset whose instances were chosen among R candidates by that
teacher (GVD's ``gvd.select`` R > 1) also gets random real clips chosen the same way (best of R per
slot, :func:`~vdfast.engine.train.select_real`), so the gain of the selection is not taken for a
gain of the generator. ``baselines="teacher"`` keeps only those teacher rows (for a caller that
evaluates random real clips on its own, as the quality benchmark does).

Each row also carries its students' accuracy on each class's test clips (``Row.per_class``,
classes in ``store.classes`` order; a class without test clips reads 0): the overall accuracy is
their mean weighted by the classes' test clips, so a gain on some classes (those told apart by
motion alone, say) shows apart from the rest.

Students are seeded with :func:`torch.random.fork_rng`, so dropout is reproducible and the caller's
global RNG is left as it was.

By default (``cfg.batched == "on"``) the students are trained BATCHED: students with the same
settings and training-set shape (the N students of a row; the synset's row and random real's row
when their settings agree) are trained together as one network whose layers hold all their
weights (:mod:`vdfast.models.batched`, :func:`train_students`, :func:`test_accuracies`), at most
``cfg.batch_students`` at a time (0: what half the free memory holds, :func:`auto_batch_students`).
Each student keeps its own initialisation, batch order, dropout masks and optimiser state, so its
accuracy is the one it gets trained alone (``batched="off"``, the reference path: one student
after another with :func:`train_student`) up to float summation order. A row's ``seconds`` is then
its share (by students) of the batched networks it was trained in.
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
from vdfast.engine.train import (Source, rng_devices, select_real, soft_labels, soft_temperature,
                                 standardize_batch, teacher_of, teacher_record, train_stats,
                                 train_student)
from vdfast.memory import free_bytes, student_bytes
from vdfast.models import build
from vdfast.ops import normalize_clips


@dataclass
class Row:
    """One set's students: ``accs[i]`` student i's accuracy over every test clip, ``per_class[i][c]``
    its accuracy on the test clips of class ``c`` (``store.classes`` order; None: not measured)."""

    name: str
    ipc: int | None
    accs: list[float]
    seconds: float = 0.0
    per_class: list[list[float]] | None = None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accs)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.accs) if len(self.accs) > 1 else 0.0

    def to_dict(self) -> dict:
        d = {"name": self.name, "ipc": self.ipc, "accs": self.accs, "mean": self.mean,
             "std": self.std, "seconds": round(self.seconds, 2)}
        if self.per_class is not None:
            d["per_class"] = self.per_class
        return d


@dataclass
class Report:
    dataset: str
    student: str
    rows: list[Row] = field(default_factory=list)
    test: str = ""   # the test split in words (ClipStore.describe_test)
    classes: list[str] = field(default_factory=list)  # the order of every Row.per_class

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
                **({"classes": self.classes} if self.classes else {}),
                "rows": [r.to_dict() for r in self.rows]}


def _num_classes(test_y: torch.Tensor, num_classes: int | None) -> int:
    return num_classes if num_classes is not None else int(test_y.max()) + 1 if test_y.numel() else 0


def _per_class(hits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """Hits ``[..., b]`` (bool) of the clips labelled ``y`` ``[b]``, counted per class:
    ``[..., k]`` (a one-hot product, not ``index_add_``: deterministic on every device)."""
    onehot = y[:, None] == torch.arange(k, device=y.device)
    return (hits[..., None] & onehot).sum(-2)


@torch.no_grad()
def test_correct(net, test_x: torch.Tensor, test_y: torch.Tensor, mean, std, standardize: bool,
                 batch: int = 256, num_classes: int | None = None) -> torch.Tensor:
    """Correct test clips of one student per class: int64 ``[num_classes]`` (default: the largest
    label + 1), on ``test_y``'s device. ``test_x``: uint8 clips ``[n, T, H, W, C]``, ``test_y``
    int64 ``[n]``."""
    net.eval()
    correct = torch.zeros(_num_classes(test_y, num_classes), dtype=torch.long, device=test_y.device)
    for s in range(0, test_x.shape[0], batch):
        x = normalize_clips(test_x[s:s + batch], mean, std)
        if standardize:
            x = standardize_batch(x)
        yb = test_y[s:s + batch]
        correct += _per_class(net(x).argmax(1) == yb, yb, correct.shape[-1])
    return correct


def test_accuracy(net, test_x: torch.Tensor, test_y: torch.Tensor, mean, std, standardize: bool,
                  batch: int = 256) -> float:
    """One student's accuracy over every test clip (:func:`test_correct` summed over classes)."""
    return int(test_correct(net, test_x, test_y, mean, std, standardize, batch).sum()) / max(
        1, test_x.shape[0])


def class_accuracies(correct: torch.Tensor, test_y: torch.Tensor) -> tuple[list, list]:
    """(overall accuracies, per-class accuracies) from correct counts ``[..., K]`` (one student:
    ``[K]``; N: ``[N, K]``) and the test labels: ``sum(correct) / n`` (what :func:`test_accuracy`
    returns) and ``correct[c] / clips of class c`` (0 for a class without test clips)."""
    counts = torch.bincount(test_y, minlength=correct.shape[-1]).tolist()
    n = max(1, test_y.numel())
    rows = correct.reshape(-1, correct.shape[-1]).tolist()
    return ([sum(r) / n for r in rows],
            [[c / max(1, k) for c, k in zip(r, counts)] for r in rows])


class StudentShard:
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
        vals = [a for r in rows for a in r.accs]
        vals += [a for r in rows if r.per_class is not None for pc in r.per_class for a in pc]
        flat = self.dist.all_reduce_(torch.tensor(vals, dtype=torch.float64)).tolist()
        o = 0
        for r in rows:
            r.accs = flat[o:o + len(r.accs)]
            o += len(r.accs)
        for r in rows:
            if r.per_class is not None:
                k = len(r.per_class[0]) if r.per_class else 0
                r.per_class = [flat[o + i * k:o + (i + 1) * k] for i in range(len(r.per_class))]
                o += k * len(r.per_class)


def _build(cfg: EvalConfig, store: ClipStore, net_cfg, device):
    return build(net_cfg, store, cfg.student, device)


def _train_one(x, y, s: int, store: ClipStore, test, cfg: EvalConfig, epochs: int, device,
               soft: bool, desc: str, net_cfg, progress: bool, dp=None) -> tuple[float, list[float]]:
    """One fresh student seeded with ``s`` (initialisation and dropout from ``torch.manual_seed(s)``,
    batch order from ``Generator().manual_seed(s)``) trained on (x, y); its test accuracy and its
    accuracy per class (:func:`class_accuracies`)."""
    with torch.random.fork_rng(devices=rng_devices(device)):
        torch.manual_seed(s)
        net = _build(cfg, store, net_cfg, device)
        gen = torch.Generator().manual_seed(s)
        train_student(net, Source(x, y, store.mean, store.std), cfg, epochs, gen, soft=soft,
                      desc=desc, progress=progress and (dp is None or dp.main), dist=dp)
        correct = test_correct(net, test[0], test[1], store.mean, store.std, cfg.standardize,
                               num_classes=store.num_classes)
        accs, per_class = class_accuracies(correct, test[1])
        return accs[0], per_class[0]


# ---- batched students: N students of one shape trained as one network -------------------------
def _standardize_each(x: torch.Tensor) -> torch.Tensor:
    """``[N, B, ...]``: each student's batch ``x[j]`` by its own scalar mean and std (the same
    reductions as :func:`~vdfast.engine.train.standardize_batch` of that batch alone;
    ``std(dim)`` is far slower here)."""
    view = (x.shape[0],) + (1,) * (x.dim() - 1)
    mean = torch.stack([xj.mean() for xj in x]).view(view)
    std = torch.stack([xj.std() for xj in x]).view(view)
    return (x - mean) / std.clamp_min(1e-6)


def _students_loss(out: torch.Tensor, y: torch.Tensor, soft: bool, tau: float) -> torch.Tensor:
    """Each student's batch loss, ``[N]``, from logits ``[N, B, K]`` and targets ``[N, B]`` (hard)
    or ``[N, B, K]`` (soft): :func:`~vdfast.engine.train.student_loss` per student."""
    n, b, k = out.shape
    if soft:
        logp = F.log_softmax(out / tau, 2)
        return F.kl_div(logp, y, reduction="none").sum((1, 2)) / b * tau * tau
    return F.cross_entropy(out.reshape(n * b, k), y.reshape(n * b), reduction="none").view(n, b).mean(1)


def _gather(sources: list[Source], idx: list[torch.Tensor]):
    """Every student's batch: (float ``[N, B, C, T, H, W]``, targets ``[N, B, ...]``); one gather
    when the students share their training set."""
    n, b = len(sources), idx[0].numel()
    s0 = sources[0]
    if all(s.x is s0.x and s.y is s0.y for s in sources):
        flat = torch.cat(idx)
        x, y = s0.batch(flat)
    elif all(s.x.dtype == torch.uint8 for s in sources):  # real clips: normalised in one call
        x, _ = Source(torch.cat([s.x[i] for s, i in zip(sources, idx)]), s0.y, s0.mean, s0.std).batch(
            slice(None))
        y = torch.cat([s.y[i] for s, i in zip(sources, idx)])
    else:  # float videos and real clips together (a synset's row and random real's)
        parts = [s.batch(i) for s, i in zip(sources, idx)]
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return x.view(n, b, *x.shape[1:]), y.view(n, b, *y.shape[1:])


def _input_kind(x: torch.Tensor) -> tuple:
    """What a batched network needs to agree on about a training set: its length and the shape
    and dtype of the student's input (uint8 ``[n, T, H, W, C]`` clips are normalised to float32
    ``[n, C, T, H, W]``)."""
    if x.dtype == torch.uint8:
        return (x.shape[0], x.shape[4], *x.shape[1:4], torch.float32)
    return (*x.shape, x.dtype)


def train_students(net, sources: list[Source], cfg: EvalConfig, epochs: int,
                   gens: list[torch.Generator], soft: bool = False, desc: str = "",
                   progress: bool = True) -> list[float]:
    """Train the N students of a batched network (:func:`vdfast.models.batched.stack`) in place,
    student j on ``sources[j]`` with batch order from ``gens[j]``: what :func:`train_student` does
    for each alone (one SGD over the stacked weights is per element, so per student; dropout from
    ``net.rng_states``). The sources must have the same length (and clip shape). Returns each
    student's final training loss."""
    from vdfast.engine.loop import Loop
    from vdfast.models.batched import BatchedConvNet3D, group_batches

    k = net.n
    if len(sources) != k or len(gens) != k:
        raise ValueError(f"{k} batched students need {k} sources and generators, got "
                         f"{len(sources)} and {len(gens)}")
    n = len(sources[0])
    if any(len(s) != n for s in sources):
        raise ValueError("batched students need training sets of one length; train them apart")
    channels_last = isinstance(net, BatchedConvNet3D)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [max(1, epochs // 2)], 0.1)
    steps = math.ceil(n / cfg.batch)
    dev = sources[0].x.device
    net.train()
    losses = torch.zeros(k)

    def epoch(_):
        nonlocal losses
        perms = [torch.randperm(n, generator=g).to(dev) for g in gens]
        for s in range(steps):
            x, y = _gather(sources, [p[s * cfg.batch:(s + 1) * cfg.batch] for p in perms])
            if cfg.standardize:
                x = _standardize_each(x)
            losses = _students_loss(net(group_batches(x, channels_last)), y, soft,
                                    cfg.soft_temperature)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
        sched.step()

    Loop(total=epochs, desc=desc, unit="ep", progress=progress, stop_on_signal=False).run(epoch)
    return losses.detach().double().tolist()


@torch.no_grad()
def students_correct(net, test_x: torch.Tensor, test_y: torch.Tensor, mean, std, standardize: bool,
                     batch: int = 256, chunk: int = 0, num_classes: int | None = None) -> torch.Tensor:
    """:func:`test_correct` of each student of a batched network, int64 ``[N, num_classes]``, in
    one pass over the test split: each test batch (standardised as a whole, as for one student)
    goes through all students at once, in pieces of ``chunk`` clips (0: the whole batch; the
    network is row-wise in eval mode, so pieces change nothing but the memory)."""
    net.eval()
    correct = torch.zeros(net.n, _num_classes(test_y, num_classes), dtype=torch.long,
                          device=test_y.device)
    for s in range(0, test_x.shape[0], batch):
        x = normalize_clips(test_x[s:s + batch], mean, std)
        if standardize:
            x = standardize_batch(x)
        yb = test_y[s:s + batch]
        step = chunk or x.shape[0]
        for c in range(0, x.shape[0], step):
            y = yb[c:c + step]
            correct += _per_class(net(x[c:c + step], shared=True).argmax(2) == y, y, correct.shape[1])
    return correct


def test_accuracies(net, test_x: torch.Tensor, test_y: torch.Tensor, mean, std, standardize: bool,
                    batch: int = 256, chunk: int = 0) -> list[float]:
    """:func:`test_accuracy` of each student of a batched network (:func:`students_correct`)."""
    correct = students_correct(net, test_x, test_y, mean, std, standardize, batch, chunk)
    return [c / max(1, test_x.shape[0]) for c in correct.sum(1).tolist()]


def _student_bytes(cfg: EvalConfig, store: ClipStore, net_cfg, batch: int) -> tuple[int, int]:
    """:func:`vdfast.memory.student_bytes` of this evaluation's student (built on the meta device:
    no memory, no RNG draw): (training at ``batch`` clips a step, one test clip)."""
    net = build(net_cfg, store, cfg.student, "meta")
    return student_bytes(net, (3, store.frames, store.size, store.size), batch)


def auto_batch_students(cfg: EvalConfig, store: ClipStore, net_cfg, batch: int, device) -> int:
    """Students per batched network when ``cfg.batch_students`` is 0: as many as half of
    :func:`free_bytes` holds by :func:`vdfast.memory.student_bytes` (at least 1)."""
    if cfg.batch_students:
        return cfg.batch_students
    train, _ = _student_bytes(cfg, store, net_cfg, batch)
    return max(1, free_bytes(device) // 2 // train)


def batched_students(seeds: list[int], cfg: EvalConfig, store: ClipStore, net_cfg, device):
    """Fresh students seeded ``seeds`` (each initialised as :func:`_train_one` initialises it),
    stacked as one batched network (:func:`vdfast.models.batched.stack`) whose dropout draws each
    student's masks from the global-RNG state its own training would start from."""
    from vdfast.models.batched import stack

    nets, states = [], []
    dev = torch.device(device)
    for s in seeds:
        with torch.random.fork_rng(devices=rng_devices(dev)):
            torch.manual_seed(s)
            nets.append(_build(cfg, store, net_cfg, dev))
            states.append((torch.get_rng_state(),
                           torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None))
    net = stack(nets)
    net.rng_states = states
    return net


def train_batch(sets, seeds: list[int], store: ClipStore, test, cfg: EvalConfig, epochs: int, device,
                soft: bool = False, net_cfg=None, desc: str = "", progress: bool = True
                ) -> tuple[list[float], list[list[float]]]:
    """The students seeded ``seeds``, student j trained on ``sets[j]`` = (x, y), all as one
    batched network (:func:`batched_students`, :func:`train_students`); their test accuracies and
    accuracies per class (:func:`class_accuracies`)."""
    net = batched_students(seeds, cfg, store, net_cfg, device)
    train_students(net, [Source(x, y, store.mean, store.std) for x, y in sets], cfg, epochs,
                   [torch.Generator().manual_seed(s) for s in seeds], soft=soft, desc=desc,
                   progress=progress)
    # test pieces of 256 / N clips: each forward does the work (and holds the memory) of one
    # student's test batch of 256; fewer when half the free memory cannot hold that
    _, per_clip = _student_bytes(cfg, store, net_cfg, 1)
    chunk = max(1, min(-(-256 // len(seeds)), free_bytes(device) // 2 // (per_clip * len(seeds))))
    correct = students_correct(net, test[0], test[1], store.mean, store.std, cfg.standardize,
                               chunk=chunk, num_classes=store.num_classes)
    return class_accuracies(correct, test[1])


@dataclass
class _Job:
    """One row of the report: its students, student i trained on ``sets[i]`` = (x, y) with seed
    ``seeds[i]``; ``dp``: each student data-parallel over all processes (one by one)."""

    name: str
    ipc: int | None
    sets: list
    seeds: list[int]
    cfg: EvalConfig
    epochs: int
    soft: bool = False
    descs: list[str] = field(default_factory=list)
    dp: object = None


def _run_jobs(jobs: list[_Job], store: ClipStore, test, device, net_cfg, progress: bool,
              share: StudentShard, batched: bool, cap: int) -> list[Row]:
    """Every job's students, one by one or batched (jobs with the same settings and training-set
    shape share batched networks of at most ``cap`` students; 0: :func:`auto_batch_students`);
    student k of the whole evaluation trains on the process ``share`` gives it."""
    nc = store.num_classes
    rows = [Row(j.name, j.ipc, [0.0] * len(j.seeds), per_class=[[0.0] * nc for _ in j.seeds])
            for j in jobs]
    groups: dict = {}
    for a, j in enumerate(jobs):
        for i, ((x, y), s) in enumerate(zip(j.sets, j.seeds)):
            if j.dp is not None:
                continue
            if not share.mine():
                continue
            if not batched:
                t0 = time.perf_counter()
                rows[a].accs[i], rows[a].per_class[i] = _train_one(
                    x, y, s, store, test, j.cfg, j.epochs, device, j.soft, j.descs[i], net_cfg,
                    progress)
                rows[a].seconds += time.perf_counter() - t0
                continue
            key = (j.cfg, j.epochs, j.soft, _input_kind(x), x.device)
            groups.setdefault(key, []).append((a, i))
        if j.dp is not None:  # every process trains each of these students together
            t0 = time.perf_counter()
            for i, ((x, y), s) in enumerate(zip(j.sets, j.seeds)):
                acc, per_class = _train_one(x, y, s, store, test, j.cfg, j.epochs, device, j.soft,
                                            j.descs[i], net_cfg, progress, j.dp)
                rows[a].accs[i] = acc if j.dp.main else 0.0
                rows[a].per_class[i] = per_class if j.dp.main else [0.0] * nc
            rows[a].seconds += time.perf_counter() - t0
    for (cfg, epochs, soft, kind, _), members in groups.items():
        size = cap or auto_batch_students(cfg, store, net_cfg, min(cfg.batch, kind[0]), device)
        for c in range(0, len(members), size):
            part = members[c:c + size]
            names = sorted({jobs[a].name for a, _ in part}, key=[j.name for j in jobs].index)
            t0 = time.perf_counter()
            accs, per_class = train_batch(
                [jobs[a].sets[i] for a, i in part], [jobs[a].seeds[i] for a, i in part], store, test,
                cfg, epochs, device, soft, net_cfg,
                f"{len(part)} student{'s' if len(part) > 1 else ''} ({', '.join(names)})", progress)
            dt = (time.perf_counter() - t0) / len(part)
            for (a, i), acc, pc in zip(part, accs, per_class):
                rows[a].accs[i] = acc
                rows[a].per_class[i] = pc
                rows[a].seconds += dt
    return rows


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
    rep = Report(store.name, cfg.student, test=store.describe_test(), classes=list(store.classes))
    share = StudentShard(dist)
    ipc = synset.ipc
    method = synset.meta.get("method", synset.kind)

    synset.eval()  # a fixed set of videos (static-dynamic synsets redraw pairings while training)
    with torch.no_grad():
        videos, labels = synset.videos()
        videos = videos.detach().to(device)
        soft = synset.soft_labels is not None
        targets = synset.soft_labels.to(device) if soft else labels.to(device)
    syn_cfg = cfg
    if cfg.learned_lr and synset.meta.get("syn_lr"):  # the protocol: MTT's learned step size
        syn_cfg = dataclasses.replace(cfg, lr=float(synset.meta["syn_lr"]))
    tau = soft_temperature(synset, cfg)
    soft_cfg = dataclasses.replace(syn_cfg, soft_temperature=tau)
    n = cfg.students
    seeds = [seed * 1009 + i for i in range(n)]
    real_seeds = [(seed + i) * 1009 for i in range(n)]  # student i of a baseline: its own draw

    def descs(name):
        return [f"{name} student" + (f" {i + 1}/{n}" if n > 1 else "") for i in range(n)]

    jobs = [_Job(f"{method} (soft labels)" if soft else method, ipc, [(videos, targets)] * n, seeds,
                 soft_cfg, cfg.epochs, soft, descs(method))]
    if soft:  # the same videos with hard labels: the gain of the labels, shown apart from the data's
        jobs.append(_Job(f"{method} (hard labels)", ipc, [(videos, labels.to(device))] * n, seeds,
                         syn_cfg, cfg.epochs, False, descs(f"{method} hard")))

    if baselines not in (True, False, "teacher"):
        raise ValueError(f"baselines={baselines!r}: True, False or 'teacher' (only the rows "
                         f"that use the synset's teacher)")
    if baselines and method != "random":
        draws = [store.random_clips(ipc, torch.Generator().manual_seed(seed * 7919 + i + 1))
                 for i in range(n)]  # a different random coreset per student
        if baselines is True:
            jobs.append(_Job("random real", ipc, [(c.to(device), lab.to(device)) for c, lab in draws],
                             real_seeds, cfg, cfg.epochs, False,
                             [f"random real {i + 1}/{n}: student" for i in range(n)]))
        select = teacher_record(synset).select
        teacher = teacher_of(synset, store, device, progress, dist) if soft or select > 1 else None
        if teacher is not None and soft:  # the same random draws, labelled by the synset's own teacher
            rcfg = dataclasses.replace(cfg, soft_temperature=tau)
            sets = [(c.to(device), soft_labels(teacher, c, store.mean, store.std, tau, 1,
                                               cfg.standardize).to(device)) for c, _ in draws]
            jobs.append(_Job("random real (teacher soft labels)", ipc, sets, real_seeds, rcfg,
                             cfg.epochs, True,
                             [f"random real + teacher {i + 1}/{n}: student" for i in range(n)]))
        if teacher is not None and select > 1:  # real clips chosen by the same teacher, best of R
            stats = train_stats(store) if cfg.standardize else None
            sets = []
            for i in range(n):
                clips, lab = select_real(teacher, store, ipc, select,
                                         torch.Generator().manual_seed(seed * 7919 + i + 1), stats)
                sets.append((clips.to(device), lab.to(device)))
            jobs.append(_Job(f"random real (teacher-selected, best of {select})", ipc, sets,
                             real_seeds, cfg, cfg.epochs, False,
                             [f"random real, teacher-selected {i + 1}/{n}: student"
                              for i in range(n)]))
    if full:  # the whole train split: each student data-parallel over all processes
        x, y = store.tensors("train", device)
        dp = dist if dist is not None and (net_cfg is None or net_cfg.norm != "batch") else None
        nf = cfg.full_students
        jobs.append(_Job("full train set", None, [(x, y)] * nf, [seed * 1009 + i for i in range(nf)],
                         cfg, cfg.full_epochs, False,
                         ["full train set student" + (f" {i + 1}/{nf}" if nf > 1 else "")
                          for i in range(nf)],
                         dp if dp is not None and dp.active else None))
    rep.rows = _run_jobs(jobs, store, test, device, net_cfg, progress, share, cfg.batched == "on",
                         cfg.batch_students)
    share.gather(rep.rows)
    return rep
