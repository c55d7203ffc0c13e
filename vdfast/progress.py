"""Progress bars (tqdm: rate and ETA); ``VDFAST_PROGRESS=0`` turns them off.

Messages go through :mod:`logging` (loggers under ``vdfast``); the CLI prints them
(:func:`vdfast.cli.configure_logging`), a program using the library configures its own handlers."""
from __future__ import annotations

import contextlib
import os
import sys


def enabled(default: bool = True) -> bool:
    return default and os.environ.get("VDFAST_PROGRESS", "1") != "0"


@contextlib.contextmanager
def bar(total: int | None, desc: str, unit: str = "it", enable: bool = True, initial: int = 0):
    from tqdm.auto import tqdm

    pb = tqdm(total=total, desc=desc, unit=unit, disable=not enabled(enable), initial=initial,
              dynamic_ncols=True, file=sys.stderr, leave=True)
    try:
        yield pb
    finally:
        pb.close()

