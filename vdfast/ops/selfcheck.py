"""The dispatch's safety net: a fused backend against the reference on a small seeded input of the
op's, forward and gradients (:meth:`vdfast.ops.registry.Op.first_call_check` runs it once per
(op, backend, device, dtype) before the automatic choice first uses the backend), within the
tolerance table the tests use (:mod:`vdfast.ops.tolerances`).
"""
from __future__ import annotations

import torch

from vdfast.ops.tolerances import mismatch

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
