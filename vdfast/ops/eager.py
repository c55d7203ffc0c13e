"""The fused ops' eager path: each custom op's own implementation and autograd formula run as a
plain ``torch.autograd.Function`` (:func:`vdfast.ops.fused.fused` calls it outside torch.compile,
dispatch modes and :func:`through_custom_ops`)."""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Sequence

import torch

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
