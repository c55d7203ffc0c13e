"""Distribution-matching loss: per-class feature means of real and synthetic clips, compared.

Backends: ``cuda`` (``csrc/cuda/dm_loss_cuda.cu``), ``triton`` (``kernels/dm_loss.py``), ``cpp``
(``csrc/dm_loss.cpp``), ``reference`` (``vdfast/reference/dm_loss.py``), chosen by
:mod:`vdfast.ops.dispatch`.
"""
from __future__ import annotations

import torch
from torch.library import wrap_triton

from vdfast.ops.backends import kernel_fake
from vdfast.ops.fused import declare
from vdfast.ops.fused import acc_dtype as _acc
from vdfast.ops.fused import new_out as _out
from vdfast.ops.registry import op
from vdfast.reference import dm_loss as _ref

_OP = op("dm_loss")


# ---------------------------------------------------------------------------------------------
# launchers: fwd(real, rl, syn, sl, nc) -> (loss, diff [nc, D], cnt [2, nc]);
#            bwd(n, dtype, labels, diff, scale [nc]) -> grad [n, D]
# cpp and cuda call the same compiled kernels; the dispatcher runs the CPU or the CUDA one by the
# tensors' device.
# ---------------------------------------------------------------------------------------------
def _fwd_ext(real, rl, syn, sl, nc):
    acc = _acc(real.dtype)
    diff = _out((nc, real.shape[1]), acc, real.device)
    cnt = _out((2, nc), acc, real.device)
    loss = _out((), acc, real.device)
    torch.ops.vdfast.dm_loss_fwd(real, rl, syn, sl, diff, cnt, loss)
    return loss, diff, cnt


def _bwd_ext(n, dtype, labels, diff, scale):
    grad = _out((n, diff.shape[1]), dtype, diff.device)
    torch.ops.vdfast.dm_loss_bwd(grad, labels, diff, scale)
    return grad


@kernel_fake("dm_loss_fwd")
def _(real, real_labels, syn, syn_labels, diff, cnt, loss):
    return None  # writes diff, cnt and loss in place


@kernel_fake("dm_loss_bwd")
def _(grad, labels, diff, scale):
    return None  # writes grad in place


_MAX_RUNS = 4  # a forward tile spanning at most this many labels sums its rows per label first


def _tile(x):
    # Small tiles keep the CPU interpreter's program instances cheap; larger ones on a GPU.
    from vdfast.ops.backends import interpreter_sizes
    return (16, 32) if interpreter_sizes(x) else (32, 128)


def _fwd_triton(real, rl, syn, sl, nc):
    import triton
    from vdfast._kernels.dm_loss import _dm_loss_diff_kernel, _dm_loss_fwd_kernel

    acc, dev, D = _acc(real.dtype), real.device, real.shape[1]
    sums = torch.zeros((2, nc, D), dtype=acc, device=dev)
    cnt = torch.zeros((2, nc), dtype=acc, device=dev)
    for k, (x, lab) in enumerate(((real, rl), (syn, sl))):
        if x.shape[0] == 0 or D == 0:
            continue
        bn, bd = _tile(x)
        grid = (triton.cdiv(x.shape[0], bn), triton.cdiv(D, bd))
        wrap_triton(_dm_loss_fwd_kernel)[grid](x, lab, sums[k], cnt[k], x.shape[0], D, nc,
                                               x.stride(0), BLOCK_N=bn, BLOCK_D=bd,
                                               MAX_RUNS=_MAX_RUNS)
    bd = min(triton.next_power_of_2(max(D, 1)), _tile(real)[1] * 2)
    diff = _out((nc, D), acc, dev)
    partial = _out((nc, triton.cdiv(D, bd)), acc, dev)
    if D > 0:
        wrap_triton(_dm_loss_diff_kernel)[(nc, partial.shape[1])](
            sums[0], sums[1], cnt[0], cnt[1], diff, partial, D, BLOCK_D=bd)
    return partial.sum(), diff, cnt


def _bwd_triton(n, dtype, labels, diff, scale):
    import triton
    from vdfast._kernels.dm_loss import _dm_loss_bwd_kernel

    D = diff.shape[1]
    grad = _out((n, D), dtype, diff.device)
    if n and D:
        bn, bd = _tile(diff)
        wrap_triton(_dm_loss_bwd_kernel)[(triton.cdiv(n, bn), triton.cdiv(D, bd))](
            grad, labels, diff, scale, n, D, diff.shape[0], BLOCK_N=bn, BLOCK_D=bd)
    return grad


