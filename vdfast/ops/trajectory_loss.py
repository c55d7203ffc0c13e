"""MTT's trajectory-matching loss ``||student - target||^2 / ||start - target||^2``, one fused
reduction over flat parameter vectors.

Backends: ``cuda`` (``csrc/cuda/trajectory_loss_cuda.cu``), ``triton`` (``kernels/trajectory_loss.py``),
``cpp`` (``csrc/trajectory_loss.cpp``), ``reference`` (``vdfast/reference/trajectory_loss.py``).
"""
from __future__ import annotations

import os

import torch

from vdfast.ops.dispatch import fused_backward, op
from vdfast.reference import trajectory_loss as _ref

_OP = op("trajectory_loss")
_BLOCK_CUDA = 2048  # elements per CUDA block of the forward (csrc/cuda/trajectory_loss_cuda.cu: kBlock)


def _out(shape, dtype, device):
    """Uninitialised output; NaN-filled under VDFAST_NAN_FILL=1 so unwritten elements show."""
    if os.environ.get("VDFAST_NAN_FILL") == "1":
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _grads(s, need):
    """Output buffers for the wanted gradients (an empty tensor for the others)."""
    return [_out(s.shape, s.dtype, s.device) if n else s.new_empty(0) for n in need]


# ---------------------------------------------------------------------------------------------
# launchers: fwd(s, a, t) -> sums [2] (num, den); bwd(s, a, t, coef [2], need) -> 3 grads/None
# ---------------------------------------------------------------------------------------------
def _fwd_cpp(s, a, t):
    sums = _out((2,), torch.float64, s.device)
    torch.ops.vdfast.trajectory_loss_fwd_cpu(s, a, t, sums)
    return sums


def _bwd_cpp(s, a, t, coef, need):
    gs, ga, gt = _grads(s, need)
    torch.ops.vdfast.trajectory_loss_bwd_cpu(s, a, t, coef.double(), gs, ga, gt)
    return gs, ga, gt


def _fwd_cuda(s, a, t):
    part = _out((-(-s.numel() // _BLOCK_CUDA), 2), _acc(s.dtype), s.device)
    torch.ops.vdfast.trajectory_loss_fwd_cuda(s, a, t, part)
    return part.sum(0, dtype=torch.float64)


def _bwd_cuda(s, a, t, coef, need):
    gs, ga, gt = _grads(s, need)
    torch.ops.vdfast.trajectory_loss_bwd_cuda(s, a, t, coef.to(_acc(s.dtype)), gs, ga, gt)
    return gs, ga, gt


def _block(t):
    from vdfast.ops.dispatch import interpreter_sizes
    return 1024 if interpreter_sizes(t) else 4096


def _fwd_triton(s, a, t):
    import triton
    from vdfast._kernels.trajectory_loss import _trajectory_loss_fwd_kernel

    blk = _block(s)
    part = _out((triton.cdiv(s.numel(), blk), 2), _acc(s.dtype), s.device)
    if s.numel():
        _trajectory_loss_fwd_kernel[(part.shape[0],)](s, a, t, part, s.numel(), s.stride(0),
                                                      a.stride(0), t.stride(0), BLOCK=blk)
    return part.sum(0, dtype=torch.float64)


def _bwd_triton(s, a, t, coef, need):
    import triton
    from vdfast._kernels.trajectory_loss import _trajectory_loss_bwd_kernel

    gs, ga, gt = _grads(s, need)
    blk = _block(s)
    if s.numel():
        _trajectory_loss_bwd_kernel[(triton.cdiv(s.numel(), blk),)](
            s, a, t, coef.to(_acc(s.dtype)), gs, ga, gt, s.numel(), s.stride(0), a.stride(0),
            t.stride(0), WRITE_S=need[0], WRITE_A=need[1], WRITE_T=need[2], BLOCK=blk)
    return gs, ga, gt


class _TrajectoryLoss(torch.autograd.Function):
    """Fused forward and backward; the backward is not itself differentiable
    (``dispatch.fused_backward`` raises under create_graph): double backward needs
    ``backend="reference"``."""

    @staticmethod
    def forward(ctx, s, a, t, fwd, bwd):
        sums = fwd(s, a, t)
        ctx.save_for_backward(s, a, t, sums)
        ctx.bwd = bwd
        return (sums[0] / sums[1]).to(s.dtype)

    @staticmethod
    @fused_backward("trajectory_loss")
    def backward(ctx, g):
        s, a, t, sums = ctx.saved_tensors
        num, den = sums[0], sums[1]
        g = g.double()
        coef = torch.stack([2 * g / den, -2 * g * num / (den * den)])
        need = tuple(bool(x) for x in ctx.needs_input_grad[:3])
        gs, ga, gt = ctx.bwd(s, a, t, coef, need)
        return (gs if need[0] else None, ga if need[1] else None, gt if need[2] else None,
                None, None)


def _fused(fwd, bwd):
    def run(s, a, t):
        return _TrajectoryLoss.apply(s, a, t, fwd, bwd)
    return run


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
# below ~64k parameters the reference is faster on a CPU: the fused call's fixed ~35 us (autograd
# Function, allocations) outweighs one pass over the vectors (BENCHMARKS.md, "crossover")
_OP.register("cpp", _fused(_fwd_cpp, _bwd_cpp), devices=("cpu",), auto_min_numel=65536,
             kernels=("trajectory_loss_fwd_cpu", "trajectory_loss_bwd_cpu"))
_OP.register("triton", _fused(_fwd_triton, _bwd_triton), devices=("cuda",))
_OP.register("cuda", _fused(_fwd_cuda, _bwd_cuda), devices=("cuda",),
             kernels=("trajectory_loss_fwd_cuda", "trajectory_loss_bwd_cuda"))


def _check_inputs(device, dtype, gen):
    """The first-call check's input: gradients to all three vectors, an odd length."""
    v = [torch.randn(4099, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()
         for _ in range(3)]
    return tuple(v), {}


_OP.check_with(trajectory_loss, _check_inputs)

__all__ = ["trajectory_loss"]
