"""``distill(..., profile=N)`` / ``--profile N``: N loop iterations recorded by torch.profiler
into OUT/profile/, with vdfast's own named ranges, without changing the result."""
import json

import pytest
import torch

import vdfast
from vdfast.config import ConfigError
from vdfast.ops import dm_loss
from vdfast.ops.dispatch import op
from vdfast.profiling import WARMUP

RUN = dict(method="dm", ipc=1, progress=False, checkpoint_every=0, batch_real=4,
           **{"net.width": 8})


def _names(path):
    return [e.get("name") for e in json.loads(path.read_text())["traceEvents"]]


def test_profile_records_the_window_with_vdfast_ranges_and_leaves_the_result_alone(tmp_path):
    plain = vdfast.distill(iterations=6, out=tmp_path / "plain", **RUN)
    res = vdfast.distill(iterations=6, out=tmp_path / "prof", profile=3, **RUN)
    # profiling changes nothing the run computes
    assert torch.equal(res.synset.data, plain.synset.data)
    assert res.history["loss"] == plain.history["loss"]

    d = tmp_path / "prof" / "profile"
    names = _names(d / "trace.json")
    assert names.count("vdfast.iteration") == 3  # exactly the window, not the warm-up
    fused = {n for n in names if n and n.startswith("vdfast.dm_loss[")}
    assert len(fused) == 1 and fused.pop()[len("vdfast.dm_loss["):-1] in ("cuda", "triton", "cpp",
                                                                          "reference")
    for want in ("vdfast.normalize_clips[", "vdfast.sample_real", "vdfast.synset.videos",
                 "vdfast.dm.embed_real", "vdfast.dm.embed_syn"):
        assert any(n and n.startswith(want) for n in names), want
    s = json.loads((d / "summary.json").read_text())
    assert s["iterations"] == 3 and s["first"] == WARMUP
    assert s["ms_per_it"] > 0 and len(s["ms_per_it_each"]) == 3
    assert {r["name"] for r in s["ranges"]} >= {"vdfast.sample_real", "vdfast.dm.embed_real"}
    assert all(0 <= r["share"] <= 1.0 + 1e-6 for r in s["ranges"])
    assert s["top_ops"] and all(not r["name"].startswith("vdfast.") for r in s["top_ops"])
    md = (d / "summary.md").read_text()
    assert "| vdfast.dm.embed_real |" in md and "Top operators by self CPU time" in md
    metrics = json.loads((tmp_path / "prof" / "metrics.json").read_text())["history"]
    assert metrics["profile"]["iterations"] == 3
    assert "profile" not in plain.history


def test_profile_is_not_part_of_the_run_identity(tmp_path):
    vdfast.distill(iterations=4, out=tmp_path, profile=2, **RUN)
    # resumed with another --profile: the same run, its window counted from where it resumes
    res = vdfast.distill(iterations=8, out=tmp_path, profile=2, **RUN)
    assert res.history["profile"]["first"] == 4 + WARMUP
    assert len(res.history["loss"]) == 8


@pytest.mark.parametrize("kw, msg", [
    (dict(method="random", profile=1), "no loop"),
    (dict(profile=1, out=None), "pass out="),
    (dict(iterations=3, profile=2), "at most 1"),
    (dict(profile=-1), "profile"),
])
def test_profile_requests_the_run_cannot_meet_are_refused_before_any_work(tmp_path, kw, msg):
    args = {**RUN, "out": tmp_path / "run", "iterations": 5, **kw}
    with pytest.raises(ConfigError, match=msg):
        vdfast.distill(**args)
    assert not (tmp_path / "run").exists()


def test_fused_ops_name_their_backend_in_a_trace_and_cost_nothing_outside_one():
    o = op("dm_loss")
    x, y = torch.randn(6, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    lx, ly = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 2])
    # outside a recording the dispatch hands back the registered implementation itself
    assert o.select([x, y], "reference") is o.impls["reference"]
    with torch.profiler.profile() as prof:
        for b in ("reference", "cpp"):
            dm_loss(x, lx, y, ly, 3, backend=b).backward()
    names = {e.name for e in prof.events()}
    assert {"vdfast.dm_loss[reference]", "vdfast.dm_loss[cpp]", "vdfast.dm_loss.backward"} <= names


@pytest.mark.parametrize("method, want", [
    ("frepo", {"vdfast.frepo.krr", "vdfast.frepo.pool_train", "vdfast.frepo.embed_real",
               "vdfast.frepo.embed_syn", "vdfast.sample_real"}),
    ("dc", {"vdfast.gradient_match[", "vdfast.gradient_match.backward", "vdfast.sample_real"}),
    ("s2d-dm", {"vdfast.blend_static_dynamic[", "vdfast.blend_static_dynamic.backward"}),
])
def test_each_method_names_its_phases_and_fused_ops(tmp_path, method, want):
    from vdfast.data.store import ClipStore

    small = ClipStore.builtin(train_per_class=6, test_per_class=3)
    extra = {"s2d.static_iterations": 2} if method == "s2d-dm" else {}
    vdfast.distill(small, method=method, ipc=1, iterations=WARMUP + 1, profile=1, out=tmp_path,
                   progress=False, checkpoint_every=0, **{"net.width": 4}, **extra)
    names = set(_names(tmp_path / "profile" / "trace.json"))
    for w in want:
        assert any(n and n.startswith(w) for n in names), (w, sorted(n for n in names if n and
                                                                     n.startswith("vdfast")))
