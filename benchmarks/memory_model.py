"""Peak memory of one DM iteration and of static learning's real-frame embedding at published
sizes, as :mod:`vdfast.memory`'s model predicts it (no GPU needed: the networks are traced on the
meta device). ``tests/test_memory.py`` checks the model against measured CPU peaks at small sizes.

    python benchmarks/memory_model.py [--free-gib 70] [--markdown FILE]

Rows: the real batch embedded in one forward (what vdfast did on a GPU before chunks were chosen
from the free memory) and in the chunk :func:`vdfast.memory.auto_chunk` picks with ``--free-gib``
free (an H100 80 GB after the store's pool is resident: ~70 GiB).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from vdfast.config import resolve  # noqa: E402
from vdfast.memory import activation_bytes, auto_chunk, dm_iteration_bytes  # noqa: E402

GIB = 2 ** 30


def _nets(w: dict):
    from vdfast.models import ConvNet2D, ConvNet3D

    with torch.device("meta"):
        return (ConvNet3D(w["nc"], w["frames"], w["size"], width=w["width"], depth=w["depth"],
                          norm=resolve("published").net.norm),
                ConvNet2D(w["nc"], w["size"], width=128, depth=4))


def rows(free_gib: float, names=("miniucf-ipc1", "k400-ipc1")) -> list[dict]:
    from workloads import WORKLOADS

    s2d = resolve("published").s2d
    free = int(free_gib * GIB)
    out = []
    for name in names:
        w = WORKLOADS[name]
        net3d, net2d = _nets(w)
        clip = (3, w["frames"], w["size"], w["size"])
        n_real = w["nc"] * w["batch_real"]
        chunk = auto_chunk(net3d, clip, "cuda", total=n_real, free=free)
        for label, c in (("one forward", 0), (f"auto chunk ({chunk or n_real} clips)", chunk)):
            b = dm_iteration_bytes(net3d, clip, w["nc"], w["batch_real"], w["ipc"], c)
            out.append({"workload": name, "phase": "dm iteration", "chunk": label,
                        "real clips": n_real, "peak GiB": b["peak"] / GIB,
                        "real side GiB": b["real_chunk"] / GIB, "syn side GiB": b["syn_forward"] / GIB})
        frames = w["nc"] * s2d.static_batch_real
        a = activation_bytes(net2d, (3, w["size"], w["size"]))
        schunk = auto_chunk(net2d, (3, w["size"], w["size"]), "cuda", total=frames, free=free)
        for label, c in (("one forward", frames), (f"auto chunk ({schunk or frames} frames)",
                                                   schunk or frames)):
            peak = frames * a.input + c * a.infer_peak + frames * a.output
            out.append({"workload": name, "phase": "static learning (dm)", "chunk": label,
                        "real clips": frames, "peak GiB": peak / GIB,
                        "real side GiB": c * a.infer_peak / GIB, "syn side GiB": float("nan")})
    return out


def markdown(rs: list[dict]) -> str:
    cols = list(rs[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rs:
        lines.append("| " + " | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c])
                                       for c in cols) + " |")
    return "\n".join(lines).replace("| nan |", "| - |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--free-gib", type=float, default=70.0)
    ap.add_argument("--markdown", default=None)
    a = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    md = markdown(rows(a.free_gib))
    print(md)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(md + "\n")


if __name__ == "__main__":
    main()
