"""A bank of random networks with cached real statistics: DM at a fraction of the compute.

A DM iteration spends most of its time embedding REAL clips under a freshly drawn random network;
the real clips never change during a run, only the network does. The bank makes that work happen
once: ``K`` random networks, each fully defined by its index ``k`` (its weights are drawn by
:func:`~vdfast.methods.base.reinit_` from the generator :func:`network_generator` ``(seed, k)``,
so no weights are stored), and for every network and class the mean real embedding over ``M``
clips of that class — a ``[K, C, D]`` tensor. Each iteration then picks a network
(:func:`schedule`: a seeded permutation of the bank, a new one per cycle), regenerates its weights,
embeds only the synthetic clips and matches the cached means with the same fused
:func:`vdfast.ops.dm_loss` (one "real clip" per class, ``real_feat = means[k]``: the mean over one
row is the row, so every backend and the reference serve unchanged; :func:`bank_dm_loss`).

The real draws of network ``k`` come from the SAME generator as its weights, right after them:
``reinit_(net, g_k)`` then ``pool.sample(M, g_k)`` (``M = 0``: every train clip of the class).
So standard DM stepped with the generator ``g_{schedule(i)}`` at iteration ``i`` is exactly the
bank path with ``K = iterations`` and ``M = batch_real`` (tests/test_dm_bank.py checks this).

On disk (built once, reused by every run with the same key)::

    <cache>/bank-<hash>/bank.json          the key (train fingerprint, network, K, M, seed, dtype,
                                           device type)
    <cache>/bank-<hash>/build_c0-12.json   the build seconds of a block of classes (one file per
                                           block: the processes of a run each write their own)
    <cache>/bank-<hash>/class_0000.npy     [K, D] means of class 0 (bank dtype), memory-mapped
    <cache>/bank-<hash>/partial/k00012_c0-12.npy   a finished network's [C_block, D] while building

The cache is ``$VDFAST_BANK_CACHE`` when set, else ``<run out>/dm_bank`` (static learning:
``s2d.static_cache``); without either the bank lives in memory for the run. Every finished network
is written atomically (temporary file + ``os.replace``), so a killed build resumes at the first
missing network (:func:`vdfast.engine.worklist.run_worklist`); the per-class files are written when
all ``K`` are done. Class-sharded like DM:
each process builds and holds only its own classes' means (a process count that changes between a
killed build and its resume rebuilds the unfinished block's networks). A bank larger than
:func:`vdfast.data.store.resident_budget` stays memory-mapped and each iteration reads only its
network's rows.

Held-out networks (``dm_bank_heldout`` H > 0, :class:`HeldOut`): does the synset fit the data or
only the bank's K networks? H more random networks, drawn from generators seeded apart from the
bank's (:func:`heldout_seed`) and fixed for the run, get their real class means like the bank's
(same ``M``, kept in memory, float32); every ``dm_bank_heldout_every`` iterations, at the start and
at the end the DM loop measures the synset's loss (:func:`bank_dm_loss`, no gradient, fixed
pairing) averaged over them and over the bank's networks ``0 .. min(H, K) - 1``, and the run's
history keeps both curves (``history["dm_bank"]["heldout"]``). A bank that is too small shows as a
bank loss that falls while the held-out loss does not. The measurement draws nothing from the run's
generators, so the synset is the same with it or without it.

The random draws are device-specific (CUDA and CPU generators differ), so the device type is part
of the key. ConvNet3D with ``norm="batch"`` embeds a clip depending on its batch, so the bank's
means then differ from DM's chunked ones; the default ``none`` and ``instance`` do not.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vdfast.engine.checkpoint import atomic_write, write_npy
from vdfast.engine.worklist import run_worklist
from vdfast.profiling import span
from vdfast.version import __version__

BANK_FORMAT = 1
DTYPES = ("float32", "float16")


class BankError(ValueError):
    """Impossible bank options, or a bank folder that does not fit the request."""


def _mix(*parts) -> int:
    """A 63-bit seed from ``parts`` (stable across processes, platforms and Python versions)."""
    h = hashlib.sha1(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def network_seed(seed: int, k: int) -> int:
    """The seed of network ``k`` of the bank of run seed ``seed``."""
    return _mix("vdfast-dm-bank", seed, k)


def network_generator(seed: int, k: int, device="cpu") -> torch.Generator:
    """The generator that defines network ``k``: its weights (``reinit_``) and then its real draws."""
    return torch.Generator(device=torch.device(device)).manual_seed(network_seed(seed, k))


def schedule(seed: int, K: int, i: int) -> int:
    """The network of iteration ``i``: position ``i % K`` of a seeded permutation of ``range(K)``,
    a new permutation for each cycle ``i // K`` (a pure function of the iteration: nothing to
    checkpoint but the iteration count)."""
    cycle, pos = divmod(int(i), int(K))
    g = torch.Generator().manual_seed(_mix("vdfast-dm-bank-order", seed, cycle))
    return int(torch.randperm(K, generator=g)[pos])


def bank_dm_loss(means: torch.Tensor, classes: range, syn_feat: torch.Tensor, syn_labels: torch.Tensor,
                 num_classes: int, backend: str | None = None) -> torch.Tensor:
    """DM's loss against cached real class means: ``sum_c || means[c - start] - mean_j syn_feat[j] ||^2``
    over the classes of ``classes`` (a contiguous range of global labels) present among
    ``syn_labels``. ``means``: ``[len(classes), D]``. The fused :func:`vdfast.ops.dm_loss` with one
    real row per class (its mean is itself), so every backend and the reference serve it."""
    from vdfast.ops import dm_loss

    if means.dim() != 2 or means.shape[0] != len(classes):
        raise ValueError(f"bank_dm_loss: means must be [{len(classes)}, D] (one row per class of "
                         f"{classes}), got {tuple(means.shape)}")
    labels = torch.arange(classes.start, classes.stop, device=means.device)
    return dm_loss(means.to(syn_feat.dtype), labels, syn_feat, syn_labels, num_classes, backend=backend)


# ----------------------------------------------------------------------------- options
def check_request(cfg, store) -> None:
    """Clear errors, before any work, for bank options the data cannot serve (``cfg.dm_bank_clips``
    larger than the smallest class). The config itself checks the rest (:class:`DistillConfig`)."""
    if not cfg.dm_bank:
        return
    counts = store.counts("train")
    m = cfg.dm_bank_clips
    if m > min(counts):
        short = [f"{store.classes[c]} ({n})" for c, n in enumerate(counts) if n < m]
        raise BankError(f"--dm-bank-clips {m} is larger than the train clips of {len(short)} "
                        f"class(es): {', '.join(short[:8])}; use at most {min(counts)}, or 0 for "
                        f"every clip of each class")


def cache_root(run_dir=None, fallback: str | os.PathLike | None = None) -> Path | None:
    """Where banks are kept: ``$VDFAST_BANK_CACHE``, else ``run_dir/dm_bank``, else ``fallback``,
    else None (in memory for this run only)."""
    env = os.environ.get("VDFAST_BANK_CACHE")
    if env:
        return Path(env)
    if run_dir is not None:
        return Path(run_dir) / "dm_bank"
    return Path(fallback) if fallback else None


def bank_key(store, kind: str, net: dict, K: int, M: int, seed: int, dtype: str, device) -> dict:
    """What defines a bank's contents: the data (train fingerprint, classes, clip shape), the
    network (``kind`` and its config), ``K``, ``M``, the seed, the dtype and the device type."""
    return {"format": BANK_FORMAT, "kind": kind, "data": store.train_fingerprint(),
            "classes": list(store.classes), "frames": store.frames, "size": store.size,
            "net": dict(net), "K": int(K), "M": int(M), "seed": int(seed), "dtype": dtype,
            "device": torch.device(device).type}


def key_dir(root: Path, key: dict) -> Path:
    blob = json.dumps(key, sort_keys=True, default=str).encode()
    return Path(root) / f"bank-{hashlib.sha1(blob).hexdigest()[:12]}"


# ----------------------------------------------------------------------------- the bank
@dataclass
class Bank:
    """The cached means of one process's classes: ``means(k)`` -> float32 ``[len(classes), D]``."""

    K: int
    classes: range
    D: int
    dtype: str
    device: torch.device
    data: torch.Tensor | None           # [K, C_own, D] on the device (resident)
    maps: list | None                   # per class a [K, D] np.memmap (not resident)
    path: Path | None
    build_seconds: float                # this process's build time (all sessions of a resumed one)
    cache: str                          # "hit" | "miss" | "resumed" | "memory"
    built_now: int                      # networks embedded by this call

    @property
    def nbytes(self) -> int:
        return self.K * len(self.classes) * self.D * np.dtype(self.dtype).itemsize

    @property
    def resident(self) -> bool:
        return self.data is not None

    def means(self, k: int) -> torch.Tensor:
        if self.data is not None:
            return self.data[k].float()
        rows = np.stack([np.asarray(m[k]) for m in self.maps])  # only network k's rows are read
        return torch.from_numpy(rows).to(self.device).float()

    def report(self) -> dict:
        """Size, build time and cache use, for metrics.json and the run's summary line."""
        return {"networks": self.K, "classes": [self.classes.start, self.classes.stop],
                "dim": self.D, "dtype": self.dtype, "bytes": self.nbytes,
                "build_seconds": round(self.build_seconds, 3), "cache": self.cache,
                "built_now": self.built_now, "resident": self.resident,
                "path": str(self.path) if self.path else None}

    def describe(self) -> str:
        where = f" in {self.path}" if self.path else " (in memory)"
        return (f"dm bank: {self.K} networks x {len(self.classes)} classes x {self.D} "
                f"({self.dtype}, {self.nbytes / 2**20:.1f} MiB{'' if self.resident else ', memory-mapped'}), "
                f"cache {self.cache}, build {self.build_seconds:.1f} s{where}")


