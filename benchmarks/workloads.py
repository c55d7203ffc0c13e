"""Named workloads of the method-step benchmarks (``step_*.py``), shaped like real runs.

A workload is a plain dict: ``nc`` classes, clips of ``frames`` x ``size``², ``ipc`` synthetic
videos per class, the ConvNet3D (``width``, ``depth``), DM's ``batch_real`` real clips per class,
MTT's ``syn_steps`` unrolled steps, and GVD's generator preset, autoencoder factor ``ae_down``,
sampling ``gvd_steps`` and ``chunk``. Every value not set by the dataset (classes, frames, size)
comes from vdfast's published configuration (:func:`vdfast.config.resolve`\\ ``("published")``):
ConvNet3D width 64 depth 3, 64 real clips per class, 10 unrolled MTT steps, the XL generator with
an 8x autoencoder, 50 sampling steps in chunks of 32.

The clips are random uint8 tensors of the right shapes (the time of a step does not depend on the
pixel values; nothing is decoded). Expert buffers for MTT are random trajectories.

``--smoke`` runs each named workload's smoke version (``smoke-<name>``): the same ipc, at most 3
classes, 4 x 16² clips, a width-4 network, 2 unrolled steps, the tiny generator with 4 sampling steps,
small enough for CI on a CPU.
"""
from __future__ import annotations

from vdfast.config import resolve

_PUB = resolve("published")
PUBLISHED = dict(width=_PUB.net.width, depth=_PUB.net.depth, batch_real=_PUB.batch_real,
                 syn_steps=_PUB.mtt.syn_steps, generator=_PUB.gvd.generator,
                 ae_down=_PUB.gvd.ae_down, gvd_steps=_PUB.gvd.steps, chunk=_PUB.gvd.chunk)


def _w(nc: int, frames: int, size: int, ipc: int, **kw) -> dict:
    return {"nc": nc, "frames": frames, "size": size, "ipc": ipc, **PUBLISHED, **kw}


# the datasets' published conventions: 16 x 112² for the
# UCF101-based sets and HMDB51, 8 x 64² for Kinetics-400 and SSv2
WORKLOADS = {
    "miniucf-ipc1": _w(50, 16, 112, 1),
    "miniucf-ipc5": _w(50, 16, 112, 5),
    "hmdb51-ipc1": _w(51, 16, 112, 1),
    "k400-ipc1": _w(400, 8, 64, 1),
    "ssv2-ipc1": _w(174, 8, 64, 1),
}
# the earlier built-in workloads, kept so older figures stay comparable
BUILTIN = {
    # the embedded dataset's shape and preset: 12 classes, 8x32², ConvNet3D w32 d2, 32 real / class
    "builtin_ipc1": _w(12, 8, 32, 1, width=32, depth=2, batch_real=32, generator="tiny", ae_down=4,
                       gvd_steps=25),
    # Kinetics-style clips (8x64², the published ConvNet3D) with 50 classes, 16 real / class
    "k400like50_ipc1": _w(50, 8, 64, 1, batch_real=16),
    # the base of the reduced CPU --scaling grid (ipc up to 50 fits a 2-core, 24 GiB machine)
    "cpu-scaling": _w(5, 8, 32, 1, width=32, depth=2, batch_real=16, syn_steps=5, generator="tiny",
                      ae_down=4, gvd_steps=10),
    # GVD's memory against ipc with 50 classes (every chunk of 32 full from ipc 1 on), CPU-sized
    "cpu-gvd-nc50": _w(50, 8, 32, 1, width=32, depth=2, generator="tiny", ae_down=4, gvd_steps=2),
}


def smoke(w: dict) -> dict:
    return {**w, "nc": min(w["nc"], 3), "frames": 4, "size": 16, "width": 4, "depth": 2,
            "batch_real": 4, "syn_steps": 2, "generator": "tiny", "ae_down": 4, "gvd_steps": 4,
            "chunk": 4}


SMOKE = {f"smoke-{k}": smoke(w) for k, w in WORKLOADS.items()}
ALL = {**WORKLOADS, **BUILTIN, **SMOKE}


def select(names: str | None, smoke_run: bool, workloads: dict | None = None,
           smoke_workloads: dict | None = None) -> dict[str, dict]:
    """The workloads a run asks for: ``names`` (comma list; with ``smoke_run`` a full name means its
    smoke version), else every named workload (or every smoke one). ``workloads`` /
    ``smoke_workloads``: a bench's own tables instead of these (decode)."""
    full = WORKLOADS if workloads is None else workloads
    small = SMOKE if smoke_workloads is None else smoke_workloads
    every = {**ALL, **full, **small} if workloads is None else {**full, **small}
    if not names:
        return dict(small if smoke_run else full)
    out = {}
    for n in names.split(","):
        if smoke_run and f"smoke-{n}" in small:
            n = f"smoke-{n}"
        if n not in every:
            raise SystemExit(f"unknown workload {n!r}; choose from {', '.join(every)}")
        out[n] = every[n]
    return out
