"""One dispatch for every fused op.

A backend is a small record (name, devices, dtypes, an availability probe). Each op registers the
implementations it has; ``select`` picks, in the order CUDA extension -> Triton -> C++ CPU
extension -> reference, the first whose ``why_not`` is empty. A backend measured slower than the
reference below some size registers that size (``auto_min_numel``): the automatic choice skips it
on smaller inputs.

* Automatic choice falls back quietly and logs the reasons once per (op, device, dtype) at DEBUG level.
* A safety net for backends that have never met this machine: the first automatic use of a fused
  backend per (op, backend, device, dtype) runs it and the reference on a small seeded input of
  the op's (``Op.check_with``), forward and gradients; on an exception or a mismatch the backend is
  demoted for that (device, dtype) with a WARNING naming the op and the error, the next backend
  in the order serves, and ``vdfast info`` shows the demotion.
* An explicit request (``backend="triton"`` argument or the ``VDFAST_BACKEND`` environment variable)
  that cannot be met raises :class:`BackendUnavailable` listing every backend's reasons.
* Triton runs on CPU tensors only under ``TRITON_INTERPRET=1`` and only when asked for explicitly
  (the interpreter is for tests, ~0.5 ms per program instance).

The choice is traceable (the probes are constants while torch.compile traces; the first-call
check and logging are eager-only), so a compiled graph holds the backend chosen at trace time.

The dispatch, by job (this module re-exports their names; ``vdfast.ops`` re-exports the public ones):

* :mod:`vdfast.ops.backends`: the order, the availability probes (compiled extension, its kernels
  and CUDA architectures, Triton) and the compiled kernels' fakes.
* :mod:`vdfast.ops.registry`: :class:`Op` / :class:`Impl`, the choice, ``vdfast info``'s table.
* :mod:`vdfast.ops.selfcheck`: the first-call check's comparison with the reference, within
  :mod:`vdfast.ops.tolerances` (the table the tests use).
* :mod:`vdfast.ops.fused`: how a fused backend runs (:func:`fused_op` declares its custom op; its
  triton_op is built from the same functions), the first-order backward guard, and the output
  helpers every op file shares.
"""
from __future__ import annotations

from vdfast.ops.backends import (  # noqa: F401
    DISPATCH_KEY, KERNEL_FAKES, ORDER, PROBES, BackendUnavailable, _triton_import_reason,
    backend_reasons, built_cuda_archs, compiled_extension, cuda_arch_reason, has_kernel,
    interpreter_sizes, kernel_fake, missing_kernels, probe, triton_interpret)
from vdfast.ops.fused import (  # noqa: F401
    Fused, FusedOp, acc_dtype, declare, fused, fused_backward, fused_grad, fused_op, new_out,
    triton_variant)
from vdfast.ops.registry import FLOATS, OPS, Impl, Op, op, status_table  # noqa: F401
from vdfast.ops.selfcheck import (  # noqa: F401
    _clone_inputs, _float64, _forward_and_grads, _tensors, compare_with_reference)
