"""How a fused backend runs, and what every op file shares for it.

The op's fused forward and backward are ``torch.library.custom_op`` ops (``torch.ops.vdfast.<op>``,
taking the backend's name as their last argument) with fake kernels and a registered autograd
formula, so ``torch.compile`` captures them whole; the Triton backend's are
``torch.library.triton_op``'s of the same functions (``<op>_triton``: compile traces their
kernels). Eager calls go through the same custom ops (a direct ``autograd.Function`` path saved
10-137 µs per call, unmeasurable in a DM iteration: it went with the private torch attributes it
read). The cpp and cuda backends call the same compiled kernels
(``torch.ops.vdfast.<op>_fwd`` ..., one schema each, a CPU and a CUDA kernel): the dispatcher runs
the one for the tensors' device.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Sequence

import torch

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
# how a fused backend runs: its custom op (the Triton backend: the same functions as a triton_op)
# ---------------------------------------------------------------------------------------------
class FusedOp:
    """A fused op's ``torch.library.custom_op`` (:attr:`op`, ``torch.ops.vdfast.<name>``), with the
    functions it was declared with remembered (implementation, fake, autograd formula), so its
    Triton variant (:attr:`triton`) is built from them through public torch APIs. Made by
    :func:`fused_op`; ``register_fake`` and ``register_autograd`` as on the custom op."""

    def __init__(self, qualname: str, impl: Callable, mutates_args: Sequence[str] = ()):
        self.qualname, self.impl, self.mutates_args = qualname, impl, tuple(mutates_args)
        self.op = torch.library.custom_op(qualname, impl, mutates_args=self.mutates_args)
        self.fake: Callable | None = None
        self.backward: Callable | None = None
        self.setup_context: Callable | None = None
        self._triton = None
        functools.update_wrapper(self, impl)

    def register_fake(self, fake: Callable) -> Callable:
        self.op.register_fake(fake)
        self.fake = fake
        return fake

    def register_autograd(self, backward: Callable, setup_context: Callable | None = None) -> None:
        self.op.register_autograd(backward, setup_context=setup_context)
        self.backward, self.setup_context = backward, setup_context

    def __call__(self, *args):
        return self.op(*args)

    @property
    def triton(self):
        """The op again as ``torch.library.triton_op("<its name>_triton")``: the same
        implementation (called with the backend ``"triton"``: its launchers call the kernels
        through ``torch.library.wrap_triton``), the same fake and the same autograd formula. Under
        torch.compile, AOT autograd then traces the kernels themselves into the graph
        (``triton_kernel_wrapper_functional``: inductor compiles and schedules them as user
        kernels) instead of one opaque op. In eager mode (and in the custom op's own eager call)
        the kernels launch directly (triton_op turns ``wrap_triton`` off there). Built once, on
        first use (:func:`fused` and :func:`fused_grad` use it at registration: after the op's
        ``register_fake`` and ``register_autograd``)."""
        if self._triton is None:
            top = torch.library.triton_op(f"{self.qualname}_triton", self.impl,
                                          mutates_args=self.mutates_args)
            # the explicit fake, not triton_op's default (the implementation run on fake tensors):
            # the same shapes without a kernel launch, so FakeTensor also works under
            # TRITON_INTERPRET=1
            top.register_fake(self.fake)
            if self.backward is not None:
                top.register_autograd(self.backward, setup_context=self.setup_context)
            self._triton = top
        return self._triton

    def for_backend(self, backend: str) -> Callable:
        """What runs ``backend`` (its name is the op's last argument): the triton_op for
        ``"triton"``, else the custom op."""
        return self.triton if backend == "triton" else self.op


def fused_op(qualname: str, mutates_args: Sequence[str] = ()) -> Callable[[Callable], FusedOp]:
    """Decorator, in place of ``torch.library.custom_op(qualname, mutates_args=...)``: the fused
    forward (or gradient) of an op, taking the backend's name as its last argument, as a
    :class:`FusedOp`."""
    def deco(impl: Callable) -> FusedOp:
        return FusedOp(qualname, impl, mutates_args)
    return deco


def fused(custom_op: FusedOp, backend: str, post: Callable | None = None) -> Callable:
    """The ``fn`` a fused backend registers: ``custom_op(*args, backend)`` (a :class:`FusedOp`
    with its autograd formula registered: call this after ``register_autograd``), its result
    passed through ``post`` (e.g. the first of several outputs). For ``backend="triton"`` the op's
    triton_op (:attr:`FusedOp.triton`)."""
    target = custom_op.for_backend(backend)

    def run(*args):
        out = target(*args, backend)
        return out if post is None else post(out)
    run.__name__ = f"{getattr(custom_op, '__name__', 'op')}[{backend}]"
    return run


def fused_grad(grad_op: FusedOp) -> Callable:
    """What a fused op's backward calls for its gradient op ``grad_op`` (a :class:`FusedOp`, its
    last argument the backend's name): the custom op, or for the backend ``"triton"`` its
    triton_op."""
    ops = {"triton": grad_op.triton}

    def call(*args):
        return ops.get(args[-1], grad_op.op)(*args)
    call.__name__ = getattr(grad_op, "__name__", "grad_op")
    return call


def triton_variant(custom_op: FusedOp):
    """``custom_op``'s triton_op (:attr:`FusedOp.triton`)."""
    return custom_op.triton


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
# one declaration: the forward custom op, its gradient custom op, their fakes and the formula
# ---------------------------------------------------------------------------------------------
class Fused:
    """A fused op's plumbing from one declaration (:func:`declare`): the forward custom op
    ``vdfast::<name>`` with its fake, the gradient custom op ``vdfast::<name>_grad`` with its fake
    (:attr:`grad`: what ``backward`` calls), the autograd formula joining them (``backward`` run
    first order only, :func:`fused_backward`) and the ``fn`` each backend registers
    (:meth:`backend`)."""

    def __init__(self, name: str, forward: Callable, fake: Callable, *,
                 grad: Callable | None = None, grad_fake: Callable | None = None,
                 setup_context: Callable | None = None, backward: Callable | None = None,
                 post: Callable | None = None, mutates_args: Sequence[str] = ()):
        if (grad is None) != (grad_fake is None) or (backward is None) != (setup_context is None):
            raise ValueError(f"{name}: declare grad with grad_fake, backward with setup_context")
        self.name, self.post = name, post
        self.op = FusedOp(f"vdfast::{name}", forward, mutates_args)
        self.op.register_fake(fake)
        self.grad_op: FusedOp | None = None
        self.grad: Callable | None = None
        if grad is not None:
            self.grad_op = FusedOp(f"vdfast::{name}_grad", grad)
            self.grad_op.register_fake(grad_fake)
            self.grad = fused_grad(self.grad_op)
        if backward is not None:
            self.op.register_autograd(fused_backward(name)(backward), setup_context=setup_context)

    def backend(self, backend: str) -> Callable:
        """The ``fn`` backend ``backend`` registers (:func:`fused`, with the declared ``post``)."""
        return fused(self.op, backend, self.post)


def declare(name: str, forward: Callable, fake: Callable, **kw) -> Fused:
    """A fused op's custom ops, fakes and autograd formula from one declaration: ``forward`` (the
    fused forward, typed for ``torch.library``, the backend's name last) and its ``fake``;
    optionally ``grad`` / ``grad_fake`` (the fused gradient, the same way), ``setup_context`` /
    ``backward`` (the formula; ``backward`` calls ``<the Fused>.grad``), ``post`` (what the
    public result is, e.g. the first of several outputs) and ``mutates_args``."""
    return Fused(name, forward, fake, **kw)
