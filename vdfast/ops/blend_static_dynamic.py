"""blend_static_dynamic: the static-dynamic integrator without the repeat or the concatenation.

The integrator H of static-dynamic disentanglement is one ``Conv3d(C+1 -> C_out, 3x3x3, padding 1)``
over ``cat([static repeated over T, dynamic])`` (``vdfast/reference/blend_static_dynamic.py``).
Because it is linear it splits into

* a static part: the still image convolved with three 2-D kernels, the sums of the static weight over
  the temporal taps that see a frame: ``w0+w1+w2`` (interior frames), ``w1+w2`` (first frame),
  ``w0+w1`` (last frame); ``w1`` alone when T == 1. These "planes" ``[Ns, K, C_out, H, W]`` are
  computed once per still image with ``F.conv2d`` (autograd takes them back to static and weight),
  and gathered per video by ``static_idx``;
* a dynamic part: a 1 -> C_out 3x3x3 stencil over the one-channel dynamic memory.

The fused backends (CUDA, Triton, C++) run the second stage in one pass: gather the plane of each
frame, add the stencil and the bias, write the video once. Their backward computes the plane and
dynamic gradients in kernels (repeated indices accumulate). Parameter gradients of the stencil:
the C++ kernel reduces them itself (float64 partials, deterministic); the Triton and CUDA backends
use torch's conv3d weight gradient on the gathered one-channel dynamic memory and ``grad.sum`` for
the bias (these are reductions cuDNN already does well, and the tensor involved is C_out times
smaller than the video).

Double backward: the ``reference`` backend of this op is the decomposed pure-PyTorch form (conv2d of
the statics + a 1-channel conv3d of the dynamic memory), which supports it. The fused backends'
backward is first order (``fused.fused_backward``): a second derivative through them raises. The
blend produces the synthetic videos *before* MTT's unrolled student, so its meta-gradient needs
only the first derivative of the blend.
"""
from __future__ import annotations

import functools

import torch
from torch.library import wrap_triton
import torch.nn.functional as F

from vdfast.ops.backends import kernel_fake
from vdfast.ops.fused import fused, fused_backward, fused_grad, fused_op, new_out
from vdfast.ops.registry import FLOATS, op

__all__ = ["blend_static_dynamic", "static_planes", "blend_decomposed"]


def _new(shape, like: torch.Tensor) -> torch.Tensor:
    """Uninitialised output of ``like``'s dtype and device (NaN-filled under VDFAST_NAN_FILL=1)."""
    return new_out(shape, like.dtype, like.device)


# ---------------------------------------------------------------------------------------------
# the static planes and the decomposed pure-PyTorch form
# ---------------------------------------------------------------------------------------------
def plane_weights(weight: torch.Tensor, C: int, T: int) -> torch.Tensor:
    """[K*C_out, C, 3, 3] 2-D kernels of the static planes (first, last, interior; K = min(T, 3))."""
    ws = weight[:, :C]  # [C_out, C, 3, 3, 3]
    if T == 1:
        return ws[:, :, 1]
    planes = [ws[:, :, 1] + ws[:, :, 2], ws[:, :, 0] + ws[:, :, 1]]
    if T > 2:
        planes.append(ws.sum(2))
    return torch.cat(planes, 0)


def plane_of_frame(T: int, device=None) -> torch.Tensor:
    """int64 [T]: which plane frame t reads (0 first, 1 last, 2 interior; T == 1: 0)."""
    p = torch.full((T,), 2, dtype=torch.long, device=device)
    p[-1] = 1
    p[0] = 0
    return p


def static_planes(static: torch.Tensor, weight: torch.Tensor, T: int) -> torch.Tensor:
    """static [Ns, C, H, W] -> planes [Ns, K, C_out, H, W], K = min(T, 3) (differentiable)."""
    Ns, C, H, W = static.shape
    planes = F.conv2d(static, plane_weights(weight, C, T), padding=1)
    return planes.view(Ns, -1, weight.shape[0], H, W)


