"""GVD generation: the latents of a whole synthetic set (``nc * ipc`` instances, in chunks of
``chunk``), vdfast's sampler (:func:`vdfast.methods.gvd_sample.sample`, the fused guided update)
against a reference-style sampler (``reference_gvd.py``: the update unfused, guidance per frame),
same model, same sizes, same run, as a ratio, with peak memory for both.

    python benchmarks/step_gvd.py --smoke                              # tiny, CI
    python benchmarks/step_gvd.py --workloads builtin_ipc1 --json runs/gvd.json
    python benchmarks/step_gvd.py --scaling --workloads builtin_ipc1 --sizes 32 --plot runs/gvd.png

One "iteration" generates every instance of the set: ``gvd_steps`` DDPM steps with classifier-free
guidance (scale 4) and mode guidance (lam 0.1, 2 MVIC segments, guided in the noisier half), each
chunk's latents kept on the host in fp16 as :func:`vdfast.methods.gvd.generate` does (no
autoencoder decode). The generator is a randomly initialised VideoDiT of the workload's preset
(``XL`` published) over ``size / ae_down`` latents with 4 channels; the modes are random latents.
Peak memory should not grow with ipc (the issue's goal: within 10 % from ipc 1 to 50): only the
fp16 latents kept on the host do.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness_steps import Step, StepCase, step_main  # noqa: E402
from reference_gvd import reference_sample  # noqa: E402

from vdfast.config import resolve  # noqa: E402
from vdfast.methods.gvd_sample import ddpm_schedule, instance_generator, sample  # noqa: E402
from vdfast.models.video_dit import VideoDiT  # noqa: E402

CHANNELS = 4


def setup(w: dict, device, seed: int = 0):
    """(model, cfg.gvd, chunks) for a workload: ``chunks`` = ``(y, labels and slots, guide)``."""
    cfg = resolve("published", method="gvd", ipc=w["ipc"],
                  gvd={"generator": w["generator"], "ae_down": w["ae_down"], "steps": w["gvd_steps"],
                       "chunk": w["chunk"]})
    g = cfg.gvd
    latent = w["size"] // g.ae_down
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the model's own init draws from the global RNG
        model = VideoDiT.from_preset(g.generator, w["nc"], w["frames"], latent, channels=CHANNELS,
                                     patch=g.patch)
    with torch.no_grad():
        for p in model.parameters():  # adaLN-zero starts as the identity: give every layer weights
            p.normal_(0, 0.02, generator=gen)
    model = model.to(device).eval()
    shape = (w["frames"], CHANNELS, latent, latent)
    jobs = [(c, k) for c in range(w["nc"]) for k in range(w["ipc"])]
    chunks = []
    for s in range(0, len(jobs), g.chunk):
        part = jobs[s:s + g.chunk]
        y = torch.tensor([c for c, _ in part], device=device)
        guide = torch.randn((len(part),) + shape, generator=gen).to(device)
        chunks.append((y, part, guide))
    return model, g, shape, chunks


def generator(model, g, shape, chunks, seed, device, reference: bool):
    """One generation of every instance: a function returning the fp16 latents on the host."""
    ab = ddpm_schedule(g.train_timesteps)

    def run():
        out = []
        for y, part, guide in chunks:
            gens = [instance_generator(seed, f"c{c}", k, device) for c, k in part]
            if reference:
                z = reference_sample(model, y, gens, shape, ab, g.steps, g.cfg_scale, guide, g.lam,
                                     g.rho, g.t_stop, g.segments)
            else:
                z = sample(model, y, gens, shape, ab, g.steps, "ddpm", g.cfg_scale, guide, g.lam,
                           g.rho, g.t_stop, g.segments)
            out.append(z.half().cpu())
        return torch.cat(out)
    return run


def build(method: str, w: dict, device, tmp) -> StepCase:
    model, g, shape, chunks = setup(w, device)
    return StepCase([(name, generator(model, g, shape, chunks, 0, device, name != "vdfast"))
                     for name in ("reference-style loop", "vdfast")])


STEP = Step("gvd", ("gvd",), build, "GVD generation (latents of nc x ipc instances)",
            os.path.abspath(__file__))


def main(argv=None):
    return step_main(STEP, argv)


if __name__ == "__main__":
    main()
