"""The method-step benchmark harness of vdfast (the ops have :mod:`harness_ops`).

A ``step_<name>.py`` declares a :class:`Step`: the methods it covers and ``build(method, workload,
device, tmp) -> StepCase`` (the providers: the reference-style loop first, then vdfast). This module
does the rest, for every method alike: interleaved timing, peak memory (each case in a fresh child
process; :func:`measure_peak` is the one place peak memory is measured), the ``--scaling`` grid,
tables, JSON rows, ``--compare`` and the PNG plot (:func:`step_main`).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

try:
    from benchmarks.harness import _quantile, device_name, finish, time_fn, versions
except ImportError:  # run as a script from benchmarks/
    from harness import _quantile, device_name, finish, time_fn, versions

REFERENCE = "reference-style loop"


@dataclass
class Skipped:
    """A provider that cannot run here (no CUDA, a missing package, a config field vdfast lacks):
    its row carries ``skipped`` = the reason instead of times, and is not an error."""

    reason: str


@dataclass
class StepCase:
    """``providers``: ``(name, fn or Skipped)``, ``fn()`` = one iteration; ``extra[name]``: columns
    added to that provider's row."""

    providers: list
    extra: dict = field(default_factory=dict)


@dataclass
class Step:
    """What a ``step_<name>.py`` declares. ``build(method, workload, device, tmp) -> StepCase``;
    ``workload`` is a dict of :mod:`workloads`; ``tmp`` a scratch directory."""

    name: str
    methods: tuple
    build: Callable
    title: str
    file: str
    extra_cols: tuple = ()    # (header, row key, format) per column added to the table
    reference: str = REFERENCE    # the provider speed-ups are against
    workloads: dict | None = None  # own workloads (default: workloads.WORKLOADS / SMOKE)
    smoke: dict | None = None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes(reset: bool) -> int:
    import resource

    if reset:  # VmHWM since the reset
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_peak(fn: Callable[[], Any], device: torch.device, calls: int = 1,
                 warmup: int = 1) -> tuple[float, float]:
    """THE peak-memory measurement of every step benchmark: ``(peak MiB during `calls` calls of
    fn above what was held just before them, MiB held before)``, after ``warmup`` calls (lazy
    initialisation, optimizer state: part of what is held, not of the iteration's peak).

    CUDA: ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before. CPU: peak RSS
    minus the RSS just before the calls. A process's peak RSS never goes down, so on a CPU this is
    only meaningful in a fresh process (:func:`child_peak` runs it in one per case, with glibc told
    to return every freed block of 64 KiB or more to the system, so the warm-up's freed memory
    does not hide the peak). Linux copies the parent's peak into a child's ``ru_maxrss`` through
    exec (a child of a 2 GB parent reports >= 2 GB), so the peak is read from ``VmHWM`` after
    resetting it with ``/proc/self/clear_refs``; ``ru_maxrss`` only where that is not possible."""
    import gc

    for _ in range(warmup):
        fn()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(calls):
            fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        reset = _reset_peak_rss()
        base = _rss_bytes()
        for _ in range(calls):
            fn()
        peak = _peak_rss_bytes(reset)
    return max(0, peak - base) / 2**20, base / 2**20


def child_peak(step: Step, method: str, workload: dict, provider: str, device: torch.device,
               timeout: float = 1800) -> dict:
    """Run :func:`measure_peak` for one provider of one case in a fresh Python process; returns
    ``{"peak_mb", "held_mb"}`` or ``{"peak_error": why}``."""
    spec = dict(file=step.file, method=method, workload=workload, provider=provider,
                device=str(device), threads=torch.get_num_threads())
    try:
        # glibc: blocks >= 64 KiB are mmapped and unmapped on free (RSS falls back after a call)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--peak-child",
                              json.dumps(spec)], capture_output=True, text=True, timeout=timeout,
                             env=env)
    except subprocess.TimeoutExpired:
        return {"peak_error": f"memory child timed out after {timeout:.0f} s"}
    for line in out.stdout.splitlines():
        if line.startswith("PEAK "):
            return json.loads(line[5:])
    tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
    return {"peak_error": f"memory child failed (rc {out.returncode}): {tail[:200]}"}


def _load_module(path: str):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _peak_child_main(spec: dict) -> None:
    import tempfile

    torch.set_num_threads(spec["threads"])
    step = _load_module(spec["file"]).STEP
    device = torch.device(spec["device"])
    with tempfile.TemporaryDirectory(prefix="vdfast-peak-") as tmp:
        case = step.build(spec["method"], spec["workload"], device, tmp)
        fn = dict(case.providers)[spec["provider"]]
        peak, held = measure_peak(fn, device)
    print("PEAK " + json.dumps({"peak_mb": peak, "held_mb": held}), flush=True)


