"""The op benchmark harness of vdfast (the method steps have :mod:`harness_steps`).

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
synchronize otherwise; on CUDA the L2 cache is flushed before every timed call, see :mod:`harness`),
the providers' calls interleaved so that they share the machine's load.
Peak memory: ``torch.cuda.max_memory_allocated`` over one call after the warm-up (null on a CPU).
Throughput: GB/s from the case's explicit byte count (memory-bound ops; also as a percentage of the
device's measured copy bandwidth) or TFLOP/s from its flop count.

Usage::

    python benchmarks/bench_dm_loss.py --smoke                     # tiny CPU shapes, < 30 s
    python benchmarks/bench_dm_loss.py --json runs/dm.json         # full workloads
    python benchmarks/bench_dm_loss.py --compare runs/dm.json      # speed-ups against a base run
    python benchmarks/harness_ops.py --smoke                       # every bench_*.py here
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

try:
    from benchmarks.harness import (HERE, _fmt, _quantile, copy_bandwidth, device_name, finish,
                                    l2_flusher, time_fn, versions)
except ImportError:  # run as a script from benchmarks/
    from harness import HERE, _fmt, _quantile, copy_bandwidth, device_name, finish, l2_flusher, time_fn, versions

MODES = ("fwd", "fwd+bwd")


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
# running one case
# ---------------------------------------------------------------------------------------------
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
    """One row per (provider, mode). Per mode, the providers' repeats are interleaved (ref, cpp,
    ref, cpp, ...), so on a shared machine every provider sees the same load and the ratios hold
    even when the absolute times drift."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    case = bench.setup(device=device, dtype=dtype, gen=gen, **shape)
    fns = {}
    for prov in provs:
        if prov == "reference":
            fns[prov] = case.reference
        elif prov == "reference+compile":
            fns[prov] = torch.compile(case.reference, dynamic=False)
        else:
            fns[prov] = (lambda b: (lambda *a: case.vdfast(*a, backend=b)))(prov)
    rows = []
    for mode in modes:
        if mode not in case.modes:
            continue
        live, times = {}, {}
        mode_rows = {}
        for prov in provs:
            row = dict(workload=workload, op=bench.op, provider=prov, mode=mode,
                       dtype=str(dtype).replace("torch.", ""), shape=shape,
                       median_ms=None, p20_ms=None, p80_ms=None, gbps=None, pct_copy_bw=None,
                       tflops=None, peak_mb=None, device=device_name(device), error=None, **env)
            mode_rows[prov] = row
            try:  # build, warm up (compiles), and on CUDA measure one call's peak memory
                call = make_call(fns[prov], case, mode)
                time_fn(call, device, 0, max(1, warmup))
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    call()
                    torch.cuda.synchronize(device)
                    row["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
                live[prov], times[prov] = call, []
            except Exception as e:  # a provider that fails (compile, unsupported) marks its row
                row["error"] = _error_text(e)
        flush = l2_flusher(device)  # after the peak measurements above: never part of a peak
        for _ in range(repeats):
            for prov, call in list(live.items()):
                try:
                    times[prov] += time_fn(call, device, 1, 0, flush=flush)
                except Exception as e:
                    mode_rows[prov]["error"] = _error_text(e)
                    del live[prov]
        del flush
        for prov in provs:
            row = mode_rows[prov]
            if prov in live and times[prov]:
                t = times[prov]
                med = statistics.median(t)
                row.update(median_ms=med, p20_ms=_quantile(t, 0.2), p80_ms=_quantile(t, 0.8))
                if mode in case.bytes:
                    row["gbps"] = case.bytes[mode] / (med * 1e-3) / 1e9
                    if copy_gbps:
                        row["pct_copy_bw"] = 100.0 * row["gbps"] / copy_gbps
                if mode in case.flops:
                    row["tflops"] = case.flops[mode] / (med * 1e-3) / 1e12
            rows.append(row)
    return rows


def _error_text(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# the fused ops' fixed cost per call: a fused backend (its custom ops) against the reference
# ---------------------------------------------------------------------------------------------
def overhead(backend: str = "cpu", repeats: int = 2000, warmup: int = 50,
             names: Sequence[str] | None = None, dtype: torch.dtype = torch.float32) -> list[dict]:
    """Per op, on its first-call check's tiny input (``Op.check_with``; float32, CPU): the public
    function with ``backend`` (through its custom ops, eager mode) and with the reference; forward,
    plus backward where the input has gradients (``torch.autograd.grad`` of the outputs' sum).
    Calls interleaved, median µs of ``repeats``."""
    from vdfast.ops.dispatch import OPS, _tensors
    import vdfast.ops  # noqa: F401

    rows = []
    for name in names or sorted(OPS):
        o = OPS[name]
        if backend not in o.impls or o.check is None:
            continue
        public, make = o.check
        args, kwargs = make(torch.device("cpu"), dtype, torch.Generator().manual_seed(0))
        leaves = [t for t in _tensors(args) if t.requires_grad]

        def call(b):
            def run():
                outs = [t for t in _tensors(public(*args, backend=b, **kwargs))
                        if t.is_floating_point()]
                if leaves:
                    torch.autograd.grad(sum(t.sum() for t in outs), leaves, allow_unused=True)
            return run
        calls = {"reference": call("reference"), backend: call(backend)}
        times = {k: [] for k in calls}
        for c in calls.values():
            for _ in range(warmup):
                c()
        for _ in range(repeats):
            for k, c in calls.items():
                t0 = time.perf_counter()
                c()
                times[k].append((time.perf_counter() - t0) * 1e6)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(dict(op=name, mode="fwd+bwd" if leaves else "fwd", backend=backend,
                         repeats=repeats, **{f"{k} us": v for k, v in med.items()}))
    return rows


def overhead_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    b = rows[0]["backend"]
    lines = [f"| op | mode | reference µs | {b} µs | {b} - reference µs |", "|---|---|---|---|---|"]
    for r in rows:
        ref, got = r["reference us"], r[f"{b} us"]
        lines.append(f"| {r['op']} | {r['mode']} | {ref:.1f} | {got:.1f} | {got - ref:.1f} |")
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
    p.add_argument("--markdown", default=None,
                   help="write the tables (device, copy bandwidth, versions, one table per op) here")
    p.add_argument("--compare", default=None, help="base JSON rows: print speed-ups")
    p.add_argument("--sweep", default=None, metavar="KEY=V1,V2,...",
                   help="instead of the named workloads: the first one (of --workloads, else the "
                        "bench's) with KEY set to each value (e.g. P=65536,131072,262144: where a "
                        "backend's crossover with the reference lies)")
    p.add_argument("--overhead", default=None, metavar="BACKEND",
                   help="instead: each op's fixed cost per call on tiny inputs (CPU), BACKEND "
                        "vs the reference (repeats default 2000)")
    return p.parse_args(argv)


def main(benches: Sequence[Bench], argv=None) -> list[dict]:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)  # also sets OpenMP's count for vdfast._C (same runtime)
    if a.overhead:
        rows = overhead(a.overhead, a.repeats or 2000, a.warmup if a.warmup is not None else 50,
                        a.workloads.split(",") if a.workloads else None)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median µs of "
              f"{a.repeats or 2000} interleaved calls\n\n" + overhead_markdown(rows))
        return finish(rows, a.json, None)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() and not a.smoke else "cpu"))
    repeats = a.repeats or (10 if a.smoke else 25)
    warmup = a.warmup if a.warmup is not None else (2 if a.smoke else 5)
    wanted = a.providers.split(",") if a.providers else None
    modes = a.modes.split(",")
    env = versions()
    copy_gbps = copy_bandwidth(device, (32 if a.smoke else 256) * 2**20)
    head = (f"device: {device_name(device)}; copy bandwidth {copy_gbps:.1f} GB/s; "
            f"torch {env['torch']}, triton {env['triton']}, vdfast {env['vdfast']}, "
            f"git {env['git_sha']}")
    print(head)
    tables = [head + f"; median of {repeats} calls after {warmup} warm-up calls"]
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
        if a.sweep:
            key, values = a.sweep.split("=", 1)
            base = dict(next(iter(workloads.values()), {}))
            workloads = {f"{key}={v}": {**base, key: int(v)} for v in values.split(",")}
        for name, shape in workloads.items():
            rows += run_case(bench, name, shape, device, dtype, provs, modes, repeats, warmup,
                             copy_gbps, env)
        tables.append(f"### {bench.op} ({str(dtype).replace('torch.', '')})\n\n"
                      + markdown([r for r in rows if r["op"] == bench.op]))
        print("\n" + tables[-1])
    if a.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(a.markdown)), exist_ok=True)
        with open(a.markdown, "w") as f:
            f.write("\n\n".join(tables) + "\n")
        print(f"\nwrote {a.markdown}")
    return finish(rows, a.json, a.compare)


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
