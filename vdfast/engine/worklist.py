"""A resumable work list: items computed in order, each kept in its own file.

:func:`run_worklist` is the loop that a bank build, GVD sampling and ``prepare`` share: for each
item, in order,

* **done**: its file exists (``done(path)``, by default ``path.exists()``): it is not computed
  again; ``load(item, path)`` reads it back when the caller needs its value;
* **else computed**: ``compute(item, tick)`` returns its value and ``write(value, tmp)`` fills a
  temporary file that :func:`vdfast.engine.checkpoint.atomic_write` fsyncs and renames into place,
  so a killed run leaves whole files only and a rerun resumes at the first missing one; then
  ``after(item, value)`` (the caller keeps the value, counts it, records its time);
* **progress**: one bar of ``size(item)`` units per item (default 1); the items already done
  are its ``initial``; ``compute`` may advance it in finer steps with ``tick(n)``, what it does not
  advance is advanced when the item is written;
* **stop**: with ``stop`` (the item's name in the message), a pending SIGINT / SIGTERM
  (:func:`vdfast.engine.checkpoint.handle_signals`) ends the list after the item it arrived in,
  once that item's file is written, by raising :class:`vdfast.engine.checkpoint.Interrupted`
  (``iteration``: how many items are done). Processes that share a list cannot stop alone: they
  pass ``stop=None`` and stop at their next common checkpoint.

An item whose ``path`` is None is computed and not kept (a run without a cache): it is never done
and no stop follows it. Which items a process owns (a shard of them) is the caller's.

Example::

    run_worklist(range(K), lambda k: folder / f"k{k:05d}.npy", lambda k, tick: means(k),
                 checkpoint.write_npy, desc="dm bank", unit="net")
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from vdfast.engine import checkpoint

T = TypeVar("T")


def run_worklist(items: Iterable[T], path: Callable[[T], Path | None],
                 compute: Callable[[T, Callable[[int], None]], object],
                 write: Callable[[object, Path], None], *,
                 done: Callable[[Path], bool] = Path.exists,
                 load: Callable[[T, Path], None] | None = None,
                 after: Callable[[T, object], None] | None = None,
                 size: Callable[[T], int] | None = None,
                 desc: str = "", unit: str = "it", progress: bool = True,
                 stop: str | None = None) -> int:
    """Run the work list (see the module's docstring); returns how many items were computed."""
    from vdfast.progress import bar

    items = list(items)
    paths = [path(it) for it in items]
    finished = [p is not None and done(p) for p in paths]
    size = size or (lambda it: 1)
    total = sum(size(it) for it in items)
    initial = sum(size(it) for it, f in zip(items, finished) if f)
    computed = 0
    with bar(total=total, initial=initial, desc=desc, unit=unit, enable=progress) as pb:
        for pos, (it, p, f) in enumerate(zip(items, paths, finished)):
            if f:
                if load is not None:
                    load(it, p)
                continue
            ticked = 0

            def tick(n: int = 1) -> None:
                nonlocal ticked
                ticked += n
                pb.update(n)

            value = compute(it, tick)
            if p is not None:
                checkpoint.atomic_write(p, functools.partial(write, value))
            computed += 1
            if after is not None:
                after(it, value)
            del value  # one item's value held at a time
            if size(it) > ticked:
                pb.update(size(it) - ticked)
            sig = checkpoint.interrupt_requested() if stop and p is not None else 0
            if sig:
                raise checkpoint.Interrupted(pos + 1, sig, saved=True, what=stop)
    return computed


__all__ = ["run_worklist"]
