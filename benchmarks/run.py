"""All bundled benchmarks in one command: ``vdfast bench`` / ``python benchmarks/run.py``.

    python benchmarks/run.py --smoke                  # tiny CPU shapes (CI)
    python benchmarks/run.py --json runs/bench.json   # full workloads (a GPU for the large ones)

Runs every fused op against its reference (``harness.py`` over ``bench_*.py``), then one iteration
of each method against its reference-style loop (``step_*.py``), and writes all rows to one JSON
file (each row names its device, versions and git SHA).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny CPU shapes, few repeats (CI)")
    p.add_argument("--only", default="ops,dm,mtt", help="comma list among ops, dm, mtt")
    p.add_argument("--json", default=None, help="write every row here")
    a = p.parse_args(argv)
    only = a.only.split(",")
    smoke = ["--smoke"] if a.smoke else []
    rows: list[dict] = []
    if "ops" in only:
        import harness

        rows += harness.main(harness.discover(), smoke + ["--no-compile"] if a.smoke else [])
    for name in ("dm", "mtt"):
        if name in only:
            mod = __import__(f"step_{name}")
            print()
            rows += mod.main(smoke)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"\nwrote {len(rows)} rows to {a.json}")
    return rows


if __name__ == "__main__":
    main()
