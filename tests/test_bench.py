"""The bundled benchmarks: the reference-style loops compute what vdfast computes (same loss at the
same inputs, tiny sizes), and the harness's step machinery (skipped providers, peak memory in a
child process, scaling, plot, compare) works end to end on CPU."""
import dataclasses
import json

import harness  # benchmarks/ is on sys.path (conftest.py)
import harness_ops
import harness_steps
import pytest
import step_dm
import step_gvd
import step_mtt
import torch
import workloads
from reference_gvd import reference_sample

from vdfast.config import MTTConfig  # noqa: E402
from vdfast.methods.base import reinit_  # noqa: E402
from vdfast.methods.gvd_sample import sample  # noqa: E402

CPU = torch.device("cpu")
TINY = dict(workloads.smoke(workloads.WORKLOADS["miniucf-ipc1"]), ipc=2, width=8)
UNROLLS = [None]
if "unroll" in {f.name for f in dataclasses.fields(MTTConfig)}:
    UNROLLS = ["graph", "recompute"]


@pytest.mark.parametrize("method", ["dm", "s2d-dm"])
def test_reference_dm_loss_matches_vdfast(method):
    # every real clip is used (batch_real == clips per class), the same random network; the 1:1
    # pairing makes the s2d videos deterministic
    w = dict(TINY, batch_real=4)
    _, _, m, syn, state, _, ref = step_dm.setup(method, w, CPU, s2d={"pairing": "1:1"})
    assert ref.store.clips("train", 0).shape[0] == w["batch_real"]
    vd = m.step(syn, state, torch.Generator().manual_seed(7))
    net = reinit_(ref.net(), torch.Generator().manual_seed(7))
    want = ref.loss(net)
    assert float(vd) > 0
    torch.testing.assert_close(vd, want.detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("unroll", UNROLLS)
@pytest.mark.parametrize("method", ["mtt", "s2d-mtt"])
def test_reference_mtt_loss_matches_vdfast(method, unroll, tmp_path):
    # one expert and start epoch 0: both loops match the same trajectory segment
    _, m, syn, state, gen, ref = step_mtt.setup(method, TINY, CPU, str(tmp_path), unroll,
                                                experts=1, max_start=1, s2d={"pairing": "1:1"})
    vd = m.step(syn, state, gen)
    want = ref.loss()
    assert float(vd) > 0
    torch.testing.assert_close(vd, want.detach(), rtol=1e-4, atol=1e-6)


def test_reference_gvd_sampler_matches_vdfast():
    w = dict(workloads.SMOKE["smoke-miniucf-ipc1"], ipc=2)
    model, g, shape, chunks = step_gvd.setup(w, CPU)
    from vdfast.methods.gvd_sample import ddpm_schedule, instance_generator

    ab = ddpm_schedule(g.train_timesteps)
    y, part, guide = chunks[0]

    def gens():
        return [instance_generator(0, f"c{c}", k) for c, k in part]
    want = reference_sample(model, y, gens(), shape, ab, g.steps, g.cfg_scale, guide, g.lam, g.rho,
                            g.t_stop, g.segments)
    got = sample(model, y, gens(), shape, ab, g.steps, "ddpm", g.cfg_scale, guide, g.lam, g.rho,
                 g.t_stop, g.segments)
    assert g.lam > 0 and guide.abs().sum() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_skipped_provider_row_and_speedup():
    rows = harness_steps.compare_steps("w", "m", [("reference-style loop", lambda: sum(range(1000))),
                                                  ("gpu thing", harness_steps.Skipped("no CUDA device")),
                                            ("vdfast", lambda: None)], CPU, 2, 0, {})
    assert [r["provider"] for r in rows] == ["reference-style loop", "gpu thing", "vdfast"]
    assert rows[1]["skipped"] == "no CUDA device" and rows[1]["median_ms"] is None
    assert rows[0]["speedup_vs_reference"] == 1.0 and rows[2]["speedup_vs_reference"] > 0
    assert "skipped: no CUDA device" in harness_steps.step_table(rows)


def test_op_case_interleaves_providers_and_marks_a_failing_one():
    order = []

    def setup(device, dtype, gen, n):
        x = torch.randn(n, generator=gen)

        def reference(a):
            order.append("reference")
            return (a * a).sum()

        def vdfast(a, backend):
            order.append(backend)
            if backend == "triton":
                raise RuntimeError("no such kernel\nsecond line")
            return (a * a).sum()
        return harness_ops.Case(args=(x,), reference=reference, vdfast=vdfast, grad_args=(0,),
                                bytes={"fwd": 4 * n, "fwd+bwd": 8 * n})

    bench = harness_ops.Bench(op="square_sum", setup=setup, workloads={}, smoke={})
    rows = harness_ops.run_case(bench, "w", {"n": 64}, CPU, torch.float32,
                                ["reference", "cpp", "triton"], ["fwd", "fwd+bwd"], 3, 1, 10.0, {})
    assert [(r["provider"], r["mode"]) for r in rows] == [
        (p, m) for m in ("fwd", "fwd+bwd") for p in ("reference", "cpp", "triton")]
    bad = [r for r in rows if r["provider"] == "triton"]
    assert all(r["error"] == "RuntimeError: no such kernel" and r["median_ms"] is None for r in bad)
    good = [r for r in rows if r["provider"] != "triton"]
    assert all(r["error"] is None and r["median_ms"] > 0 and r["pct_copy_bw"] > 0 for r in good)
    # fwd: one warm-up call each (triton fails there and is dropped), then the 3 timed rounds
    # alternate: reference, cpp, reference, cpp ...
    assert order[:9] == ["reference", "cpp", "triton"] + ["reference", "cpp"] * 3, order
    assert "error: RuntimeError: no such kernel" in harness_ops.markdown(rows)


def test_time_fn_flushes_before_each_timed_call_only():
    events = []
    times = harness.time_fn(lambda: events.append("call"), CPU, repeats=3, warmup=1,
                            flush=lambda: events.append("flush"))
    assert len(times) == 3 and events == ["call"] + ["flush", "call"] * 3  # not before the warm-up
    assert harness.l2_flusher(CPU) is None  # nothing to flush on a CPU (see harness's docstring)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_l2_flusher_writes_twice_the_l2_outside_the_timed_region():
    dev = torch.device("cuda")
    flush = harness.l2_flusher(dev)
    buf = flush.__self__
    l2 = torch.cuda.get_device_properties(dev).L2_cache_size
    assert buf.is_cuda and buf.numel() * buf.element_size() >= max(256 * 2**20, 2 * l2)
    buf.fill_(7)
    flush()
    torch.cuda.synchronize()
    assert int(buf.count_nonzero()) == 0
    # a 1 MiB read re-timed right after itself hits the L2; flushed first, it cannot run faster
    x = torch.ones(2**18, device=dev)
    warm = harness.time_fn(lambda: x.sum(), dev, repeats=50, warmup=5)
    cold = harness.time_fn(lambda: x.sum(), dev, repeats=50, warmup=5, flush=flush)
    assert sorted(cold)[25] >= 0.9 * sorted(warm)[25], (cold, warm)


@pytest.mark.slow
def test_peak_memory_in_a_child_process_sees_the_allocation():
    # a step allocating ~64 MiB on the CPU, measured in a fresh process (the parent holds more)
    hold = torch.ones(64 * 2**20 // 4)  # noqa: F841  (the parent's RSS must not leak into the child's)
    step = harness_steps.Step("dm", ("dm",), step_dm.build, "DM", step_dm.__file__)
    big = harness_steps.child_peak(step, "dm", dict(TINY, size=32, frames=8, batch_real=64), "vdfast",
                                   CPU)
    small = harness_steps.child_peak(step, "dm", TINY, "vdfast", CPU)
    assert "peak_error" not in big and "peak_error" not in small, (big, small)
    assert big["peak_mb"] > small["peak_mb"] >= 0
    assert big["held_mb"] > 0 and hold.numel() > 0


def test_step_main_scaling_json_plot_and_compare(tmp_path, capsys):
    out, png = tmp_path / "rows.json", tmp_path / "scaling.png"
    rows = step_dm.main(["--smoke", "--methods", "dm", "--workloads", "miniucf-ipc1", "--scaling",
                         "--ipcs", "1,2", "--sizes", "16", "--repeats", "1", "--warmup", "0",
                         "--memory", "on", "--json", str(out), "--plot", str(png)])
    assert [r["shape"]["ipc"] for r in rows] == [1, 2, 1]
    assert all(r["provider"] == "vdfast" and r["peak_mb"] is not None for r in rows)
    for key in ("workload", "method", "provider", "median_ms", "p20_ms", "p80_ms", "peak_mb",
                "device", "torch", "git_sha"):
        assert key in rows[0]
    assert png.stat().st_size > 1000
    base = json.loads(out.read_text())
    text = harness.compare(rows, base)
    assert "1.00x" in text or "x |" in text
    assert "smoke-miniucf-ipc1@ipc2-16px" in capsys.readouterr().out


def test_smoke_workloads_keep_the_named_shapes():
    assert set(workloads.WORKLOADS) == {"miniucf-ipc1", "miniucf-ipc5", "hmdb51-ipc1", "k400-ipc1",
                                        "ssv2-ipc1"}
    w = workloads.WORKLOADS["miniucf-ipc1"]
    assert (w["nc"], w["frames"], w["size"], w["width"], w["depth"]) == (50, 16, 112, 64, 3)
    assert workloads.WORKLOADS["k400-ipc1"]["nc"] == 400
    assert workloads.WORKLOADS["ssv2-ipc1"]["size"] == 64
    smoke5 = workloads.SMOKE["smoke-miniucf-ipc5"]
    assert workloads.select("miniucf-ipc5", True) == {"smoke-miniucf-ipc5": smoke5}
    assert workloads.SMOKE["smoke-miniucf-ipc5"]["ipc"] == 5


def test_decode_step_times_both_decoders_on_the_same_files(tmp_path, capsys):
    """`vdfast bench --only decode`: PyAV and DALI's CPU reader decode the same VP9 files, each row
    with its frames/s and its distance to PyAV's clips; on H.264, which DALI's CPU reader does not
    read, its row says so (and NVDEC's row says why it did not run)."""
    import step_decode

    rows = step_decode.main(["--smoke", "--repeats", "1", "--warmup", "0"])
    by = {r["provider"]: r for r in rows}
    assert by["pyav"]["items_per_s"] > 0 and by["dali cpu"]["items_per_s"] > 0
    assert by["pyav"]["items_per_call"] == by["dali cpu"]["items_per_call"] == 2 * 16
    assert by["pyav"]["mean_abs_diff"] == 0 and 0 < by["dali cpu"]["mean_abs_diff"] < 3
    if not torch.cuda.is_available():
        assert by["dali gpu (mixed)"]["skipped"] == "no CUDA device"
    w = dict(step_decode.WORKLOADS["h264-320x240"], videos=1, frames=4, width=64, height=48)
    case = step_decode.build("decode", w, CPU, str(tmp_path))
    dali_cpu = dict(case.providers)["dali cpu"]
    assert isinstance(dali_cpu, harness_steps.Skipped) and "h264" in dali_cpu.reason
