"""benchmarks/gpu_check.sh on the CPU: its deadline arithmetic, its reading of a pytest log, the
end-to-end table that survives an interruption, and the rehearsal (``--rehearse``), the script's
whole control flow with stand-in builds and the C++ op cases, clean and with failures injected
(benchmarks/gpu_check_faults.py): the CUDA and C++ builds failing, a kernel fault poisoning one
op-test process, another dying of SIGABRT, a third, one e2e method and one benchmark overrunning
their limits.
The report must come out complete each time, within the 8 files the lent machine returns."""
import json
import os
import subprocess
import sys
import time
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_check  # noqa: E402
import gpu_e2e  # noqa: E402

OUT_FILES = {"summary.md", "build.log", "tests.log", "e2e.log", "e2e.json", "bench.log", "ops.json"}


def _check(tmp_path, *argv):
    a = gpu_check.parse_args([str(tmp_path / "out"), "--work", str(tmp_path / "work"), *argv])
    return gpu_check.Check(a)


def test_budget_keeps_each_later_steps_minimum(tmp_path):
    c = _check(tmp_path)  # the GPU machine's limits, deadline 540 s
    assert c.budget("build-cuda", []) == 240
    c.t0 = time.monotonic() - 300  # 240 s left
    later = ["info", "tests", "e2e", "e2e", "e2e", "bench"]  # minimums 20 + 60 + 90 + 10
    assert c.budget("build-cuda", later) == pytest.approx(240 - 180 - 2, abs=1)
    assert c.budget("tests", ["e2e", "bench"]) == pytest.approx(240 - 40 - 2, abs=1)
    c.t0 = time.monotonic() - 520  # 20 s left: not even a benchmark's 10 s after the e2e's 30
    assert c.budget("e2e", ["bench"]) is None
    assert c.budget("bench", []) == pytest.approx(18, abs=1)
    with pytest.raises(SystemExit, match="no step 'nope'"):
        _check(tmp_path, "--limit", "nope=3")
    assert _check(tmp_path, "--limit", "tests=40").limits["tests"] == (40.0, 40.0)


def test_steps_past_the_deadline_are_skipped_and_reported(tmp_path):
    c = _check(tmp_path)
    c.t0 = time.monotonic() - 535  # 5 s left: no step's minimum fits, no process starts
    for step in ("info", "tests", "e2e", "bench"):
        getattr(c, step)()
    c.steps_table()
    report = (tmp_path / "out" / "summary.md").read_text()
    for step in ("info", "tests", "e2e dm", "e2e s2d-dm", "e2e mtt", "bench dm_loss"):
        assert f"| {step} | skipped: " in report, step
    assert "### e2e mtt: skipped (" in report
    assert "every step that ran is ok; 11 skipped" in report, report[-300:]
    assert not c.running


def test_a_test_process_log_names_its_failures_and_its_hung_test(tmp_path):
    c = _check(tmp_path)
    c.report("| table head |")
    part, log = tmp_path / "part.log", tmp_path / "tests.log"
    part.write_text(
        "tests/test_ops_gpu.py::test_backend_matches_reference[dm_loss-cuda-float32-s0] PASSED [ 1%]\n"
        "tests/test_ops_gpu.py::test_backend_matches_reference[dm_loss-cuda-float32-s1] FAILED [ 2%]\n"
        "tests/test_ops_gpu.py::test_backend_matches_reference[dm_loss-cuda-float32-s2] SKIPPED [ 3%]\n"
        "E   RuntimeError: CUDA error: an illegal memory access was encountered\n"
        "tests/test_ops_gpu.py::test_backend_matches_reference[dm_loss-cuda-float16-s0] \n")
    c._test_done(("dm_loss", "cuda"), "TIMED OUT (rc 2)", str(part), str(log), 12.0)
    row = (tmp_path / "out" / "summary.md").read_text().strip().splitlines()[-1]
    assert row.startswith("| dm_loss / cuda | TIMED OUT (rc 2) | 1 | 1 | 1 | 12 s |"), row
    assert "dm_loss-cuda-float32-s1]" in row and "illegal memory access" in row
    assert "running at the end: test_backend_matches_reference[dm_loss-cuda-float16-s0]" in row
    assert "dm_loss / cuda: TIMED OUT" in log.read_text()


