"""One dispatch for every fused op.

A backend is a small record (name, devices, dtypes, an availability probe). Each op registers the
implementations it has; ``select`` picks, in the order CUDA extension -> Triton -> C++ CPU
extension -> reference, the first whose ``why_not`` is empty. A backend measured slower than the
reference below some size registers that size (``auto_min_numel``): the automatic choice skips it
on smaller inputs.

* Automatic choice falls back quietly and logs the reasons once per (op, device, dtype).
* An explicit request (``backend="triton"`` argument or the ``VDFAST_BACKEND`` environment variable)
  that cannot be met raises :class:`BackendUnavailable` listing every backend's reasons.
* Triton runs on CPU tensors only under ``TRITON_INTERPRET=1`` and only when asked for explicitly
  (the interpreter is for tests, ~0.5 ms per program instance).

Nothing here imports Triton or the compiled extension at ``import vdfast`` time; the probes run on
first use and remember their answer.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from vdfast.profiling import recording

log = logging.getLogger("vdfast.ops")

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
def _triton_import_reason() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as e:
        return f"triton not importable ({type(e).__name__}: {e})"
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


def backend_reasons() -> dict[str, str | None]:
    """Global availability of each backend kind (None = usable)."""
    return {name: PROBES[name]() for name in ORDER}


# ---------------------------------------------------------------------------------------------
# the backward of a fused op: first order only, and loud about it
# ---------------------------------------------------------------------------------------------
def fused_backward(op_name: str):
    """Decorator for the ``backward`` of a fused op's ``autograd.Function``: it runs where autograd
    builds no graph (``create_graph=False``: grad mode is off), and refuses to run where a graph is
    being built through it (``create_graph=True``), since its result would be a constant there and
    any second derivative through the op silently wrong.
    ``torch``'s ``once_differentiable`` only raises when the incoming gradient requires grad:
    ``grad(loss + other, x, create_graph=True)`` with a scalar loss got a second derivative without
    the op's part (measured: half the true one for ``dm_loss`` plus a square)."""
    def deco(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            # autograd runs a backward with grad mode on exactly when create_graph=True
            if torch.is_grad_enabled() and any(ctx.needs_input_grad):
                raise RuntimeError(
                    f"{op_name}: the fused backward has no double backward (a create_graph=True "
                    f"gradient through it). Call {op_name}(..., backend='reference') where second "
                    f"derivatives are needed; it is twice differentiable.")
            if not recording():
                return backward(ctx, *grads)  # grad mode is off here: no graph is built
            with torch.profiler.record_function(f"vdfast.{op_name}.backward"):
                return backward(ctx, *grads)
        return wrapper
    return deco


# ---------------------------------------------------------------------------------------------
# per-op registry
# ---------------------------------------------------------------------------------------------
FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass
class Impl:
    name: str
    fn: Callable
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...] = FLOATS
    double_backward: bool = False
    extra_check: Callable[..., list[str]] | None = None  # op-specific limits (shape, stride ...)
    # the automatic choice skips this backend when the first input has fewer elements (measured
    # slower than the reference there); an explicit request still runs it
    auto_min_numel: int = 0