def build_bank(key: dict, classes: range, device, means_fn: Callable[[int], torch.Tensor],
               root: Path | None = None, progress: bool = True, desc: str = "dm bank",
               resident: bool | None = None) -> Bank:
    """The bank of ``key`` for ``classes`` (this process's block): read from ``root`` when built,
    else built there (resuming from its finished networks), or in memory when ``root`` is None.

    ``means_fn(k)``: float32 ``[len(classes), D]``, network ``k``'s mean real embedding per class
    (draws its own weights and clips from :func:`network_generator`; :func:`dm_means_fn`).
    ``resident``: keep the bank on the device (None: when it fits
    :func:`vdfast.data.store.resident_budget`)."""
    from vdfast.data.store import resident_budget

    K, dtype = int(key["K"]), key["dtype"]
    if K < 1:
        raise BankError(f"a bank needs at least 1 network, got K={K} (--dm-bank 0 turns it off)")
    if dtype not in DTYPES:
        raise BankError(f"bank dtype {dtype!r} is not one of: {', '.join(DTYPES)}")
    device = torch.device(device)
    npdt = np.dtype(dtype)
    folder = key_dir(root, key) if root is not None else None
    own = [c for c in classes]

    def finish(maps, seconds, cache, built):
        D = int(maps[0].shape[1]) if maps else 0
        nbytes = K * len(own) * D * npdt.itemsize
        keep = nbytes <= resident_budget(device) if resident is None else resident
        data = None
        if keep:
            data = torch.empty((K, len(own), D), dtype=getattr(torch, dtype), device=device)
            for i, m in enumerate(maps):
                data[:, i] = torch.from_numpy(np.array(m)).to(device)
            maps = None
        return Bank(K, classes, D, dtype, device, data, maps, folder, seconds, cache, built)

    if folder is None:  # in memory for this run: no resume, nothing kept
        t0, rows = time.perf_counter(), []
        embed = lambda k, tick: means_fn(k).to("cpu", getattr(torch, dtype))  # noqa: E731
        run_worklist(range(K), lambda k: None, embed, None, after=lambda k, r: rows.append(r),
                     desc=desc, unit="net", progress=progress)
        stacked = torch.stack(rows).numpy() if rows else np.zeros((0, len(own), 0), npdt)
        return finish([stacked[:, i] for i in range(len(own))], time.perf_counter() - t0, "memory", K)

    files = [folder / f"class_{c:04d}.npy" for c in own]
    meta_file = folder / "bank.json"
    if all(f.exists() for f in files) and meta_file.exists():
        meta = json.loads(meta_file.read_text())
        if meta.get("key") != key:
            raise BankError(f"{folder} holds another bank ({_diff_keys(meta.get('key', {}), key)}); "
                            f"delete it")
        maps = [np.load(f, mmap_mode="r") for f in files]
        return finish(maps, _all_seconds(folder).get(_block_name(classes), 0.0), "hit", 0)

    partial = folder / "partial"
    partial.mkdir(parents=True, exist_ok=True)
    _write_json(meta_file, {"vdfast": __version__, "key": key})
    block = _block_name(classes)
    chunk = lambda k: partial / f"k{k:05d}_{block}.npy"  # noqa: E731
    secs = _all_seconds(folder).get(block, 0.0)
    built, t0 = 0, 0.0

    def embed(k, tick):
        nonlocal t0
        t0 = time.perf_counter()
        return means_fn(k).to("cpu", getattr(torch, dtype)).numpy()

    def written(k, rows):
        nonlocal secs, built
        secs += time.perf_counter() - t0
        built += 1
        if built % 8 == 0:  # the time so far survives a kill
            _record_seconds(folder, block, secs)

    # a finished network's file is its checkpoint: a killed build resumes at the first missing one
    run_worklist(range(K), chunk, embed, write_npy, after=written, desc=desc, unit="net",
                 progress=progress)
    _record_seconds(folder, block, secs)
    # every network done: one [K, D] file per class, filled one network at a time (bounded memory)
    first = np.load(chunk(0), mmap_mode="r")
    D = int(first.shape[1])
    tmps = [f.with_name(f"{f.stem}.tmp-{os.getpid()}.npy") for f in files]
    outs = [np.lib.format.open_memmap(t, mode="w+", dtype=npdt, shape=(K, D)) for t in tmps]
    for k in range(K):
        rows = np.load(chunk(k), mmap_mode="r")
        for i, o in enumerate(outs):
            o[k] = rows[i]
    for o, t, f in zip(outs, tmps, files):
        o.flush()
        del o
        os.replace(t, f)
    for k in range(K):
        chunk(k).unlink(missing_ok=True)
    maps = [np.load(f, mmap_mode="r") for f in files]
    return finish(maps, secs, "miss" if built == K else "resumed", built)


