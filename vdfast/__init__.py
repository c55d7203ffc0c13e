"""vdfast: fast video dataset distillation.

    import vdfast
    res = vdfast.distill(method="dm", ipc=1)            # the embedded dataset
    report = vdfast.evaluate(res.synset)                 # fresh students, real test clips
    print(report.table())
    vdfast.export(res.synset, "out/videos")             # mp4 files, a Hugging Face VideoFolder
    loader = DataLoader(res.synset.dataset(), batch_size=8, shuffle=True)   # a plain torch loop

``import vdfast`` never fails because Triton, CUDA, DALI or the compiled extension is missing;
``vdfast info`` says which backends are usable and why not.
"""
from vdfast.version import __version__
from vdfast.api import Result, distill, evaluate, load, open_data, prepare
from vdfast.config import DistillConfig, EvalConfig, resolve
from vdfast.data.store import ClipStore
from vdfast.videofolder import export
from vdfast.synsets import Synset

__all__ = ["__version__", "distill", "evaluate", "prepare", "load", "open_data", "export", "Result",
           "ClipStore", "Synset", "DistillConfig", "EvalConfig", "resolve"]
