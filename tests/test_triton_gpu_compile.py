"""Every Triton kernel variant the ops launch on a GPU compiles for the H100/H200 (sm_90), on this
CPU machine, specialised as Triton's JIT specialises it there.

The launches come from three sources, each through the Triton backend with the block sizes a GPU
launch uses (``VDFAST_TRITON_GPU_SIZES=1``), forward and backward, in each dtype the backend takes:
every case of ``tests/test_ops_gpu.py`` (odd shapes, strided inputs, the grids past 65535 blocks),
the dispatch's first-call check input, and the published workloads of ``benchmarks/bench_<op>.py``.
Only the benchmark's smoke cases in float64 are executed (in the CPU interpreter, and must match the
reference: the GPU's tiling computes the right values); every other launch is only recorded (its
outputs stay uninitialised).

Each launch is recorded with the specialisation Triton's JIT computes from the same arguments for
an sm_90 backend (``create_function_from_signature``, as ``JITFunction.run`` does): an integer equal
to 1 becomes a constant, pointers and integers divisible by 16 carry ``tt.divisibility``, and the
launch options (``num_warps``) are kept. The distinct variants are compiled ahead of time, in a
child process from the kernel module made with the real ``triton.jit``, by ``triton.compile`` for
``GPUTarget("cuda", 90, 32)``, through ptxas to a cubin; ptxas' own report (registers, stack frame,
spill stores) is read for each, and a variant that spills fails. The published workloads are
recorded in every dtype but float64. What this cannot show is that the cubin computes the right
values: ``pytest -m gpu`` on a GPU (``benchmarks/gpu_check.sh``) does that.
"""
import inspect
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from harness_ops import discover, make_call  # benchmarks/ is on sys.path (conftest.py)
from tolerances import TOL

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import make_backend  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402
from triton.runtime.jit import KernelParam, create_function_from_signature  # noqa: E402

from vdfast.ops.dispatch import _forward_and_grads as _check_call  # noqa: E402
from vdfast.ops.dispatch import op  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="runs the kernels in Triton's CPU interpreter")

BENCHES = {b.op: b for b in discover()}
SM90 = make_backend(GPUTarget("cuda", 90, 32))

# the interpreter's time grows with the number of program instances: GPU-sized blocks over the
# 37 x 37 smoke frames take ~30 s per dtype
SHAPES = {"blend_static_dynamic": dict(N=2, Ns=2, Nd=2, T=3, H=11, W=11)}


def _binder(fn):
    """Triton's JIT binder for ``fn`` on an sm_90 backend (no do_not_specialize: the kernels here
    set none)."""
    if not hasattr(fn, "_sm90_binder"):
        sig = inspect.signature(fn)
        params = [KernelParam(i, p, False, False) for i, p in enumerate(sig.parameters.values())]
        fn._sm90_binder = create_function_from_signature(sig, params, SM90)
    return fn._sm90_binder


def _json_value(v):
    if isinstance(v, triton.language.dtype):
        return "tl." + v.name
    return v


def _record_launches(monkeypatch, execute):
    """Patch the interpreter's launch to record each distinct (kernel, specialisation, options); the
    launch runs as usual while ``execute[0]``, else is skipped (its outputs stay uninitialised)."""
    launches = {}
    run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        _, spec, options = _binder(self.fn)(*args, **kwargs)
        item = {"path": inspect.getsourcefile(self.fn), "name": self.fn.__name__,
                "params": list(inspect.signature(self.fn).parameters),
                "spec": [[ty, _json_value(attr)] for ty, attr in spec],
                "options": dict(options)}
        launches.setdefault(json.dumps(item, sort_keys=True), item)
        if execute[0]:
            return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", recording_run)
    return launches