@dataclass
class Op:
    """The backends one fused op has. ``impls`` is filled by ``register``."""

    name: str
    impls: dict[str, Impl] = field(default_factory=dict)
    _logged: set = field(default_factory=set)

    def register(self, name: str, fn: Callable, devices: Sequence[str], dtypes=FLOATS,
                 double_backward: bool = False, extra_check=None, auto_min_numel: int = 0) -> None:
        if name not in ORDER:
            raise ValueError(f"unknown backend {name!r}; choose from {ORDER}")
        self.impls[name] = Impl(name, fn, tuple(devices), tuple(dtypes), double_backward, extra_check,
                                auto_min_numel)

    def why_not(self, name: str, tensors: Sequence[torch.Tensor], explicit: bool = False,
                needs_double_backward: bool = False, probe_only: bool = False, **kw) -> list[str]:
        """Every reason backend ``name`` cannot run on ``tensors`` (empty list: it can)."""
        impl = self.impls.get(name)
        if impl is None:
            return [f"{self.name} has no {name} implementation"]
        reasons = []
        glob = PROBES[name]()
        if glob:
            reasons.append(glob)
        t0 = tensors[0]
        dev = t0.device.type
        devices = impl.devices
        if name == "triton" and triton_interpret():
            devices = devices + ("cpu",)
            if dev == "cpu" and not explicit:
                reasons.append("Triton on CPU runs in the interpreter; used only when asked for")
        if dev not in devices:
            reasons.append(f"device {dev} not supported (supports {', '.join(devices)})")
        for t in tensors:
            if t.is_floating_point() and t.dtype not in impl.dtypes:
                reasons.append(f"dtype {t.dtype} not supported")
                break
        if needs_double_backward and not impl.double_backward:
            reasons.append("no double backward (create_graph=True needs the reference)")
        if impl.extra_check is not None and not reasons and not probe_only:
            reasons.extend(impl.extra_check(*tensors, **kw))
        if not explicit and not probe_only and t0.numel() < impl.auto_min_numel:
            reasons.append(f"slower than the reference below {impl.auto_min_numel} elements "
                           f"(BENCHMARKS.md); used there only when asked for")
        return reasons

    def select(self, tensors: Sequence[torch.Tensor], backend: str | None = None,
               needs_double_backward: bool = False, **kw) -> Impl:
        """The backend to run ``tensors`` on: the first usable in :data:`ORDER`, or ``backend``
        (else ``VDFAST_BACKEND``) with the reasons when it cannot. While a profiler records, the
        returned ``fn`` runs as the range ``vdfast.<op>[<backend>]`` (:mod:`vdfast.profiling`)."""
        impl = self._select(tensors, backend, needs_double_backward, **kw)
        if not recording():
            return impl
        label = f"vdfast.{self.name}[{impl.name}]"

        def fn(*args, **kwargs):
            with torch.profiler.record_function(label):
                return impl.fn(*args, **kwargs)
        return replace(impl, fn=fn)

    def _select(self, tensors, backend, needs_double_backward, **kw) -> Impl:
        backend = backend or os.environ.get("VDFAST_BACKEND") or None
        if backend is not None:
            if backend not in ORDER:
                raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(ORDER)}")
            reasons = self.why_not(backend, tensors, explicit=True,
                                   needs_double_backward=needs_double_backward, **kw)
            if not reasons:
                return self.impls[backend]
            table = {b: self.why_not(b, tensors, explicit=True,
                                     needs_double_backward=needs_double_backward, **kw) or ["usable"]
                     for b in ORDER}
            lines = "\n".join(f"  {b}: {'; '.join(r)}" for b, r in table.items())
            raise BackendUnavailable(
                f"{self.name}: backend {backend!r} cannot run these inputs.\n{lines}\n"
                f"Unset VDFAST_BACKEND / backend= to let vdfast choose.")
        skipped = []
        for b in ORDER:
            reasons = self.why_not(b, tensors, needs_double_backward=needs_double_backward, **kw)
            if not reasons:
                key = (tensors[0].device.type, tensors[0].dtype, b)
                if skipped and key not in self._logged:
                    self._logged.add(key)
                    log.info("%s on %s/%s uses %s; skipped %s", self.name, key[0], key[1], b,
                             "; ".join(f"{n}: {', '.join(r)}" for n, r in skipped))
                return self.impls[b]
            skipped.append((b, reasons))
        raise BackendUnavailable(f"{self.name}: no backend can run these inputs: {skipped}")


OPS: dict[str, Op] = {}


def op(name: str) -> Op:
    """The registry entry of op ``name`` (created on first use)."""
    if name not in OPS:
        OPS[name] = Op(name)
    return OPS[name]


def status_table() -> list[tuple[str, str, str, str]]:
    """Rows (op, backend, device, 'usable' or reason) for ``vdfast info``."""
    import vdfast.ops  # noqa: F401  (registers every op)

    rows = []
    devs = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for name in sorted(OPS):
        o = OPS[name]
        for b in ORDER:
            for d in devs:
                t = torch.empty(1, device=d)
                r = o.why_not(b, [t], explicit=True, probe_only=True)
                n = o.impls[b].auto_min_numel if b in o.impls else 0
                ok = "usable" + (f" (chosen automatically from {n} elements)" if n else "")
                rows.append((name, b, d, ok if not r else "; ".join(r)))
    return rows
