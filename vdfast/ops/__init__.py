"""Fused operations. Each op: ``vdfast/ops/<op>.py`` (the function a user calls),
``vdfast/reference/<op>.py`` (plain PyTorch truth), ``kernels/<op>.py`` (Triton),
``csrc/<op>.cpp`` / ``csrc/cuda/<op>_cuda.cu`` (C++ CPU / CUDA), ``tests/test_<op>.py``,
``benchmarks/bench_<op>.py``. Backends are chosen by :mod:`vdfast.ops.dispatch`.
"""
from vdfast.ops.dispatch import BackendUnavailable, backend_reasons, status_table

__all__ = ["BackendUnavailable", "backend_reasons", "status_table"]
# one line per op (each module registers its backends on import):
from vdfast.ops.dm_loss import dm_loss  # noqa: E402
__all__ += ["dm_loss"]
from vdfast.ops.normalize_clips import normalize_clips  # noqa: E402
__all__ += ["normalize_clips"]
from vdfast.ops.trajectory_loss import trajectory_loss  # noqa: E402
__all__ += ["trajectory_loss"]
from vdfast.ops.blend_static_dynamic import blend_static_dynamic  # noqa: E402
__all__ += ["blend_static_dynamic"]
from vdfast.ops.gradient_match import gradient_match  # noqa: E402
__all__ += ["gradient_match"]
from vdfast.ops.guided_step import guided_step  # noqa: E402
__all__ += ["guided_step"]