def _run_bench(bench, shapes, dtype, with_reference):
    """(mode, Triton's result, the reference's or None) for each of ``shapes`` and mode."""
    gen = torch.Generator().manual_seed(0)
    outs = []
    for shape in shapes:
        case = bench.setup(device=torch.device("cpu"), dtype=dtype, gen=gen, **shape)
        for mode in case.modes:
            got = make_call(lambda *a: case.vdfast(*a, backend="triton"), case, mode)()
            want = make_call(case.reference, case, mode)() if with_reference else None
            outs.append((mode, got, want))
    return outs


def _record_gpu_test_cases(name, dtype):
    """The launches of every ``tests/test_ops_gpu.py`` case of the Triton backend in ``dtype``."""
    import test_ops_gpu as g  # tests/ is on sys.path under pytest's default import mode

    cases = [(s, strided) for s in g.SHAPES[name] for strided in (False, True)]
    if dtype == torch.float32:
        cases += [(s, False) for s in g.LARGE.get(name, [])]
    for shape, strided in cases:
        case = g.BENCHES[name].setup(device=torch.device("cpu"), dtype=dtype,
                                     gen=torch.Generator().manual_seed(0), **shape)
        args = g._map(case.args, g._strided) if strided else case.args
        for mode in case.modes:
            fast = g._map(args, lambda t: t.detach().requires_grad_(mode != "fwd")
                          if t.is_floating_point() else t)
            g._forward_and_grads(lambda *a: case.vdfast(*a, backend="triton"), fast, mode)


def _flat(x):
    if isinstance(x, torch.Tensor):
        return [x]
    return [t for item in x for t in _flat(item)] if isinstance(x, (list, tuple)) else []


# Compiled in a child process: once the interpreter has run, it has patched triton.language for
# itself (tl.program_id and the rest), and a real compile in the same process fails. ptxas' -v
# report (TRITON_DUMP_PTXAS_LOG=1: Triton prints it) is captured per variant.
_COMPILE = r"""
import contextlib, importlib.util, io, json, re, sys
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend

target = GPUTarget("cuda", 90, 32)
backend = make_backend(target)
mods, failed, report = {}, [], []
for it in json.load(sys.stdin):
    path = it["path"]
    if path not in mods:
        spec = importlib.util.spec_from_file_location("_gpu_copy_%d" % len(mods), path)
        mods[path] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mods[path])
    sig, const, attrs = {}, {}, {}
    for i, (name, (ty, attr)) in enumerate(zip(it["params"], it["spec"])):
        sig[name] = ty
        if ty == "constexpr":
            const[(i,)] = tl.dtype(attr[3:]) if isinstance(attr, str) and attr.startswith("tl.") else attr
        elif isinstance(attr, str) and attr:
            attrs[(i,)] = backend.parse_attr(attr)
    what = "%s %s %s" % (it["name"], it["spec"], it["options"])
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            c = triton.compile(ASTSource(fn=getattr(mods[path], it["name"]), signature=sig,
                                         constexprs=const, attrs=attrs),
                               target=target, options=it["options"])
        assert c.asm.get("cubin"), "no cubin"
    except Exception as e:
        failed.append("%s: %s" % (what, str(e)[-2000:]))
        continue
    text = log.getvalue()
    regs = re.findall(r"Used (\d+) registers", text)
    spill = re.findall(r"(\d+) bytes spill stores", text)
    stack = re.findall(r"(\d+) bytes stack frame", text)
    report.append({"variant": what, "registers": int(regs[-1]) if regs else None,
                   "spill_stores": int(spill[-1]) if spill else None,
                   "stack_frame": int(stack[-1]) if stack else None})
print(json.dumps({"failed": failed, "report": report}))
"""


