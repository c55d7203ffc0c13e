"""Checkpoints that are whole or refused, one run per output directory, and clean interruption.

A checkpoint is one directory, written whole before it counts::

    <root>/checkpoint/          the newest good checkpoint
        manifest.json           format, kind, iteration, the run's identity, and the sha256 and
                                size of every other file in the directory (written last)
        ...                     the caller's files (api.distill: synset/ and state.pt)
    <root>/checkpoint.prev/     the one before it (a fallback when the newest is damaged)
    <root>/checkpoint.tmp/      a checkpoint being written (never read unless it is whole)

:meth:`Checkpointer.save` removes ``.prev`` (the newest stays), writes every file into a fresh
``.tmp``, fsyncs them, writes the manifest, fsyncs, then swaps by two renames (``checkpoint`` ->
``.prev``, ``.tmp`` -> ``checkpoint``). A kill at any point leaves at least one whole checkpoint;
a full disk removes the partial ``.tmp`` and raises :class:`DiskFullError` naming the path, with
the newest checkpoint untouched. :meth:`Checkpointer.load` verifies the manifest (every file
present, of its size and sha256): the newest whole one is used; a damaged newest one falls back to
``.prev`` with a warning; when none verifies it raises :class:`CheckpointError` naming the file and
``--no-resume``. A directory written by an older vdfast (no manifest) is refused the same way: its
files may come from different iterations and nothing can tell.

Also here: :class:`RunLock` (an advisory ``fcntl.flock`` on ``<out>/.vdfast.lock``, so a second
run on the same directory is refused at once, naming the holder's pid and host),
:func:`preflight` (the directory is created and a probe file written before any long work; free
space checked against what the run will write) and :func:`handle_signals` (SIGTERM / SIGINT set a
flag that loops read at their iteration boundary: they save a checkpoint and raise
:class:`Interrupted`, whose ``exit_code`` is 143 / 130).

Example::

    ck = Checkpointer(out / "checkpoint")
    found = ck.load()                       # None, or the newest verified checkpoint
    ck.save(10, lambda d: torch.save(state, d / "state.pt"), identity=ident)
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vdfast.version import __version__

FORMAT = 2
MANIFEST = "manifest.json"
LOCK = ".vdfast.lock"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed (damaged, torn, older format, other run); the message
    names the file and what to do."""


class DiskFullError(OSError):
    """No space left while writing ``filename``; the message says what is still intact."""

    def __init__(self, path, detail: str = ""):
        super().__init__(errno.ENOSPC, f"disk full at {path}" + (f"; {detail}" if detail else ""),
                         str(path))

    def __str__(self):
        return self.strerror


class RunLockedError(RuntimeError):
    """Another run holds the output directory."""


