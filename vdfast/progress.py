"""Progress bars (tqdm: rate and ETA); ``VDFAST_PROGRESS=0`` turns them off, and so does
:func:`quiet` for the work inside it (``vdfast.distill(progress=False)`` runs in it, so a method's
own stages, its teacher, experts or bank, print no bar either).

Messages go through :mod:`logging` (loggers under ``vdfast``); the CLI prints them
(:func:`vdfast.cli.configure_logging`), a program using the library configures its own handlers."""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys

_QUIET = contextvars.ContextVar("vdfast_progress_quiet", default=False)


def enabled(default: bool = True) -> bool:
    return default and not _QUIET.get() and os.environ.get("VDFAST_PROGRESS", "1") != "0"


@contextlib.contextmanager
def quiet(on: bool = True):
    """No progress bar starts inside this block (when ``on``)."""
    token = _QUIET.set(True) if on else None
    try:
        yield
    finally:
        if token is not None:
            _QUIET.reset(token)


@contextlib.contextmanager
def bar(total: int | None, desc: str, unit: str = "it", enable: bool = True, initial: int = 0):
    from tqdm.auto import tqdm

    pb = tqdm(total=total, desc=desc, unit=unit, disable=not enabled(enable), initial=initial,
              dynamic_ncols=True, file=sys.stderr, leave=True)
    try:
        yield pb
    finally:
        pb.close()

