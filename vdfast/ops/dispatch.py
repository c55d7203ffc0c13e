"""One dispatch for every fused op.

A backend is a small record (name, devices, dtypes, an availability probe). Each op registers the
implementations it has; ``select`` picks, in the order CUDA extension -> Triton -> C++ CPU
extension -> reference, the first whose ``why_not`` is empty. A backend measured slower than the
reference below some size registers that size (``auto_min_numel``): the automatic choice skips it
on smaller inputs.

* Automatic choice falls back quietly and logs the reasons once per (op, device, dtype) at DEBUG level.
* A safety net for backends that have never met this machine: the first automatic use of a fused
  backend per (op, backend, device, dtype) runs it and the reference on a small seeded input of
  the op's (``Op.check_with``), forward and gradients; on an exception or a mismatch the backend is
  demoted for that (device, dtype) with a WARNING naming the op and the error, the next backend
  in the order serves, and ``vdfast info`` shows the demotion.
* An explicit request (``backend="triton"`` argument or the ``VDFAST_BACKEND`` environment variable)
  that cannot be met raises :class:`BackendUnavailable` listing every backend's reasons.
* Triton runs on CPU tensors only under ``TRITON_INTERPRET=1`` and only when asked for explicitly
  (the interpreter is for tests, ~0.5 ms per program instance).

Nothing here imports Triton or the compiled extension at ``import vdfast`` time; the probes run on
first use and remember their answer.

How a fused backend runs: the op's fused forward and backward are ``torch.library.custom_op`` ops
(``torch.ops.vdfast.<op>``, taking the backend's name as their last argument) with fake kernels
and a registered autograd formula, so ``torch.compile`` captures them whole; the Triton backend's
are ``torch.library.triton_op``'s of the same functions (``<op>_triton``: compile traces their
kernels). In eager mode the same functions run without the custom-op machinery (:func:`fused`).
The cpp and cuda
backends call the same compiled kernels (``torch.ops.vdfast.<op>_fwd`` ..., one schema each, a CPU
and a CUDA kernel): the dispatcher runs the one for the tensors' device. The choice below is
traceable (the probes are constants while torch.compile traces; the first-call check and logging
are eager-only), so a compiled graph holds the backend chosen at trace time.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from vdfast.ops.tolerances import mismatch
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


# ---------------------------------------------------------------------------------------------
# what every op file shares: outputs, accumulator dtypes, fake kernels, the fused backends' calls
# ---------------------------------------------------------------------------------------------
def new_out(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """Uninitialised output; under VDFAST_NAN_FILL=1 filled with NaN (integers: their minimum) so
    unwritten elements show."""
    if os.environ.get("VDFAST_NAN_FILL") == "1":
        fill = float("nan") if dtype.is_floating_point else torch.iinfo(dtype).min
        return torch.full(shape, fill, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The fused backends' accumulator dtype for inputs of ``dtype``: float64 for float64, else
    float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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


# ---------------------------------------------------------------------------------------------
# how a fused backend runs: its custom op under torch.compile, the same functions directly in eager
# ---------------------------------------------------------------------------------------------
# Going through ``torch.library.custom_op`` costs tens of microseconds per call in eager mode (the
# Python dispatcher's redispatch, the disable-dynamo wrappers, pytree handling, and the same again
# for the ``_grad`` op in the backward), as much as a GPU kernel takes. Eager calls therefore run
# a ``torch.autograd.Function`` built once per custom op from the functions the custom op
# registered (its implementation, ``setup_context`` and ``backward``), and that backward calls
# the ``_grad`` op's implementation directly (:func:`fused_grad`). The custom ops run where
# something must see them as ops: while torch.compile / torch.export trace, under a Python
# dispatch mode (make_fx, FakeTensorMode, FlopCounterMode, a test's recorder), and under
# :func:`through_custom_ops` (``VDFAST_EAGER_CUSTOM_OPS=1``). Both paths run the same launchers
# in the same order: the results are bit-identical (``tests/test_dispatch_eager.py``).
_FORCE_CUSTOM_OPS = [os.environ.get("VDFAST_EAGER_CUSTOM_OPS") == "1"]
_DIRECT = threading.local()  # .on: an eager path's backward is running on this thread


@contextlib.contextmanager
def through_custom_ops(on: bool = True):
    """Within the block, eager calls of the fused ops go through their custom ops (as under
    torch.compile) instead of the direct eager path; ``VDFAST_EAGER_CUSTOM_OPS=1`` sets it for the
    whole process. For tests and benchmarks of the custom-op path."""
    prev = _FORCE_CUSTOM_OPS[0]
    _FORCE_CUSTOM_OPS[0] = on
    try:
        yield
    finally:
        _FORCE_CUSTOM_OPS[0] = prev


def _through_custom_op() -> bool:
    return (_FORCE_CUSTOM_OPS[0] or torch.compiler.is_compiling()
            or torch._C._len_torch_dispatch_stack() > 0
            or torch._C._are_functorch_transforms_active())


def _tensor_list_args(custom_op) -> tuple[bool, ...]:
    """Per argument of ``custom_op``'s schema: whether it is a list of tensors."""
    return tuple(isinstance(a.type, torch.ListType) and
                 a.type.getElementType().isSubtypeOf(torch.TensorType.get())
                 for a in custom_op._opoverload._schema.arguments)


