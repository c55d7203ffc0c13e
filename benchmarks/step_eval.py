"""The evaluation: wall time of a whole ``vdfast.evaluation.evaluate`` (the synset's students, random
real clips at the same ipc, the full-train-set student where the workload says so), students
trained one by one (``--eval-batched off``, the reference) against batched students (the default,
:mod:`vdfast.models.batched`), with peak memory, through the step harness (interleaved repeats).

    python benchmarks/step_eval.py --smoke
    python benchmarks/step_eval.py --workloads builtin-ipc1-s3,builtin-ipc1-s10 --repeats 1
    python benchmarks/step_eval.py --workloads nc50-16x112-ipc1 --repeats 1

One call = one evaluation. The published protocol trains every student 500 epochs; the workloads
shorten ``epochs`` (a student's time is proportional to it) so a CPU repeat takes minutes; the
speed-up is per epoch either way. ``builtin-*`` use the embedded dataset with its preset (ConvNet3D
width 32 depth 2, batch 64) and a synset of real clips; ``nc50-*`` a store and a synset of random
tensors of the shapes of a 50-class 16x112² dataset (the published ConvNet3D, batch 256).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness_steps import Step, StepCase, step_main  # noqa: E402

from vdfast.config import EvalConfig, NetConfig  # noqa: E402
from vdfast.data.store import ClipStore  # noqa: E402

# students / epochs / the full-train-set row are the workload's; everything else the protocol's
WORKLOADS = {
    "builtin-ipc1-s3": dict(data="builtin", ipc=1, students=3, epochs=5, full=True),
    "builtin-ipc1-s10": dict(data="builtin", ipc=1, students=10, epochs=5, full=False),
    "nc50-16x112-ipc1": dict(data="random", nc=50, frames=16, size=112, ipc=1, students=3, epochs=1,
                             test_per_class=1, full=False),
    "nc50-16x112-ipc10": dict(data="random", nc=50, frames=16, size=112, ipc=10, students=3,
                              epochs=1, test_per_class=1, full=False),
}
SMOKE = {
    "smoke-builtin-ipc1-s3": dict(data="random", nc=3, frames=4, size=16, ipc=1, students=3, epochs=2,
                                  test_per_class=2, full=True, width=4),
}


def _store(w: dict) -> ClipStore:
    if w["data"] == "builtin":
        return ClipStore.builtin()
    rng = np.random.default_rng(0)
    f, s = w["frames"], w["size"]
    arrays = {split: [rng.integers(0, 256, (k, f, s, s, 3), dtype=np.uint8) for _ in range(w["nc"])]
              for split, k in (("train", w["ipc"] + 1), ("test", w["test_per_class"]))}
    return ClipStore([f"c{c}" for c in range(w["nc"])], arrays, f, s, name="random")


def build(method: str, w: dict, device, tmp) -> StepCase:
    from vdfast import evaluation
    from vdfast.config import resolve
    from vdfast.synsets.pixel import PixelSynset

    store = _store(w)
    if w["data"] == "builtin":
        cfg = resolve("builtin")
        net, ecfg = cfg.net, cfg.eval
    else:
        net, ecfg = NetConfig(width=w.get("width", 64), depth=w.get("depth", 3 if w["size"] > 32 else 2)), EvalConfig()
    clips, labels = store.random_clips(w["ipc"], torch.Generator().manual_seed(1))
    from vdfast.ops import normalize_clips

    syn = PixelSynset(normalize_clips(clips, store.mean, store.std), labels, store.classes, store.mean,
                      store.std, meta={"method": "dm", "ipc": w["ipc"]})
    base = dict(students=w["students"], epochs=w["epochs"], full=w["full"], full_epochs=1)

    def run(batched):
        cfg = EvalConfig(**{**ecfg.__dict__, **base, "batched": batched})
        return lambda: evaluation.evaluate(syn, store, cfg, seed=0, device=device, net_cfg=net,
                                           progress=False)
    n = w["students"] * 2 + (1 if w["full"] else 0)
    extra = {p: {"items_per_call": n} for p in ("one by one (reference)", "vdfast batched")}
    return StepCase([("one by one (reference)", run("off")), ("vdfast batched", run("on"))], extra)


STEP = Step("eval", ("eval",), build, "Evaluation: batched students against one by one",
            os.path.abspath(__file__), reference="one by one (reference)", workloads=WORKLOADS,
            smoke=SMOKE, extra_cols=(("students/s", "items_per_s", ".2f"),))


def main(argv=None):
    return step_main(STEP, argv)


if __name__ == "__main__":
    main()