_LAUNCHERS = {"cpp": (_fwd_ext, _bwd_ext), "cuda": (_fwd_ext, _bwd_ext),
              "triton": (_fwd_triton, _bwd_triton)}


# ---------------------------------------------------------------------------------------------
# the fused op as custom ops (torch.compile captures them whole; their fakes give the shapes),
# declared at once below (fused.declare)
# ---------------------------------------------------------------------------------------------
def _forward(real: torch.Tensor, real_labels: torch.Tensor, syn: torch.Tensor,
             syn_labels: torch.Tensor, num_classes: int,
             backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused forward on ``backend`` (cuda, triton or cpp): the loss in the features' dtype, and
    what the backward needs, diff [nc, D] (class-mean differences) and cnt [2, nc] (class counts,
    real then synthetic), in the accumulator dtype."""
    loss, diff, cnt = _LAUNCHERS[backend][0](real, real_labels, syn, syn_labels, num_classes)
    return loss.to(real.dtype), diff, cnt


def _forward_fake(real, real_labels, syn, syn_labels, num_classes, backend):
    acc = _acc(real.dtype)
    return (real.new_empty(()), real.new_empty((num_classes, real.shape[1]), dtype=acc),
            real.new_empty((2, num_classes), dtype=acc))


def _grad(labels: torch.Tensor, diff: torch.Tensor, scale: torch.Tensor, n: int,
          dtype: torch.dtype, backend: str) -> torch.Tensor:
    """The fused backward of one side: ``grad[i] = scale[labels[i]] * diff[labels[i]]``, [n, D]
    of ``dtype``."""
    return _LAUNCHERS[backend][1](n, dtype, labels, diff, scale)


def _grad_fake(labels, diff, scale, n, dtype, backend):
    return diff.new_empty((n, diff.shape[1]), dtype=dtype)


def _setup_context(ctx, inputs, output):
    real, real_labels, syn, syn_labels, _, backend = inputs
    _, diff, cnt = output
    ctx.save_for_backward(real_labels, syn_labels, diff, cnt)
    ctx.mark_non_differentiable(diff, cnt)
    ctx.meta = (real.shape[0], real.dtype, syn.shape[0], syn.dtype, backend)


def _backward(ctx, g, _g_diff, _g_cnt):
    """A gather of the saved class-mean differences, itself not differentiable (raises under
    create_graph): double backward needs ``backend="reference"``."""
    rl, sl, diff, cnt = ctx.saved_tensors
    nr, dtr, ns, dts, backend = ctx.meta
    # d loss / d real_i = 2 diff[c_i] / n_real[c_i]; d / d syn_j = -2 diff[c_j] / n_syn[c_j]
    scale = 2.0 * g.to(diff.dtype) / cnt.clamp_min(1.0)
    gr = _DM_LOSS.grad(rl, diff, scale[0].contiguous(), nr, dtr, backend) \
        if ctx.needs_input_grad[0] else None
    gs = _DM_LOSS.grad(sl, diff, (-scale[1]).contiguous(), ns, dts, backend) \
        if ctx.needs_input_grad[2] else None
    return gr, None, gs, None, None, None


def _loss(out):
    return out[0]


# vdfast::dm_loss and vdfast::dm_loss_grad, their fakes, the first-order formula joining them
_DM_LOSS = declare("dm_loss", _forward, _forward_fake, grad=_grad, grad_fake=_grad_fake,
                   setup_context=_setup_context, backward=_backward, post=_loss)


def _check(real_feat, real_labels, syn_feat, syn_labels, num_classes):
    if real_feat.dim() != 2 or syn_feat.dim() != 2 or real_feat.shape[1] != syn_feat.shape[1]:
        raise ValueError(f"dm_loss: real_feat [Nr, D] and syn_feat [Ns, D] must share D; got "
                         f"{tuple(real_feat.shape)} and {tuple(syn_feat.shape)}")
    if real_feat.dtype != syn_feat.dtype:
        raise ValueError(f"dm_loss: feature dtypes differ ({real_feat.dtype}, {syn_feat.dtype})")
    for name, lab, x in (("real", real_labels, real_feat), ("syn", syn_labels, syn_feat)):
        if lab.dim() != 1 or lab.shape[0] != x.shape[0] or lab.dtype != torch.int64:
            raise ValueError(f"dm_loss: {name}_labels must be int64 [{x.shape[0]}]; got "
                             f"{lab.dtype} {tuple(lab.shape)}")
        if lab.device != real_feat.device or x.device != real_feat.device:
            raise ValueError("dm_loss: all inputs must be on one device")
    if int(num_classes) < 1:
        raise ValueError(f"dm_loss: num_classes must be >= 1, got {num_classes}")


def _rows(x):
    """A view with unit column stride (rows may be strided), copying only when needed."""
    return x if x.stride(-1) == 1 else x.clone(memory_format=torch.contiguous_format)


def dm_loss(real_feat: torch.Tensor, real_labels: torch.Tensor, syn_feat: torch.Tensor,
            syn_labels: torch.Tensor, num_classes: int, backend: str | None = None) -> torch.Tensor:
    """Distribution-matching loss of DM.

    ``sum_c || mean_i real_feat[i] (real_labels[i] == c) - mean_j syn_feat[j] (syn_labels[j] == c) ||^2``
    over ``c in [0, num_classes)``; a class absent on either side contributes 0. All class means
    come from one pass over the features (no per-class loop).

    Args:
        real_feat: ``[Nr, D]`` float (float32/float64/float16/bfloat16), any strides.
        real_labels: ``[Nr]`` int64 in ``[0, num_classes)``.
        syn_feat: ``[Ns, D]``, same dtype and device as ``real_feat``.
        syn_labels: ``[Ns]`` int64.
        num_classes: number of classes.
        backend: ``None`` (automatic: cuda -> triton -> cpp -> reference), or one of
            ``"cuda"``, ``"triton"``, ``"cpp"``, ``"reference"`` (raises
            :class:`~vdfast.ops.dispatch.BackendUnavailable` if it cannot run).

    Returns:
        A 0-d tensor of the features' dtype (fused backends accumulate in float32, or float64
        for float64 inputs). Gradients flow to ``real_feat`` and ``syn_feat``.

    Double backward: only ``backend="reference"``; the fused backward raises under ``create_graph``
    (DM needs first-order gradients only). Labels outside ``[0, num_classes)``: the reference and
    cpp raise; the GPU backends ignore those rows (a check would synchronise with the host).

    Example::

        >>> real = torch.randn(3200, 2048); rl = torch.arange(50).repeat_interleave(64)
        >>> syn = torch.randn(50, 2048, requires_grad=True); sl = torch.arange(50)
        >>> vdfast.ops.dm_loss(real, rl, syn, sl, num_classes=50).backward()
    """
    _check(real_feat, real_labels, syn_feat, syn_labels, num_classes)
    impl = _OP.select([real_feat, syn_feat], backend)
    return impl.fn(_rows(real_feat), real_labels.contiguous(), _rows(syn_feat),
                   syn_labels.contiguous(), int(num_classes))


_OP.register("reference", _ref.dm_loss, devices=("cpu", "cuda"), double_backward=True)
_OP.register("cpp", _DM_LOSS.backend("cpp"), devices=("cpu",),
             kernels=("dm_loss_fwd", "dm_loss_bwd"))
_OP.register("triton", _DM_LOSS.backend("triton"), devices=("cuda",))
_OP.register("cuda", _DM_LOSS.backend("cuda"), devices=("cuda",),
             kernels=("dm_loss_fwd", "dm_loss_bwd"))


def _check_inputs(device, dtype, gen):
    """The first-call check's input (registry.Op.first_call_check): unsorted labels, a class with
    no synthetic rows, odd D."""
    real = torch.randn(13, 37, generator=gen, dtype=torch.float64).to(device, dtype)
    syn = torch.randn(5, 37, generator=gen, dtype=torch.float64).to(device, dtype)
    rl = torch.tensor([0, 0, 1, 2, 1, 0, 3, 3, 2, 1, 0, 2, 3], device=device)
    sl = torch.tensor([0, 1, 2, 0, 1], device=device)
    return (real.requires_grad_(), rl, syn.requires_grad_(), sl, 4), {}


_OP.check_with(dm_loss, _check_inputs)

__all__ = ["dm_loss"]
