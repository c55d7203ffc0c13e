"""The per-op registry: each op's backends (:class:`Impl`), the choice among them
(:meth:`Op.select`), the first-call check's bookkeeping, and the table ``vdfast info`` prints.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from vdfast.ops.backends import (DISPATCH_KEY, ORDER, BackendUnavailable, built_cuda_archs,
                                 cuda_arch_reason, missing_kernels, probe, triton_interpret)
from vdfast.ops.selfcheck import _tensors, compare_with_reference
from vdfast.profiling import recording

log = logging.getLogger("vdfast.ops")

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
    # the compiled kernels (torch.ops.vdfast.<name>) it calls, each needing a kernel for this
    # backend's dispatch key (DISPATCH_KEY): a build without them is stale
    kernels: tuple[str, ...] = ()


def _on_inputs_device(fn: Callable) -> Callable:
    """``fn`` run with its first CUDA input's device current: Triton launches on the current
    device, which is not the inputs' under ``--device cuda:1``. (The CUDA kernels guard in C++;
    autograd runs backwards with their device current.)"""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        t = next((x for x in _tensors(args) if x.is_cuda), None)
        if t is None:
            return fn(*args, **kwargs)
        with torch.cuda.device(t.device):
            return fn(*args, **kwargs)
    return run


@dataclass
class Op:
    """The backends one fused op has. ``impls`` is filled by ``register``; ``check_with`` by the
    op's module (the public function and a small seeded input for the first-call check)."""

    name: str
    impls: dict[str, Impl] = field(default_factory=dict)
    _logged: set = field(default_factory=set)
    # (public fn, make(device, dtype, generator) -> (args, kwargs)) for the first-call check
    check: tuple[Callable, Callable] | None = None
    # (backend, device, dtype) -> None (passed) or why it was demoted
    checked: dict = field(default_factory=dict)

    def register(self, name: str, fn: Callable, devices: Sequence[str], dtypes=FLOATS,
                 double_backward: bool = False, extra_check=None, auto_min_numel: int = 0,
                 kernels: Sequence[str] = ()) -> None:
        if name not in ORDER:
            raise ValueError(f"unknown backend {name!r}; choose from {ORDER}")
        if name == "triton":
            fn = _on_inputs_device(fn)
        self.impls[name] = Impl(name, fn, tuple(devices), tuple(dtypes), double_backward, extra_check,
                                auto_min_numel, tuple(kernels))

    def check_with(self, public: Callable, make: Callable) -> None:
        """Declare the first-call check: ``make(device, dtype, gen)`` returns ``(args, kwargs)`` of
        ``public`` at a small shape (inputs that require grad get their gradients compared)."""
        self.check = (public, make)

    def first_call_check(self, backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
        """The safety net: None if ``backend`` agrees with the reference on this (device, dtype)
        (checked once, remembered), else why it is demoted (also logged as a WARNING)."""
        key = (backend, str(device), dtype)
        if key in self.checked:
            return self.checked[key]
        why = None
        if self.check is not None:
            public, make = self.check
            try:
                # the op may be called under no_grad / inference_mode; the check needs gradients
                with torch.inference_mode(False), torch.enable_grad():
                    args, kwargs = make(device, dtype, torch.Generator().manual_seed(0))
                    why = compare_with_reference(public, args, kwargs, backend, dtype)
            except Exception as e:  # a launch failure, a missing kernel, a bad build ...
                why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        self.checked[key] = why
        if why:
            log.warning("%s: the %s backend failed its first-call check against the reference on "
                        "%s/%s (%s); demoted there, the next backend serves (vdfast info shows it)",
                        self.name, backend, device, str(dtype).replace("torch.", ""), why)
        return why

    def why_not(self, name: str, tensors: Sequence[torch.Tensor], explicit: bool = False,
                needs_double_backward: bool = False, probe_only: bool = False, **kw) -> list[str]:
        """Every reason backend ``name`` cannot run on ``tensors`` (empty list: it can)."""
        impl = self.impls.get(name)
        if impl is None:
            return [f"{self.name} has no {name} implementation"]
        reasons = []
        glob = probe(name)
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
        if impl.kernels and not glob:
            missing = missing_kernels(impl.kernels, DISPATCH_KEY.get(name, "CPU"))
            if missing:
                reasons.append(f"vdfast._C lacks {', '.join(missing)} (stale build: rebuild with "
                               f"`make install`)")
        if name == "cuda" and not glob and dev == "cuda":
            why = cuda_arch_reason(torch.cuda.get_device_capability(t0.device), built_cuda_archs())
            if why:
                reasons.append(why)
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
        if torch.compiler.is_compiling() or not recording():  # a compiled graph has no ranges
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
        t0 = tensors[0]
        for b in ORDER:
            reasons = self.why_not(b, tensors, needs_double_backward=needs_double_backward, **kw)
            if not reasons and b != "reference" and not torch.compiler.is_compiling():
                demoted = self.first_call_check(b, t0.device, t0.dtype)
                if demoted:
                    reasons = [f"demoted by its first-call check: {demoted}"]
            if not reasons:
                key = (tensors[0].device.type, tensors[0].dtype, b)
                # (not while torch.compile traces: a graph cannot log; the eager call logs)
                if skipped and key not in self._logged and not torch.compiler.is_compiling():
                    self._logged.add(key)
                    log.debug("%s on %s/%s uses %s; skipped %s", self.name, key[0], key[1], b,
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


def status_table(check: bool = True) -> list[tuple[str, str, str, str]]:
    """Rows (op, backend, device, 'usable' or reason) for ``vdfast info``. With ``check``, every
    usable fused backend runs its first-call check (float32, small inputs) first, so a backend
    that fails on this machine shows as demoted."""
    import vdfast.ops  # noqa: F401  (registers every op)

    rows = []
    devs = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for name in sorted(OPS):
        o = OPS[name]
        for b in ORDER:
            for d in devs:
                t = torch.empty(1, device=d)
                r = o.why_not(b, [t], explicit=True, probe_only=True)
                if check and not r and b != "reference":
                    o.first_call_check(b, t.device, torch.float32)
                r += [f"demoted on {dev}/{str(dt).replace('torch.', '')} by its first-call check: "
                      f"{why}" for (bb, dev, dt), why in o.checked.items()
                      if bb == b and why and torch.device(dev).type == d]
                n = o.impls[b].auto_min_numel if b in o.impls else 0
                ok = "usable" + (f" (chosen automatically from {n} elements)" if n else "")
                rows.append((name, b, d, ok if not r else "; ".join(r)))
    return rows
