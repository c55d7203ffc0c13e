"""The GPU check's steps (run it as ``bash benchmarks/gpu_check.sh OUT_DIR``; docs/gpu_check.md).

Every step is its own process group with its own time limit (SIGINT at the limit, so pytest and
Python print what they have; SIGKILL 15 s later), all under one deadline (540 s by default, inside
the lent machine's 600 s per command) that is checked before each step: a step's limit is cut so
that each later step keeps its minimum (the e2e methods keep one as a group, the benchmarked ops
too), and a step whose minimum no longer fits is skipped and says so. ``summary.md`` is appended
(and fsynced) after every step, and every table with it, so what the
machine returns at any kill is readable. This file imports only the standard library: no failure of
torch, Triton, CUDA or vdfast can stop it.

Steps, in order:
  environment  the GPU, driver, torch, Triton, nvcc, cores, git commit
  build        vdfast._C with CUDA; if that fails, C++ only (VDFAST_NO_CUDA=1); if that fails too,
               no extension (VDFAST_NO_EXT=1: the Triton kernels still import)
  info         ``vdfast info`` with CUDA_LAUNCH_BLOCKING=1 (every backend's first-call check)
  tests        tests/test_ops_gpu.py -m gpu, one pytest process per (op, backend), in parallel
               (one per core), and one more for the other GPU tests (torch.compile, opcheck, the
               L2 flush): a kernel fault poisons only its own process's CUDA context. CUDA
               processes are skipped, not failed, when the CUDA build fell back. Verbose output
               with durations; a hung test is named (faulthandler's traceback at 90 s, and the
               last test line without an outcome)
  e2e          benchmarks/gpu_e2e.py, one process per method (dm, s2d-dm, mtt), 4 iterations
               and 1 profiled
  bench        benchmarks/bench_<op>.py at the published workloads (not the embedded dataset's
               builtin_* nor the CPU-sized small_*; 10 repeats; no torch.compile), one process per
               op, rows merged into ops.json after each

Files in OUT_DIR (at most 8 come back from the lent machine): summary.md, build.log, tests.log,
e2e.log, e2e.json, bench.log, ops.json. Scratch goes to --work.

``--rehearse`` runs the same control flow on a CPU machine: the build commands are stand-ins (the
installed extension is used), the op-test processes run the C++ cases of tests/test_ops_gpu.py in
place of the GPU ones, e2e and bench run at tiny sizes, limits are short. ``--faults`` injects
failures (benchmarks/gpu_check_faults.py): ``build-cuda``, ``build-cpp`` (a build that fails),
``kernel-fault:OP/BACKEND`` (an illegal-address error that poisons the rest of that process),
``abort:OP/BACKEND`` (that process dies of SIGABRT), ``hang:STEP`` (a step that overruns its limit:
``tests:OP/BACKEND``, ``e2e:METHOD``, ``bench:OP``, ``info``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = ("blend_static_dynamic", "dm_loss", "gradient_match", "guided_step", "normalize_clips",
       "trajectory_loss")
BACKENDS = ("cuda", "triton")
METHODS = ("dm", "s2d-dm", "mtt")
# the GPU tests outside tests/test_ops_gpu.py, in one more process: the Triton ops under
# torch.compile (aot_eager and inductor), opcheck of the triton_ops, the benchmark's L2 flush
OTHER = ("compile, opcheck, l2 flush", "gpu")
OTHER_FILES = ("tests/test_compile.py", "tests/test_op_schemas.py", "tests/test_bench.py")
GRACE_S = 15  # between SIGINT and SIGKILL

# (nominal limit, minimum worth starting) per step, in seconds, on the GPU machine. The minimums
# are what every later step keeps when an earlier one runs long.
LIMITS = {
    "environment": (30, 5), "build-cuda": (240, 30), "build-cpp": (150, 40),
    "build-none": (60, 15), "verify": (60, 10), "info": (90, 20), "tests": (200, 60),
    "e2e": (75, 30), "bench": (45, 10),
}
REHEARSAL_LIMITS = {
    "environment": (30, 5), "build-cuda": (30, 5), "build-cpp": (30, 5), "build-none": (30, 5),
    "verify": (60, 10), "info": (90, 20), "tests": (150, 30), "e2e": (60, 15), "bench": (45, 10),
}
# one op's benchmark at its published workloads: the bench's named workloads less the embedded
# dataset's preset (builtin_*) and the CPU crossover size (small_*); --smoke keeps the smoke ones
BENCH_PUBLISHED = """import os, sys
sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
import importlib
from harness_ops import main
bench = importlib.import_module("bench_" + sys.argv[1]).BENCH
argv = sys.argv[2:]
if "--smoke" not in argv:
    names = [k for k in bench.workloads if not k.startswith(("builtin", "small"))]
    argv += ["--workloads", ",".join(names)]
