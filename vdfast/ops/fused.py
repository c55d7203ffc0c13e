"""How a fused backend runs, and what every op file shares for it.

The op's fused forward and backward are ``torch.library.custom_op`` ops (``torch.ops.vdfast.<op>``,
taking the backend's name as their last argument) with fake kernels and a registered autograd
formula, so ``torch.compile`` captures them whole; the Triton backend's are
``torch.library.triton_op``'s of the same functions (``<op>_triton``: compile traces their
kernels). In eager mode the same functions run without the custom-op machinery
(:mod:`vdfast.ops.eager`). The cpp and cuda backends call the same compiled kernels
(``torch.ops.vdfast.<op>_fwd`` ..., one schema each, a CPU and a CUDA kernel): the dispatcher runs
the one for the tensors' device.
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import torch

from vdfast.ops.eager import _DIRECT, _eager_function, _through_custom_op
from vdfast.profiling import recording

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


# ---------------------------------------------------------------------------------------------
# how a fused backend runs: its custom op under torch.compile, the same functions directly in eager
# ---------------------------------------------------------------------------------------------
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