def blend_decomposed(static, dynamic, weight, bias, static_idx, dynamic_idx):
    """The decomposed form in plain PyTorch (double-differentiable): conv2d of each still image
    once, gathered per frame, plus a 1 -> C_out conv3d of the dynamic memory."""
    C, T = static.shape[1], dynamic.shape[1]
    planes = static_planes(static, weight, T)                                # [Ns, K, Co, H, W]
    st = planes[static_idx][:, plane_of_frame(T, static.device)]             # [N, T, Co, H, W]
    dyn = dynamic[dynamic_idx].transpose(1, 2)                               # [N, 1, T, H, W]
    return F.conv3d(dyn, weight[:, C:], bias, padding=1) + st.transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# launchers: fwd(planes, dyn, wd, bias, sidx, didx) -> out;
#            bwd(grad, dyn, wd, sidx, didx, Ns, K, need_planes, need_dyn, need_params)
#                -> (grad_planes, grad_dyn, grad_wd, grad_bias), None where not needed
# all tensors contiguous: planes [Ns, K, Co, H, W], dyn [Nd, T, H, W], wd [Co, 27], bias [Co]
# ---------------------------------------------------------------------------------------------
def _ext_fwd(planes, dyn, wd, bias, sidx, didx):
    """cpp and cuda: one compiled kernel, the CPU or the CUDA one by the tensors' device."""
    N, Co, (Nd, T, H, W) = sidx.numel(), wd.shape[0], dyn.shape
    out = _new((N, Co, T, H, W), dyn)
    torch.ops.vdfast.blend_static_dynamic_fwd(planes, dyn, wd, bias, sidx, didx, out)
    return out


@kernel_fake("blend_static_dynamic_fwd")
def _(planes, dynamic, wd, bias, sidx, didx, out):
    return None  # writes out in place


@kernel_fake("blend_static_dynamic_bwd")
def _(grad, dynamic, wd, sidx, didx, grad_planes, grad_dynamic, grad_wd, grad_bias):
    return None  # writes the gradients given in place


@kernel_fake("blend_static_dynamic_bwd_dyn")
def _(grad, wd, grad_dynamic):
    return None


@kernel_fake("blend_static_dynamic_bwd_planes")
def _(grad, grad_planes):
    return None


def _cpp_bwd(grad, dyn, wd, sidx, didx, Ns, K, need_planes, need_dyn, need_params):
    """Everything in C++: per-target gathers (no atomics) and float64 parameter partials."""
    Co, (Nd, T, H, W) = wd.shape[0], dyn.shape
    gp = _new((Ns, K, Co, H, W), dyn) if need_planes else None
    gd = _new(dyn.shape, dyn) if need_dyn else None
    gw = _new(wd.shape, wd) if need_params else None
    gb = _new((Co,), wd) if need_params else None
    torch.ops.vdfast.blend_static_dynamic_bwd(grad, dyn, wd, sidx, didx, gp, gd, gw, gb)
    return gp, gd, gw, gb


def _cuda_bwd_planes(grad, gp_n):
    torch.ops.vdfast.blend_static_dynamic_bwd_planes(grad, gp_n)


def _cuda_bwd_dyn(grad, wd, gd_n):
    torch.ops.vdfast.blend_static_dynamic_bwd_dyn(grad, wd, gd_n)


def _per_video_bwd(bwd_planes, bwd_dyn, grad, dyn, wd, sidx, didx, Ns, K, need_planes, need_dyn,
                   need_params):
    """GPU backward: kernels write per-video gradients, index_add_ sums repeated indices, and the
    stencil weight / bias gradients come from torch (conv3d weight gradient, sum)."""
    N, Co, (Nd, T, H, W) = sidx.numel(), wd.shape[0], dyn.shape
    gp = gd = gw = gb = None
    if need_planes:
        gp_n = _new((N, K, Co, H, W), dyn)
        bwd_planes(grad, gp_n)
        gp = torch.zeros((Ns, K, Co, H, W), dtype=dyn.dtype, device=dyn.device)
        gp.index_add_(0, sidx, gp_n)
    if need_dyn:
        gd_n = _new((N, T, H, W), dyn)
        bwd_dyn(grad, wd, gd_n)
        gd = torch.zeros_like(dyn).index_add_(0, didx, gd_n)
    if need_params:
        d = dyn.index_select(0, didx).unsqueeze(1)  # [N, 1, T, H, W], C_out times smaller than out
        gw = torch.nn.grad.conv3d_weight(d, (Co, 1, 3, 3, 3), grad, padding=1).reshape(Co, 27)
        gb = grad.sum((0, 2, 3, 4))
    return gp, gd, gw, gb