main([bench], argv)
"""


class Check:
    """One run of the check: the deadline, the report, the steps' outcomes."""

    def __init__(self, a):
        self.a = a
        self.t0 = time.monotonic()
        self.deadline = a.deadline
        self.out, self.work = a.out, a.work
        self.limits = dict(REHEARSAL_LIMITS if a.rehearse else LIMITS)
        for item in a.limit:
            step, _, sec = item.partition("=")
            if step not in self.limits:
                raise SystemExit(f"--limit {item}: no step {step!r}; choose among "
                                 f"{', '.join(self.limits)}")
            self.limits[step] = (float(sec), min(self.limits[step][1], float(sec)))
        self.py = a.python
        self.rows: list[tuple[str, str, float, str]] = []  # step, outcome, seconds, limit
        self.running: list[subprocess.Popen] = []
        self.failed = False
        os.makedirs(self.out, exist_ok=True)
        os.makedirs(self.work, exist_ok=True)
        self.summary = os.path.join(self.out, "summary.md")
        open(self.summary, "w").close()
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", TRITON_INTERPRET="0",
                        VDFAST_PROGRESS="0", PYTHONFAULTHANDLER="1")
        # the rehearsal's stand-in builds and injected faults (gpu_check_faults) are in benchmarks/
        path = [ROOT] + ([os.path.join(ROOT, "benchmarks")] if a.faults or a.rehearse else [])
        self.env["PYTHONPATH"] = os.pathsep.join(
            path + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
        if a.faults:
            self.env["GPU_CHECK_FAULTS"] = a.faults
        if a.rehearse:
            self.env["TRITON_INTERPRET"] = "1"  # Triton on CPU tensors, should a step reach it

    # -- time ---------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.deadline - self.elapsed()

    def budget(self, step: str, later: list[str]) -> float | None:
        """This step's limit: its nominal one, cut so that each later step keeps its minimum; None
        when not even its own minimum fits."""
        nominal, minimum = self.limits[step]
        reserve = sum(self.limits[s][1] for s in later)
        limit = min(nominal, self.left() - reserve - 2)
        return limit if limit >= minimum else None

    # -- the report -----------------------------------------------------------------------------
    def report(self, text: str) -> None:
        with open(self.summary, "a") as f:
            f.write(text.rstrip("\n") + "\n\n")
            f.flush()
            os.fsync(f.fileno())

    def record(self, step: str, outcome: str, seconds: float, limit) -> None:
        self.rows.append((step, outcome, seconds, "-" if limit is None else f"{limit:.0f} s"))
        if not outcome.startswith(("ok", "skipped")):
            self.failed = True

    def skip(self, step: str, why: str) -> None:
        self.record(step, f"skipped: {why}", 0.0, None)
        self.report(f"### {step}: skipped ({why})")

    # -- processes ------------------------------------------------------------------------------
    def start(self, cmd: list[str], log: str, env: dict | None = None) -> subprocess.Popen:
        f = open(log, "ab")
        f.write(f"$ {' '.join(shlex.quote(c) for c in cmd)}\n".encode())
        f.flush()
        p = subprocess.Popen(cmd, cwd=ROOT, env=env or self.env, stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        p._log, p._t0 = f, time.monotonic()
        self.running.append(p)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        """SIGINT to the process group, SIGKILL after the grace period."""
        for sig, wait in ((signal.SIGINT, GRACE_S), (signal.SIGKILL, 5)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def finish(self, p: subprocess.Popen, timed_out: bool) -> str:
        try:  # what the step left running in its group (a compile worker, a build's nvcc) goes too
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        p._log.close()
        if p in self.running:
            self.running.remove(p)
        rc = p.returncode
        if timed_out:
            return f"TIMED OUT (rc {rc})"
        if rc == 0:
            return "ok"
        if rc < 0:
            return f"CRASHED ({signal.Signals(-rc).name})"
        return f"FAILED (rc {rc})"

    def run(self, step: str, cmd: list[str], log: str, limit: float, env: dict | None = None):
        """Run one step to its end or its limit; (outcome, seconds)."""
        p = self.start(cmd, log, env)
        timed_out = False
        try:
            p.wait(limit)
        except subprocess.TimeoutExpired:
            timed_out = True
            with open(log, "ab") as f:
                f.write(f"\n=== {step}: time limit of {limit:.0f} s reached: SIGINT, SIGKILL "
                        f"{GRACE_S} s later ===\n".encode())
            self.stop(p)
        outcome = self.finish(p, timed_out)
        return outcome, time.monotonic() - p._t0

    def kill_all(self) -> None:
        for p in list(self.running):
            self.stop(p)
            p._log.close()
        self.running.clear()

    # -- steps ----------------------------------------------------------------------------------
    def environment(self) -> None:
        lim = self.budget("environment", ["build-cuda", "info", "tests", "e2e", "bench"])
        log = os.path.join(self.work, "environment.log")
        self._arch()
        probes = [
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
             "--format=csv,noheader"],
            [self.py, "-c", "import sys, torch; print('python', sys.version.split()[0], 'torch', "
                            "torch.__version__, 'cuda', torch.version.cuda, 'device', "
                            "torch.cuda.get_device_name() if torch.cuda.is_available() else None)"],
            [self.py, "-c", "import triton; print('triton', triton.__version__)"],
            ["nvcc", "--version"],
            ["git", "rev-parse", "--short", "HEAD"],
        ]
        t0 = time.monotonic()
        lines = []
        for cmd in probes:
            left = (lim or 10) - (time.monotonic() - t0)
            try:
                r = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True,
                                   timeout=max(left, 1))
                out = (r.stdout + r.stderr).strip().splitlines()
                lines.append(out[-1] if out else f"{cmd[0]}: rc {r.returncode}")
            except Exception as e:
                lines.append(f"{cmd[0]}: {type(e).__name__}: {e}")
        lines.append(f"cores {os.cpu_count()}  MAX_JOBS {self.env.get('MAX_JOBS')}  "
                     f"TORCH_CUDA_ARCH_LIST {self.env.get('TORCH_CUDA_ARCH_LIST')}  deadline "
                     f"{self.deadline:.0f} s" + ("  REHEARSAL on a CPU" if self.a.rehearse else "")
                     + (f"  faults: {self.a.faults}" if self.a.faults else ""))
        with open(log, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.record("environment", "ok", time.monotonic() - t0, lim)
        self.report("# vdfast GPU check\n\n```\n" + "\n".join(lines) + "\n```")

    def _arch(self) -> None:
        if "TORCH_CUDA_ARCH_LIST" not in self.env:
            try:
                r = subprocess.run([self.py, "-c", "import torch; print('%d.%d' % "
                                    "torch.cuda.get_device_capability())"],
                                   env=self.env, capture_output=True, text=True, timeout=30)
                self.env["TORCH_CUDA_ARCH_LIST"] = r.stdout.strip() or "9.0"
            except Exception:
                self.env["TORCH_CUDA_ARCH_LIST"] = "9.0"
        self.env.setdefault("MAX_JOBS", str(os.cpu_count() or 1))

    def build(self) -> str:
        """Three levels; returns the one that stands: 'cuda', 'cpp' or 'none'."""
        log = os.path.join(self.out, "build.log")
        open(log, "w").close()
        later = ["info", "tests", "e2e", "bench"]
        levels = [("cuda", "build-cuda", {}, ["build-cpp", "build-none"],
                   "import vdfast._C as C; assert C.WITH_CUDA, 'vdfast._C was built without CUDA'"),
                  ("cpp", "build-cpp", {"VDFAST_NO_CUDA": "1"}, ["build-none"],
                   "import vdfast._C"),
                  ("none", "build-none", {"VDFAST_NO_EXT": "1"}, [],
                   "import vdfast, vdfast._kernels, vdfast.ops")]
        if self.a.rehearse:  # a CPU build of the extension carries no CUDA
            levels[0] = levels[0][:4] + ("import vdfast._C",)
        lines = []
        for level, step, extra, fallbacks, verify in levels:
            lim = self.budget(step, fallbacks + later)
            if lim is None:
                self.skip(step, f"{self.left():.0f} s left of the {self.deadline:.0f} s deadline")
                continue
            env = dict(self.env, **extra)
            with open(log, "a") as f:
                f.write(f"\n=== {step}: {' '.join(f'{k}={v}' for k, v in extra.items())} ===\n")
            if not self.a.rehearse and level != "cuda":
                self._remove_stale_extension(log)
            outcome, sec = self.run(step, self._build_cmd(step), log, lim, env)
            if outcome == "ok":
                vlim = min(self.limits["verify"][0], max(self.left() - 5, 5))
                vout, vsec = self.run(f"{step} import", [self.py, "-c", verify], log, vlim, env)
                sec += vsec
                if vout != "ok":
                    outcome = f"built, but the import check failed: {vout}"
            self.record(step, outcome, sec, lim)
            lines.append(f"| {step} | {outcome} | {sec:.0f} s | {lim:.0f} s |")
            if outcome == "ok":
                self.level = level
                if level != "cuda":
                    self.env.update(extra)
                break
        else:
            self.level = "failed"
        what = {"cuda": "CUDA + C++", "cpp": "C++ only: the CUDA build failed (build.log); the CUDA "
                "tests are skipped", "none": "no extension: the CUDA and C++ builds failed "
                "(build.log); Triton and the reference only", "failed": "every build level failed"}
        self.report("## Build\n\n| step | outcome | time | limit |\n|---|---|---|---|\n"
                    + "\n".join(lines) + f"\n\nExtension: **{what[self.level]}**")
        return self.level

    def _build_cmd(self, step: str) -> list[str]:
        if self.a.rehearse:
            return [self.py, "-m", "gpu_check_faults", "build", step]
        return [self.py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
                "-v", "-e", "."]

    def _remove_stale_extension(self, log: str) -> None:
        """A lower build level must not import the extension a failed higher level left behind."""
        stale = [f for f in os.listdir(os.path.join(ROOT, "vdfast")) if re.match(r"_C\..*\.so$", f)]
        for f in stale:
            os.replace(os.path.join(ROOT, "vdfast", f), os.path.join(self.work, f))
        if stale:
            with open(log, "a") as fh:
                fh.write(f"moved aside: {', '.join(stale)}\n")

    def info(self) -> None:
        lim = self.budget("info", ["tests", "e2e", "bench"])
        if lim is None:
            return self.skip("info", f"{self.left():.0f} s left")
        log = os.path.join(self.work, "info.log")
        env = dict(self.env, CUDA_LAUNCH_BLOCKING="1", GPU_CHECK_TASK="info")
        cmd = ([self.py, "-m", "gpu_check_faults", "run-module", "vdfast", "info"]
               if self.a.faults else [self.py, "-m", "vdfast", "info"])
        outcome, sec = self.run("info", cmd, log, lim, env)
        self.record("info", outcome, sec, lim)
        text = open(log, errors="replace").read().splitlines()[1:]
        self.report(f"## vdfast info (CUDA_LAUNCH_BLOCKING=1): {outcome}, {sec:.0f} s\n\n```\n"
                    + "\n".join(text[-90:]) + "\n```")

    def tests(self) -> None:
        lim = self.budget("tests", ["e2e", "bench"])
        if lim is None:
            return self.skip("tests", f"{self.left():.0f} s left")
        log = os.path.join(self.out, "tests.log")
        open(log, "w").close()
        tasks = [(o, b) for o in self.a.ops for b in BACKENDS] + ([OTHER] if self.a.other else [])
        jobs = max(1, min(self.a.jobs or os.cpu_count() or 1, len(tasks)))
        self.report(f"## Op tests: one process per (op, backend), {jobs} at a time, limit "
                    f"{lim:.0f} s\n\n| op / backend | outcome | passed | failed | skipped | "
                    "time | failures, or the test running at the end |\n|---|---|---|---|---|---|---|")
        t_end = time.monotonic() + lim
        t0 = time.monotonic()
        queue, active, results = list(tasks), {}, []
        while queue or active:
            while queue and len(active) < jobs:
                o, b = queue.pop(0)
                if b == "cuda" and self.level != "cuda":
                    self._test_row(o, b, "skipped: no CUDA build", {}, 0.0, "")
                    continue
                if time.monotonic() > t_end - 5:
                    self._test_row(o, b, "skipped: the step's time was up", {}, 0.0, "")
                    continue
                part = os.path.join(self.work, f"tests-{o}-{b}.log".replace(" ", "_"))
                # launches synchronous: a kernel's fault is reported by the test that made it
                env = dict(self.env, GPU_CHECK_TASK=f"tests:{o}/{b}", CUDA_LAUNCH_BLOCKING="1")
                active[(o, b)] = (self.start(self._pytest_cmd(o, b), part, env), part)
            time.sleep(0.2)
            for key, (p, part) in list(active.items()):
                timed_out = False
                if p.poll() is None:
                    if time.monotonic() < t_end:
                        continue
                    timed_out = True
                    self.stop(p)
                outcome = self.finish(p, timed_out)
                del active[key]
                self._test_done(key, outcome, part, log, time.monotonic() - p._t0)
                results.append(outcome)
        outcome = "ok" if all(r == "ok" for r in results) else \
            f"{sum(r != 'ok' for r in results)} of {len(results)} processes not ok"
        self.record("tests", outcome, time.monotonic() - t0, lim)

    def _pytest_cmd(self, o: str, b: str) -> list[str]:
        cmd = [self.py, "-m", "pytest", "-v", "-rfE", "--durations=15", "-p", "no:cacheprovider",
               "-o", "faulthandler_timeout=90"]
        if self.a.faults:
            cmd += ["-p", "gpu_check_faults"]
        if (o, b) == OTHER:  # on a CPU every one of them skips: the rehearsal runs them so
            return cmd + list(OTHER_FILES) + ["-m", "gpu"]
        cmd.append("tests/test_ops_gpu.py")
        if self.a.rehearse:  # the C++ cases stand in for the GPU ones
            return cmd + ["-m", "not gpu", "-k", f"{o}-cpp"]
        return cmd + ["-m", "gpu", "-k", f"{o}-{'triton-gpu' if b == 'triton' else b}"]

    _OUTCOME = re.compile(r"^(tests/\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")

    def _test_done(self, key, outcome, part, log, sec) -> None:
        o, b = key
        text = open(part, errors="replace").read()
        counts, failures, last = {}, [], ""
        for line in text.splitlines():
            m = self._OUTCOME.match(line)
            if m:
                counts[m.group(2)] = counts.get(m.group(2), 0) + 1
                if m.group(2) in ("FAILED", "ERROR"):
                    failures.append(m.group(1).split("::")[-1])
                last = ""
            elif line.startswith("tests/") and "::" in line:
                last = line.split()[0].split("::")[-1]  # started, no outcome yet
        note = ", ".join(failures[:3]) + (f" (+{len(failures) - 3})" if len(failures) > 3 else "")
        errors = [x[1:].strip() for x in text.splitlines() if x.startswith("E ") and "Error" in x]
        if failures and errors:  # the first failure's exception: the culprit of a poisoned process
            note += f"; first error: {errors[0][:160]}"
        if last and outcome != "ok":
            note = (note + "; " if note else "") + f"running at the end: {last}"
        if outcome != "ok" and not counts and not last:
            tail = [x for x in text.splitlines() if x.strip()][-1:] or [""]
            note = tail[0][:160]
        with open(log, "a") as f:
            f.write(f"\n{'=' * 30} {o} / {b}: {outcome}, {sec:.0f} s {'=' * 30}\n{text}")
        self._test_row(o, b, outcome, counts, sec, note)

    def _test_row(self, o, b, outcome, counts, sec, note) -> None:
        with open(self.summary, "r+") as f:  # rows go under the table: drop its closing blank line
            f.seek(0, os.SEEK_END)
            f.seek(f.tell() - 1)
            f.truncate()
            f.write(f"| {o} / {b} | {outcome} | {counts.get('PASSED', 0)} | "
                    f"{counts.get('FAILED', 0) + counts.get('ERROR', 0)} | "
                    f"{counts.get('SKIPPED', 0)} | {sec:.0f} s | {note.replace('|', '/')} |\n\n")
            f.flush()
            os.fsync(f.fileno())

    def e2e(self) -> None:
        log = os.path.join(self.out, "e2e.log")
        open(log, "w").close()
        work = os.path.join(self.work, "e2e")
        self.report("## End to end (benchmarks/gpu_e2e.py, one process per method)")
        for i, m in enumerate(self.a.methods):
            # a group (the methods, the ops) keeps one minimum: its first members run in full,
            # the last ones are skipped when time runs short
            lim = self.budget("e2e", ["bench"])
            if lim is None:
                self.skip(f"e2e {m}", f"{self.left():.0f} s left")
                continue
            env = dict(self.env, GPU_CHECK_TASK=f"e2e:{m}")
            script = ["benchmarks/gpu_e2e.py", work, "--methods", m] + self.a.e2e_args
            cmd = [self.py] + (["-m", "gpu_check_faults", "run"] if self.a.faults else []) + script
            outcome, sec = self.run(f"e2e {m}", cmd, log, lim, env)
            self.record(f"e2e {m}", outcome, sec, lim)
            prof = os.path.join(work, m, "profile", "summary.md")
            if os.path.exists(prof):
                with open(log, "a") as f:
                    f.write(f"\n=== profile of {m} ===\n" + open(prof).read())
            table = os.path.join(work, "e2e.md")
            if os.path.exists(os.path.join(work, "e2e.json")):
                with open(os.path.join(work, "e2e.json")) as f, \
                        open(os.path.join(self.out, "e2e.json"), "w") as g:
                    g.write(f.read())
            self.report(f"### e2e {m}: {outcome}, {sec:.0f} s of {lim:.0f} s\n\n"
                        + (open(table).read() if os.path.exists(table) else "(no table)"))

    def bench(self) -> None:
        log = os.path.join(self.out, "bench.log")
        open(log, "w").close()
        rows = []
        runner = os.path.join(self.work, "bench_published.py")
        with open(runner, "w") as f:
            f.write(BENCH_PUBLISHED)
        self.report("## Op benchmarks (bench_<op>.py" + (" --smoke" if self.a.rehearse else
                    ": the published workloads, no builtin_* or small_*") + ", no torch.compile; "
                    "one process per op)")
        for i, o in enumerate(self.a.ops):
            lim = self.budget("bench", [])
            if lim is None:
                self.skip(f"bench {o}", f"{self.left():.0f} s left")
                continue
            js, md = (os.path.join(self.work, f"ops-{o}.{x}") for x in ("json", "md"))
            env = dict(self.env, GPU_CHECK_TASK=f"bench:{o}")
            script = [runner, o, "--no-compile", "--json", js, "--markdown", md]
            script += ["--smoke"] if self.a.rehearse else ["--repeats", "10", "--warmup", "3"]
            cmd = [self.py] + (["-m", "gpu_check_faults", "run"] if self.a.faults else []) + script
            outcome, sec = self.run(f"bench {o}", cmd, log, lim, env)
            self.record(f"bench {o}", outcome, sec, lim)
            if os.path.exists(js):
                rows += json.load(open(js))
                with open(os.path.join(self.out, "ops.json.tmp"), "w") as f:
                    json.dump(rows, f, indent=1)
                os.replace(os.path.join(self.out, "ops.json.tmp"), os.path.join(self.out, "ops.json"))
            table = open(md).read().split("\n\n", 1) if os.path.exists(md) else ["", "(no table)"]
            self.report(f"### bench {o}: {outcome}, {sec:.0f} s of {lim:.0f} s\n\n"
                        + (table[0] + "\n\n" if i == 0 else "") + table[-1])

    def steps_table(self, note: str = "") -> None:
        lines = ["## Steps", "", "| step | outcome | time | limit |", "|---|---|---|---|"]
        lines += [f"| {s} | {o} | {t:.0f} s | {lim} |" for s, o, t, lim in self.rows]
        skipped = sum(o.startswith("skipped") for _, o, _, _ in self.rows)
        verdict = ("some step failed" if self.failed else
                   "every step that ran is ok" if skipped else "every step ok")
        lines += ["", f"total {self.elapsed():.0f} s of the {self.deadline:.0f} s deadline; {verdict}"
                  + (f"; {skipped} skipped" if skipped else "") + note]
        self.report("\n".join(lines))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default=os.environ.get("OUT") or "runs/gpu-check")
    p.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    p.add_argument("--python", default=os.environ.get("PYTHON", sys.executable),
                   help="the Python with torch (default: this one)")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds for everything (default 540; rehearsal 300)")
    p.add_argument("--jobs", type=int, default=0, help="op-test processes at a time (default: cores)")
    p.add_argument("--ops", default=",".join(OPS), help="comma list of ops (default: all)")
    p.add_argument("--methods", default=",".join(METHODS), help="e2e methods")
    p.add_argument("--no-other", dest="other", action="store_false",
                   help="leave out the GPU tests outside tests/test_ops_gpu.py")
    p.add_argument("--rehearse", action="store_true",
                   help="the control flow on a CPU machine: stand-in builds, C++ op tests, tiny sizes")
    p.add_argument("--limit", action="append", default=[], metavar="STEP=SECONDS",
                   help="override a step's limit (steps: " + ", ".join(LIMITS) + ")")
    p.add_argument("--faults", default=os.environ.get("GPU_CHECK_FAULTS", ""),
                   help="comma list of injected failures (see the module's docstring)")
    a = p.parse_args(argv)
    a.ops = [o for o in a.ops.split(",") if o]
    unknown = sorted(set(a.ops) - set(OPS))
    if unknown:
        p.error(f"unknown ops {unknown}; choose among {', '.join(OPS)}")
    a.methods = [m for m in a.methods.split(",") if m]
    a.deadline = a.deadline or (300.0 if a.rehearse else 540.0)
    a.work = a.work or tempfile.mkdtemp(prefix="vdfast-gpu-check.")
    a.out = os.path.abspath(a.out)
    a.e2e_args = (["--device", "cpu", "--classes", "3", "--frames", "4", "--size", "32",
                   "--per-class", "4", "--iterations", "3", "--profile", "1", "--width", "8",
                   "--depth", "2"] if a.rehearse
                  else ["--iterations", "4", "--profile", "1"])  # MiniUCF's shapes, published net
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    c = Check(a)

    def interrupted(signum, frame):
        c.kill_all()
        c.steps_table(f"; the check itself got {signal.Signals(signum).name} at "
                      f"{c.elapsed():.0f} s")
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    c.level = "none"
    for name in ("environment", "build", "info", "tests", "e2e", "bench"):
        try:
            getattr(c, name)()
        except Exception as e:  # a bug here must not cost the later steps
            c.kill_all()
            c.record(name, f"FAILED in gpu_check.py: {type(e).__name__}: {e}", 0.0, None)
            c.report(f"### {name}: gpu_check.py failed: {type(e).__name__}: {e}")
    c.steps_table()
    print(open(c.summary).read())
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
