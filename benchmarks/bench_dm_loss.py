"""Benchmark of vdfast.ops.dm_loss: ``python benchmarks/bench_dm_loss.py [--smoke] [--json PATH]``."""
import torch

try:
    from benchmarks.harness_ops import Bench, Case, main
except ImportError:  # run as a script from benchmarks/
    from harness_ops import Bench, Case, main

from vdfast.ops import dm_loss
from vdfast.reference.dm_loss import dm_loss as ref


def setup(device, dtype, gen, nc, real_per_class, ipc, D):
    nr, ns = nc * real_per_class, nc * ipc
    real = torch.randn(nr, D, generator=gen).to(device=device, dtype=dtype)
    syn = torch.randn(ns, D, generator=gen).to(device=device, dtype=dtype)
    rl = torch.arange(nc, device=device).repeat_interleave(real_per_class)
    sl = torch.arange(nc, device=device).repeat_interleave(ipc)
    size = torch.finfo(dtype).bits // 8
    read = (nr + ns) * D * size
    return Case(
        args=(real, syn),
        reference=lambda r, s: ref(r, rl, s, sl, nc),
        vdfast=lambda r, s, backend: dm_loss(r, rl, s, sl, nc, backend=backend),
        grad_args=(0, 1),
        # forward reads both feature matrices; backward also writes both gradients
        bytes={"fwd": read, "fwd+bwd": 2 * read},
    )


BENCH = Bench(
    op="dm_loss",
    setup=setup,
    workloads={
        # 50 classes x 64 real clips, 2048-d embed (16x112^2): one DM iteration's loss
        "miniucf_ipc1_embed2048": dict(nc=50, real_per_class=64, ipc=1, D=2048),
        "miniucf_ipc5_embed2048": dict(nc=50, real_per_class=64, ipc=5, D=2048),
        # Kinetics-400 at 8x64^2: 256-d embed
        "kinetics400_ipc1_embed256": dict(nc=400, real_per_class=64, ipc=1, D=256),
        # the embedded dataset's preset (make run): 12 classes x 16 real clips, ConvNet3D w32 d2
        "builtin_ipc1_embed1024": dict(nc=12, real_per_class=16, ipc=1, D=1024),
    },
    smoke={"smoke_nc10_embed256": dict(nc=10, real_per_class=16, ipc=1, D=256)},
)

if __name__ == "__main__":
    main([BENCH])