class OutDirError(RuntimeError):
    """The output directory cannot be created or written."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT / SIGTERM at an iteration boundary (after saving a checkpoint).
    ``exit_code``: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, iteration: int, signum: int, saved: bool = True, what: str = "iteration",
                 hint: str | None = None):
        self.iteration, self.signum, self.saved, self.what = iteration, signum, saved, what
        self.hint = hint  # what happens to the unsaved work (replaces the default tail)
        self.exit_code = 128 + signum
        super().__init__(self.message())

    def message(self) -> str:
        if self.hint:
            return f"interrupted at {self.what} {self.iteration}; {self.hint}"
        if self.saved:
            return f"interrupted at {self.what} {self.iteration}; continue with --resume"
        return f"interrupted at {self.what} {self.iteration}; nothing was saved (no --out)"


# ------------------------------------------------------------------------------------- files
def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def fsync_file(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform that cannot open directories: the renames are still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_disk_full(e: BaseException, where=None) -> bool:
    """Whether ``e`` (or what it wraps) is a full disk / quota. Writers in Rust or C++
    (safetensors, torch.save) report ENOSPC as their own errors, sometimes without saying so
    (``unexpected pos 1280 vs 1174``): with ``where``, a failed write is also a full disk when
    a 1 MiB probe file cannot be written there for lack of space."""
    x = e
    while x is not None:
        if isinstance(x, OSError) and x.errno in DISK_FULL:
            return True
        text = str(x)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        x = x.__cause__ or x.__context__
    if where is None or not isinstance(e, (OSError, RuntimeError)):
        return False
    probe = Path(where) / f".vdfast-space-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * (1 << 20))
            f.flush()
            os.fsync(f.fileno())
        return False
    except OSError as p:
        return p.errno in DISK_FULL
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def load_cached(path, device="cpu", redo: str = "that stage is recomputed"):
    """A cached file of tensors (weights, a sampled chunk), read with ``weights_only=True`` (no
    code unpickled); a damaged one raises :class:`CheckpointError` naming it and what deleting it
    does (``redo``)."""
    import torch

    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise _damaged(path, e, redo) from e


def _damaged(path, e: Exception, redo: str) -> CheckpointError:
    first = str(e).splitlines()[0] if str(e) else ""
    return CheckpointError(f"{path} is damaged ({type(e).__name__}: {first}); delete it and run "
                           f"again ({redo})")


def save_weights(path, state_dict) -> Path:
    """A module's weights (``state_dict``) as one safetensors file, written atomically
    (:func:`atomic_write`); read back with :func:`load_weights`."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def weights_file(folder, stem: str) -> Path | None:
    """The weights file ``folder/<stem>.safetensors`` if it exists (None: it does not)."""
    if folder is None:
        return None
    f = Path(folder) / f"{stem}.safetensors"
    return f if f.exists() else None


def load_weights(path, device="cpu", redo: str = "that stage is recomputed") -> dict:
    """The state dict in a safetensors file (:func:`save_weights`); a damaged file raises
    :class:`CheckpointError` naming it and what deleting it does (``redo``)."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except Exception as e:
        raise _damaged(path, e, redo) from e


def read_json_object(path) -> dict:
    """The JSON object in ``path``; ValueError (a JSON or shape error) or UnicodeDecodeError when
    the file does not hold one (the callers name the file and say how to redo it)."""
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    return d


def atomic_write(path, write: Callable[[Path], None]) -> Path:
    """Write one file whole or not at all: ``write(tmp)`` fills a temporary file beside ``path``,
    which is fsynced and renamed over ``path`` (the directory fsynced too). A full disk removes
    the temporary file and raises :class:`DiskFullError`; an older ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as e:
        full = is_disk_full(e, path.parent)  # before the partial file goes: it holds the space
        with contextlib.suppress(OSError):
            tmp.unlink()
        if full:
            raise DiskFullError(path, f"{path.name} was not written"
                                + ("; the previous one is intact" if path.exists() else "")) from e
        raise
    return path


def write_npy(arr, path) -> None:
    """A numpy array written to ``path`` as ``.npy`` (through a file object: ``np.save`` given a
    path would append ``.npy`` to a temporary name)."""
    import numpy as np

    with open(path, "wb") as fh:
        np.save(fh, arr)


def atomic_save_npy(path, arr) -> Path:
    """:func:`atomic_write` of a numpy array as ``.npy`` (:func:`write_npy`)."""
    return atomic_write(path, lambda tmp: write_npy(arr, tmp))


# ---- stage caches: work derived from settings, kept in a folder named by their hash --------------
def identity_key(ident: dict) -> str:
    """A short stable hash of a JSON-able dict: the name of the cache folder of the work it keys."""
    return hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def data_identity(store) -> dict:
    """What identifies a store's training data, independent of class enumeration order (the key
    of every stage derived from it: GVD's stages, compose's teacher and scores)."""
    counts = dict(zip(store.classes, store.counts("train")))
    return {"name": store.name, "path": store.path, "frames": store.frames, "size": store.size,
            "train": {c: counts[c] for c in sorted(counts)}, "seed": store.meta.get("seed"),
            "source": store.meta.get("source"), "fingerprint": store.train_fingerprint()}


