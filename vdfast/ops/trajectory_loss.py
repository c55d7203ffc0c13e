"""MTT's trajectory-matching loss ``||student - target||^2 / ||start - target||^2``, one fused
reduction over flat parameter vectors.

Backends: ``cuda`` (``csrc/cuda/trajectory_loss_cuda.cu``), ``triton`` (``kernels/trajectory_loss.py``),
``cpp`` (``csrc/trajectory_loss.cpp``), ``reference`` (``vdfast/reference/trajectory_loss.py``).
"""
from __future__ import annotations

import torch
from torch.library import wrap_triton

from vdfast.ops.backends import kernel_fake
from vdfast.ops.fused import fused, fused_backward, fused_grad, fused_op
from vdfast.ops.fused import acc_dtype as _acc
from vdfast.ops.fused import new_out as _out
from vdfast.ops.registry import op
from vdfast.reference import trajectory_loss as _ref

_OP = op("trajectory_loss")


def _grads(s, need):
    """Output buffers for the wanted gradients (an empty tensor for the others)."""
    return [_out(s.shape, s.dtype, s.device) if n else s.new_empty(0) for n in need]


# ---------------------------------------------------------------------------------------------
# launchers: fwd(s, a, t) -> sums [2] float64 (num, den); bwd(s, a, t, coef [2], need) -> 3 grads
# (empty where not needed). cpp and cuda call the same compiled kernels (the dispatcher runs the
# CPU or the CUDA one by device); they differ in the coefficients' dtype.
# ---------------------------------------------------------------------------------------------
def _fwd_ext(s, a, t):
    sums = _out((2,), torch.float64, s.device)
    torch.ops.vdfast.trajectory_loss_fwd(s, a, t, sums)
    return sums


def _bwd_cpp(s, a, t, coef, need):
    gs, ga, gt = _grads(s, need)
    torch.ops.vdfast.trajectory_loss_bwd(s, a, t, coef.double(), gs, ga, gt)
    return gs, ga, gt


def _bwd_cuda(s, a, t, coef, need):
    gs, ga, gt = _grads(s, need)
    torch.ops.vdfast.trajectory_loss_bwd(s, a, t, coef.to(_acc(s.dtype)), gs, ga, gt)
    return gs, ga, gt


@kernel_fake("trajectory_loss_fwd")
def _(s, a, t, sums):
    return None  # writes sums in place


@kernel_fake("trajectory_loss_bwd")
def _(s, a, t, coef, gs, ga, gt):
    return None  # writes the non-empty gradients in place


def _block(t):
    from vdfast.ops.backends import interpreter_sizes
    return 1024 if interpreter_sizes(t) else 4096


def _warps(block):
    """8 warps at the GPU's 4096-element block: with Triton's default 4, each thread holds 32
    elements of three inputs and ptxas spills (a 280-byte stack frame in the float64 backward, 88
    bytes in a float16 forward, compiled for sm_90); 8 warps hold 16 each and spill nothing
    (tests/test_triton_gpu_compile.py reads ptxas' report)."""
    return 8 if block >= 4096 else 4


def _fwd_triton(s, a, t):
    import triton
    from vdfast._kernels.trajectory_loss import _trajectory_loss_fwd_kernel

    blk = _block(s)
    part = _out((triton.cdiv(s.numel(), blk), 2), _acc(s.dtype), s.device)
    if s.numel():
        wrap_triton(_trajectory_loss_fwd_kernel)[(part.shape[0],)](
            s, a, t, part, s.numel(), s.stride(0), a.stride(0), t.stride(0), BLOCK=blk,
            num_warps=_warps(blk))
    return part.sum(0, dtype=torch.float64)


def _bwd_triton(s, a, t, coef, need):
    import triton
    from vdfast._kernels.trajectory_loss import _trajectory_loss_bwd_kernel

    gs, ga, gt = _grads(s, need)
    blk = _block(s)
    if s.numel():
        wrap_triton(_trajectory_loss_bwd_kernel)[(triton.cdiv(s.numel(), blk),)](
            s, a, t, coef.to(_acc(s.dtype)), gs, ga, gt, s.numel(), s.stride(0), a.stride(0),
            t.stride(0), WRITE_S=need[0], WRITE_A=need[1], WRITE_T=need[2], BLOCK=blk,
            num_warps=_warps(blk))
    return gs, ga, gt


_LAUNCHERS = {"cpp": (_fwd_ext, _bwd_cpp), "cuda": (_fwd_ext, _bwd_cuda),
              "triton": (_fwd_triton, _bwd_triton)}


