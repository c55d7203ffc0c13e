"""The one benchmark harness of vdfast.

Each ``benchmarks/bench_<op>.py`` declares only a :class:`Bench`: the op's name, a ``setup`` that
builds one :class:`Case` from a named workload's shape, and the named workloads (full size and
``--smoke`` size). This module does the rest: providers, modes, timing, memory, throughput, tables,
JSON rows and comparisons.

Providers
    ``reference``          the plain-PyTorch reference, eager
    ``reference+compile``  ``torch.compile`` of the reference (a failure marks the row ``error``)
    ``cuda`` / ``triton`` / ``cpp``  each vdfast backend the dispatch says can run on the device
    (Triton on a CPU only when named with ``--providers``: it would run in the interpreter)
Modes
    ``fwd``      forward under ``torch.no_grad()``
    ``fwd+bwd``  forward, then ``torch.autograd.grad`` of the output wrt the case's grad inputs

Timing: median of ``--repeats`` calls with p20/p80 (CUDA events on a GPU, ``perf_counter`` after a
synchronize otherwise). Peak memory: ``torch.cuda.max_memory_allocated`` during the timed calls
(null on a CPU). Throughput: GB/s from the case's explicit byte count (memory-bound ops; also as a
percentage of the device's measured copy bandwidth) or TFLOP/s from its flop count.

Usage::

    python benchmarks/bench_dm_loss.py --smoke                     # tiny CPU shapes, < 30 s
    python benchmarks/bench_dm_loss.py --json runs/dm.json         # full workloads
    python benchmarks/bench_dm_loss.py --compare runs/dm.json      # speed-ups against a base run
    python benchmarks/harness.py --smoke                           # every bench_*.py here
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

MODES = ("fwd", "fwd+bwd")
HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Case:
    """One benchmark instance, built by a bench module's ``setup``.

    ``args`` are the positional inputs (tensors, or lists of tensors); ``reference(*args)`` and
    ``vdfast(*args, backend=name)`` compute the same output. ``grad_args`` are the indices of the
    args that receive gradients in ``fwd+bwd`` (a list arg: every tensor in it). ``bytes`` and
    ``flops`` map a mode to the work done, for GB/s and TFLOP/s.
    """

    args: tuple
    reference: Callable
    vdfast: Callable
    grad_args: tuple[int, ...] = ()
    bytes: dict[str, float] = field(default_factory=dict)
    flops: dict[str, float] = field(default_factory=dict)
    modes: tuple[str, ...] = MODES


@dataclass
class Bench:
    """What a ``bench_<op>.py`` declares. ``setup(device, dtype, gen, **shape) -> Case``."""

    op: str
    setup: Callable[..., Case]
    workloads: dict[str, dict[str, Any]]
    smoke: dict[str, dict[str, Any]]
    dtype: torch.dtype = torch.float32


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
def time_fn(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Milliseconds per call, one entry per repeat."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    if device.type == "cuda":
        for _ in range(repeats):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
    else:
        for _ in range(repeats):
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


def _grad_leaves(args: tuple, grad_args: tuple[int, ...]) -> list[torch.Tensor]:
    leaves = []
    for i in grad_args:
        a = args[i]
        leaves.extend(a if isinstance(a, (list, tuple)) else [a])
    return leaves


def _with_grad(args: tuple, grad_args: tuple[int, ...]) -> tuple:
    """Fresh leaves requiring grad for the grad args (other args passed through)."""
    def leaf(t):
        return t.detach().requires_grad_(True)
    out = []
    for i, a in enumerate(args):
        if i in grad_args:
            a = [leaf(t) for t in a] if isinstance(a, (list, tuple)) else leaf(a)
        out.append(a)
    return tuple(out)


def make_call(fn: Callable, case: Case, mode: str) -> Callable[[], Any]:
    if mode == "fwd":
        args = case.args

        def call():
            with torch.no_grad():
                return fn(*args)
        return call
    args = _with_grad(case.args, case.grad_args)
    leaves = _grad_leaves(args, case.grad_args)

    def call():
        out = fn(*args)
        # allow_unused: e.g. biases take no part in gradient_match
        return torch.autograd.grad(out, leaves, torch.ones_like(out), allow_unused=True)
    return call


def providers(bench: Bench, device: torch.device, dtype: torch.dtype,
              wanted: Sequence[str] | None) -> list[str]:
    """Providers to run: the two reference ones and every vdfast backend usable here."""
    from vdfast.ops.dispatch import op
    import vdfast.ops  # noqa: F401  (registers the ops)

    names = ["reference", "reference+compile"]
    o = op(bench.op)
    probe = [torch.empty(1, device=device, dtype=dtype)]
    for b in ("cuda", "triton", "cpp"):
        if b not in o.impls:
            continue
        explicit = wanted is not None and b in wanted
        if not o.why_not(b, probe, explicit=explicit, probe_only=True):
            names.append(b)
    if wanted is not None:
        names = [n for n in names if n in wanted]
    return names


def run_case(bench: Bench, workload: str, shape: dict, device: torch.device, dtype: torch.dtype,
             provs: Sequence[str], modes: Sequence[str], repeats: int, warmup: int,
             copy_gbps: float | None, env: dict) -> list[dict]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    case = bench.setup(device=device, dtype=dtype, gen=gen, **shape)
    rows = []
    for prov in provs:
        if prov == "reference":
            fn = case.reference
        elif prov == "reference+compile":
            fn = torch.compile(case.reference, dynamic=False)
        else:
            fn = (lambda b: (lambda *a: case.vdfast(*a, backend=b)))(prov)
        for mode in modes:
            if mode not in case.modes:
                continue
            row = dict(workload=workload, op=bench.op, provider=prov, mode=mode,
                       dtype=str(dtype).replace("torch.", ""), shape=shape,
                       median_ms=None, p20_ms=None, p80_ms=None, gbps=None, pct_copy_bw=None,
                       tflops=None, peak_mb=None, device=device_name(device), error=None, **env)
            try:
                call = make_call(fn, case, mode)
                if device.type == "cuda":
                    call()
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                times = time_fn(call, device, repeats, warmup)
                if device.type == "cuda":
                    row["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
                med = statistics.median(times)
                row.update(median_ms=med, p20_ms=_quantile(times, 0.2), p80_ms=_quantile(times, 0.8))
                if mode in case.bytes:
                    row["gbps"] = case.bytes[mode] / (med * 1e-3) / 1e9
                    if copy_gbps:
                        row["pct_copy_bw"] = 100.0 * row["gbps"] / copy_gbps
                if mode in case.flops:
                    row["tflops"] = case.flops[mode] / (med * 1e-3) / 1e12
            except Exception as e:  # a provider that fails (compile, unsupported) marks its row
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
def _fmt(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def markdown(rows: list[dict]) -> str:
    head = "| workload | provider | mode | median ms | p20-p80 ms | GB/s | % copy | TFLOP/s | peak MB | vs ref |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    ref = {(r["workload"], r["mode"]): r["median_ms"] for r in rows if r["provider"] == "reference"}
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['workload']} | {r['provider']} | {r['mode']} | error: {r['error']} "
                         "| | | | | | |")
            continue
        base = ref.get((r["workload"], r["mode"]))
        speed = f"{base / r['median_ms']:.2f}x" if base and r["median_ms"] else "-"
        lines.append(
            f"| {r['workload']} | {r['provider']} | {r['mode']} | {_fmt(r['median_ms'])} | "
            f"{_fmt(r['p20_ms'])}-{_fmt(r['p80_ms'])} | {_fmt(r['gbps'], 1)} | "
            f"{_fmt(r['pct_copy_bw'], 0)} | {_fmt(r['tflops'], 2)} | {_fmt(r['peak_mb'], 1)} | {speed} |")
    return "\n".join(lines)


def compare(rows: list[dict], base_rows: list[dict]) -> str:
    key = lambda r: (r["op"], r["workload"], r["provider"], r["mode"])  # noqa: E731
    base = {key(r): r for r in base_rows if not r.get("error")}
    lines = ["| op | workload | provider | mode | base ms | new ms | speed-up |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        b = base.get(key(r))
        if b is None or r["error"]:
            continue
        lines.append(f"| {r['op']} | {r['workload']} | {r['provider']} | {r['mode']} | "
                     f"{_fmt(b['median_ms'])} | {_fmt(r['median_ms'])} | "
                     f"{b['median_ms'] / r['median_ms']:.2f}x |")
        if b.get("device") != r.get("device"):
            lines[-1] += f" (devices differ: {b.get('device')})"
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny CPU shapes, few repeats (CI)")
    p.add_argument("--device", default=None, help="default: cuda if visible, else cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "float64", "float16", "bfloat16"],
                   help="default: each bench's own dtype")
    p.add_argument("--providers", default=None,
                   help="comma list among reference,reference+compile,cuda,triton,cpp")
    p.add_argument("--modes", default=",".join(MODES), help="comma list among " + ",".join(MODES))
    p.add_argument("--workloads", default=None, help="comma list of workload names")
    p.add_argument("--repeats", type=int, default=None, help="default 25 (smoke: 10)")
    p.add_argument("--warmup", type=int, default=None, help="default 5 (smoke: 2)")
    p.add_argument("--no-compile", action="store_true",
                   help="skip reference+compile (smoke skips it unless --providers names it)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (torch and the extension's OpenMP); default: torch's")
    p.add_argument("--json", default=None, help="write JSON rows to this path")
    p.add_argument("--compare", default=None, help="base JSON rows: print speed-ups")
    return p.parse_args(argv)


def main(benches: Sequence[Bench], argv=None) -> list[dict]:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)  # also sets OpenMP's count for vdfast._C (same runtime)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() and not a.smoke else "cpu"))
    repeats = a.repeats or (10 if a.smoke else 25)
    warmup = a.warmup if a.warmup is not None else (2 if a.smoke else 5)
    wanted = a.providers.split(",") if a.providers else None
    modes = a.modes.split(",")
    env = versions()
    copy_gbps = copy_bandwidth(device, (32 if a.smoke else 256) * 2**20)
    print(f"device: {device_name(device)}; copy bandwidth {copy_gbps:.1f} GB/s; "
          f"torch {env['torch']}, triton {env['triton']}, vdfast {env['vdfast']}, git {env['git_sha']}")
    rows = []
    for bench in benches:
        dtype = getattr(torch, a.dtype) if a.dtype else bench.dtype
        provs = providers(bench, device, dtype, wanted)
        if (a.no_compile or a.smoke) and not (wanted and "reference+compile" in wanted):
            provs = [p for p in provs if p != "reference+compile"]
        workloads = bench.smoke if a.smoke else bench.workloads
        if a.workloads:
            names = a.workloads.split(",")
            workloads = {k: v for k, v in {**bench.workloads, **bench.smoke}.items() if k in names}
        for name, shape in workloads.items():
            rows += run_case(bench, name, shape, device, dtype, provs, modes, repeats, warmup,
                             copy_gbps, env)
        print(f"\n### {bench.op} ({str(dtype).replace('torch.', '')})\n")
        print(markdown([r for r in rows if r["op"] == bench.op]))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"\nwrote {len(rows)} rows to {a.json}")
    if a.compare:
        with open(a.compare) as f:
            print("\n" + compare(rows, json.load(f)))
    return rows


def discover() -> list[Bench]:
    """The ``BENCH`` of every ``bench_*.py`` beside this file."""
    benches = []
    for fname in sorted(os.listdir(HERE)):
        if fname.startswith("bench_") and fname.endswith(".py"):
            spec = importlib.util.spec_from_file_location(fname[:-3], os.path.join(HERE, fname))
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            benches.append(mod.BENCH)
    return benches


if __name__ == "__main__":
    main(discover())


# ---------------------------------------------------------------------------------------------
# end-to-end method steps (step_<method>.py): vdfast against a reference-style loop
# ---------------------------------------------------------------------------------------------
def compare_steps(workload: str, method: str, providers, device: torch.device, repeats: int,
                  warmup: int, shape: dict, extra: dict | None = None) -> list[dict]:
    """Time each ``(name, fn)`` of ``providers`` (the reference-style loop first) with interleaved
    repeats (ref, vdfast, ref, ...: on a shared machine both see the same load); rows with median,
    p20/p80, CUDA peak memory and the speed-up against the first provider. ``extra[name]`` adds
    columns to that provider's row."""
    times = {name: [] for name, _ in providers}
    for _, fn in providers:
        time_fn(fn, device, 0, warmup)
    for _ in range(repeats):
        for name, fn in providers:
            times[name] += time_fn(fn, device, 1, 0)
    env = versions()
    rows = []
    for name, fn in providers:
        peak = None
        if device.type == "cuda":  # a separate call per provider for its allocator peak
            torch.cuda.reset_peak_memory_stats(device)
            time_fn(fn, device, 1, 0)
            peak = torch.cuda.max_memory_allocated(device) / 2**20
        t = times[name]
        rows.append({"workload": workload, "method": method, "provider": name,
                     "median_ms": statistics.median(t), "p20_ms": _quantile(t, 0.2),
                     "p80_ms": _quantile(t, 0.8), "peak_mb": peak, "device": device_name(device),
                     "shape": shape, **(extra or {}).get(name, {}), **env})
    for r in rows:
        r["speedup_vs_reference"] = rows[0]["median_ms"] / r["median_ms"]
    return rows