class StageCache:
    """``root/<stage>-<key>`` folders, each holding its ``identity.json``; nothing at all when root
    is None (the work is neither cached nor resumable)."""

    def __init__(self, root):
        self.root = Path(root) if root else None

    def stage(self, name: str, ident: dict) -> Path | None:
        if self.root is None:
            return None
        d = self.root / f"{name}-{identity_key(ident)}"
        d.mkdir(parents=True, exist_ok=True)
        f = d / "identity.json"
        if not f.exists():  # (N processes may write it at once: the same text, atomically)
            text = json.dumps(ident, indent=1, sort_keys=True, default=str)
            atomic_write(f, lambda tmp: tmp.write_text(text))
        return d


def tree_bytes(path) -> int:
    p = Path(path)
    if not p.exists():
        return 0
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


# ------------------------------------------------------------------------------- checkpoints
@dataclass
class Loaded:
    """A verified checkpoint: its directory and its manifest."""

    path: Path
    manifest: dict

    @property
    def iteration(self) -> int:
        return int(self.manifest["iteration"])

    @property
    def identity(self) -> dict:
        return self.manifest.get("identity", {})


class Checkpointer:
    """The checkpoint directory ``path`` and its siblings ``path.prev`` / ``path.tmp``."""

    def __init__(self, path, kind: str = "vdfast"):
        self.path = Path(path)
        self.prev = self.path.with_name(self.path.name + ".prev")
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.kind = kind
        self._newest_whole = None  # known after load() or save(); else verified on first save

    # ---- reading
    def exists(self) -> bool:
        return any(p.exists() for p in (self.path, self.prev, self.tmp))

    def verify(self, d: Path) -> tuple[dict | None, str | None]:
        """(manifest, None) when the checkpoint directory ``d`` is whole, else (None, what is
        wrong, naming the file)."""
        m = d / MANIFEST
        if not m.exists():
            if any(d.iterdir()):
                return None, (f"{d} has no {MANIFEST} (written by an older vdfast, which could leave "
                              f"files of different iterations side by side; it cannot be verified)")
            return None, f"{d} is empty"
        try:
            man = json.loads(m.read_text())
            files = man["files"]
            int(man["iteration"])
        except (ValueError, KeyError, TypeError, OSError) as e:
            return None, f"{m} is damaged ({type(e).__name__}: {e})"
        if man.get("format") != FORMAT or man.get("kind") != self.kind:
            return None, (f"{m} is a checkpoint of kind {man.get('kind')!r}, format "
                          f"{man.get('format')!r}; this vdfast reads kind {self.kind!r}, format {FORMAT}")
        for rel, want in files.items():
            f = d / rel
            if not f.is_file():
                return None, f"{f} is missing (the checkpoint is torn)"
            size = f.stat().st_size
            if size != want["bytes"]:
                return None, f"{f} is {size} bytes, its manifest says {want['bytes']} (truncated or damaged)"
            if sha256_file(f) != want["sha256"]:
                return None, f"{f} does not match the sha256 in its manifest (the file is damaged)"
        return man, None

    def load(self, warn: Callable[[str], None] | None = None) -> Loaded | None:
        """The newest whole checkpoint, or None when there is none at all.

        Order: ``path``; else a whole ``.tmp`` (a save killed between its two renames: it is
        moved into place); else ``.prev``, with a warning when ``path`` exists but is damaged.
        Raises :class:`CheckpointError` when checkpoints exist but none is whole."""
        warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
        problems = []
        if self.path.exists():
            man, why = self.verify(self.path)
            self._newest_whole = man is not None
            if man is not None:
                return Loaded(self.path, man)
            problems.append(why)
        if self.tmp.exists() and not self.path.exists():
            man, why = self.verify(self.tmp)
            if man is not None:  # a save that got as far as moving the newest aside: finish it
                os.replace(self.tmp, self.path)
                fsync_dir(self.path.parent)
                self._newest_whole = True
                return Loaded(self.path, man)
        if self.prev.exists():
            man, why = self.verify(self.prev)
            if man is not None:
                if problems:
                    warn(f"{problems[0]}; resuming from the previous checkpoint instead "
                         f"(iteration {man['iteration']}, {self.prev})")
                return Loaded(self.prev, man)
            problems.append(why)
        if problems:
            raise CheckpointError(f"cannot resume: {problems[0]}; pass --no-resume to start over "
                                  f"(it deletes the checkpoint), or another --out")
        return None

    # ---- writing
    def save(self, iteration: int, write: Callable[[Path], None], **meta) -> Path:
        """Write a checkpoint of ``iteration``: ``write(dir)`` puts the files into a fresh
        directory; ``meta`` (JSON) goes into the manifest (e.g. ``identity=``). Returns ``path``."""
        if self._newest_whole is None:
            self._newest_whole = self.path.exists() and self.verify(self.path)[0] is not None
        newest_ok = self._newest_whole
        try:
            if newest_ok and self.prev.exists():
                shutil.rmtree(self.prev)  # the newest stays whole while the next one is written
            if self.tmp.exists():
                shutil.rmtree(self.tmp)
            self.tmp.mkdir(parents=True)
            write(self.tmp)
            files = {}
            for f in sorted(p for p in self.tmp.rglob("*") if p.is_file()):
                fsync_file(f)
                files[f.relative_to(self.tmp).as_posix()] = {"bytes": f.stat().st_size,
                                                             "sha256": sha256_file(f)}
            man = {"format": FORMAT, "kind": self.kind, "iteration": int(iteration),
                   "vdfast": __version__, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   **meta, "files": files}
            (self.tmp / MANIFEST).write_text(json.dumps(man, indent=1, default=str))
            fsync_file(self.tmp / MANIFEST)
            for d in sorted({p.parent for p in self.tmp.rglob("*")} | {self.tmp}):
                fsync_dir(d)
        except BaseException as e:
            full = is_disk_full(e, self.path.parent)  # before the partial files go
            shutil.rmtree(self.tmp, ignore_errors=True)
            if full:
                raise DiskFullError(self.path.parent, self._intact(iteration)) from e
            raise
        if self.path.exists():
            if not newest_ok:  # a damaged or older-format newest: the new one replaces it
                shutil.rmtree(self.path)
            else:
                if self.prev.exists():
                    shutil.rmtree(self.prev)
                os.replace(self.path, self.prev)
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        self._newest_whole = True
        return self.path

    def _intact(self, iteration: int) -> str:
        try:
            old = json.loads((self.path / MANIFEST).read_text())["iteration"]
            keep = f"the checkpoint of iteration {old} in {self.path} is intact"
        except (OSError, ValueError, KeyError):
            keep = "no earlier checkpoint was kept"
        return (f"the checkpoint of iteration {iteration} could not be written and was removed; "
                f"{keep}; free some space, then run the same command again (it resumes)")

    def clear(self) -> None:
        for p in (self.path, self.prev, self.tmp):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def nbytes(self) -> int:
        return sum(tree_bytes(p) for p in (self.path, self.prev, self.tmp))


