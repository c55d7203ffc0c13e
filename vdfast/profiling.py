"""Profiling a distillation run: ``vdfast distill --profile N`` (``distill(..., profile=N)``).

The loop runs ``WARMUP`` iterations unrecorded (one-time work: Triton compiles, cuDNN autotuning,
the dispatch probes), then records the next ``N`` with ``torch.profiler`` (CPU, and CUDA on a GPU)
and writes into ``OUT/profile/``:

* ``trace.json`` (``trace.rank<r>.json`` on N processes): a Chrome trace for ``ui.perfetto.dev``
  or ``chrome://tracing``;
* ``summary.md``: milliseconds per iteration while recorded, the time of vdfast's own ranges and
  the top operators by self time.

vdfast's own ranges, named so a trace reads by what the engine does:

* ``vdfast.iteration`` — one loop iteration;
* ``vdfast.<op>[<backend>]`` — a fused op's forward, with the backend the dispatch chose, and
  ``vdfast.<op>.backward`` — its fused backward;
* ``vdfast.sample_real`` (a batch of real clips from the store), ``vdfast.synset.videos`` (the
  synthetic videos from their parameters), and a method's own phases (``vdfast.mtt.unroll`` ...).

A range costs one check of a flag when no profiler is recording.
"""
from __future__ import annotations

import contextlib
import functools
import json
import time
from pathlib import Path

import torch

WARMUP = 2
ITERATION = "vdfast.iteration"


def recording() -> bool:
    """Whether a torch profiler is recording now."""
    return torch.autograd._profiler_enabled()


def span(name: str):
    """A named range in the trace while a profiler records; nothing otherwise."""
    if recording():
        return torch.profiler.record_function(name)
    return contextlib.nullcontext()