# ---------------------------------------------------------------------------------------------
# the fused op as custom ops (torch.compile captures them whole; their fakes give the shapes)
# ---------------------------------------------------------------------------------------------
@fused_op("vdfast::trajectory_loss", mutates_args=())
def _trajectory_loss_op(s: torch.Tensor, a: torch.Tensor, t: torch.Tensor,
                        backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused forward on ``backend`` (1-D inputs): the loss in the inputs' dtype and the float64
    sums [2] (||s - t||^2, ||a - t||^2) the backward needs."""
    sums = _LAUNCHERS[backend][0](s, a, t)
    return (sums[0] / sums[1]).to(s.dtype), sums


@_trajectory_loss_op.register_fake
def _(s, a, t, backend):
    return s.new_empty(()), s.new_empty((2,), dtype=torch.float64)


@fused_op("vdfast::trajectory_loss_grad", mutates_args=())
def _trajectory_loss_grad_op(s: torch.Tensor, a: torch.Tensor, t: torch.Tensor, coef: torch.Tensor,
                             need_s: bool, need_a: bool, need_t: bool,
                             backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused backward, ``coef`` = (2 g / den, -2 g num / den^2) in float64: the gradients to s,
    a and t (each an empty tensor where not needed)."""
    return tuple(_LAUNCHERS[backend][1](s, a, t, coef, (need_s, need_a, need_t)))


@_trajectory_loss_grad_op.register_fake
def _(s, a, t, coef, need_s, need_a, need_t, backend):
    return tuple(s.new_empty(s.shape if n else (0,)) for n in (need_s, need_a, need_t))


# what the backward calls: the gradient custom op (triton: its triton_op)
_trajectory_loss_grad = fused_grad(_trajectory_loss_grad_op)


def _setup_context(ctx, inputs, output):
    s, a, t, backend = inputs
    _, sums = output
    ctx.save_for_backward(s, a, t, sums)
    ctx.mark_non_differentiable(sums)
    ctx.backend = backend


@fused_backward("trajectory_loss")
def _backward(ctx, g, _g_sums):
    """Fused and first order (raises under create_graph): double backward needs
    ``backend="reference"``."""
    s, a, t, sums = ctx.saved_tensors
    num, den = sums[0], sums[1]
    g = g.double()
    coef = torch.stack([2 * g / den, -2 * g * num / (den * den)])
    need = tuple(bool(x) for x in ctx.needs_input_grad[:3])
    grads = _trajectory_loss_grad(s, a, t, coef, *need, ctx.backend)
    return tuple(gr if n else None for gr, n in zip(grads, need)) + (None,)


_trajectory_loss_op.register_autograd(_backward, setup_context=_setup_context)


def _loss(out):
    return out[0]


def trajectory_loss(student: torch.Tensor, start: torch.Tensor, target: torch.Tensor,
                    backend: str | None = None) -> torch.Tensor:
    """MTT's normalised parameter distance ``||student - target||^2 / ||start - target||^2``.

    Args:
        student: ``[P]`` flat parameters after the unrolled synthetic steps (float32/float64/
            float16/bfloat16; any stride; other shapes are flattened).
        start: ``[P]`` the expert's parameters at the start epoch.
        target: ``[P]`` the expert's parameters ``expert_epochs`` later.
        backend: ``None`` (automatic) or ``"cuda"``, ``"triton"``, ``"cpp"``, ``"reference"``.

    Returns:
        A 0-d tensor of the inputs' dtype. Fused backends accumulate in float64 (cpp) or float32
        partials added in float64 (GPU; float64 throughout for float64 inputs).

    Gradients: exact first-order gradients to every input that requires grad (``student``,
    and ``start`` / ``target`` if they do). The loss is MTT's outer loss, so the fused backward is
    first order (it raises under ``create_graph``); gradients still flow on through
    ``student``'s own graph (the unrolled steps). Double backward of this op itself needs ``backend="reference"``.

    Example::

        >>> theta = torch.randn(3_650_000, requires_grad=True)
        >>> start, target = torch.randn(3_650_000), torch.randn(3_650_000)
        >>> vdfast.ops.trajectory_loss(theta, start, target).backward()
    """
    if not (student.shape == start.shape == target.shape):
        raise ValueError(f"trajectory_loss: shapes differ: {tuple(student.shape)}, "
                         f"{tuple(start.shape)}, {tuple(target.shape)}")
    if not (student.dtype == start.dtype == target.dtype):
        raise ValueError(f"trajectory_loss: dtypes differ: {student.dtype}, {start.dtype}, {target.dtype}")
    if not (student.device == start.device == target.device):
        raise ValueError("trajectory_loss: inputs on different devices")
    impl = _OP.select([student, start, target], backend)
    if impl.name == "reference":
        return impl.fn(student, start, target)
    return impl.fn(student.reshape(-1), start.reshape(-1), target.reshape(-1))


_OP.register("reference", _ref.trajectory_loss, devices=("cpu", "cuda"), double_backward=True)
# below ~128k parameters the reference is faster on a CPU (forward+backward: 0.65-0.73x at 64k-96k,
# 1.0x at 128k, 1.5-2x from 160k; BENCHMARKS.md, "crossover"): the fused call's fixed cost (the
# backward's coefficients, allocations, two kernel calls) outweighs one pass over the vectors;
# from ~128k the reference's own time rises steeply
_OP.register("cpp", fused(_trajectory_loss_op, "cpp", _loss), devices=("cpu",),
             auto_min_numel=131072, kernels=("trajectory_loss_fwd", "trajectory_loss_bwd"))
_OP.register("triton", fused(_trajectory_loss_op, "triton", _loss), devices=("cuda",))
_OP.register("cuda", fused(_trajectory_loss_op, "cuda", _loss), devices=("cuda",),
             kernels=("trajectory_loss_fwd", "trajectory_loss_bwd"))


def _check_inputs(device, dtype, gen):
    """The first-call check's input: gradients to all three vectors, an odd length."""
    v = [torch.randn(4099, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()
         for _ in range(3)]
    return tuple(v), {}


_OP.check_with(trajectory_loss, _check_inputs)

__all__ = ["trajectory_loss"]