def step_main(doc: str, workloads: dict, smoke: dict, run_all, title: str, extra_cols=(),
              argv=None) -> list[dict]:
    """The command line of a ``step_<method>.py``: pick workloads and device, call
    ``run_all(workloads, device, repeats, warmup) -> rows``, print the table (``extra_cols``: a
    ``(header, row key, format)`` per added column), write ``--json``."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny CPU shapes (CI)")
    p.add_argument("--workloads", default=None, help="comma list of workload names")
    p.add_argument("--device", default=None, help="default: cuda if visible, else cpu")
    p.add_argument("--repeats", type=int, default=None, help="default 10 (smoke: 3)")
    p.add_argument("--json", default=None, help="write JSON rows to this path")
    a = p.parse_args(argv)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() and not a.smoke else "cpu"))
    chosen = smoke if a.smoke else workloads
    if a.workloads:
        chosen = {k: v for k, v in {**workloads, **smoke}.items() if k in a.workloads.split(",")}
    rows = run_all(chosen, device, a.repeats or (3 if a.smoke else 10), 1 if a.smoke else 2)
    print(f"{title} on {device_name(device)}\n")
    heads = ["workload", "provider", "median ms", "p20-p80 ms", "peak MiB", *(h for h, _, _ in extra_cols),
             "speed-up"]
    print("| " + " | ".join(heads) + " |\n|" + "---|" * len(heads))
    for r in rows:
        peak = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "-"
        cells = [r["workload"], r["provider"], f"{r['median_ms']:.1f}",
                 f"{r['p20_ms']:.1f}-{r['p80_ms']:.1f}", peak,
                 *(format(r[k], f) for _, k, f in extra_cols), f"{r['speedup_vs_reference']:.2f}x"]
        print("| " + " | ".join(cells) + " |")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows
