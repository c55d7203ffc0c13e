"""benchmarks/gpu_check.sh, dry-run on the CPU (DRY_RUN=1): every step runs in order under its
limit, the one report names each step's outcome and holds the end-to-end and ops tables, and no
more files come back than the lent machine returns (8)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "WORK": str(work),
           "BUDGET": "60"}  # too little left for torch.compile: its skip is reported
    res = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    report = (out / "summary.md").read_text()
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + report[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir()), files
    for name in ("build.log", "tests.log", "tests.xml", "e2e.log", "bench.log", "ops.json", "ops.md"):
        assert name in files
    for row in ("| tests | ok", "| e2e | ok", "| bench | ok", "| compile | skipped"):
        assert row in report, row
    for m in ("dm", "s2d-dm", "mtt"):
        assert f"| {m} | yes |" in report, m
    assert "=== profile of dm ===" in (out / "e2e.log").read_text()
    assert "## Ops" in report and "dm_loss" in report