def _direct_backward(backward: Callable) -> Callable:
    def run(ctx, *grads):
        prev = getattr(_DIRECT, "on", False)
        _DIRECT.on = True
        try:
            return backward(ctx, *grads)
        finally:
            _DIRECT.on = prev
    return run


def _bumping_versions(impl: Callable, mutated: Sequence[int]) -> Callable:
    def run(*args):
        out = impl(*args)
        torch.autograd.graph.increment_version([args[i] for i in mutated if args[i] is not None])
        return out
    return run


def _eager_function(custom_op) -> Callable:
    """``apply(*args)``: ``custom_op``'s own implementation with its registered autograd formula
    as a ``torch.autograd.Function`` (built once per op, remembered on the op). Lists of tensors
    (``gradient_match``) are flattened for autograd and rebuilt for the op's functions, as the
    custom op's autograd does; ``ctx.needs_input_grad`` has the custom op's structure. The
    Function's forward takes ``ctx`` and calls ``setup_context`` itself: with a separate
    ``setup_context``, ``Function.apply`` binds the arguments through ``inspect.signature`` on
    every call (~10 us)."""
    cached = getattr(custom_op, "_vdfast_eager", None)
    if cached is not None:
        return cached
    impl, setup, backward = custom_op._init_fn, custom_op._setup_context_fn, custom_op._backward_fn
    mutated = [i for i, a in enumerate(custom_op._opoverload._schema.arguments)
               if a.alias_info is not None and a.alias_info.is_write]
    if mutated:  # (guided_step's out) the custom op bumps their version counters: so does this
        impl = _bumping_versions(impl, mutated)
    if backward is None:  # no autograd formula (normalize_clips, guided_step): the function alone
        custom_op._vdfast_eager = impl
        return impl
    backward = _direct_backward(backward)
    lists = _tensor_list_args(custom_op)
    name = custom_op._qualname.replace("::", "_")
    if not any(lists):
        def forward(ctx, *args):
            out = impl(*args)
            setup(ctx, args, out)
            return out

        fn = type(f"{name}_eager", (torch.autograd.Function,), {
            "forward": staticmethod(forward), "backward": staticmethod(backward)})

        def apply(*args):
            if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
                return fn.apply(*args)
            return impl(*args)
    else:
        def unflatten(flat, sizes):
            args, i = [], 0
            for n in sizes:
                if n is None:
                    args.append(flat[i])
                    i += 1
                else:
                    args.append(list(flat[i:i + n]))
                    i += n
            return args

        def forward(ctx, sizes, *flat):
            args = tuple(unflatten(flat, sizes))
            out = impl(*args)
            ctx.vdfast_sizes = sizes
            setup(ctx, args, out)
            return out

        def backward_flat(ctx, *grads):
            sizes, needs = ctx.vdfast_sizes, ctx.needs_input_grad
            ctx.needs_input_grad = tuple(unflatten(needs[1:], sizes))
            try:
                result = backward(ctx, *grads)
            finally:
                ctx.needs_input_grad = needs
            flat = [None]
            for n, g in zip(sizes, result):
                flat.extend([g] if n is None else g)
            return tuple(flat)

        fn = type(f"{name}_eager", (torch.autograd.Function,), {
            "forward": staticmethod(forward), "backward": staticmethod(backward_flat)})

        def apply(*args):
            if not (torch.is_grad_enabled() and torch._C._any_requires_grad(*args)):
                return impl(*args)
            sizes = tuple(len(a) if is_list else None for a, is_list in zip(args, lists))
            flat = [t for a, is_list in zip(args, lists) for t in (a if is_list else (a,))]
            return fn.apply(sizes, *flat)
    custom_op._vdfast_eager = apply
    return apply


def fused(custom_op: Callable, backend: str, post: Callable | None = None) -> Callable:
    """The ``fn`` a fused backend registers: ``custom_op(*args, backend)`` (a
    ``torch.library.custom_op`` that takes the backend's name last, with its autograd formula
    registered: call this after ``register_autograd``), its result passed through ``post`` (e.g.
    the first of several outputs). For ``backend="triton"`` the op's :func:`triton_variant`. In
    eager mode the same implementation and formula run as a plain ``torch.autograd.Function``
    (see above); while torch.compile traces, the custom op itself."""
    if backend == "triton":
        custom_op = triton_variant(custom_op)

    def run(*args):
        if _through_custom_op():
            out = custom_op(*args, backend)
        else:  # built on the first eager call (the op's autograd formula is registered by then)
            out = _eager_function(custom_op)(*args, backend)
        return out if post is None else post(out)
    run.__name__ = f"{getattr(custom_op, '__name__', 'op')}[{backend}]"
    return run


