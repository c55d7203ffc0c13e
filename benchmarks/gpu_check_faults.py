"""Failures injected into ``benchmarks/gpu_check.py --rehearse`` on a CPU machine, so that the
check's control flow is seen to survive them: what a first GPU run can meet, made to happen here.

``GPU_CHECK_FAULTS`` is a comma list; the check names the process's task in ``GPU_CHECK_TASK``
(``tests:OP/BACKEND``, ``e2e:METHOD``, ``bench:OP``, ``info``):

- ``build-cuda`` / ``build-cpp`` / ``build-none``: that build level fails (the stand-in build);
- ``kernel-fault:OP/BACKEND``: in that op-test process the second test meets an illegal memory
  access, and every later test in the process fails with it (a poisoned CUDA context);
- ``abort:OP/BACKEND``: that op-test process dies of SIGABRT at its second test;
- ``hang:TASK``: that task stops making progress (an op-test process at its second test, an e2e
  method inside ``vdfast.distill``, a benchmark or ``vdfast info`` at its start) until the check's
  time limit interrupts it.

Used three ways: ``python -m gpu_check_faults build STEP`` (the stand-in build), as a pytest plugin
(``-p gpu_check_faults``), and ``python -m gpu_check_faults run SCRIPT ARGS`` /
``run-module MODULE ARGS`` (a script or module with the task's fault installed).
"""
from __future__ import annotations

import os
import runpy
import sys
import time

ILLEGAL_ADDRESS = ("CUDA error: an illegal memory access was encountered (injected by "
                   "gpu_check_faults: CUDA kernel errors might be asynchronously reported)")


def faults() -> list[str]:
    return [f.strip() for f in os.environ.get("GPU_CHECK_FAULTS", "").split(",") if f.strip()]


def task() -> str:
    return os.environ.get("GPU_CHECK_TASK", "")


def fault_for(current: str) -> str | None:
    """The kind of fault injected into task ``current`` ('kernel-fault', 'abort', 'hang'), if any."""
    for f in faults():
        kind, _, target = f.partition(":")
        if target and (target == current or f"tests:{target}" == current):
            return kind
    return None


def hang() -> None:
    print(f"gpu_check_faults: {task()} hangs here (injected)", flush=True)
    while True:
        time.sleep(3600)


# --- the pytest plugin ---------------------------------------------------------------------------
_state = {"n": 0, "poisoned": False}


def pytest_runtest_call(item):
    kind = fault_for(task())
    if kind is None:
        return
    _state["n"] += 1
    if _state["n"] < 2 and not _state["poisoned"]:
        return
    if kind == "kernel-fault":
        _state["poisoned"] = True
        raise RuntimeError(ILLEGAL_ADDRESS)
    if kind == "abort":
        print(f"\ngpu_check_faults: {task()} aborts in {item.nodeid} (injected)", flush=True)
        os.abort()
    if kind == "hang":
        hang()


# --- stand-in build, and scripts with a fault installed -------------------------------------------
def build(step: str) -> int:
    print(f"rehearsal: stand-in for `pip install -e .` ({step}); the installed extension is used")
    if step in faults():
        print(f"error: command '/usr/local/cuda/bin/nvcc' failed with exit code 1 (injected: {step})")
        print("ERROR: Failed building editable for vdfast")
        return 1
    if fault_for(step) == "hang":
        hang()
    return 0


def _install(current: str) -> None:
    kind = fault_for(current)
    if kind != "hang":
        return
    if current.startswith("e2e:"):  # hangs inside the method's run: the script's handlers see it
        import vdfast

        def distill(*args, **kwargs):
            hang()
        vdfast.distill = distill
    else:
        hang()


def main(argv: list[str]) -> int:
    what, rest = argv[0], argv[1:]
    if what == "build":
        return build(rest[0])
    _install(task())
    sys.argv = rest
    if what == "run":
        sys.path.insert(0, os.path.dirname(os.path.abspath(rest[0])))
        runpy.run_path(rest[0], run_name="__main__")
    elif what == "run-module":
        runpy.run_module(rest[0], run_name="__main__", alter_sys=True)
    else:
        raise SystemExit(f"gpu_check_faults: unknown command {what!r}; use build, run or run-module")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