def _compile_sm90(launches, cache):
    """Compile every recorded variant for sm_90 in child processes, one per core (Triton's cache
    in ``cache``: a fresh compile, not an earlier run's cubin); returns ptxas' report per variant."""
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(cache),
               TRITON_DUMP_PTXAS_LOG="1")
    items = list(launches.values())
    n = max(1, min(os.cpu_count() or 1, 4, len(items)))
    children = [subprocess.Popen([sys.executable, "-c", _COMPILE], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
                for _ in range(n)]
    failed, report = [], []
    for i, child in enumerate(children):
        child.stdin.write(json.dumps(items[i::n]))
        child.stdin.close()
    for child in children:
        out = child.stdout.read()
        err = child.stderr.read()
        assert child.wait(timeout=900) == 0, f"the sm_90 compile crashed:\n{out[-3000:]}\n{err[-3000:]}"
        res = json.loads(out.strip().splitlines()[-1])
        failed += res["failed"]
        report += res["report"]
    assert not failed, "does not compile for sm_90:\n" + "\n".join(failed)
    return report


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BENCHES))
def test_gpu_launches_compile_for_sm90(name, monkeypatch, tmp_path):
    monkeypatch.setenv("VDFAST_TRITON_GPU_SIZES", "1")
    monkeypatch.delenv("VDFAST_BACKEND", raising=False)
    execute = [True]
    launches = _record_launches(monkeypatch, execute)
    bench, o = BENCHES[name], op(name)
    t0 = time.perf_counter()
    for dtype in o.impls["triton"].dtypes:
        # the smoke cases, executed in float64 and compared with the reference
        execute[0] = dtype == torch.float64
        smoke = [SHAPES[name]] if name in SHAPES else list(bench.smoke.values())
        for mode, got, want in _run_bench(bench, smoke, dtype, with_reference=execute[0]):
            if want is None:
                continue
            for g, w in zip(_flat(got), _flat(want)):
                torch.testing.assert_close(g, w, **TOL[dtype],
                                           msg=lambda m: f"{name} {mode} at GPU sizes: {m}")
        # recorded only: the GPU tests' cases, the first-call check's input, the published workloads
        execute[0] = False
        _record_gpu_test_cases(name, dtype)
        public, make = o.check
        args, kwargs = make(torch.device("cpu"), dtype, torch.Generator().manual_seed(0))
        _check_call(public, args, kwargs, "triton")
        if dtype != torch.float64:  # no one runs the published sizes in float64 on a GPU (and
            # recording them costs minutes of host work here: ~90 s for blend's ipc-5 workload)
            _run_bench(bench, list(bench.workloads.values()), dtype, with_reference=False)
    assert launches, f"{name}: the Triton backend made no launch"
    t1 = time.perf_counter()
    report = _compile_sm90(launches, tmp_path)
    spills = [r for r in report if r["spill_stores"] or r["stack_frame"]]
    print(f"{name}: {len(launches)} distinct variants recorded in {t1 - t0:.1f} s, compiled for "
          f"sm_90 in {time.perf_counter() - t1:.1f} s; registers "
          f"{min(r['registers'] or 0 for r in report)}-{max(r['registers'] or 0 for r in report)}")
    assert len(report) == len(launches)
    assert all(r["registers"] is not None for r in report), "no ptxas report read"
    assert not spills, "variants with a stack frame or spills:\n" + "\n".join(map(str, spills))


def test_jit_specialisation_is_recorded():
    """The recorded specialisation is the JIT's: an int equal to 1 becomes a constant, a 16-aligned
    pointer and an int divisible by 16 carry the divisibility attribute, an unaligned pointer and
    other ints carry none, launch options are kept."""
    @triton.jit
    def k(x_ptr, n, one, m, BLOCK: triton.language.constexpr):
        pass

    x = torch.zeros(64)
    _, spec, options = _binder(k.fn if hasattr(k, "fn") else k)(x[1:], 32, 1, 7, BLOCK=128,
                                                                num_warps=8)
    assert [s[0] for s in spec] == ["*fp32", "i32", "constexpr", "i32", "constexpr"]
    assert spec[0][1] == "" and spec[1][1] == "D" and spec[2][1] == 1 and spec[3][1] == ""
    assert spec[4][1] == 128 and dict(options) == {"num_warps": 8}
    _, spec, _ = _binder(k.fn if hasattr(k, "fn") else k)(x, 32, 1, 7, BLOCK=128)
    assert spec[0][1] == "D"
    assert re.fullmatch(r"\*fp32", spec[0][0])
