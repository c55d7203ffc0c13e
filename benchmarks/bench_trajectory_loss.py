"""Benchmark of vdfast.ops.trajectory_loss: ``python benchmarks/bench_trajectory_loss.py [--smoke]``."""
import torch

try:
    from benchmarks.harness_ops import Bench, Case, main
except ImportError:  # run as a script from benchmarks/
    from harness_ops import Bench, Case, main

from vdfast.ops import trajectory_loss
from vdfast.reference.trajectory_loss import trajectory_loss as ref


def setup(device, dtype, gen, P):
    s, a, t = (torch.randn(P, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
    size = torch.finfo(dtype).bits // 8
    return Case(
        args=(s, a, t),
        reference=ref,
        vdfast=lambda s, a, t, backend: trajectory_loss(s, a, t, backend=backend),
        grad_args=(0,),  # MTT: only the student needs a gradient
        # forward reads three vectors; backward reads them again and writes grad_student
        bytes={"fwd": 3 * P * size, "fwd+bwd": 7 * P * size},
    )


BENCH = Bench(
    op="trajectory_loss",
    setup=setup,
    workloads={
        "convnet3d_nc50_params": dict(P=3_650_000),   # ConvNet3D, 50 classes (16x112^2)
        "convnet3d_nc400_params": dict(P=3_900_000),  # ConvNet3D head for Kinetics-400
        "builtin_params": dict(P=316_044),             # ConvNet3D w32 d2, 12 classes (make run's)
        # below the cpp backend's auto_min_numel (131072): where the reference is faster on a CPU
        "small_params_16k": dict(P=16_384),
    },
    smoke={"smoke_p65k": dict(P=65_536)},
)

if __name__ == "__main__":
    main([BENCH])