def list_banks(root: str | os.PathLike | None = None) -> list[dict]:
    """The banks under ``root`` (default ``$VDFAST_BANK_CACHE``), for ``vdfast info``: per bank
    folder its K, M, network, dtype, classes complete, bytes on disk and build seconds."""
    root = root or os.environ.get("VDFAST_BANK_CACHE")
    if not root or not Path(root).is_dir():
        return []
    out = []
    for d in sorted(Path(root).glob("bank-*")):
        try:
            meta = json.loads((d / "bank.json").read_text())
        except (OSError, ValueError):
            continue
        key = meta.get("key", {})
        files = list(d.glob("class_*.npy")) + list(d.glob("partial/*.npy"))
        out.append({"path": str(d), "kind": key.get("kind"), "K": key.get("K"), "M": key.get("M"),
                    "net": key.get("net"), "dtype": key.get("dtype"), "seed": key.get("seed"),
                    "classes_done": len(list(d.glob("class_*.npy"))),
                    "classes": len(key.get("classes", [])),
                    "bytes": sum(f.stat().st_size for f in files),
                    "build_seconds": sum(_all_seconds(d).values())})
    return out


def _block_name(classes: range) -> str:
    return f"c{classes.start}-{classes.stop}"


def _record_seconds(folder: Path, block: str, secs: float) -> None:
    """This block's build time so far, in its own file (a shared one, read, changed and written by
    N processes at once, loses one process's entry)."""
    _write_json(folder / f"build_{block}.json", {"seconds": round(secs, 3)})


