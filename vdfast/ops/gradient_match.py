"""DC's gradient-matching distance: per-output-channel cosine distances between real and synthetic
gradients, summed over channels and layers.

Backends: ``cuda`` (``csrc/cuda/gradient_match_cuda.cu``), ``triton`` (``kernels/gradient_match.py``),
``cpp`` (``csrc/gradient_match.cpp``), ``reference`` (``vdfast/reference/gradient_match.py``).
Each fused backend provides ``fwd(real, syn, stats)`` (per row <r, s>, ||r||^2, ||s||^2) and
``bwd(real, syn, coef, grad_real, grad_syn)``; the per-row arithmetic between them lives here.
"""
from __future__ import annotations

import torch
from torch.library import wrap_triton

from vdfast.ops.backends import kernel_fake
from vdfast.ops.fused import fused, fused_backward, fused_grad, fused_op
from vdfast.ops.fused import acc_dtype as _acc
from vdfast.ops.fused import new_out as _out
from vdfast.ops.registry import op
from vdfast.reference import gradient_match as _ref

_OP = op("gradient_match")


# ---------------------------------------------------------------------------------------------
# backends (lists of contiguous [out, K] matrices); cpp and cuda call the same compiled kernels
# (the dispatcher runs the CPU or the CUDA one by device)
# ---------------------------------------------------------------------------------------------
def _fwd_ext(real, syn, stats):
    torch.ops.vdfast.gradient_match_fwd(real, syn, stats)


def _bwd_ext(real, syn, coef, grad_real, grad_syn):
    torch.ops.vdfast.gradient_match_bwd(real, syn, coef, grad_real, grad_syn)


@kernel_fake("gradient_match_fwd")
def _(real, syn, stats):
    return None  # writes stats in place


@kernel_fake("gradient_match_bwd")
def _(real, syn, coef, grad_real, grad_syn):
    return None  # writes the gradient lists in place


def _block(t):
    from vdfast.ops.backends import interpreter_sizes
    return 128 if interpreter_sizes(t) else 1024


def _fwd_triton(real, syn, stats):
    from vdfast._kernels.gradient_match import _gradient_match_fwd_kernel

    first = 0
    for r, s in zip(real, syn):
        rows, K = r.shape
        if rows:
            wrap_triton(_gradient_match_fwd_kernel)[(rows,)](r, s, stats[first:], K,
                                                             BLOCK=_block(stats))
        first += rows


def _bwd_triton(real, syn, coef, grad_real, grad_syn):
    import triton
    from vdfast._kernels.gradient_match import _gradient_match_bwd_kernel

    first, blk = 0, _block(coef)
    for i, (r, s) in enumerate(zip(real, syn)):
        rows, K = r.shape
        if rows and K:
            gr = grad_real[i] if grad_real else r
            gs = grad_syn[i] if grad_syn else s
            wrap_triton(_gradient_match_bwd_kernel)[(rows, triton.cdiv(K, blk))](
                r, s, coef[first:], gr, gs, K, WRITE_R=bool(grad_real), WRITE_S=bool(grad_syn),
                BLOCK=blk)
        first += rows


# (fwd, bwd, the dtype of the row sums and backward coefficients for an input dtype)
_LAUNCHERS = {"cpp": (_fwd_ext, _bwd_ext, lambda dtype: torch.float64),
              "cuda": (_fwd_ext, _bwd_ext, _acc), "triton": (_fwd_triton, _bwd_triton, _acc)}


