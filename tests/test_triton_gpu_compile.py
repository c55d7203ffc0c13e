"""Every Triton launch the ops make on a GPU compiles for the H100/H200 (sm_90), on this CPU machine.

Each op's benchmark case (``benchmarks/bench_<op>.py``, smoke shapes, smaller where the
interpreter is slow) runs through the Triton backend with the block sizes a GPU launch uses
(``VDFAST_TRITON_GPU_SIZES=1``), forward and backward, in each dtype the backend takes. In float64
the launches run in the CPU interpreter and must match the reference (the GPU's tiling computes the
right values); in the other dtypes they are only recorded. Every launch (kernel, argument types,
constexpr values) is compiled ahead of time, in a child process from the kernel module made with
the real ``triton.jit``, by ``triton.compile`` for
``GPUTarget("cuda", 90, 32)``, through ptxas to a cubin: a kernel that only the interpreter accepts
(a non-power-of-2 block, a dtype the GPU path rejects, too much shared memory) fails here, without a
GPU. What it cannot show is that the cubin computes the right values: ``pytest -m gpu`` on a GPU
(``benchmarks/gpu_check.sh``) does that.
"""
import inspect
import json
import os
import subprocess
import sys

import pytest
import torch
from harness_ops import discover, make_call  # benchmarks/ is on sys.path (conftest.py)
from tolerances import TOL

triton = pytest.importorskip("triton")
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from vdfast.ops.dispatch import op  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="runs the kernels in Triton's CPU interpreter")

BENCHES = {b.op: b for b in discover()}
_PTR = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16",
        torch.bfloat16: "bf16", torch.int64: "i64", torch.int32: "i32", torch.int16: "i16",
        torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1"}


def _type(v):
    """Triton's signature type of one runtime (non-constexpr) argument."""
    if isinstance(v, torch.Tensor):
        return "*" + _PTR[v.dtype]
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        return "i32" if -2**31 <= v < 2**31 else "i64"
    if isinstance(v, float):
        return "fp32"
    raise TypeError(f"no Triton type for a {type(v).__name__} argument")


def _is_constexpr(param):
    ann = param.annotation
    return ann is triton.language.constexpr or (isinstance(ann, str) and "constexpr" in ann)


# the interpreter's time grows with the number of program instances: GPU-sized blocks over the
# 37 x 37 smoke frames take ~30 s per dtype
SHAPES = {"blend_static_dynamic": dict(N=2, Ns=2, Nd=2, T=3, H=11, W=11)}


def _record_launches(monkeypatch, execute):
    """Patch the interpreter's launch to record (kernel, signature, constexprs); the launch runs as
    usual while ``execute[0]``, else is skipped (its outputs stay uninitialised)."""
    launches = {}
    run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        params = list(inspect.signature(self.fn).parameters.values())
        bound = dict(zip([p.name for p in params], args), **kwargs)
        sig, const = {}, {}
        for p in params:
            v = bound.get(p.name, p.default)
            if _is_constexpr(p):
                sig[p.name], const[p.name] = "constexpr", v
            else:
                sig[p.name] = _type(v)
        key = (self.fn.__name__, tuple(sig.items()), tuple((k, str(v)) for k, v in const.items()))
        launches.setdefault(key, (self.fn, sig, const))
        if execute[0]:
            return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", recording_run)
    return launches


def _run_case(bench, dtype, with_reference):
    """(mode, Triton's result, the reference's or None) for each smoke case and mode."""
    gen = torch.Generator().manual_seed(0)
    outs = []
    for shape in [SHAPES[bench.op]] if bench.op in SHAPES else bench.smoke.values():
        case = bench.setup(device=torch.device("cpu"), dtype=dtype, gen=gen, **shape)
        for mode in case.modes:
            got = make_call(lambda *a: case.vdfast(*a, backend="triton"), case, mode)()
            want = make_call(case.reference, case, mode)() if with_reference else None
            outs.append((mode, got, want))
    return outs


def _flat(x):
    if isinstance(x, torch.Tensor):
        return [x]
    return [t for item in x for t in _flat(item)] if isinstance(x, (list, tuple)) else []


# Compiled in a child process: once the interpreter has run, it has patched triton.language for
# itself (tl.program_id and the rest), and a real compile in the same process fails.
_COMPILE = r"""
import importlib.util, json, sys
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

mods, failed = {}, []
for path, name, sig, const in json.load(sys.stdin):
    if path not in mods:
        spec = importlib.util.spec_from_file_location("_gpu_copy_%d" % len(mods), path)
        mods[path] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mods[path])
    const = {k: tl.dtype(v[3:]) if isinstance(v, str) and v.startswith("tl.") else v
             for k, v in const.items()}
    try:
        c = triton.compile(ASTSource(fn=getattr(mods[path], name), signature=sig, constexprs=const),
                           target=GPUTarget("cuda", 90, 32))
        assert c.asm.get("cubin"), "no cubin"
    except Exception as e:
        failed.append("%s %s %s: %s" % (name, sig, const, str(e)[-2000:]))
print("\n".join(failed) or "ok")
sys.exit(1 if failed else 0)
"""


def _constexpr_json(v):
    if isinstance(v, triton.language.dtype):
        return "tl." + v.name
    return v


def _compile_sm90(launches, cache):
    """Compile every recorded launch for sm_90 in a child process (Triton's cache in ``cache``: a
    fresh compile, not an earlier run's cubin); returns its output."""
    items = [[inspect.getsourcefile(fn), fn.__name__, sig,
              {k: _constexpr_json(v) for k, v in const.items()}]
             for fn, sig, const in launches.values()]
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(cache))
    res = subprocess.run([sys.executable, "-c", _COMPILE], input=json.dumps(items), env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"does not compile for sm_90:\n{res.stdout}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BENCHES))
def test_gpu_launches_compile_for_sm90(name, monkeypatch, tmp_path):
    monkeypatch.setenv("VDFAST_TRITON_GPU_SIZES", "1")
    execute = [True]
    launches = _record_launches(monkeypatch, execute)
    bench = BENCHES[name]
    for dtype in op(name).impls["triton"].dtypes:
        execute[0] = dtype == torch.float64
        for mode, got, want in _run_case(bench, dtype, with_reference=execute[0]):
            if want is None:
                continue
            for g, w in zip(_flat(got), _flat(want)):
                torch.testing.assert_close(g, w, **TOL[dtype],
                                           msg=lambda m: f"{name} {mode} at GPU sizes: {m}")
    assert launches, f"{name}: the Triton backend made no launch"
    assert _compile_sm90(launches, tmp_path).strip() == "ok"