def _all_seconds(folder: Path) -> dict[str, float]:
    """``{block: build seconds}`` of a bank folder (its ``build_<block>.json`` files)."""
    out = {}
    for f in folder.glob("build_*.json"):
        try:
            out[f.stem[len("build_"):]] = float(json.loads(f.read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def _write_json(f: Path, d: dict) -> None:
    atomic_write(f, lambda tmp: tmp.write_text(json.dumps(d, indent=1, default=str)))


def _diff_keys(a: dict, b: dict) -> str:
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                     if a.get(k) != b.get(k))


# ----------------------------------------------------------------------------- DM's real means
@torch.no_grad()
def class_sums(feat_fn, x: torch.Tensor, rows: torch.Tensor, n_rows: int, chunk: int, out=None):
    """``out[r] += sum of feat_fn(x[i]) over i with rows[i] == r``, ``chunk`` clips at a time
    (only one chunk of features is held at once). Returns ``out`` (float32 ``[n_rows, D]``)."""
    step = chunk or x.shape[0]
    for i in range(0, x.shape[0], step):
        f = feat_fn(x[i:i + step]).float()
        if out is None:
            out = f.new_zeros((n_rows, f.shape[1]))
        out.index_add_(0, rows[i:i + step], f)
    return out


def dm_means_fn(net, store, pool, classes: range, M: int, seed: int, device, chunk: int,
                frames: Callable | None = None) -> Callable[[int], torch.Tensor]:
    """``means_fn`` of :func:`build_bank` for DM's ConvNet3D (``frames=None``) or static learning's
    ConvNet2D (``frames(u8, gen, rows, total) -> [n, 3, H, W]``: one random frame per clip).

    Network ``k``: ``reinit_(net, g_k)``, then ``pool.sample(M, g_k)`` (class-major, the classes of
    ``pool``; ``M = 0``: every train clip of each class, read from ``store``), embedded ``chunk``
    clips at a time after normalisation, averaged per class. float32 ``[len(classes), D]``."""
    from vdfast.methods.base import reinit_
    from vdfast.ops import normalize_clips

    nc = store.num_classes
    norm = lambda u: normalize_clips(u, store.mean, store.std)  # noqa: E731

    def means(k: int) -> torch.Tensor:
        g = network_generator(seed, k, device)
        reinit_(net, g)
        with span("vdfast.dm_bank.embed_real"):
            if M:
                u8, labels = pool.sample(M, g)
                rows = labels - classes.start
                if frames is None:
                    sums = class_sums(lambda u: net.embed(norm(u)), u8, rows, len(classes), chunk)
                else:
                    x = frames(u8, g, range(classes.start * M, classes.stop * M), nc * M)
                    sums = class_sums(net.embed, x, rows, len(classes), chunk)
                return sums / M
            out = None
            for i, c in enumerate(classes):  # every clip of each class, streamed from the store
                a = store.clips("train", c)
                u8 = torch.from_numpy(np.ascontiguousarray(a)).to(device)
                rows = torch.full((len(a),), i, dtype=torch.long, device=device)
                if frames is None:
                    part = class_sums(lambda u: net.embed(norm(u)), u8, rows, len(classes), chunk)
                else:
                    part = class_sums(net.embed, frames(u8, g, None, 0), rows, len(classes), chunk)
                part[i] /= len(a)
                out = part if out is None else out + part
            return out
    return means


def setup_dm(m, store, cfg, device, net, pool, classes: range, chunk: int, progress: bool):
    """The bank of a DM run (``dm``, ``s2d-dm``): built or read from the cache
    (:func:`cache_root` of the run's directory); DM keeps it in its state with the run's seed."""
    c = cfg.net
    key = bank_key(store, "convnet3d", {"width": c.width, "depth": c.depth, "norm": c.norm},
                   cfg.dm_bank, cfg.dm_bank_clips, cfg.seed, cfg.dm_bank_dtype, device)
    fn = dm_means_fn(net, store, pool, classes, cfg.dm_bank_clips, cfg.seed, device, chunk)
    bank = build_bank(key, classes, device, fn, cache_root(m.run_dir), progress=progress,
                      desc=f"dm bank ({cfg.dm_bank} networks)")
    return bank


# ----------------------------------------------------------------------------- held-out networks
def heldout_seed(seed: int) -> int:
    """The seed whose :func:`network_generator` streams define the held-out networks of run seed
    ``seed`` (apart from the bank's: another mix of the run seed)."""
    return _mix("vdfast-dm-bank-heldout", seed)


@dataclass
class HeldOut:
    """The held-out networks of a DM run and the curve measured on them (see the module
    docstring). ``records``: ``(iteration, bank loss, held-out loss)``, the losses as 0-d tensors
    while the run goes (no host sync in the loop) or floats once checkpointed."""

    means: Bank                         # the H held-out networks' real means (in memory)
    seed: int                           # heldout_seed(run seed)
    every: int                          # iterations between measurements (0: start and end only)
    total: int                          # the run's iterations (the end's measurement)
    records: list

    def due(self, it: int) -> bool:
        return it == 0 or it == self.total or (self.every > 0 and it % self.every == 0)

    def state_dict(self) -> list:
        return [[int(i), float(b), float(h)] for i, b, h in self.records]

    def load_state_dict(self, saved: list) -> None:
        """The records of a checkpoint, less the end measurement of a shorter run (resumed with
        more iterations, the curve is the one of the run straight through)."""
        self.records = [tuple(r) for r in saved
                        if r[0] == 0 or (self.every > 0 and r[0] % self.every == 0)]

    def report(self) -> dict:
        recs = self.state_dict()
        return {"networks": self.means.K, "every": self.every,
                "at_iteration": [r[0] for r in recs], "bank_loss": [r[1] for r in recs],
                "heldout_loss": [r[2] for r in recs]}


def setup_heldout(store, cfg, device, net, pool, classes: range, chunk: int,
                  progress: bool) -> HeldOut:
    """The ``cfg.dm_bank_heldout`` held-out networks of a DM run: their real class means
    (:func:`dm_means_fn` with :func:`heldout_seed`, ``cfg.dm_bank_clips`` clips), built in memory."""
    H, seed = cfg.dm_bank_heldout, heldout_seed(cfg.seed)
    key = {"K": H, "dtype": "float32"}
    fn = dm_means_fn(net, store, pool, classes, cfg.dm_bank_clips, seed, device, chunk)
    means = build_bank(key, classes, device, fn, None, progress=progress,
                       desc=f"dm bank: {H} held-out networks")
    return HeldOut(means, seed, cfg.dm_bank_heldout_every, cfg.iterations, [])


@torch.no_grad()
def measure_heldout(state, synset, it: int) -> None:
    """Append ``(it, bank loss, held-out loss)`` to ``state.heldout.records``: the DM loss of the
    synset's videos (fixed pairing, its generator untouched) averaged over the bank's networks
    ``0 .. min(H, K) - 1`` and over the held-out networks, summed over every process's classes."""
    from vdfast.methods.base import reinit_
    from vdfast.methods.dm import embed

    ho, bank, net = state.heldout, state.bank, state.net
    syn, labels = synset.fixed_videos()
    if state.own is not None:
        syn, labels = syn[state.own], labels[state.own]
    nc = state.pool.num_classes

    def mean_loss(means_of, seed, ks):
        total = None
        for k in ks:
            reinit_(net, network_generator(seed, k, bank.device))
            loss = bank_dm_loss(means_of(k), bank.classes, embed(net, syn), labels, nc)
            total = loss if total is None else total + loss
        return total / len(ks)

    both = torch.stack([mean_loss(bank.means, state.bank_seed, range(min(ho.means.K, bank.K))),
                        mean_loss(ho.means.means, ho.seed, range(ho.means.K))]).float()
    if state.dist.active:
        both = state.dist.all_reduce_(both)
    ho.records.append((it, both[0], both[1]))


def real_means(state) -> tuple[torch.Tensor, torch.Tensor]:
    """DM's real side from the bank, for ``DM.step``: this iteration's network (:func:`schedule`)
    with its weights regenerated, and its cached real class means ``[len(classes), D]`` with their
    global labels (one row per class: the mean of one row is itself)."""
    from vdfast.methods.base import reinit_

    bank = state.bank
    k = schedule(state.bank_seed, bank.K, state.bank_it)
    reinit_(state.net, network_generator(state.bank_seed, k, bank.device))
    state.bank_it += 1
    means = bank.means(k)
    return means, torch.arange(bank.classes.start, bank.classes.stop, device=means.device)
