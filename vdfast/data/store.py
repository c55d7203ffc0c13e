"""ClipStore: the one place decoded video lives.

Layout on disk (``vdfast prepare`` writes it; decoding happens nowhere else)::

    <store>/store.json              classes, clip spec, counts, normalisation, what was skipped and why
    <store>/train/0000.npy          uint8 [n, T, H, W, 3] for class 0 (memory-mapped on read)
    <store>/train/0000.json         that class's report: files used, skipped (with reasons), short
    <store>/test/...                the same; ``store.json["test_clips"]`` clips per test video (K,
                                    default 3: the evaluation protocol's 3 random clips), each
                                    video's K clips in consecutive rows

A class file is written to a temporary name and renamed when the whole class is decoded, so an
interrupted ``prepare`` resumes at the first unfinished class; ``store.json`` and the class reports
are written the same way (a full disk leaves the previous one), and a damaged one is named.
Before decoding, the free space for the clips still to store is checked. The decode workers of
``--workers N`` die with the main process and hold no copy of its run lock, so a killed
``prepare`` can be run again at once; a worker killed by the system names the file it decoded. The embedded default dataset is a
ClipStore held in memory (``ClipStore.builtin()``).

On a device, :class:`ClipPool` keeps a split as one uint8 tensor and samples per-class batches with
device-side random numbers: no host sync and no host gathering inside a distillation loop. A split
larger than the device's budget is streamed instead: only the drawn clips are read from the
memory-mapped class files, per class, at each draw.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vdfast.config import ConfigError, PrepareConfig
from vdfast.engine.checkpoint import atomic_write, preflight, read_json_object, write_npy
from vdfast.engine.worklist import run_worklist
from vdfast.profiling import traced
from vdfast.version import __version__

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "test")
STORE_FORMAT = 1


class StoreError(ValueError):
    """A store that cannot serve the request (missing, incomplete, wrong clip format ...)."""


class ClipStore:
    """Decoded clips per (split, class), uint8 ``[n, T, H, W, 3]``.

    ``classes[i]`` is the name of label ``i``. Arrays are numpy (memory-mapped when opened from
    disk); :meth:`tensors` and :class:`ClipPool` move them to torch.
    """

    def __init__(self, classes: Sequence[str], arrays: dict[str, list[np.ndarray]], frames: int,
                 size: int, name: str = "store", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 path: str | None = None, meta: dict | None = None):
        self.classes = list(classes)
        self.arrays = arrays
        self.frames, self.size = int(frames), int(size)
        self.name = name
        self.mean, self.std = tuple(mean), tuple(std)
        self.path = path
        self.meta = meta or {}
        self._fingerprint: str | None = None
        k = self.test_clips
        for split, per_class in arrays.items():
            if split == "test" and any(a.shape[0] % k for a in per_class):
                raise StoreError(f"test split: a class holds a number of clips that is not a multiple "
                                 f"of its {k} clips per video; prepare the store again")
            if len(per_class) != len(self.classes):
                raise StoreError(f"{split}: {len(per_class)} class arrays for {len(self.classes)} classes")
            for c, a in enumerate(per_class):
                if a.ndim != 5 or a.shape[1:] != (self.frames, self.size, self.size, 3) or a.dtype != np.uint8:
                    raise StoreError(f"{split}/{self.classes[c]}: array {a.shape} {a.dtype} is not "
                                     f"uint8 [n, {self.frames}, {self.size}, {self.size}, 3]")

    # ---------------------------------------------------------------- construction
    @classmethod
    def builtin(cls, seed: int = 0, train_per_class: int = 60, test_per_class: int = 30,
                frames: int = 8, size: int = 32) -> "ClipStore":
        """The embedded default dataset (shapes x motions), generated in memory."""
        from vdfast.data.synthetic import make_builtin_arrays

        arrays, classes = make_builtin_arrays(seed, train_per_class, test_per_class, frames, size)
        return cls(classes, arrays, frames, size, name="builtin",
                   meta={"source": "builtin", "seed": seed})

    @classmethod
    def open(cls, path: str | os.PathLike) -> "ClipStore":
        """Open a prepared store (arrays memory-mapped, nothing read until used)."""
        path = Path(path)
        meta_file = path / "store.json"
        if not meta_file.exists():
            raise StoreError(f"{path} is not a vdfast store (no store.json); create one with "
                             f"`vdfast prepare SOURCE --out {path}`")
        meta = read_meta(meta_file)
        if not meta.get("complete"):
            raise StoreError(f"store {path} is incomplete (prepare was interrupted); run the same "
                             f"`vdfast prepare ... --out {path}` again to resume it")
        classes = meta["classes"]
        arrays = {s: [np.load(path / s / f"{c:04d}.npy", mmap_mode="r") for c in range(len(classes))]
                  for s in SPLITS}
        return cls(classes, arrays, meta["frames"], meta["size"], name=meta.get("name", path.name),
                   mean=meta.get("mean", IMAGENET_MEAN), std=meta.get("std", IMAGENET_STD),
                   path=str(path), meta=meta)

    # ---------------------------------------------------------------- queries
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def counts(self, split: str = "train") -> list[int]:
        """Clips (array rows) per class; on the test split that is ``test_clips`` per video."""
        self._check_split(split)
        return [int(a.shape[0]) for a in self.arrays[split]]

    @property
    def test_clips(self) -> int:
        """Clips per test video (consecutive rows); an accuracy over every test clip is the
        average over each video's clips, as the evaluation protocol asks."""
        return int(self.meta.get("test_clips", 1))

    def train_fingerprint(self) -> str:
        """A short hash of what the train split holds, for the caches of work derived from it
        (static memories, GVD stages, expert buffers): for a prepared store its layout, split, clip
        spec (frames, gap, size, resize) and, per class, the files used in row order (paths
        relative to the dataset root, so moving the dataset keeps it); for a store held in memory
        (the embedded dataset) the bytes of its train clips. Keyed by class name, so it does not
        depend on the order of ``classes``. Re-preparing with another ``--gap`` changes it;
        ``--test-clips`` does not."""
        if self._fingerprint is None:
            per_class = {}
            if self.path is None:   # held in memory (the embedded dataset): hash the clips
                for name, a in zip(self.classes, self.arrays["train"]):
                    h = hashlib.sha1(str(a.shape).encode())
                    h.update(np.ascontiguousarray(a).data)
                    per_class[name] = h.hexdigest()
                ident = {}
            else:
                req = self.meta.get("request", {})
                root = self.meta.get("root", req.get("source", ""))
                for c, name in enumerate(self.classes):
                    rep = read_meta(Path(self.path) / "train" / f"{c:04d}.json")
                    per_class[name] = [_window_key(u, root) for u in rep["used"]]
                ident = {"format": self.meta.get("format"), "layout": req.get("layout"),
                         "split": req.get("split"), "spec": req.get("spec")}
            ident.update(train=per_class, mean=list(self.mean), std=list(self.std))
            blob = json.dumps(ident, sort_keys=True, default=str).encode()
            self._fingerprint = hashlib.sha1(blob).hexdigest()[:16]
        return self._fingerprint

    def describe_test(self) -> str:
        """The test split in words, e.g. ``1861 videos x 3 clips``."""
        n, k = sum(self.counts("test")), self.test_clips
        return f"{n} clips (1 per video)" if k == 1 else f"{n // k} videos x {k} clips"

    def clips(self, split: str, c: int) -> np.ndarray:
        self._check_split(split)
        return self.arrays[split][c]

    def tensors(self, split: str, device="cpu", classes=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split (or only ``classes``) as (uint8 ``[N, T, H, W, 3]``, int64 labels
        ``[N]``) on ``device``."""
        self._check_split(split)
        classes = range(self.num_classes) if classes is None else classes
        parts = [self.arrays[split][c] for c in classes]
        data = np.concatenate(parts) if parts else np.empty((0, self.frames, self.size, self.size, 3),
                                                            np.uint8)  # one copy, off the mmap
        labels = torch.cat([torch.full((p.shape[0],), c, dtype=torch.long) for c, p in zip(classes, parts)])
        return torch.from_numpy(data).to(device), labels.to(device)

    def rows(self, split: str, idx) -> torch.Tensor:
        """uint8 ``[len(idx), T, H, W, 3]``: the clips at ``idx`` (row numbers of the whole split,
        class-major, as :meth:`tensors` numbers them), read class by class from the class arrays
        (memory-mapped: only these clips are read)."""
        self._check_split(split)
        idx = torch.as_tensor(idx, dtype=torch.long).cpu()
        offsets = np.cumsum([0] + self.counts(split))
        order = idx.argsort()
        flat = idx[order].numpy()
        cls = np.searchsorted(offsets, flat, side="right") - 1
        out = torch.empty((len(flat), self.frames, self.size, self.size, 3), dtype=torch.uint8)
        for c in np.unique(cls):
            at = np.nonzero(cls == c)[0]
            out[at] = torch.from_numpy(np.asarray(self.arrays[split][c][flat[at] - offsets[c]]))
        return out[order.argsort()]

    def random_clips(self, per_class: int, gen: torch.Generator, split: str = "train"):
        """``per_class`` random clips of every class (without replacement), class-major:
        (uint8 ``[nc * per_class, T, H, W, 3]``, labels). Draws from ``gen`` (a CPU generator)."""
        clips, labels = [], []
        for c, n in enumerate(self.counts(split)):
            idx = torch.randperm(n, generator=gen)[:per_class].sort().values.numpy()
            clips.append(torch.from_numpy(np.ascontiguousarray(self.clips(split, c)[idx])))
            labels.append(torch.full((len(idx),), c, dtype=torch.long))
        return torch.cat(clips), torch.cat(labels)

    def describe(self) -> dict:
        return {"name": self.name, "classes": len(self.classes), "frames": self.frames,
                "size": self.size, "train": sum(self.counts("train")), "test": sum(self.counts("test"))}

    def _check_split(self, split: str):
        if split not in self.arrays:
            raise StoreError(f"unknown split {split!r}; this store has {', '.join(self.arrays)}")

    def check_request(self, ipc: int | None = None, frames: int | None = None, size: int | None = None):
        """Clear errors, before any long work, for requests this store cannot serve."""
        if frames is not None and frames != self.frames:
            raise StoreError(f"store {self.name} holds {self.frames}-frame clips, {frames} requested; "
                             f"prepare a new store with --frames {frames}")
        if size is not None and size != self.size:
            raise StoreError(f"store {self.name} holds {self.size}x{self.size} clips, {size} requested; "
                             f"prepare a new store with --size {size}")
        if ipc is not None:
            counts = self.counts("train")
            empty = [self.classes[c] for c, n in enumerate(counts) if n == 0]
            if empty:
                raise StoreError(f"store {self.name}: {len(empty)} class(es) have no train clips "
                                 f"({', '.join(empty[:8])}{' ...' if len(empty) > 8 else ''}): prepare "
                                 f"skipped all their videos (see the skipped list in store.json); "
                                 f"fix or replace those videos and prepare the store again")
            short = [(self.classes[c], n) for c, n in enumerate(counts) if n < ipc]
            if short:
                listed = ", ".join(f"{k} ({n})" for k, n in short[:8])
                raise StoreError(f"ipc {ipc} is larger than the number of train clips of "
                                 f"{len(short)} class(es): {listed}; lower --ipc to at most {min(counts)}")


def resident_budget(device) -> int:
    """Bytes a :class:`ClipPool` may copy onto ``device``: ``$VDFAST_POOL_GB`` when set, else half
    of the free GPU memory (CUDA) or half of the available RAM (CPU)."""
    env = os.environ.get("VDFAST_POOL_GB")
    if env:
        return int(float(env) * 2**30)
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 * 2**30


class ClipPool:
    """A split of a store for a distillation loop, with per-class sampling.

    ``sample(n, gen)`` draws ``n`` clips of every class (without replacement while the class has
    enough, wrapping around otherwise) using random numbers generated on the device.

    Two ways to hold the clips, same draws and same clips either way:

    * **resident** (when the split fits in :func:`resident_budget`): one uint8 tensor on the
      device; sampling never synchronises with the host.
    * **streamed** (stores larger than RAM / GPU memory, e.g. Kinetics-400 at 16x112²): the clips
      stay in the store's memory-mapped class files; each ``sample`` reads the drawn indices back to
      the host (one sync), reads only those clips from disk, class by class, and copies them to the
      device through pinned memory.

    ``classes`` (a contiguous ``range``) keeps only those classes, for class-sharded multi-process
    runs. The random keys are still drawn for ALL classes and then sliced, so every class sees the
    same draws whatever the number of processes (results do not depend on it).
    """

    def __init__(self, store: ClipStore, split: str = "train", device="cpu",
                 classes: range | None = None, resident: bool | None = None):
        all_counts = torch.tensor(store.counts(split), dtype=torch.long)
        if (all_counts == 0).any():
            empty = [store.classes[i] for i in torch.nonzero(all_counts == 0).flatten().tolist()]
            raise StoreError(f"classes with no {split} clips: {', '.join(empty)}")
        self.classes = classes if classes is not None else range(len(all_counts))
        self.device = torch.device(device)
        counts = all_counts[self.classes.start:self.classes.stop]
        self.nbytes = int(counts.sum()) * int(np.prod(store.arrays[split][0].shape[1:]))
        self.resident = self.nbytes <= resident_budget(device) if resident is None else resident
        if self.resident:
            self.data, _ = store.tensors(split, device, classes=self.classes)
        else:
            self.data = None
            self.arrays = [store.arrays[split][c] for c in self.classes]
        self.counts = counts.to(device)
        self.offsets = (torch.cumsum(counts, 0) - counts).to(device)
        self.total_classes = len(all_counts)
        self.max_count = int(all_counts.max())
        col = torch.arange(self.max_count, device=device)
        self._invalid = col[None, :] >= self.counts[:, None]
        self._labels = torch.tensor(list(self.classes), device=device)

    @property
    def num_classes(self) -> int:
        """All classes of the store (labels are global ids)."""
        return self.total_classes

    @traced("vdfast.sample_real")
    def sample(self, n: int, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 ``[len(classes) * n, T, H, W, 3]`` class-major, global labels)."""
        keys = torch.rand(self.total_classes, self.max_count, device=self.device, generator=gen)
        keys = keys[self.classes.start:self.classes.stop].masked_fill(self._invalid, 2.0)
        k = min(n, self.max_count)
        pick = keys.topk(k, dim=1, largest=False).indices
        if n > k:
            pick = pick.repeat(1, (n + k - 1) // k)[:, :n]
        pick = pick % self.counts[:, None]
        labels = self._labels.repeat_interleave(n)
        if self.resident:
            return self.data[(self.offsets[:, None] + pick).flatten()], labels
        rows = pick.cpu().numpy()  # the one host sync of the streamed mode
        out = torch.empty((rows.size, *self.arrays[0].shape[1:]), dtype=torch.uint8,
                          pin_memory=self.device.type == "cuda")
        for c, arr in enumerate(self.arrays):  # only the drawn clips are read from disk
            out[c * n:(c + 1) * n] = torch.from_numpy(np.ascontiguousarray(arr[rows[c]]))
        return out.to(self.device, non_blocking=True), labels


# --------------------------------------------------------------------------------------------
# prepare: listing -> decode -> per-class arrays on disk, resumable, every skip reported
# --------------------------------------------------------------------------------------------
def _write_json(path: Path, d: dict) -> None:
    """``d`` as JSON at ``path``, whole or not at all (a full disk leaves the previous file)."""
    text = json.dumps(d, indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_meta(path) -> dict:
    """A store's ``store.json`` (or a class report ``NNNN.json``); a damaged one raises
    :class:`StoreError` naming it."""
    path = Path(path)
    try:
        return read_json_object(path)
    except (ValueError, UnicodeDecodeError) as e:
        if path.name == "store.json":
            fix = (f"delete it and run the same `vdfast prepare ... --out {path.parent}` again (the "
                   f"finished classes are kept)")
        else:
            fix = (f"delete it and {path.with_suffix('.npy').name}, then run the same `vdfast prepare "
                   f"... --out {path.parent.parent}` again (that class is decoded again)")
        raise StoreError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0]}); {fix}") from None