def test_e2e_table_is_written_after_each_method_and_survives_an_interrupt(tmp_path, monkeypatch):
    import vdfast

    def distill(store, method, **kw):
        if method == "s2d-dm":
            raise KeyboardInterrupt  # the step's time limit (vdfast's Interrupted is one)
        return types.SimpleNamespace(history={"iterations": 2, "seconds_per_it": [0.5, 0.25],
                                              "loss": [2.0, 1.0], "peak_memory_mb": 10.0})

    monkeypatch.setattr(vdfast, "distill", distill)
    out = tmp_path / "e2e"
    gpu_e2e.write_table(str(out), "head", {"method": "mtt", "ok": False, "error": "earlier run"})
    args = [str(out), "--device", "cpu", "--classes", "2", "--frames", "2", "--size", "8",
            "--per-class", "2", "--methods", "dm,s2d-dm,mtt"]
    assert gpu_e2e.main(args) == 1
    table = (out / "e2e.md").read_text()
    assert "| dm | yes | 500.0 |" in table, table
    assert "| s2d-dm | NO |" in table and "KeyboardInterrupt" in table
    # the interrupt ended the run: mtt kept the row an earlier process wrote
    assert "| mtt | NO |" in table and "earlier run" in table


def _rehearse(tmp_path, *argv):
    out = tmp_path / "out"
    cmd = ["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), str(out), "--rehearse",
           "--work", str(tmp_path / "work"), *argv]
    env = dict(os.environ, PYTHON=sys.executable)
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    report = (out / "summary.md").read_text()
    files = {p.name for p in out.iterdir()}
    assert files <= OUT_FILES and all(p.is_file() for p in out.iterdir()), files
    return res, report, time.monotonic() - t0


def _sections_complete(report):
    for head in ("# vdfast GPU check", "## Build", "## vdfast info", "## Op tests",
                 "## End to end", "## Op benchmarks", "## Steps"):
        assert head in report, head
    assert "of the 300 s deadline" in report


@pytest.mark.slow
def test_rehearsal_clean(tmp_path):
    res, report, sec = _rehearse(tmp_path, "--ops", "trajectory_loss", "--methods", "dm")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    _sections_complete(report)
    assert "Extension: **CUDA + C++**" in report
    for row in ("| trajectory_loss / cuda | ok |", "| trajectory_loss / triton | ok |",
                "| compile, opcheck, l2 flush / gpu | ok | 0 | 0 |",
                "| dm | yes |", "| bench trajectory_loss | ok |"):
        assert row in report, row
    assert "every step ok" in report


@pytest.mark.slow
def test_rehearsal_survives_every_injected_failure(tmp_path):
    faults = ("build-cuda,build-cpp,kernel-fault:dm_loss/triton,abort:normalize_clips/triton,"
              "hang:trajectory_loss/triton,hang:e2e:mtt,hang:bench:normalize_clips")
    res, report, sec = _rehearse(tmp_path, "--ops", "dm_loss,normalize_clips,trajectory_loss",
                                 "--methods", "dm,mtt", "--no-other", "--limit", "tests=60",
                                 "--limit", "e2e=25", "--limit", "bench=20",
                                 "--faults", faults)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    _sections_complete(report)
    lines = report.splitlines()

    def row(start):
        found = [x for x in lines if x.startswith(start)]
        assert found, (start, report[-6000:])
        return found[0]

    # the build falls back twice; the CUDA tests are skipped, not failed
    assert row("| build-cuda |").startswith("| build-cuda | FAILED")
    assert row("| build-cpp |").startswith("| build-cpp | FAILED")
    assert row("| build-none |").startswith("| build-none | ok")
    assert "Extension: **no extension" in report
    for o in ("dm_loss", "normalize_clips", "trajectory_loss"):
        assert "skipped: no CUDA build" in row(f"| {o} / cuda |")
    # one poisoned process: its first failure names the fault; the others ran on
    fault = row("| dm_loss / triton |")
    assert "FAILED" in fault and "illegal memory access" in fault
    assert "CRASHED (SIGABRT)" in row("| normalize_clips / triton |")
    assert "running at the end: test_" in row("| normalize_clips / triton |")
    hung = row("| trajectory_loss / triton |")
    assert "TIMED OUT" in hung and "running at the end: test_" in hung
    # the hung e2e method is reported by its own row; the one before it kept its row
    assert row("| e2e mtt |").startswith("| e2e mtt | TIMED OUT")
    assert "| dm | yes |" in report and "KeyboardInterrupt" in row("| mtt | NO |")
    # a hung benchmark ends at its limit; the ones before and after it keep their rows
    assert row("| bench normalize_clips |").startswith("| bench normalize_clips | TIMED OUT")
    for o in ("dm_loss", "trajectory_loss"):
        assert row(f"| bench {o} |").startswith(f"| bench {o} | ok")
    ops = json.loads((tmp_path / "out" / "ops.json").read_text())
    assert {r["op"] for r in ops} == {"dm_loss", "trajectory_loss"}
    assert "some step failed" in report
    assert sec < 300
