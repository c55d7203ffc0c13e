"""Benchmark of vdfast.ops.gradient_match: ``python benchmarks/bench_gradient_match.py [--smoke]``."""
import torch

try:
    from benchmarks.harness_ops import Bench, Case, main
except ImportError:  # run as a script from benchmarks/
    from harness_ops import Bench, Case, main

from vdfast.ops import gradient_match
from vdfast.reference.gradient_match import gradient_match as ref


def convnet3d_shapes(nc, width=(64, 128, 128), feat=2048):
    """Parameter shapes of ConvNet3D (three Conv3d(3x7x7) blocks and the classifier head)."""
    shapes, cin = [], 3
    for w in width:
        shapes += [(w, cin, 3, 7, 7), (w,)]
        cin = w
    return shapes + [(nc, feat), (nc,)]


def setup(device, dtype, gen, nc, width, feat):
    shapes = convnet3d_shapes(nc, width, feat)
    real = [torch.randn(s, generator=gen).to(device=device, dtype=dtype) for s in shapes]
    syn = [torch.randn(s, generator=gen).to(device=device, dtype=dtype) for s in shapes]
    n = sum(x.numel() for x in real if x.dim() >= 2)
    size = torch.finfo(dtype).bits // 8
    return Case(
        args=(real, syn),
        reference=ref,
        vdfast=lambda r, s, backend: gradient_match(r, s, backend=backend),
        grad_args=(1,),  # DC: gradient to the synthetic side only
        # forward reads both sides; backward reads both again and writes grad_syn
        bytes={"fwd": 2 * n * size, "fwd+bwd": 5 * n * size},
    )


BENCH = Bench(
    op="gradient_match",
    setup=setup,
    workloads={"convnet3d_nc50": dict(nc=50, width=(64, 128, 128), feat=2048),
               # the embedded dataset's preset: ConvNet3D w32 d2, 12 classes
               "convnet3d_builtin": dict(nc=12, width=(32, 32), feat=1024)},
    smoke={"smoke_convnet3d_w8": dict(nc=10, width=(8, 16, 16), feat=256)},
)

if __name__ == "__main__":
    main([BENCH])