def _die_with_parent(parent: int) -> None:
    """In a ``prepare --workers N`` pool worker: SIGKILL when the parent process dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``), so a killed ``prepare`` (the OOM killer, ``kill PID``) leaves no
    orphaned decoders; SIGINT ignored (Ctrl-C reaches the whole process group: the parent stops
    the pool and reports once); SIGTERM (the pool ending its workers) removes the worker's mark
    (:func:`_leave_on_sigterm`)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _leave_on_sigterm)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _decode_pool(workers: int) -> ProcessPoolExecutor:
    """The decode workers of ``prepare``: they die with this process (:func:`_die_with_parent`)
    and hold no copy of the store's run lock (closed at fork by
    :mod:`vdfast.engine.checkpoint`)."""
    return ProcessPoolExecutor(workers, initializer=_die_with_parent, initargs=(os.getpid(),))


def _decode_one(args):
    from vdfast.data.decode import DecodeError, decode_clips

    item, spec, decoder, clips, key, marks = args
    if not marks:
        return _decode_item(item, spec, decoder, clips, key)
    # which file this worker decodes while it does, for the error if the system kills it (OOM)
    mark = os.path.join(marks, str(os.getpid()))
    with open(mark, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(item.path)
    _mark[:] = [mark]
    try:
        return _decode_item(item, spec, decoder, clips, key)
    finally:
        _mark.clear()
        with contextlib.suppress(OSError):
            os.unlink(mark)


_mark: list[str] = []  # in a pool worker: the mark of the file it decodes now


def _leave_on_sigterm(signum, frame):
    """A pool worker told to stop (the pool ends its workers when another one was killed) removes
    its mark: the marks left name the files of the workers that were killed."""
    for m in _mark:
        with contextlib.suppress(OSError):
            os.unlink(m)
    os._exit(128 + signum)


def _decode_item(item, spec, decoder, clips, key):
    from vdfast.data.decode import DecodeError, decode_clips

    try:
        if decoder[0] == "dali" and item.kind == "video":
            from vdfast.data.dali import decode_clips_dali

            clip, info = decode_clips_dali(item.path, spec, device=decoder[1], clips=clips, key=key)
        else:
            clip, info = decode_clips(item.path, spec, kind=item.kind, clips=clips, key=key)
        return clip, info, None
    except DecodeError as e:
        return None, None, _without_path(str(e), item.path)
    except Exception as e:  # a decoder crash on one file must not end a 40-hour run
        return None, None, _without_path(f"{type(e).__name__}: {e}", item.path)


def _decode_dali(jobs, readers: int) -> list:
    """:func:`_decode_item`'s results for one class's jobs, its video files read in batches by DALI
    (:func:`vdfast.data.dali.decode_videos_dali`, ``readers`` reader pipelines at once); frame
    folders as ever. Should DALI fail in a way that is not one file's fault, each file is
    tried on its own."""
    from vdfast.data.dali import decode_videos_dali
    from vdfast.data.decode import DecodeError

    out = [_decode_item(*job[:5]) if job[0].kind != "video" else None for job in jobs]
    videos = [i for i, job in enumerate(jobs) if job[0].kind == "video"]
    if not videos:
        return out
    _, spec, decoder, clips, _, _ = jobs[videos[0]]  # the same for every job of a prepare
    try:
        got = decode_videos_dali([jobs[i][0].path for i in videos], spec, device=decoder[1], clips=clips,
                                 keys=[jobs[i][4] for i in videos], readers=readers)
    except Exception:  # not one file's fault: each file on its own says whose it is
        got = [None] * len(videos)
    for i, g in zip(videos, got):
        if g is None:
            out[i] = _decode_item(*jobs[i][:5])
        elif isinstance(g, DecodeError):
            out[i] = (None, None, _without_path(str(g), jobs[i][0].path))
        else:
            out[i] = (g[0], g[1], None)
    return out


def _killed_while(marks: Path) -> list[str]:
    """The files that killed pool workers were decoding (the marks left once the pool has ended:
    a worker removes its mark when it finishes a file or is stopped with SIGTERM)."""
    return [f.read_text(encoding="utf-8", errors="surrogateescape")
            for f in (sorted(marks.glob("*")) if marks.is_dir() else ())]


def _without_path(reason: str, path: str) -> str:
    """A skip reason without the file's own path (the report prints the path beside it)."""
    for p in (f"'{path}'", f'"{path}"', str(path)):
        reason = reason.replace(f": {p}", "").replace(f"{p}: ", "").replace(p, "the file")
    return reason.strip(" :") or "unreadable"