def _triton_meta(HW, t):
    import triton
    import triton.language as tl

    from vdfast.ops.backends import interpreter_sizes
    # the interpreter pays per program instance: few, large blocks; on a GPU 256 pixels x C_out
    block = min(2048, triton.next_power_of_2(HW)) if interpreter_sizes(t) else 256
    acc = tl.float64 if t.dtype == torch.float64 else tl.float32
    return block, acc


def _triton_fwd(planes, dyn, wd, bias, sidx, didx):
    import triton

    from vdfast._kernels.blend_static_dynamic import _blend_static_dynamic_fwd_kernel
    N, Co, (Nd, T, H, W) = sidx.numel(), wd.shape[0], dyn.shape
    out = _new((N, Co, T, H, W), dyn)
    block, acc = _triton_meta(H * W, dyn)
    grid = (N * T, triton.cdiv(H * W, block))
    wrap_triton(_blend_static_dynamic_fwd_kernel)[grid](
        planes, dyn, wd, bias, sidx, didx, out, planes.shape[1], T, H, W, C_OUT=Co,
        CO_BLOCK=triton.next_power_of_2(Co), BLOCK=block, ACC=acc)
    return out


def _triton_bwd_planes(grad, gp_n):
    import triton

    from vdfast._kernels.blend_static_dynamic import _blend_static_dynamic_bwd_planes_kernel
    N, Co, T, H, W = grad.shape
    block, acc = _triton_meta(H * W, grad)
    wrap_triton(_blend_static_dynamic_bwd_planes_kernel)[(N * Co, triton.cdiv(H * W, block))](
        grad, gp_n, gp_n.shape[1], T, H * W, C_OUT=Co, BLOCK=block, ACC=acc)


def _triton_bwd_dyn(grad, wd, gd_n):
    import triton

    from vdfast._kernels.blend_static_dynamic import _blend_static_dynamic_bwd_kernel
    N, Co, T, H, W = grad.shape
    block, acc = _triton_meta(H * W, grad)
    wrap_triton(_blend_static_dynamic_bwd_kernel)[(N * T, triton.cdiv(H * W, block))](
        grad, wd, gd_n, T, H, W, C_OUT=Co, CO_BLOCK=triton.next_power_of_2(Co), BLOCK=block,
        ACC=acc)


_LAUNCHERS = {"cpp": (_ext_fwd, _cpp_bwd),
              "cuda": (_ext_fwd, functools.partial(_per_video_bwd, _cuda_bwd_planes, _cuda_bwd_dyn)),
              "triton": (_triton_fwd,
                         functools.partial(_per_video_bwd, _triton_bwd_planes, _triton_bwd_dyn))}


# ---------------------------------------------------------------------------------------------
# the fused op as custom ops (torch.compile captures them whole; their fakes give the shapes)
# planes [Ns, K, Co, H, W], dyn [Nd, T, H, W], wd [Co, 27], bias [Co] -> [N, Co, T, H, W]
# ---------------------------------------------------------------------------------------------
@fused_op("vdfast::blend_static_dynamic", mutates_args=())
def _blend_op(planes: torch.Tensor, dyn: torch.Tensor, wd: torch.Tensor, bias: torch.Tensor,
              sidx: torch.Tensor, didx: torch.Tensor, backend: str) -> torch.Tensor:
    """The fused forward on ``backend``."""
    return _LAUNCHERS[backend][0](planes, dyn, wd, bias, sidx, didx)


@_blend_op.register_fake
def _(planes, dyn, wd, bias, sidx, didx, backend):
    Nd, T, H, W = dyn.shape
    return dyn.new_empty((sidx.shape[0], wd.shape[0], T, H, W))


