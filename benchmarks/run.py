"""All bundled benchmarks in one command: ``vdfast bench`` / ``python benchmarks/run.py``.

    python benchmarks/run.py --smoke                         # tiny CPU shapes (CI)
    python benchmarks/run.py --json runs/bench.json          # named workloads (a GPU for the large ones)
    python benchmarks/run.py --only dm,mtt --workloads builtin_ipc1 --compare runs/old.json
    python benchmarks/run.py --only dm,s2d-dm,mtt,s2d-mtt,gvd --scaling --plot runs/scaling.png
    python benchmarks/run.py --only quality                  # distilled sets vs coresets (quality.py)

Runs every fused op against its reference (``harness_ops.py`` over ``bench_*.py``), one iteration of
each method against its reference-style loop (``step_dm.py``: dm, s2d-dm; ``step_mtt.py``: mtt,
s2d-mtt; ``step_gvd.py``: gvd generation) on the named workloads of ``workloads.py``, and the
decoders (``step_decode.py``), and the evaluation's batched students against one-by-one ones
(``step_eval.py``), and writes all rows to one JSON file (each row names its device,
versions and git SHA). Other options (``--workloads``, ``--repeats``, ``--memory``, ``--scaling``,
``--ipcs``, ``--sizes``, ``--device``) are passed to the step benchmarks; see
``python benchmarks/step_dm.py --help``.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# --only name -> (module, methods)
STEPS = {"dm": ("step_dm", "dm"), "s2d-dm": ("step_dm", "s2d-dm"), "mtt": ("step_mtt", "mtt"),
         "s2d-mtt": ("step_mtt", "s2d-mtt"), "gvd": ("step_gvd", "gvd"),
         "decode": ("step_decode", "decode"), "eval": ("step_eval", "eval")}
ONLY = ("ops",) + tuple(STEPS) + ("quality",)
# what runs without --only: everything but the quality benchmark (hours on a CPU), which runs with
# --only quality, and in its smoke size with --smoke
DEFAULT = tuple(o for o in ONLY if o != "quality")


def dataset_free(args: list[str]) -> list[str]:
    """``args`` without ``--workloads`` (and its value)."""
    out, skip = [], False
    for x in args:
        if skip or x.startswith("--workloads="):
            skip = False
            continue
        if x == "--workloads":
            skip = True
            continue
        out.append(x)
    return out


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny CPU shapes, few repeats (CI)")
    p.add_argument("--only", default=None, help="comma list among " + ", ".join(ONLY) + " (default: "
                   "all but quality; with --smoke, quality's smoke size too)")
    p.add_argument("--json", default=None, help="write every row here")
    p.add_argument("--compare", default=None, help="base JSON rows (an older --json): print speed-ups")
    p.add_argument("--plot", default=None, help="with --scaling: PNG of time and memory against ipc")
    a, rest = p.parse_known_args(argv)
    only = a.only.split(",") if a.only else list(DEFAULT) + (["quality"] if a.smoke else [])
    unknown = [o for o in only if o not in ONLY]
    if unknown:
        p.error(f"unknown --only {','.join(unknown)}; choose from {', '.join(ONLY)}")
    smoke = ["--smoke"] if a.smoke else []
    scaling = "--scaling" in rest
    rows: list[dict] = []
    import harness
    import harness_ops

    if "ops" in only and not scaling:
        rows += harness_ops.main(harness_ops.discover(), smoke + ["--no-compile"] if a.smoke else [])
    modules: dict[str, list[str]] = {}
    for name in only:
        if name in STEPS and not (scaling and name in ("decode", "eval")):
            mod, method = STEPS[name]
            modules.setdefault(mod, []).append(method)
    for mod, methods in modules.items():
        args = smoke + ["--methods", ",".join(methods)]
        # the decoders and the evaluation have their own workloads: dataset options do not apply
        args += dataset_free(rest) if mod in ("step_decode", "step_eval") else rest
        print()
        rows += __import__(mod).main(args)
    if "quality" in only and not scaling:  # its own rows, JSON and document (benchmarks/quality.py)
        import quality

        print()
        quality.main(smoke + rest)
    return harness.finish(rows, a.json, a.compare, a.plot if scaling else None)


if __name__ == "__main__":
    main()
