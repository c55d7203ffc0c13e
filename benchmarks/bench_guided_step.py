"""Benchmark of vdfast.ops.guided_step (one DDPM step with noise, per-instance guide):
``python benchmarks/bench_guided_step.py [--smoke] [--json PATH]``. Forward only (sampling runs
under no_grad)."""
import torch

try:
    from benchmarks.harness_ops import Bench, Case, main
except ImportError:  # run as a script from benchmarks/
    from harness_ops import Bench, Case, main

from vdfast.ops import guided_step
from vdfast.ops.guided_step import StepCoefs, frame_decay
from vdfast.reference.guided_step import guided_step as ref


def setup(device, dtype, gen, B, F, C, h, w, segments=1):
    def rnd(*s):
        return torch.randn(*s, generator=gen).to(device=device, dtype=dtype)

    x, eps, noise = rnd(B, F, C, h, w), rnd(B, F, C, h, w), rnd(B, F, C, h, w)
    guide = rnd(B, C, h, w) if segments == 1 else rnd(B, F, C, h, w)
    lam = frame_decay(0.1, 0.0, F, segments, dtype=dtype, device=device)
    coefs = StepCoefs.from_schedule(torch.linspace(0.9999, 0.005, 50), t=30, t_prev=29)
    size = torch.finfo(dtype).bits // 8
    return Case(
        args=(x, eps, guide, noise),
        reference=lambda x, e, m, z: ref(x, e, m, lam, coefs, z, "ddpm"),
        vdfast=lambda x, e, m, z, backend: guided_step(x, e, m, lam, coefs, z, backend=backend),
        # read x, eps, noise and the guide once, write the next latent once
        bytes={"fwd": (4 * x.numel() + guide.numel()) * size},
        modes=("fwd",),
    )


BENCH = Bench(
    op="guided_step",
    setup=setup,
    workloads={
        # Latte-S-like latents: 16 frames of 4 x 32^2 (256^2 frames through an 8x autoencoder),
        # the GVD sampling batch at ipc 1 and ipc 10 of MiniUCF's 50 classes
        "latte_s_ipc1": dict(B=50, F=16, C=4, h=32, w=32),
        "latte_s_ipc10": dict(B=500, F=16, C=4, h=32, w=32),
        # MVIC with 2 segments: per-frame guides
        "latte_s_ipc10_mvic2": dict(B=500, F=16, C=4, h=32, w=32, segments=2),
        # the embedded dataset's GVD preset: 12 classes, 8 frames of 4 x 8^2 latents (4x autoencoder)
        "builtin_ipc1": dict(B=12, F=8, C=4, h=8, w=8),
    },
    smoke={"smoke_b2_f7": dict(B=2, F=7, C=4, h=8, w=8)},
)

if __name__ == "__main__":
    main([BENCH])