def compare_steps(workload: str, method: str, providers, device: torch.device, repeats: int,
                  warmup: int, shape: dict, extra: dict | None = None,
                  peak: Callable[[str], dict] | None = None, reference: str = REFERENCE) -> list[dict]:
    """Time each ``(name, fn)`` of ``providers`` with interleaved repeats (ref, vdfast, ref, ...:
    on a shared machine every provider sees the same load); one row per provider with median,
    p20/p80, ``peak(name)`` (peak_mb / held_mb, see :func:`measure_peak`) and the speed-up against
    ``reference``. A :class:`Skipped` provider gets a row saying why. An ``items_per_call`` column
    (from ``extra``) gives ``items_per_s``."""
    live = [(n, f) for n, f in providers if not isinstance(f, Skipped)]
    times = {name: [] for name, _ in live}
    for _, fn in live:
        time_fn(fn, device, 0, warmup)
    for _ in range(repeats):
        for name, fn in live:
            times[name] += time_fn(fn, device, 1, 0)
    env = versions()
    rows = []
    for name, fn in providers:
        row = {"workload": workload, "method": method, "provider": name, "median_ms": None,
               "p20_ms": None, "p80_ms": None, "peak_mb": None, "held_mb": None,
               "device": device_name(device), "shape": shape, "skipped": None,
               **(extra or {}).get(name, {}), **env}
        if isinstance(fn, Skipped):
            row["skipped"] = fn.reason
        else:
            t = times[name]
            row.update(median_ms=statistics.median(t), p20_ms=_quantile(t, 0.2),
                       p80_ms=_quantile(t, 0.8))
            if row.get("items_per_call"):
                row["items_per_s"] = row["items_per_call"] / (row["median_ms"] * 1e-3)
            if peak is not None:
                row.update(peak(name))
        rows.append(row)
    ref = next((r["median_ms"] for r in rows if r["provider"] == reference and r["median_ms"]), None)
    for r in rows:
        r["speedup_vs_reference"] = ref / r["median_ms"] if ref and r["median_ms"] else None
    return rows


