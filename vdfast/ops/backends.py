"""The backends and whether each can run here: the order of the automatic choice, the availability
probes (the compiled extension ``vdfast._C``, its kernels and CUDA architectures, Triton), and the
fake kernels of the compiled kernels. Nothing here imports Triton or the compiled extension at
``import vdfast`` time; the probes run on first use and remember their answer.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Sequence

import torch

ORDER = ("cuda", "triton", "cpp", "reference")


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run these inputs."""



# ---------------------------------------------------------------------------------------------
# global availability probes: None means usable, a string says why not
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def compiled_extension():
    """Import ``vdfast._C`` (the C++/CUDA extension); returns (module or None, reason or None)."""
    try:
        from vdfast import _C  # noqa: F401
    except Exception as e:  # ImportError, or an undefined symbol after a torch upgrade
        return None, f"vdfast._C not importable ({type(e).__name__}: {e}); rebuild with `make install`"
    _register_kernel_fakes()
    return _C, None


def _cpp_reason() -> str | None:
    return compiled_extension()[1]


def _cuda_reason() -> str | None:
    mod, why = compiled_extension()
    if mod is None:
        return why
    if not getattr(mod, "WITH_CUDA", False):
        return "vdfast._C was built without CUDA (the installed torch has no CUDA)"
    if not torch.cuda.is_available():
        return "no CUDA device visible"
    return None


@functools.lru_cache(maxsize=None)
def built_cuda_archs() -> tuple[int, ...]:
    """The GPU architectures ``vdfast._C`` carries code for (nvcc's ``__CUDA_ARCH_LIST__``, e.g.
    ``(800, 900)``); empty for a build without CUDA."""
    if not hasattr(torch.ops.vdfast, "cuda_archs"):
        return ()
    return tuple(int(a) for a in torch.ops.vdfast.cuda_archs())


def cuda_arch_reason(capability: tuple[int, int], archs: Sequence[int]) -> str | None:
    """Why CUDA code built for ``archs`` (``__CUDA_ARCH_LIST__`` values, 900 = sm_90) cannot run
    on a GPU of ``capability`` (None: it can). Code built for ``sm_XY`` runs on GPUs of the same
    major version and minor >= Y (and PTX JITs forward), so a GPU older than every built arch is
    refused; a newer one is tried (the first-call check demotes the backend if its kernels still
    fail to launch)."""
    major, minor = capability
    have = major * 100 + minor * 10
    if not archs:
        return "vdfast._C reports no CUDA architectures (stale build: rebuild with `make install`)"
    if all(a > have for a in archs):
        return (f"vdfast._C has no code for this GPU (sm_{major}{minor}; built for "
                f"{', '.join(f'sm_{a // 10}' for a in archs)}): rebuild with "
                f"TORCH_CUDA_ARCH_LIST={major}.{minor}")
    return None


# the dispatch key whose kernels a compiled backend runs: one schema per kernel name, with a CPU
# kernel (csrc/<op>.cpp) and a CUDA one (csrc/cuda/<op>_cuda.cu); the dispatcher picks by device
DISPATCH_KEY = {"cpp": "CPU", "cuda": "CUDA"}


_HAS_KERNEL: set[tuple[str, str]] = set()  # kernels found (a registered kernel stays)


def has_kernel(name: str, dispatch_key: str) -> bool:
    """Whether ``torch.ops.vdfast.<name>`` exists and has a kernel for ``dispatch_key``."""
    if (name, dispatch_key) in _HAS_KERNEL:
        return True
    found = (hasattr(torch.ops.vdfast, name)
             and torch._C._dispatch_has_kernel_for_dispatch_key(f"vdfast::{name}", dispatch_key))
    if found:
        _HAS_KERNEL.add((name, dispatch_key))
    return found


@torch.compiler.assume_constant_result
def missing_kernels(names: Sequence[str], dispatch_key: str = "CPU") -> list[str]:
    """The compiled kernels among ``names`` that ``torch.ops.vdfast`` lacks for ``dispatch_key``
    (a stale build). A constant while torch.compile traces."""
    return [n for n in names if not has_kernel(n, dispatch_key)]



KERNEL_FAKES: dict[str, Callable] = {}
_FAKES_REGISTERED: set[str] = set()


def kernel_fake(name: str):
    """Decorator: ``fn`` is the fake (meta) kernel of the compiled kernel ``torch.ops.vdfast.<name>``
    (shapes and dtypes only: a kernel that writes its outputs in place returns None), so FakeTensor
    and torch.compile can trace it. Registered once ``vdfast._C`` is imported."""
    def deco(fn):
        KERNEL_FAKES[name] = fn
        if compiled_extension.cache_info().currsize and compiled_extension()[0] is not None:
            _register_kernel_fakes()
        return fn
    return deco


def _register_kernel_fakes() -> None:
    for name, fn in KERNEL_FAKES.items():
        if name not in _FAKES_REGISTERED and hasattr(torch.ops.vdfast, name):
            torch.library.register_fake(f"vdfast::{name}", fn)
            _FAKES_REGISTERED.add(name)


@functools.lru_cache(maxsize=None)
def _triton_import_reason() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as e:
        return f"triton not importable ({type(e).__name__}: {e})"
    try:
        import vdfast._kernels  # noqa: F401  (installed from kernels/ by setup.py)
    except Exception as e:
        return (f"vdfast._kernels not importable ({type(e).__name__}: {e}); reinstall vdfast "
                f"(`make install`)")
    return None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreter_sizes(t: torch.Tensor) -> bool:
    """Whether Triton launches on ``t`` size their blocks for the CPU interpreter (few, small
    program instances) rather than for a GPU: true for CPU tensors, unless
    ``VDFAST_TRITON_GPU_SIZES=1`` (the tests set it to run the GPU's block sizes in the interpreter
    and compile exactly those launches for a GPU target: ``tests/test_triton_gpu_compile.py``)."""
    return t.device.type == "cpu" and os.environ.get("VDFAST_TRITON_GPU_SIZES") != "1"


def _triton_reason() -> str | None:
    why = _triton_import_reason()
    if why:
        return why
    if not torch.cuda.is_available() and not triton_interpret():
        return "no CUDA device (set TRITON_INTERPRET=1 to run Triton's CPU interpreter)"
    return None


def _reference_reason() -> str | None:
    return None


PROBES: dict[str, Callable[[], str | None]] = {
    "cuda": _cuda_reason,
    "triton": _triton_reason,
    "cpp": _cpp_reason,
    "reference": _reference_reason,
}


@torch.compiler.assume_constant_result
def probe(name: str) -> str | None:
    """Why backend kind ``name`` is unavailable on this machine (None: usable). While torch.compile
    traces, its answer is taken as a constant (the probes import modules and remember answers,
    which a graph cannot hold)."""
    return PROBES[name]()


def backend_reasons() -> dict[str, str | None]:
    """Global availability of each backend kind (None = usable)."""
    return {name: PROBES[name]() for name in ORDER}