@fused_op("vdfast::blend_static_dynamic_grad", mutates_args=())
def _blend_grad_op(grad: torch.Tensor, dyn: torch.Tensor, wd: torch.Tensor, sidx: torch.Tensor,
                   didx: torch.Tensor, Ns: int, K: int, need_planes: bool, need_dyn: bool,
                   need_params: bool, backend: str
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused backward: gradients to planes, dyn, wd and bias (empty where not needed)."""
    grads = _LAUNCHERS[backend][1](grad, dyn, wd, sidx, didx, Ns, K, need_planes, need_dyn,
                                   need_params)
    return tuple(dyn.new_empty(0) if g is None else g for g in grads)


@_blend_grad_op.register_fake
def _(grad, dyn, wd, sidx, didx, Ns, K, need_planes, need_dyn, need_params, backend):
    Nd, T, H, W = dyn.shape
    Co = wd.shape[0]
    shapes = ((Ns, K, Co, H, W) if need_planes else (0,), dyn.shape if need_dyn else (0,),
              wd.shape if need_params else (0,), (Co,) if need_params else (0,))
    dtypes = (dyn.dtype, dyn.dtype, wd.dtype, wd.dtype)
    return tuple(dyn.new_empty(sh, dtype=dt) for sh, dt in zip(shapes, dtypes))


# what the backward calls: the gradient custom op (triton: its triton_op)
_blend_grad = fused_grad(_blend_grad_op)


def _setup_context(ctx, inputs, output):
    planes, dyn, wd, bias, sidx, didx, backend = inputs
    ctx.save_for_backward(dyn, wd, sidx, didx)
    ctx.plane_shape = planes.shape
    ctx.backend = backend


@fused_backward("blend_static_dynamic")
def _backward(ctx, grad):
    dyn, wd, sidx, didx = ctx.saved_tensors
    need = ctx.needs_input_grad
    Ns, K = ctx.plane_shape[:2]
    gp, gd, gw, gb = _blend_grad(grad.contiguous(), dyn, wd, sidx, didx, Ns, K, bool(need[0]),
                                    bool(need[1]), bool(need[2] or need[3]), ctx.backend)
    return (gp if need[0] else None, gd if need[1] else None, gw if need[2] else None,
            gb if need[3] else None, None, None, None)


_blend_op.register_autograd(_backward, setup_context=_setup_context)
_RUN = {b: fused(_blend_op, b) for b in _LAUNCHERS}


def _blend_fused(backend, static, dynamic, weight, bias, static_idx, dynamic_idx):
    Ns, C, H, W = static.shape
    Nd, T = dynamic.shape[:2]
    Co = weight.shape[0]
    planes = static_planes(static, weight, T).contiguous()
    dyn = dynamic.reshape(Nd, T, H, W).contiguous()
    wd = weight[:, C].reshape(Co, 27).contiguous()
    if bias is None:
        bias = torch.zeros(Co, dtype=weight.dtype, device=weight.device)
    return _RUN[backend](planes, dyn, wd, bias.contiguous(), static_idx.contiguous(),
                         dynamic_idx.contiguous())


def _reference_backend(static, dynamic, weight, bias, static_idx, dynamic_idx):
    return blend_decomposed(static, dynamic, weight, bias, static_idx, dynamic_idx)


_op = op("blend_static_dynamic")
_op.register("cuda", functools.partial(_blend_fused, "cuda"), devices=("cuda",),
             kernels=("blend_static_dynamic_fwd", "blend_static_dynamic_bwd_dyn",
                      "blend_static_dynamic_bwd_planes"))
_op.register("triton", functools.partial(_blend_fused, "triton"), devices=("cuda",))
_op.register("cpp", functools.partial(_blend_fused, "cpp"), devices=("cpu",),
             dtypes=(torch.float32, torch.float64),
             kernels=("blend_static_dynamic_fwd", "blend_static_dynamic_bwd"))
_op.register("reference", _reference_backend, devices=("cpu", "cuda"), dtypes=FLOATS,
             double_backward=True)


def _check(static, dynamic, weight, bias, static_idx, dynamic_idx):
    if static.dim() != 4:
        raise ValueError(f"static must be [Ns, C, H, W], got {tuple(static.shape)}")
    Ns, C, H, W = static.shape
    if dynamic.dim() != 5 or dynamic.shape[2] != 1 or dynamic.shape[3:] != (H, W):
        raise ValueError(f"dynamic must be [Nd, T, 1, {H}, {W}], got {tuple(dynamic.shape)}")
    if weight.dim() != 5 or weight.shape[1] != C + 1 or weight.shape[2:] != (3, 3, 3):
        raise ValueError(f"weight must be [C_out, {C + 1}, 3, 3, 3], got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    if static_idx.dim() != 1 or static_idx.shape != dynamic_idx.shape:
        raise ValueError("static_idx and dynamic_idx must be 1-D of the same length N, got "
                         f"{tuple(static_idx.shape)} and {tuple(dynamic_idx.shape)}")
    if not (static.dtype == dynamic.dtype == weight.dtype
            == (weight.dtype if bias is None else bias.dtype)):
        raise TypeError(f"static, dynamic, weight and bias must share a dtype, got {static.dtype}, "
                        f"{dynamic.dtype}, {weight.dtype}, {None if bias is None else bias.dtype}")
    # bounds are checked on the CPU only: on a GPU the check would synchronise every call
    for name, idx, size in (("static_idx", static_idx, Ns), ("dynamic_idx", dynamic_idx,
                                                             dynamic.shape[0])):
        if idx.device.type == "cpu" and idx.numel() and (idx.min() < 0 or idx.max() >= size):
            raise IndexError(f"{name} out of range [0, {size})")


def blend_static_dynamic(static: torch.Tensor, dynamic: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None, static_idx: torch.Tensor,
                         dynamic_idx: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Synthetic videos from still images and dynamic memories (the static-dynamic integrator).

    Equal to ``F.conv3d(cat([static[static_idx] repeated over T, dynamic[dynamic_idx]
    as a channel]), weight, bias, padding=1)`` without materialising the repeat or the
    concatenation.

    Args:
        static: ``[Ns, C, H, W]`` still images (float32/float64; half on Triton/CUDA).
        dynamic: ``[Nd, T, 1, H, W]`` one-channel dynamic memories, same dtype.
        weight: ``[C_out, C+1, 3, 3, 3]`` integrator kernel (channels ``:C`` act on the still
            image, channel ``C`` on the dynamic memory); bias: ``[C_out]`` or None.
        static_idx, dynamic_idx: int64 ``[N]``; video n pairs ``static[static_idx[n]]`` with
            ``dynamic[dynamic_idx[n]]``. Indices may repeat (gradients accumulate).
        backend: ``"cuda" | "triton" | "cpp" | "reference"`` or None (automatic; env
            ``VDFAST_BACKEND``). ``"reference"`` is the decomposed pure-PyTorch form and the only
            one with double backward; the fused ones raise on a second derivative.

    Returns:
        ``[N, C_out, T, H, W]`` videos, differentiable w.r.t. static, dynamic, weight and bias.

    Example:
        >>> S = torch.randn(20, 3, 112, 112); D = torch.randn(20, 16, 1, 112, 112)
        >>> H = torch.nn.Conv3d(4, 3, 3, padding=1)
        >>> idx = torch.arange(10)
        >>> v = blend_static_dynamic(S, D, H.weight, H.bias, 2 * idx, 2 * idx + 1)  # [10,3,16,112,112]
    """
    _check(static, dynamic, weight, bias, static_idx, dynamic_idx)
    static_idx = static_idx.to(device=static.device, dtype=torch.long)
    dynamic_idx = dynamic_idx.to(device=static.device, dtype=torch.long)
    impl = _op.select([static, dynamic, weight] + ([bias] if bias is not None else []),
                      backend=backend)
    return impl.fn(static, dynamic, weight, bias, static_idx, dynamic_idx)


def _check_inputs(device, dtype, gen):
    """The first-call check's input: odd sizes, repeated indices, gradients to every tensor."""
    def r(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()
    idx_s = torch.tensor([0, 2, 2, 1], device=device)
    idx_d = torch.tensor([1, 0, 2, 1], device=device)
    return (r(3, 3, 5, 6), r(3, 7, 1, 5, 6), r(2, 4, 3, 3, 3), r(2), idx_s, idx_d), {}


_op.check_with(blend_static_dynamic, _check_inputs)