def step_table(rows: list[dict], extra_cols=()) -> str:
    heads = ["workload", "method", "provider", "median ms", "p20-p80 ms", "peak MiB",
             *(h for h, _, _ in extra_cols), "speed-up"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        if r.get("skipped"):
            cells = [r["workload"], r["method"], r["provider"], f"skipped: {r['skipped']}"]
            lines.append("| " + " | ".join(cells) + " |" + " |" * (len(heads) - len(cells)))
            continue
        peak = f"{r['peak_mb']:.0f}" if r.get("peak_mb") is not None else (
            "error" if r.get("peak_error") else "-")
        sp = r.get("speedup_vs_reference")
        cells = [r["workload"], r["method"], r["provider"], f"{r['median_ms']:.1f}",
                 f"{r['p20_ms']:.1f}-{r['p80_ms']:.1f}", peak,
                 *(format(r[k], f) if r.get(k) is not None else "-" for _, k, f in extra_cols),
                 f"{sp:.2f}x" if sp else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    errors = sorted({r["peak_error"] for r in rows if r.get("peak_error")})
    return "\n".join(lines + [f"\npeak memory error: {e}" for e in errors])


def plot_scaling(rows: list[dict], path: str) -> str:
    """A PNG of seconds per iteration (log) and peak MiB against ipc (log), one line per
    method/provider, from ``--scaling`` rows at their base size (drawn with Pillow)."""
    from PIL import Image, ImageDraw

    rows = [r for r in rows if r.get("scaling") == "ipc" and r.get("median_ms")]
    series: dict[str, list] = {}
    for r in rows:
        series.setdefault(f"{r['method']} / {r['provider']}", []).append(
            (r["shape"]["ipc"], r["median_ms"] / 1e3, r.get("peak_mb")))
    W, H, M = 560, 380, 60
    img = Image.new("RGB", (2 * W, H + 24 + 16 * len(series)), "white")
    d = ImageDraw.Draw(img)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    ipcs = sorted({p[0] for s in series.values() for p in s}) or [1]
    lx0 = math.log(min(ipcs))
    lx1 = math.log(max(ipcs)) if max(ipcs) > min(ipcs) else lx0 + 1
    for panel, (k, title, log) in enumerate(((1, "seconds per iteration", True),
                                             (2, "peak memory above held (MiB)", False))):
        vals = [p[k] for s in series.values() for p in s if p[k]]
        if not vals:
            continue
        f = (lambda v: math.log(v)) if log else (lambda v: v)
        lo, hi = (f(min(vals)), f(max(vals))) if log else (0.0, max(vals))
        hi = hi if hi > lo else lo + 1
        ox = panel * W
        d.text((ox + M, 8), title + " against ipc" + (" (log)" if log else ""), fill="black")
        d.rectangle([ox + M, 30, ox + W - 20, H - 40], outline="black")

        def xy(ipc, v):
            x = ox + M + (math.log(ipc) - lx0) / (lx1 - lx0) * (W - 20 - M)
            return x, H - 40 - (f(v) - lo) / (hi - lo) * (H - 70)
        for ipc in ipcs:
            x, _ = xy(ipc, min(vals))
            d.text((x - 6, H - 34), str(ipc), fill="black")
        for v in (min(vals), max(vals)):
            _, y = xy(ipcs[0], v)
            d.text((ox + 2, y - 6), f"{v:.3g}", fill="black")
        for i, (name, pts) in enumerate(series.items()):
            pts = sorted(p for p in pts if p[k])
            line = [xy(p[0], p[k]) for p in pts]
            if len(line) > 1:
                d.line(line, fill=colors[i % len(colors)], width=2)
            for x, y in line:
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colors[i % len(colors)])
    for i, name in enumerate(series):
        d.text((M, H + 8 + 16 * i), "-- " + name, fill=colors[i % len(colors)])
    d.text((W + M, H - 20), "ipc (log)", fill="black")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return path


IPC_GRID = (1, 5, 10, 20, 50)
SIZE_GRID = (64, 112, 224)


def scaling_workloads(base: dict, ipcs, sizes) -> list[tuple[str, dict]]:
    """``(series, workload)``: the base workload at each ipc, then at each size (ipc 1)."""
    out = [("ipc", {**base, "ipc": k}) for k in ipcs]
    return out + [("size", {**base, "size": s, "ipc": 1}) for s in sizes]


def step_main(step: Step, argv=None) -> list[dict]:
    """The command line of every ``step_<name>.py``: pick methods, workloads and device, time
    each case (or the ``--scaling`` grid), measure peak memory, print the table, write ``--json``,
    ``--compare`` against old rows, draw ``--plot``."""
    import tempfile

    import workloads as wl

    p = argparse.ArgumentParser(description=step.title)
    p.add_argument("--smoke", action="store_true", help="tiny CPU shapes (CI)")
    p.add_argument("--methods", default=",".join(step.methods),
                   help="comma list among " + ",".join(step.methods))
    p.add_argument("--workloads", default=None,
                   help="comma list of workload names (see benchmarks/workloads.py)")
    p.add_argument("--device", default=None, help="default: cuda if visible, else cpu")
    p.add_argument("--repeats", type=int, default=None, help="default 10 (smoke: 3)")
    p.add_argument("--warmup", type=int, default=None, help="default 2 (smoke: 1)")
    p.add_argument("--memory", choices=("on", "off"), default=None,
                   help="peak memory per case in a child process (default on; smoke: off)")
    p.add_argument("--scaling", action="store_true",
                   help="vdfast only, over ipc and size from the first workload")
    p.add_argument("--ipcs", default=None, help=f"scaling ipcs (default {IPC_GRID}; smoke 1,2)")
    p.add_argument("--sizes", default=None, help=f"scaling sizes (default {SIZE_GRID}; smoke 16)")
    p.add_argument("--plot", default=None,
                   help="with --scaling: write a PNG of time and memory against ipc")
    p.add_argument("--json", default=None, help="write JSON rows to this path")
    p.add_argument("--compare", default=None, help="base JSON rows: print speed-ups against them")
    a, _ = p.parse_known_args(argv)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() and not a.smoke else "cpu"))
    chosen = wl.select(a.workloads, a.smoke, step.workloads, step.smoke)
    repeats = a.repeats or (3 if a.smoke else 10)
    warmup = a.warmup if a.warmup is not None else (1 if a.smoke else 2)
    memory = (a.memory or ("off" if a.smoke else "on")) == "on"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix=f"vdfast-{step.name}-bench-") as tmp:
        for method in a.methods.split(","):
            cases = [(None, name, w) for name, w in chosen.items()]
            if a.scaling:
                name, base = next(iter(chosen.items()))
                ipcs = a.ipcs or ("1,2" if a.smoke else ",".join(map(str, IPC_GRID)))
                sizes = a.sizes if a.sizes is not None else (
                    "16" if a.smoke else ",".join(map(str, SIZE_GRID)))
                ipcs = [int(x) for x in ipcs.split(",") if x]
                sizes = [int(x) for x in sizes.split(",") if x]
                cases = [(series, f"{name}@ipc{w['ipc']}-{w['size']}px", w)
                         for series, w in scaling_workloads(base, ipcs, sizes)]
            for series, name, w in cases:
                case = step.build(method, w, device, os.path.join(tmp, f"{method}-{name}"))
                provs = case.providers
                if a.scaling:
                    provs = [(n, f) for n, f in provs if n.startswith("vdfast")]

                def peak(prov, method=method, w=w):
                    return child_peak(step, method, w, prov, device)
                new = compare_steps(name, method, provs, device, repeats, warmup, w, case.extra,
                                    peak if memory else None, step.reference)
                for r in new:
                    r["scaling"] = series
                rows += new
                del case
    print(f"{step.title} on {device_name(device)}; git {versions()['git_sha']}\n")
    print(step_table(rows, step.extra_cols))
    return finish(rows, a.json, a.compare, a.plot if a.scaling else None)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--peak-child"]:  # child_peak's fresh process
        _peak_child_main(json.loads(sys.argv[2]))