# ---------------------------------------------------------------------------------------------
# the fused op as custom ops (torch.compile captures them whole; their fakes give the shapes)
# ---------------------------------------------------------------------------------------------
@fused_op("vdfast::gradient_match", mutates_args=())
def _gradient_match_op(real: list[torch.Tensor], syn: list[torch.Tensor], eps: float,
                       backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused forward on ``backend`` over contiguous [out, K] matrices: the distance in the
    gradients' dtype and the per-row stats [rows, 3] (<r, s>, ||r||^2, ||s||^2) in the backend's
    stats dtype."""
    fwd, _, stats_dtype = _LAUNCHERS[backend]
    rows = sum(r.shape[0] for r in real)
    stats = _out((rows, 3), stats_dtype(syn[0].dtype), syn[0].device)
    fwd(real, syn, stats)
    dot, nr, ns, den = _row_terms(stats, eps)
    return (1 - dot / den).sum().to(syn[0].dtype), stats


@_gradient_match_op.register_fake
def _(real, syn, eps, backend):
    rows = sum(r.shape[0] for r in real)
    return (syn[0].new_empty(()),
            syn[0].new_empty((rows, 3), dtype=_LAUNCHERS[backend][2](syn[0].dtype)))


def _row_terms(stats, eps):
    dot, rr, ss = stats.double().unbind(1)
    nr, ns = rr.sqrt(), ss.sqrt()
    return dot, nr, ns, nr * ns + eps


@fused_op("vdfast::gradient_match_grad", mutates_args=())
def _gradient_match_grad_op(real: list[torch.Tensor], syn: list[torch.Tensor], coef: torch.Tensor,
                            need_real: bool, need_syn: bool,
                            backend: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The fused backward: the gradients to ``real`` and ``syn`` (an empty list where not needed)
    from the per-row coefficients ``coef`` [rows, 4]."""
    grad_real = [_out(r.shape, r.dtype, r.device) for r in real] if need_real else []
    grad_syn = [_out(s.shape, s.dtype, s.device) for s in syn] if need_syn else []
    _LAUNCHERS[backend][1](real, syn, coef, grad_real, grad_syn)
    return grad_real, grad_syn


@_gradient_match_grad_op.register_fake
def _(real, syn, coef, need_real, need_syn, backend):
    return ([torch.empty_like(r) for r in real] if need_real else [],
            [torch.empty_like(s) for s in syn] if need_syn else [])


# what the backward calls: the gradient custom op (triton: its triton_op)
_gradient_match_grad = fused_grad(_gradient_match_grad_op)


def _setup_context(ctx, inputs, output):
    real, syn, eps, backend = inputs
    _, stats = output
    ctx.save_for_backward(*real, *syn, stats)
    ctx.mark_non_differentiable(stats)
    ctx.n, ctx.eps, ctx.backend = len(real), eps, backend


@fused_backward("gradient_match")
def _backward(ctx, g, _g_stats):
    """First order: DC needs only d loss / d syn_grads, after which autograd continues through
    syn_grads' own (create_graph) graph."""
    n = ctx.n
    saved = ctx.saved_tensors
    real, syn, stats = list(saved[:n]), list(saved[n:2 * n]), saved[2 * n]
    dot, nr, ns, den = _row_terms(stats, ctx.eps)
    g = g.double()
    # d/ds (1 - <r,s>/den) = -r/den + <r,s> ||r|| s / (den^2 ||s||)  (the norm's gradient at
    # a zero row is taken as 0, as torch.norm's)
    a = -g / den
    b_s = torch.where(ns > 0, g * dot * nr / (den * den * ns.clamp_min(1e-300)), 0.0)
    b_r = torch.where(nr > 0, g * dot * ns / (den * den * nr.clamp_min(1e-300)), 0.0)
    coef = torch.stack([a, b_s, a, b_r], dim=1).to(stats.dtype).contiguous()  # the stats dtype
    need_r, need_s = any(ctx.needs_input_grad[0]), any(ctx.needs_input_grad[1])  # per tensor
    grad_real, grad_syn = _gradient_match_grad(real, syn, coef, need_r, need_s, ctx.backend)
    return (grad_real if need_r else [None] * n, grad_syn if need_s else [None] * n, None, None)


_gradient_match_op.register_autograd(_backward, setup_context=_setup_context)


def _distance(out):
    return out[0]


def _fused(backend):
    op_call = fused(_gradient_match_op, backend, _distance)

    def run(real_grads, syn_grads, eps):
        pairs = [(r, s) for r, s in zip(real_grads, syn_grads) if r.dim() >= 2]
        if not pairs:
            return syn_grads[0].new_zeros(()) if len(syn_grads) else torch.zeros(())
        real = [r.reshape(r.shape[0], -1).contiguous() for r, _ in pairs]
        syn = [s.reshape(s.shape[0], -1).contiguous() for _, s in pairs]
        return op_call(real, syn, float(eps))
    return run


def gradient_match(real_grads, syn_grads, backend: str | None = None, *, eps: float = 1e-6) -> torch.Tensor:
    """DC's gradient-matching distance
    ``sum_layers sum_o (1 - <r_o, s_o> / (||r_o|| ||s_o|| + eps))``.

    Args:
        real_grads: list of gradient tensors on real data, one per parameter (e.g.
            ``torch.autograd.grad(loss_real, params)``, usually detached).
        syn_grads: the matching list on synthetic data (usually made with ``create_graph=True``).
            Each pair has one shape and dtype. A tensor of 2+ dims is viewed as ``(out, rest)``:
            Conv3d ``[O, I, kT, kH, kW]``, Conv2d ``[O, I, kH, kW]``, Linear ``[O, I]``; 1-D
            tensors (biases) contribute 0 and get no gradient.
        backend: ``None`` (automatic) or ``"cuda"``, ``"triton"``, ``"cpp"``, ``"reference"``.
        eps: added to the product of the two norms (1e-6, as in the published DC code), so an
            all-zero row gives a distance of 1 instead of NaN.

    Returns:
        A 0-d tensor of the gradients' dtype. Fused backends accumulate the row sums in float64
        (cpp) or float32 (GPU; float64 for float64 inputs).

    Gradients: to ``syn_grads`` (and ``real_grads`` if they require grad). This first-order
    backward is all DC needs: autograd then continues through ``syn_grads``' own graph. The
    fused backward is first order and raises under ``create_graph``; differentiating the
    backward itself (double backward of this op) needs ``backend="reference"``.

    Example::

        >>> gw_real = [g.detach() for g in torch.autograd.grad(loss_real, params)]
        >>> gw_syn = torch.autograd.grad(loss_syn, params, create_graph=True)
        >>> vdfast.ops.gradient_match(gw_real, gw_syn).backward()   # reaches the synthetic clips
    """
    real_grads, syn_grads = list(real_grads), list(syn_grads)
    if len(real_grads) != len(syn_grads):
        raise ValueError(f"gradient_match: {len(real_grads)} real and {len(syn_grads)} synthetic tensors")
    if not syn_grads:
        raise ValueError("gradient_match: empty gradient lists")
    for i, (r, s) in enumerate(zip(real_grads, syn_grads)):
        if r.shape != s.shape or r.dtype != s.dtype or r.device != s.device:
            raise ValueError(f"gradient_match: pair {i} differs: {tuple(r.shape)} {r.dtype} {r.device} "
                             f"vs {tuple(s.shape)} {s.dtype} {s.device}")
    impl = _OP.select(syn_grads + real_grads, backend)
    return impl.fn(real_grads, syn_grads, eps)


_OP.register("reference", _ref.gradient_match, devices=("cpu", "cuda"), double_backward=True)
_OP.register("cpp", _fused("cpp"), devices=("cpu",),
             kernels=("gradient_match_fwd", "gradient_match_bwd"))
_OP.register("triton", _fused("triton"), devices=("cuda",))
_OP.register("cuda", _fused("cuda"), devices=("cuda",),
             kernels=("gradient_match_fwd", "gradient_match_bwd"))


def _check_inputs(device, dtype, gen):
    """The first-call check's input: a conv, a bias and a linear layer's gradients."""
    shapes = [(4, 3, 3, 3, 3), (4,), (5, 6)]
    real = [torch.randn(s, generator=gen, dtype=torch.float64).to(device, dtype) for s in shapes]
    syn = [torch.randn(s, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()
           for s in shapes]
    return (real, syn), {}


_OP.check_with(gradient_match, _check_inputs)

__all__ = ["gradient_match"]