def _window_key(path: str, root: str) -> str:
    """What seeds a video's random test windows: its path relative to the dataset root, with
    ``/`` separators (the same store wherever the dataset lives)."""
    try:
        rel = os.path.relpath(path, root)
    except ValueError:  # another drive (Windows)
        rel = path
    return rel.replace(os.sep, "/")


def check_out(source, out) -> None:
    """:class:`StoreError` when the store ``out`` would be the dataset folder ``source`` itself (its
    ``store.json``, ``train/`` and ``test/`` would become part of the dataset: a plain folder would
    then be detected as one with split folders)."""
    if Path(source).resolve() == Path(out).resolve():
        raise StoreError(f"--out {out} is the dataset folder itself: the store's files would become "
                         f"part of the dataset (and change how its layout is detected); pass another "
                         f"--out, e.g. {Path(out).resolve().name}-store beside it")


def prepare_config(config: PrepareConfig | None = None, **options) -> PrepareConfig:
    """``config`` with ``options`` replacing its fields (a :class:`vdfast.config.ConfigError` names
    an unknown or invalid one)."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(PrepareConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown prepare option {unknown[0]!r}; valid: {', '.join(sorted(known))}")
    if config is None:
        return PrepareConfig(**options)
    return dataclasses.replace(config, **options) if options else config


def prepare(source: str | os.PathLike, out: str | os.PathLike, config: PrepareConfig | None = None,
            progress: bool = True, **options) -> ClipStore:
    """Decode a dataset folder into a ClipStore at ``out`` (resumable; see module docstring).

    The options (layout, frames, gap, size, split, classes, workers, annotations, test_fraction,
    seed, decoder, test_clips) are :class:`vdfast.config.PrepareConfig`'s fields: pass ``config``,
    or the options as keywords (they replace ``config``'s fields when both are given).

    ``test_clips``: clips stored per test video (each train video gives its centred clip). The
    evaluation protocol averages the test accuracy over 3 random clips per test video: the K
    windows are drawn at random, seeded by the video's path relative to ``source``
    (:func:`vdfast.data.decode.sample_windows`), so a store is the same every time it is prepared.
    ``test_clips=1`` keeps the centred clip only.

    ``decoder``: ``pyav`` (CPU), ``dali`` (NVDEC on a GPU; DALI's CPU decoder reads VP8/VP9/MJPEG
    only) or ``auto`` (DALI on a GPU, PyAV otherwise); see :mod:`vdfast.data.dali`.

    Returns the opened store. Every file that could not be used is listed, with its reason, in
    ``store.json["skipped"]`` and printed at the end; short videos are looped and counted.
    """
    from vdfast.data.dali import resolve_decoder
    from vdfast.data.decode import ClipSpec
    from vdfast.data.layouts import list_videos

    cfg = prepare_config(config, **options)
    check_out(source, out)
    frames, gap, size, split, test_clips = cfg.frames, cfg.gap, cfg.size, cfg.split, cfg.test_clips
    classes = list(cfg.classes) if cfg.classes is not None else None
    listing = list_videos(str(source), layout=cfg.layout, split=split, classes=classes,
                          test_fraction=cfg.test_fraction, seed=cfg.seed, annotations=cfg.annotations)
    workers, decoder = cfg.workers, cfg.decoder
    spec = ClipSpec(frames=frames, gap=gap, size=size)
    dec = resolve_decoder(decoder)
    out = Path(out)

    out.mkdir(parents=True, exist_ok=True)
    want = {"source": str(Path(source).resolve()), "layout": listing.layout, "split": split,
            "classes": listing.classes, "spec": asdict(spec), "test_clips": test_clips}
    meta_file = out / "store.json"
    if meta_file.exists():
        old = read_meta(meta_file)
        asked = {"test_clips": 1, **old.get("request", {})}  # stores before test_clips held 1
        if {k: asked.get(k) for k in want} != want:
            raise StoreError(f"{out} already holds a store prepared with other settings "
                             f"({old.get('request')}); choose another --out or delete it")
    meta = {"format": STORE_FORMAT, "vdfast": __version__, "name": out.name, "request": want,
            "classes": listing.classes, "frames": frames, "size": size, "gap": gap,
            "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "layout": listing.layout, "test_clips": test_clips,
            "root": os.path.abspath(source),  # what the window keys and the fingerprint are relative to
            "listing_problems": [list(p) for p in listing.problems], "complete": False}
    _write_json(meta_file, meta)

    by_key: dict[tuple[str, int], list] = {}
    index = {c: i for i, c in enumerate(listing.classes)}
    for it in listing.items:
        by_key.setdefault((it.split, index[it.label]), []).append(it)
    for s in SPLITS:  # temporary files of a killed write (this process holds the store's lock)
        for tmp in (out / s).glob("*.tmp-*") if (out / s).is_dir() else ():
            tmp.unlink(missing_ok=True)
    todo = [(s, c) for s in SPLITS for c in range(len(listing.classes))
            if not (out / s / f"{c:04d}.npy").exists()]
    total = sum(len(by_key.get(k, [])) for k in todo)
    clip_bytes = frames * size * size * 3
    need = sum(len(by_key.get((s, c), [])) * (test_clips if s == "test" else 1) * clip_bytes + 4096
               for s, c in todo)
    preflight(out, need, "this prepare", why=f"{total} videos still to store, "
                                              f"{clip_bytes / 2**10:.0f} KiB per clip", flag="--out")
    # DALI reads a class's files in batches with its own reader pipelines (workers of them), no pool
    pool = _decode_pool(workers) if workers > 1 and dec[0] != "dali" else None
    marks = out / ".decoding"  # each worker's current file (a worker killed by the system names it)
    shutil.rmtree(marks, ignore_errors=True)
    if pool:
        marks.mkdir()
    t0 = time.perf_counter()
    n_frames = 0
    current = todo[0] if todo else None  # the class being decoded (a killed worker's message)

    def decode(key, tick):
        nonlocal current, n_frames
        current = s, c = key
        items = by_key.get(key, [])
        (out / s).mkdir(exist_ok=True)
        k = test_clips if s == "test" else 1
        jobs = [(it, spec, dec, k, _window_key(it.path, meta["root"]), str(marks) if pool else None)
                for it in items]
        results = (_decode_dali(jobs, max(1, workers)) if dec[0] == "dali" else
                   pool.map(_decode_one, jobs, chunksize=4) if pool else map(_decode_one, jobs))
        clips, used, skipped, short = [], [], [], []
        for it, (clip, info, err) in zip(items, results):
            tick(1)
            if err is not None:
                skipped.append([it.path, err])
                continue
            clips.append(clip)
            used.append(it.path)
            n_frames += info.get("num_frames", frames)
            if info.get("short"):
                short.append([it.path, f"{info['num_frames']} frames < {frames}: looped"])
        # the class's report first: its .npy, written last, is what marks the class done
        _write_json(out / s / f"{c:04d}.json",
                    {"class": listing.classes[c], "used": used, "skipped": skipped, "short": short})
        return np.concatenate(clips) if clips else np.zeros((0, frames, size, size, 3), np.uint8)

    try:
        run_worklist(todo, lambda key: out / key[0] / f"{key[1]:04d}.npy", decode, write_npy,
                     size=lambda key: len(by_key.get(key, [])), desc=f"prepare {out.name}",
                     unit="clip", progress=progress)
    except BrokenProcessPool:
        pool.shutdown(wait=True, cancel_futures=True)
        pool = None
        files = _killed_while(marks)
        raise StoreError(f"a decode worker was killed (by the system: out of memory?) while decoding "
                         + (", ".join(files) if files else
                            f"a file of {current[0]}/{listing.classes[current[1]]}")
                         + f"; the finished classes are kept: run the same command again to resume "
                           f"(fewer --workers need less memory), or move that file away") from None
    except BaseException:
        if pool:  # Ctrl-C, a full disk ...: the queued files are not decoded first
            pool.shutdown(wait=True, cancel_futures=True)
            pool = None
        raise
    finally:
        if pool:
            pool.shutdown()
        shutil.rmtree(marks, ignore_errors=True)
    elapsed = time.perf_counter() - t0

    skipped, short, counts = [], [], {s: [] for s in SPLITS}
    for s in SPLITS:
        for c in range(len(listing.classes)):
            rep = read_meta(out / s / f"{c:04d}.json")
            skipped += rep["skipped"]
            short += rep["short"]
            counts[s].append(len(rep["used"]))
    empty = [f"{s}/{listing.classes[c]}" for s in SPLITS for c, n in enumerate(counts[s]) if n == 0]
    meta.update(complete=True, counts=counts, skipped=skipped, short=short, empty=empty,
                decode_seconds=round(elapsed, 2), decoder=f"{dec[0]} ({dec[1]})",
                decode_frames_per_s=round(n_frames / elapsed, 1) if elapsed > 0 and n_frames else None)
    _write_json(meta_file, meta)
    _print_report(meta, listing.problems)
    return ClipStore.open(out)


def _print_report(meta: dict, problems):
    c = meta["counts"]
    k = meta.get("test_clips", 1)
    log.info(f"store {meta['name']}: {len(meta['classes'])} classes, {sum(c['train'])} train / "
             f"{sum(c['test'])} test videos" + (f" x {k} clips" if k > 1 else "") +
             f" of {meta['frames']}x{meta['size']}x{meta['size']} "
             f"(decoder {meta['decoder']}, {meta['decode_frames_per_s'] or 0:.0f} frames/s)")
    for title, rows in (("listing problems", problems), ("skipped (not decodable)", meta["skipped"]),
                        ("short (looped)", meta["short"])):
        if rows:
            log.info(f"  {title}: {len(rows)}")
            for entry, why in list(rows)[:20]:
                log.info(f"    {entry}: {why}")
            if len(rows) > 20:
                log.info(f"    ... {len(rows) - 20} more in store.json")
    if meta["empty"]:
        log.info(f"  EMPTY classes: {', '.join(meta['empty'])}")
