"""The training loop every stage runs: N steps with a progress bar, a logging window, profiling,
checkpoints on a cadence and a clean stop on SIGINT / SIGTERM.

:class:`Loop` runs ``step(i)`` for ``i`` in ``start .. total - 1``. What it does around the steps:

* **progress**: a :func:`vdfast.progress.bar` (``desc``, ``unit``; ``initial=start`` when
  resuming), or the caller's own bar (``bar=``) when several loops share one.
* **window**: ``step`` returns a scalar loss tensor (or None). Every ``window`` steps and after the
  last, the window's losses are stacked and read back to the host once (summed over the processes
  of ``dist`` when ``partial``: each returned its share); ``on_window(done, losses, seconds_per_step)``
  gets them, the bar's postfix shows the last one, and a NaN calls ``on_nan(done, last_saved)``
  (which raises).
* **profiling**: each step runs inside ``profiler.iteration(i)``
  (:class:`vdfast.profiling.LoopProfiler`), closed after the loop.
* **checkpoints**: ``save(done, pending)`` after step ``done`` when ``done`` is a multiple of
  ``every``, after the last step (``save_at_end``) and when a stop is requested. ``pending``: the
  host values of the losses since the last window (a checkpoint between two windows). ``save`` is
  called on every process (they reach it at the same step); it writes on the main one.
  Processes wait for each other after it.
* **stop**: a pending SIGINT / SIGTERM (:func:`vdfast.engine.checkpoint.handle_signals`) ends the
  loop after the step it arrived in, with a checkpoint when ``save`` is set, by raising
  :class:`vdfast.engine.checkpoint.Interrupted`. On N processes they agree at a window's end.

Resuming is the caller's: it restores its state, then runs the loop from ``start`` (with the
``pending`` losses of the window the checkpoint fell into). An epoch loop is the same loop with
``unit="ep"`` and one step per epoch.

Example::

    loop = Loop(total=100, desc="dm ipc1", every=50, save=lambda done, pending: ...)
    loop.run(lambda i: method.step(synset, state, gen))
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from vdfast.engine import checkpoint

WINDOW = 10  # steps per host sync of the losses


def _postfix(v: float) -> dict:
    return {"loss": f"{v:.4g}"}


@dataclass
class Loop:
    """One run of ``total`` steps; see the module's docstring. ``last_saved`` is the last step a
    checkpoint was written at (``start`` when resumed from one; None before any)."""

    total: int
    start: int = 0
    desc: str = ""
    unit: str = "it"
    progress: bool = True
    bar: object = None                  # a bar to advance instead of opening one
    dist: object = None                 # a vdfast.distributed.Dist (None: one process)
    window: int = WINDOW
    partial: bool = False               # each process's loss is its share of the sum
    pending: list = field(default_factory=list)  # loss tensors of the window resumed into
    on_window: Callable[[int, list, float], None] | None = None
    on_nan: Callable[[int, int | None], None] | None = None
    postfix: Callable[[float], dict] | None = _postfix
    profiler: object = None             # a vdfast.profiling.LoopProfiler
    every: int = 0                      # checkpoint cadence in steps (0: none on a cadence)
    save: Callable[[int, list], None] | None = None
    save_at_end: bool = True
    stop_on_signal: bool = True
    what: str = "iteration"             # the step's name in the Interrupted message
    stop_hint: str | None = None        # the Interrupted message's tail (default: saved or not)
    last_saved: int | None = None

    def run(self, step: Callable[[int], torch.Tensor | None]) -> None:
        """Run steps ``start .. total - 1``; returns when the last is done (and saved)."""
        if self.bar is not None:
            pb_ctx = contextlib.nullcontext(self.bar)
        else:
            from vdfast.progress import bar

            pb_ctx = bar(total=self.total, initial=self.start, desc=self.desc, unit=self.unit,
                         enable=self.progress and self._main())
        prof = self.profiler
        with pb_ctx as pb, contextlib.closing(prof) if prof is not None else contextlib.nullcontext():
            self._run(step, pb, prof)

    # ------------------------------------------------------------------------------------------
    def _main(self) -> bool:
        return self.dist is None or self.dist.main

    def _active(self) -> bool:
        return self.dist is not None and self.dist.active

    def _host(self, losses: list) -> list:
        vals = torch.stack(losses).float()
        if self.partial and self._active():
            vals = self.dist.all_reduce_(vals)
        return vals.cpu().tolist()

    def _run(self, step, pb, prof):
        losses = list(self.pending)
        t_win = time.perf_counter()
        for it in range(self.start, self.total):
            if prof is not None:
                with prof.iteration(it):
                    loss = step(it)
            else:
                loss = step(it)
            if loss is not None:
                losses.append(loss)
            done = it + 1
            pb.update(1)
            at_window = done % self.window == 0 or done == self.total
            if at_window and losses:  # the one host sync per window
                vals = self._host(losses)
                dt = (time.perf_counter() - t_win) / len(vals)
                if self.postfix is not None:
                    pb.set_postfix(self.postfix(vals[-1]), refresh=False)
                if self.on_window is not None:
                    self.on_window(done, vals, dt)
                losses, t_win = [], time.perf_counter()
                self._check(vals, done)
            stop = self._stop_requested(at_window) if self.stop_on_signal else 0
            if self.save is not None and (
                    (done == self.total and self.save_at_end) or (stop and done < self.total)
                    or (self.every and done % self.every == 0)):
                pending = self._host(losses) if losses else []
                self._check(pending, done)  # never checkpoint a NaN state
                self.save(done, pending)
                self.last_saved = done
                if self.dist is not None:
                    self.dist.barrier()
            if stop and done < self.total:
                raise checkpoint.Interrupted(done, stop, saved=self.save is not None, what=self.what,
                                             hint=self.stop_hint)

    def _check(self, vals: list, done: int) -> None:
        if self.on_nan is not None and not all(math.isfinite(v) for v in vals):  # NaN or inf
            self.on_nan(done, self.last_saved)

    def _stop_requested(self, at_window: bool) -> int:
        """The pending SIGINT / SIGTERM number (0: none). On N processes they agree at a window's
        end (the loop's sync point), so every process stops at the same step."""
        sig = checkpoint.interrupt_requested()
        if not self._active():
            return sig
        if not at_window:
            return 0
        flag = self.dist.all_reduce_(torch.tensor([1.0 if sig else 0.0], device=self.dist.device))
        return (sig or 15) if float(flag) > 0 else 0


__all__ = ["Loop", "WINDOW"]
