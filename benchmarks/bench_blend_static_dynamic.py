"""Benchmark of vdfast.ops.blend_static_dynamic:
``python benchmarks/bench_blend_static_dynamic.py [--smoke] [--json PATH]``.

fwd: the synthetic videos of one distillation iteration; fwd+bwd: plus the gradients a
static-dynamic run trains (dynamic memory and integrator weight/bias; the still images are frozen).
"""
import torch

try:
    from benchmarks.harness_ops import Bench, Case, main
except ImportError:  # run as a script from benchmarks/
    from harness_ops import Bench, Case, main

from vdfast.ops import blend_static_dynamic
from vdfast.reference.blend_static_dynamic import blend_static_dynamic as ref


def setup(device, dtype, gen, N, Ns, Nd, T, H, W, C=3, C_out=3):
    static = torch.randn(Ns, C, H, W, generator=gen).to(device=device, dtype=dtype)
    dynamic = torch.randn(Nd, T, 1, H, W, generator=gen).to(device=device, dtype=dtype)
    weight = (0.1 * torch.randn(C_out, C + 1, 3, 3, 3, generator=gen)).to(device=device, dtype=dtype)
    bias = torch.zeros(C_out, device=device, dtype=dtype)
    # the multi-static pairing: each slot draws one of its class's statics and dynamics
    sidx = torch.randint(0, Ns, (N,), generator=gen).to(device)
    didx = torch.randint(0, Nd, (N,), generator=gen).to(device)
    size = torch.finfo(dtype).bits // 8
    video, dyn, stat = N * C_out * T * H * W, N * T * H * W, Ns * C * H * W
    return Case(
        args=(static, dynamic, weight, bias),
        reference=lambda s, d, w, b: ref(s, d, w, b, sidx, didx),
        vdfast=lambda s, d, w, b, backend: blend_static_dynamic(s, d, w, b, sidx, didx,
                                                                backend=backend),
        grad_args=(1, 2, 3),
        # the least traffic: read the statics and the gathered dynamic memory, write the videos;
        # backward reads the video gradient twice (dynamic grad, weight grad) and the dynamic again
        bytes={"fwd": (video + dyn + stat) * size,
               "fwd+bwd": (video + dyn + stat + 2 * video + 2 * dyn) * size},
        # 2 flops per multiply-add: the 27-tap stencil per output element (+ the static planes)
        flops={"fwd": 2.0 * 27 * (C + 1) * video},
    )


BENCH = Bench(
    op="blend_static_dynamic",
    setup=setup,
    workloads={
        # MiniUCF at ipc 1, multi-static pairing: 50 videos from 100 statics / 100 dynamics
        "miniucf_ipc1_t16_112": dict(N=50, Ns=100, Nd=100, T=16, H=112, W=112),
        "miniucf_ipc5_t16_112": dict(N=250, Ns=500, Nd=500, T=16, H=112, W=112),
        # Kinetics-400 / SSv2 format, 1:1 pairing
        "kinetics400_ipc1_t8_64": dict(N=400, Ns=400, Nd=400, T=8, H=64, W=64),
        # the embedded dataset's preset, multi pairing: 12 videos from 24 statics / 24 dynamics
        "builtin_ipc1_t8_32": dict(N=12, Ns=24, Nd=24, T=8, H=32, W=32),
    },
    smoke={"smoke_n4_t7_37": dict(N=4, Ns=3, Nd=3, T=7, H=37, W=37)},
)

if __name__ == "__main__":
    main([BENCH])