def fused_grad(grad_op: Callable) -> Callable:
    """What a fused op's backward calls for its gradient custom op ``grad_op`` (its last argument
    the backend's name): the op (under the custom op's own autograd formula: torch.compile, a
    dispatch mode, :func:`through_custom_ops`), or its implementation directly inside the eager
    path's backward; for the backend ``"triton"``, its :func:`triton_variant`."""
    ops = {"triton": triton_variant(grad_op)}
    impls = {name: o._init_fn for name, o in ops.items()}
    impl = grad_op._init_fn

    def call(*args):
        if getattr(_DIRECT, "on", False):
            return impls.get(args[-1], impl)(*args)
        return ops.get(args[-1], grad_op)(*args)
    call.__name__ = getattr(grad_op, "__name__", "grad_op")
    return call


def triton_variant(custom_op):
    """``custom_op`` again as ``torch.library.triton_op("<its name>_triton")``: the same
    implementation (called with the backend ``"triton"``: its launchers call the kernels through
    ``torch.library.wrap_triton``), the same fake and the same autograd formula. Under
    torch.compile, AOT autograd then traces the kernels themselves into the graph
    (``triton_kernel_wrapper_functional``: inductor compiles and schedules them as user kernels)
    instead of one opaque op. In eager mode (and in the custom op's own eager call) the kernels
    launch directly (triton_op turns ``wrap_triton`` off there). Built once per op (remembered on
    it), by :func:`fused` and :func:`fused_grad`."""
    cached = getattr(custom_op, "_vdfast_triton", None)
    if cached is not None:
        return cached
    schema = custom_op._opoverload._schema
    mutates = tuple(a.name for a in schema.arguments
                    if a.alias_info is not None and a.alias_info.is_write)
    top = torch.library.triton_op(f"{custom_op._qualname}_triton", custom_op._init_fn,
                                  mutates_args=mutates)
    # the explicit fake, not triton_op's default (the implementation run on fake tensors): the
    # same shapes without a kernel launch, so FakeTensor also works under TRITON_INTERPRET=1
    top.register_fake(custom_op._abstract_fn)
    if custom_op._backward_fn is not None:
        top.register_autograd(custom_op._backward_fn, setup_context=custom_op._setup_context_fn)
    custom_op._vdfast_triton = top
    return top


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


# ---------------------------------------------------------------------------------------------
# the backward of a fused op: first order only, and loud about it
# ---------------------------------------------------------------------------------------------
def fused_backward(op_name: str):
    """Decorator for the backward of a fused op (its custom op's ``register_autograd``): it runs
    where autograd builds no graph (``create_graph=False``: grad mode is off), and refuses to run
    where a graph is being built through it (``create_graph=True``), since its result would be a
    constant there and any second derivative through the op silently wrong.
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
    # the compiled kernels (torch.ops.vdfast.<name>) it calls, each needing a kernel for this
    # backend's dispatch key (DISPATCH_KEY): a build without them is stale
    kernels: tuple[str, ...] = ()


def _clone_inputs(obj):
    if torch.is_tensor(obj):
        return obj.detach().clone().requires_grad_(obj.requires_grad)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone_inputs(o) for o in obj)
    return obj


def _float64(obj):
    if torch.is_tensor(obj):
        return obj.detach().double().requires_grad_(obj.requires_grad) if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_float64(o) for o in obj)
    return obj


def _tensors(obj) -> list[torch.Tensor]:
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    return []


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


def _forward_and_grads(fn, args, kwargs, backend: str) -> list[torch.Tensor]:
    """``fn(*args, backend=backend, **kwargs)``'s outputs and the gradients of a fixed random
    projection of them w.r.t. every input that requires grad."""
    args = _clone_inputs(args)
    outs = _tensors(fn(*args, backend=backend, **kwargs))
    leaves = [t for t in _tensors(args) if t.requires_grad]
    diff = [o for o in outs if o.requires_grad]
    if not leaves or not diff:
        return [o.detach() for o in outs]
    gen = torch.Generator().manual_seed(1)
    proj = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o)).sum()
               for o in diff)
    grads = torch.autograd.grad(proj, leaves, allow_unused=True)
    return [o.detach() for o in outs] + [g for g in grads if g is not None]


def compare_with_reference(fn, args, kwargs, backend: str, dtype: torch.dtype) -> str | None:
    """Run ``fn`` on ``backend``, and the reference on the same inputs in float64; None when the
    outputs and gradients agree (:func:`vdfast.ops.tolerances.mismatch`: the tests' tolerance
    table, relative to each tensor's magnitude, by the fast path's dtype), else what differs."""
    got = _forward_and_grads(fn, args, kwargs, backend)
    ref = _forward_and_grads(fn, _float64(args), kwargs, "reference")  # the same rounded inputs
    if len(got) != len(ref):
        return f"{len(got)} outputs and gradients, the reference has {len(ref)}"
    for i, (a, b) in enumerate(zip(got, ref)):
        if a.shape != b.shape:
            return f"tensor {i} has shape {tuple(a.shape)}, the reference {tuple(b.shape)}"
        why = mismatch(a, b, dtype)
        if why:
            return f"tensor {i} {why}"
    return None


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