def traced(name: str):
    """Decorator: the function's calls are the range ``name`` while a profiler records."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kw):
            if not recording():
                return fn(*args, **kw)
            with torch.profiler.record_function(name):
                return fn(*args, **kw)
        return wrapper
    return deco


def check_request(n: int, left: int, method: str, iterative: bool, out) -> None:
    """Refuse a ``profile`` request the run cannot meet, before any work."""
    from vdfast.config import ConfigError

    if not n:
        return
    if not iterative:
        raise ConfigError(f"--profile records loop iterations; {method} has no loop (its work "
                          f"is done once, in init): leave --profile at 0, or wrap vdfast.distill "
                          f"in torch.profiler.profile() from Python")
    if out is None:
        raise ConfigError("--profile writes OUT/profile/trace.json; pass out= (--out)")
    if left < WARMUP + n:
        raise ConfigError(f"--profile {n} records {n} iterations after {WARMUP} warm-up ones, but "
                          f"this run has {left} iteration(s) left; lower --profile to at most "
                          f"{max(left - WARMUP, 0)} or raise --iterations")


class LoopProfiler:
    """Records iterations ``first .. first + n - 1`` of the loop (``first`` = the run's start +
    ``WARMUP``). Call :meth:`iteration` around each iteration; :meth:`close` after the loop."""

    def __init__(self, n: int, start: int, out: Path, device: torch.device, rank: int = 0,
                 world: int = 1, title: str = ""):
        self.n, self.first = n, start + WARMUP
        self.dir = Path(out) / "profile" if out is not None else None  # needed when n > 0
        self.device, self.rank, self.world, self.title = device, rank, world, title
        self.prof = None
        self.summary: dict | None = None

    @contextlib.contextmanager
    def iteration(self, it: int):
        if not self.n or not self.first <= it < self.first + self.n:
            yield
            return
        if it == self.first:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=acts, record_shapes=True)
            self._sync()
            self.prof.start()
            self.t0 = time.perf_counter()
        with torch.profiler.record_function(ITERATION):
            yield
        if it == self.first + self.n - 1:
            self._sync()
            self.wall = time.perf_counter() - self.t0
            self.prof.stop()
            self._write()

    def close(self):
        """Stop a recording the loop left early (an exception): its trace is still written."""
        if self.prof is not None and self.summary is None:
            with contextlib.suppress(Exception):
                self.wall = time.perf_counter() - self.t0
                self.prof.stop()
                self._write()

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _write(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        name = "trace.json" if self.world == 1 else f"trace.rank{self.rank}.json"
        self.prof.export_chrome_trace(str(self.dir / name))
        self.summary = summarize(self.prof, self.n, self.device, self.wall)
        self.summary.update(first=self.first, trace=str(self.dir / name), processes=self.world)
        if self.rank == 0:
            (self.dir / "summary.md").write_text(render(self.summary, self.title) + "\n")
            (self.dir / "summary.json").write_text(json.dumps(self.summary, indent=1))


def _device_self_us(e) -> float:
    return float(getattr(e, "self_device_time_total", 0) or 0)


def summarize(prof, n: int, device: torch.device, wall_s: float, top: int = 20) -> dict:
    """Per-iteration figures from a finished recording of ``n`` iterations that took ``wall_s``
    (synchronised with the device at both ends)."""
    its = [e.cpu_time_total / 1e3 for e in prof.events() if e.name == ITERATION]
    n = len(its) or n  # fewer when the loop left early
    avg = prof.key_averages()
    total = sum(its) or 1.0
    ranges = [{"name": e.key, "calls_per_it": e.count / n, "ms_per_it": e.cpu_time_total / 1e3 / n,
               "share": e.cpu_time_total / 1e3 / total}
              for e in avg if e.key.startswith("vdfast.") and e.key != ITERATION]
    ranges.sort(key=lambda r: -r["ms_per_it"])
    cuda = device.type == "cuda"
    ops = [e for e in avg if not e.key.startswith(("vdfast.", "ProfilerStep"))]
    key = _device_self_us if cuda else (lambda e: e.self_cpu_time_total)
    ops.sort(key=lambda e: -key(e))
    dev_total = sum(_device_self_us(e) for e in ops) or 1.0
    rows = []
    for e in ops[:top]:
        r = {"name": e.key, "calls_per_it": e.count / n,
             "self_cpu_ms_per_it": e.self_cpu_time_total / 1e3 / n,
             "cpu_share": e.self_cpu_time_total / 1e3 / total}
        if cuda:
            r.update(self_cuda_ms_per_it=_device_self_us(e) / 1e3 / n,
                     cuda_share=_device_self_us(e) / dev_total)
        rows.append(r)
    return {"iterations": n, "ms_per_it": 1e3 * wall_s / n, "ms_per_it_each": its,
            "device": str(device), "ranges": ranges, "top_ops": rows,
            "sort": "self CUDA time" if cuda else "self CPU time"}


def render(s: dict, title: str = "") -> str:
    """``summary.md``: the recorded iterations' time, vdfast's ranges and the top operators."""
    each = ", ".join(f"{v:.1f}" for v in s["ms_per_it_each"])
    lines = [f"# Profile{': ' + title if title else ''}", "",
             f"{s['iterations']} iterations recorded from iteration {s['first'] + 1} (after "
             f"{WARMUP} warm-up ones) on {s['device']}, {s.get('processes', 1)} process(es): "
             f"{s['ms_per_it']:.1f} ms per iteration (wall clock; the CPU side of each: {each}); "
             f"the profiler's own cost is included. "
             f"Trace: `{Path(s['trace']).name}` (open in ui.perfetto.dev or chrome://tracing).", "",
             "## vdfast ranges (inclusive CPU time; fused ops name the backend that ran)", "",
             "| range | calls/it | ms/it | % of iteration |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['calls_per_it']:g} | {r['ms_per_it']:.2f} | "
              f"{100 * r['share']:.1f} |" for r in s["ranges"]]
    cuda = s["sort"] == "self CUDA time"
    lines += ["", f"## Top operators by {s['sort']}", "",
              "| operator | calls/it | self CPU ms/it | % of iteration |"
              + (" self CUDA ms/it | % of CUDA |" if cuda else ""),
              "|---|---|---|---|" + ("---|---|" if cuda else "")]
    for r in s["top_ops"]:
        row = (f"| {r['name']} | {r['calls_per_it']:g} | {r['self_cpu_ms_per_it']:.2f} | "
               f"{100 * r['cpu_share']:.1f} |")
        if cuda:
            row += f" {r['self_cuda_ms_per_it']:.2f} | {100 * r['cuda_share']:.1f} |"
        lines.append(row)
    return "\n".join(lines)


def headline(s: dict, top: int = 5) -> str:
    """A few lines for the console."""
    ops = ", ".join(f"{r['name']} {100 * r.get('cuda_share', r['cpu_share']):.0f} %"
                    for r in s["top_ops"][:top])
    fused = ", ".join(f"{r['name']} {100 * r['share']:.0f} %" for r in s["ranges"][:top])
    return (f"profile: {s['iterations']} iterations, {s['ms_per_it']:.1f} ms/it -> "
            f"{Path(s['trace']).parent}/ (summary.md, {Path(s['trace']).name})\n"
            f"  vdfast ranges: {fused or 'none'}\n  top operators by {s['sort']}: {ops}")