# ----------------------------------------------------------------------------------- one run
class RunLock:
    """An advisory lock on ``<dir>/.vdfast.lock`` for the duration of a run (``with`` block).

    A second :class:`RunLock` on the same directory, in any process, raises
    :class:`RunLockedError` at once, naming the holder's pid, host and command. The lock goes away
    with the process (a killed run leaves no stale lock); the file stays and is reused. ``flock`` is
    per host: on some network file systems two hosts do not see each other's lock. A process
    forked while the lock is held (a ``prepare --workers N`` pool worker) closes its copy of the
    descriptor at once, so an orphaned child cannot keep the directory locked."""

    def __init__(self, directory, what: str = "run"):
        self.dir = Path(directory)
        self.what = what
        self.fd = None

    def __enter__(self):
        import fcntl

        ensure_dir(self.dir)
        f = self.dir / LOCK
        fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except (ValueError, OSError):
                holder = {}
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # no flock on this fs
                warnings.warn(f"{f}: this file system has no advisory locks ({e.strerror}); two "
                              f"runs on {self.dir} at once would not be refused", stacklevel=2)
                return self
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            since = f", since {holder['since']}" if holder.get("since") else ""
            raise RunLockedError(
                f"{self.dir} is in use by another vdfast {holder.get('what', 'run')} (pid "
                f"{holder.get('pid', '?')} on host {holder.get('host', '?')}{since}); wait for it to "
                f"finish or stop it, or pass another --out") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        _held.add(self)
        return self

    def __exit__(self, *exc):
        _held.discard(self)
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing releases the flock
            self.fd = None
        return False


