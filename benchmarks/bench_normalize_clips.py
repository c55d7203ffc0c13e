"""Benchmark of vdfast.ops.normalize_clips: ``python benchmarks/bench_normalize_clips.py [--smoke]``."""
import torch

try:
    from benchmarks.harness_ops import Bench, Case, main
except ImportError:  # run as a script from benchmarks/
    from harness_ops import Bench, Case, main

from vdfast.ops import normalize_clips
from vdfast.reference.normalize_clips import normalize_clips as ref

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def setup(device, dtype, gen, N, T, H, W, standardize):
    clips = torch.randint(0, 256, (N, T, H, W, 3), generator=gen, dtype=torch.uint8).to(device)
    out_bytes = clips.numel() * (torch.finfo(dtype).bits // 8)
    # one read (two with standardize: the statistics pass) and one write
    moved = clips.numel() * (2 if standardize else 1) + out_bytes
    return Case(
        args=(clips,),
        reference=lambda x: ref(x, MEAN, STD, standardize, dtype),
        vdfast=lambda x, backend: normalize_clips(x, MEAN, STD, standardize, dtype, backend=backend),
        bytes={"fwd": moved},
        modes=("fwd",),  # uint8 input: no gradient
    )


BENCH = Bench(
    op="normalize_clips",
    setup=setup,
    workloads={
        # a DM real batch: 50 classes x 64 clips would not fit; one class's 64 clips at 16x112^2
        "miniucf_batch64_t16_112": dict(N=64, T=16, H=112, W=112, standardize=False),
        # evaluation protocol: batch 256, standardised by the batch statistics
        "eval_batch256_t16_112_std": dict(N=256, T=16, H=112, W=112, standardize=True),
        "kinetics_batch256_t8_64": dict(N=256, T=8, H=64, W=64, standardize=False),
        # the embedded dataset's preset: one DM real batch of 16 clips at 8x32^2
        "builtin_batch16_t8_32": dict(N=16, T=8, H=32, W=32, standardize=False),
    },
    smoke={
        "smoke_b4_t8_64": dict(N=4, T=8, H=64, W=64, standardize=False),
        "smoke_b4_t8_64_std": dict(N=4, T=8, H=64, W=64, standardize=True),
    },
)

if __name__ == "__main__":
    main([BENCH])
