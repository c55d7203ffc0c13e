"""DC's gradient-matching distance: per-output-channel cosine distances between real and synthetic
gradients, summed over channels and layers.

Backends: ``cuda`` (``csrc/cuda/gradient_match_cuda.cu``), ``triton`` (``kernels/gradient_match.py``),
``cpp`` (``csrc/gradient_match.cpp``), ``reference`` (``vdfast/reference/gradient_match.py``).
Each fused backend provides ``fwd(real, syn, stats)`` (per row <r, s>, ||r||^2, ||s||^2) and
``bwd(real, syn, coef, grad_real, grad_syn)``; the per-row arithmetic between them lives here.
"""
from __future__ import annotations

import os

import torch

from vdfast.ops.dispatch import fused_backward, op
from vdfast.reference import gradient_match as _ref

_OP = op("gradient_match")


def _out(shape, dtype, device):
    """Uninitialised output; NaN-filled under VDFAST_NAN_FILL=1 so unwritten elements show."""
    if os.environ.get("VDFAST_NAN_FILL") == "1":
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------
# backends (lists of contiguous [out, K] matrices)
# ---------------------------------------------------------------------------------------------
def _fwd_cpp(real, syn, stats):
    torch.ops.vdfast.gradient_match_fwd_cpu(real, syn, stats)


def _bwd_cpp(real, syn, coef, grad_real, grad_syn):
    torch.ops.vdfast.gradient_match_bwd_cpu(real, syn, coef, grad_real, grad_syn)


def _fwd_cuda(real, syn, stats):
    torch.ops.vdfast.gradient_match_fwd_cuda(real, syn, stats)


def _bwd_cuda(real, syn, coef, grad_real, grad_syn):
    torch.ops.vdfast.gradient_match_bwd_cuda(real, syn, coef, grad_real, grad_syn)


def _block(t):
    from vdfast.ops.dispatch import interpreter_sizes
    return 128 if interpreter_sizes(t) else 1024


def _fwd_triton(real, syn, stats):
    from vdfast._kernels.gradient_match import _gradient_match_fwd_kernel

    first = 0
    for r, s in zip(real, syn):
        rows, K = r.shape
        if rows:
            _gradient_match_fwd_kernel[(rows,)](r, s, stats[first:], K, BLOCK=_block(stats))
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
            _gradient_match_bwd_kernel[(rows, triton.cdiv(K, blk))](
                r, s, coef[first:], gr, gs, K, WRITE_R=bool(grad_real), WRITE_S=bool(grad_syn),
                BLOCK=blk)
        first += rows


class _GradientMatch(torch.autograd.Function):
    """Fused forward and backward. The backward is first order (``dispatch.fused_backward``): DC
    needs only d loss / d syn_grads, after which autograd continues through syn_grads' own
    (create_graph) graph."""

    @staticmethod
    def forward(ctx, n, eps, kernels, *tensors):
        fwd, bwd, stats_dtype = kernels
        real, syn = list(tensors[:n]), list(tensors[n:])
        rows = sum(r.shape[0] for r in real)
        stats = _out((rows, 3), stats_dtype(syn[0].dtype), syn[0].device)
        fwd(real, syn, stats)
        dot, rr, ss = stats.double().unbind(1)
        nr, ns = rr.sqrt(), ss.sqrt()
        den = nr * ns + eps
        ctx.save_for_backward(*real, *syn, dot, nr, ns, den)
        ctx.n, ctx.bwd, ctx.cdtype = n, bwd, stats.dtype  # coef in the stats dtype
        return (1 - dot / den).sum().to(syn[0].dtype)

    @staticmethod
    @fused_backward("gradient_match")
    def backward(ctx, g):
        n = ctx.n
        saved = ctx.saved_tensors
        real, syn = list(saved[:n]), list(saved[n:2 * n])
        dot, nr, ns, den = saved[2 * n:]
        g = g.double()
        # d/ds (1 - <r,s>/den) = -r/den + <r,s> ||r|| s / (den^2 ||s||)  (the norm's gradient at
        # a zero row is taken as 0, as torch.norm's)
        a = -g / den
        b_s = torch.where(ns > 0, g * dot * nr / (den * den * ns.clamp_min(1e-300)), 0.0)
        b_r = torch.where(nr > 0, g * dot * ns / (den * den * nr.clamp_min(1e-300)), 0.0)
        coef = torch.stack([a, b_s, a, b_r], dim=1).to(ctx.cdtype).contiguous()
        need_r = any(ctx.needs_input_grad[3:3 + n])
        need_s = any(ctx.needs_input_grad[3 + n:])
        grad_real = [_out(r.shape, r.dtype, r.device) for r in real] if need_r else []
        grad_syn = [_out(s.shape, s.dtype, s.device) for s in syn] if need_s else []
        ctx.bwd(real, syn, coef, grad_real, grad_syn)
        return (None, None, None, *(grad_real or [None] * n), *(grad_syn or [None] * n))


def _fused(fwd, bwd, stats_dtype=_acc):
    """``stats_dtype(input dtype)``: the dtype of the row sums and backward coefficients."""
    def run(real_grads, syn_grads, eps):
        pairs = [(r, s) for r, s in zip(real_grads, syn_grads) if r.dim() >= 2]
        if not pairs:
            return syn_grads[0].new_zeros(()) if len(syn_grads) else torch.zeros(())
        real = [r.reshape(r.shape[0], -1).contiguous() for r, _ in pairs]
        syn = [s.reshape(s.shape[0], -1).contiguous() for _, s in pairs]
        return _GradientMatch.apply(len(real), float(eps), (fwd, bwd, stats_dtype), *real, *syn)
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
_OP.register("cpp", _fused(_fwd_cpp, _bwd_cpp, lambda dtype: torch.float64), devices=("cpu",),
             kernels=("gradient_match_fwd_cpu", "gradient_match_bwd_cpu"))
_OP.register("triton", _fused(_fwd_triton, _bwd_triton), devices=("cuda",))
_OP.register("cuda", _fused(_fwd_cuda, _bwd_cuda), devices=("cuda",),
             kernels=("gradient_match_fwd_cuda", "gradient_match_bwd_cuda"))


def _check_inputs(device, dtype, gen):
    """The first-call check's input: a conv, a bias and a linear layer's gradients."""
    shapes = [(4, 3, 3, 3, 3), (4,), (5, 6)]
    real = [torch.randn(s, generator=gen, dtype=torch.float64).to(device, dtype) for s in shapes]
    syn = [torch.randn(s, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()
           for s in shapes]
    return (real, syn), {}


_OP.check_with(gradient_match, _check_inputs)

__all__ = ["gradient_match"]
