"""What vdfast's two benchmark harnesses share: the device and versions of a run, the timing
loop, the comparison against an older run and the end of every benchmark command.

The harnesses:

* :mod:`harness_ops` (``bench_<op>.py``): each fused op against its plain-PyTorch reference, per
  provider and mode, with GB/s / TFLOP/s.
* :mod:`harness_steps` (``step_<name>.py``): one iteration of a method (or the decoders) against a
  reference-style loop, with peak memory.

Timing (:func:`time_fn`): CUDA events on a GPU, ``perf_counter`` after a synchronize otherwise.
Op timing evicts the L2 cache before every timed call on CUDA (:func:`l2_flusher`: it writes a
buffer of twice the L2's size, at least 256 MiB, outside the timed region, as Triton's ``do_bench``
does), so that an op reading inputs a previous repeat left in the L2 is not timed as faster than it
runs in a training step. On a CPU nothing is flushed: there the ops' working sets are larger than the
last-level cache at the benchmark sizes, and writing 256 MiB per repeat would multiply the smoke
run's time on a 2-core machine.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from typing import Any, Callable, Sequence

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    out = {"torch": torch.__version__}
    try:
        import triton
        out["triton"] = triton.__version__
    except Exception:
        out["triton"] = None
    try:
        import vdfast
        out["vdfast"] = vdfast.__version__
    except Exception:
        out["vdfast"] = None
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        out["git_sha"] = (sha + ("-dirty" if dirty else "")) if sha else "uncommitted"
    except Exception:
        out["git_sha"] = None
    return out


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Measured device copy bandwidth in GB/s (read + write of ``nbytes``; the fastest of 10
    copies: the bandwidth the device can reach, the denominator of "% copy")."""
    x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    y = torch.zeros_like(x)
    times = time_fn(lambda: y.copy_(x), device, repeats=10, warmup=3)
    return 2 * x.numel() * 4 / (min(times) * 1e-3) / 1e9


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def l2_flusher(device: torch.device, min_bytes: int = 256 * 2**20) -> Callable[[], Any] | None:
    """On CUDA, a function that evicts the device's L2 cache: it zeroes a buffer of
    ``max(min_bytes, 2 * L2 size)`` bytes (allocated once, here). None on a CPU (see the module
    docstring). Allocate it after any peak-memory measurement, and drop it when done."""
    if device.type != "cuda":
        return None
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 0
    buf = torch.empty(max(min_bytes, 2 * l2) // 4, dtype=torch.int32, device=device)
    return buf.zero_


def time_fn(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int,
            flush: Callable[[], Any] | None = None) -> list[float]:
    """Milliseconds per call, one entry per repeat. ``flush`` (e.g. :func:`l2_flusher`) runs before
    each timed call, outside the timed region (on CUDA it is queued before the start event)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    if device.type == "cuda":
        for _ in range(repeats):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            if flush is not None:
                flush()
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
    else:
        for _ in range(repeats):
            if flush is not None:
                flush()
                _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def _quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
def _fmt(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def compare(rows: list[dict], base_rows: list[dict]) -> str:
    """Speed-ups of ``rows`` against ``base_rows`` (an older ``--json``), matched on op or method,
    workload, provider and mode; op rows and step rows alike."""
    def key(r):
        return (r.get("op") or r.get("method"), r["workload"], r["provider"], r.get("mode", "step"))
    base = {key(r): r for r in base_rows if not r.get("error") and r.get("median_ms")}
    lines = ["| op / method | workload | provider | mode | base ms | new ms | speed-up |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        b = base.get(key(r))
        if b is None or r.get("error") or not r.get("median_ms"):
            continue
        k = key(r)
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | "
                     f"{_fmt(b['median_ms'])} | {_fmt(r['median_ms'])} | "
                     f"{b['median_ms'] / r['median_ms']:.2f}x |")
        if b.get("device") != r.get("device"):
            lines[-1] += f" (devices differ: {b.get('device')})"
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the end of every benchmark command
# ---------------------------------------------------------------------------------------------
def finish(rows: list[dict], json_path=None, compare_path=None, plot_path=None) -> list[dict]:
    """The end of every benchmark command: write the JSON rows, print the speed-ups against an
    older run, draw the scaling plot (each only when asked for)."""
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"\nwrote {len(rows)} rows to {json_path}")
    if compare_path:
        with open(compare_path) as f:
            print("\n" + compare(rows, json.load(f)))
    if plot_path:
        try:
            from benchmarks.harness_steps import plot_scaling
        except ImportError:  # run as a script from benchmarks/
            from harness_steps import plot_scaling
        print(f"\nwrote {plot_scaling(rows, plot_path)}")
    return rows


if __name__ == "__main__":
    import sys

    sys.exit("benchmarks/harness.py holds what the harnesses share; run benchmarks/harness_ops.py "
             "(every bench_<op>.py), a step_<name>.py, or benchmarks/run.py (everything)")