_held: set[RunLock] = set()


def _close_locks_in_child() -> None:
    """After a fork: the child's copies of the held lock descriptors closed (a flock lives as long
    as any descriptor of it is open; ``O_CLOEXEC`` only acts at ``exec``, not at ``fork``). The
    parent's lock is unaffected."""
    for lock in list(_held):
        if lock.fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock.fd)
            lock.fd = None
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_locks_in_child)


def ensure_dir(path, flag: str = "--out") -> Path:
    """``path`` created (with its parents), or :class:`OutDirError` saying why not (naming the
    option ``flag`` that gave it)."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutDirError(f"{flag} {p} exists and is not a directory; pass a directory") from None
    except NotADirectoryError:
        raise OutDirError(f"{flag} {p}: a parent of it is a file, not a directory; pass another "
                          f"{flag}") from None
    except OSError as e:
        if e.errno in DISK_FULL:
            raise DiskFullError(p, "could not create the directory") from None
        raise OutDirError(f"cannot create {flag} {p} ({e.strerror}); pass a writable directory") from None
    return p


def preflight(out, need_bytes: int = 0, what: str = "this run",
              why: str = "a checkpoint is written beside the previous one", flag: str = "--out") -> None:
    """Before long work: ``out`` created, a probe file written, fsynced and removed, and at
    least ``need_bytes`` free there (``why``: what those bytes are, for the message; ``flag``: the
    option that named ``out``). Raises :class:`OutDirError` or :class:`DiskFullError`."""
    out = ensure_dir(out, flag)
    probe = out / f".vdfast-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        with contextlib.suppress(OSError):
            probe.unlink()
        if e.errno in DISK_FULL:
            raise DiskFullError(out, f"nothing could be written there; free space or pass another "
                                     f"{flag}") from None
        raise OutDirError(f"cannot write into {flag} {out} ({e.strerror}); pass a writable "
                          f"directory") from None
    probe.unlink()
    if need_bytes > 0:
        free = shutil.disk_usage(out).free
        if free < need_bytes:
            raise DiskFullError(out, f"{what} needs about {need_bytes / 2**20:.1f} MiB there ({why}) "
                                     f"and {free / 2**20:.1f} MiB are free; free space or pass "
                                     f"another {flag}")


# ----------------------------------------------------------------------------------- signals
_requested: list[int] = []


def interrupt_requested() -> int:
    """The signal number of a pending SIGINT / SIGTERM (0: none). Loops check it at their
    iteration boundaries inside :func:`handle_signals`."""
    return _requested[0] if _requested else 0


@contextlib.contextmanager
def handle_signals():
    """Within the block, SIGINT and SIGTERM only set :func:`interrupt_requested` (a second one
    stops at once, as usual); outside the main thread, or nested, it changes nothing."""
    if threading.current_thread() is not threading.main_thread() or _handlers:
        yield
        return

    def handler(signum, frame):
        if _requested:  # the second signal: stop now
            signal.signal(signum, _handlers.get(signum, signal.SIG_DFL))
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        _requested.append(signum)
        import sys

        print(f"\n{signal.Signals(signum).name}: stopping after this iteration, with a checkpoint "
              f"(again to stop at once)", file=sys.stderr, flush=True)

    for s in (signal.SIGINT, signal.SIGTERM):
        _handlers[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in _handlers.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        _handlers.clear()
        _requested.clear()


_handlers: dict[int, object] = {}


__all__ = ["Checkpointer", "Loaded", "CheckpointError", "DiskFullError", "RunLock", "RunLockedError",
           "OutDirError", "Interrupted", "preflight", "ensure_dir", "atomic_write", "load_cached",
           "sha256_file", "handle_signals", "interrupt_requested", "is_disk_full"]
