"""vdfast.engine.train (student training, the teacher, soft labels, what a synset records of its
teacher), models.build (the one network constructor) and the student bytes model: the evaluation
and GVD share them without importing each other."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vdfast.config import EvalConfig, NetConfig
from vdfast.engine import train
from vdfast.memory import activation_bytes, student_bytes
from vdfast.models import STUDENTS, ConvNet3D, DataShape, build, build_student

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny shapes (see conftest)

ROOT = Path(__file__).resolve().parents[1] / "vdfast"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (at any depth: top level and inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_evaluation_and_gvd_do_not_import_each_other():
    ev, gvd, eng = (_imports(ROOT / "evaluation.py"), _imports(ROOT / "methods" / "gvd.py"),
                    _imports(ROOT / "engine" / "train.py"))
    assert not {m for m in ev if m.startswith("vdfast.methods")}, ev
    assert "vdfast.evaluation" not in gvd and "vdfast.engine.train" in gvd
    # the engine is imported downward: it imports no method, no evaluation, no API
    assert not {m for m in eng
                if m.startswith(("vdfast.methods", "vdfast.evaluation", "vdfast.api"))}, eng
    code = ("import sys, vdfast.evaluation, vdfast.engine.train; "
            "print(sorted(m for m in sys.modules if m.startswith('vdfast.methods')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("student", STUDENTS)
def test_build_is_build_student_with_the_configs_fields(student):
    net_cfg, data = NetConfig(width=4, depth=2, norm="instance"), DataShape(5, 4, 16)
    torch.manual_seed(7)
    a = build(net_cfg, data, student)
    torch.manual_seed(7)
    b = build_student(student, 5, 4, 16, width=4, depth=2, norm="instance")
    assert type(a) is type(b)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_build_defaults_devices_and_meta():
    net = build(None, DataShape(3, 8, 64))  # NetConfig's defaults: width 64, depth 3, no norm
    assert isinstance(net, ConvNet3D) and net.features[0].out_channels == 64
    assert len(net.features) == 3 * 4 and isinstance(net.features[1], torch.nn.Identity)
    assert next(net.parameters()).device.type == "cpu"
    data = DataShape(3, 4, 16)
    state = torch.get_rng_state()
    meta = build(NetConfig(width=4, depth=2), data, device="meta")
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    with pytest.raises(ValueError, match="unknown student"):
        build(NetConfig(), data, "vit")


def test_expert_header_builds_the_same_network():
    from vdfast.methods.experts import build_net

    header = {"arch": "convnet3d", "num_classes": 4, "frames": 4, "size": 16, "width": 4,
              "depth": 2, "norm": "none"}
    torch.manual_seed(3)
    a = build_net(header)
    torch.manual_seed(3)
    b = ConvNet3D(4, 4, 16, width=4, depth=2, norm="none")
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(va, vb)


@pytest.mark.parametrize("student", STUDENTS)
def test_student_bytes_model(student):
    net = build(NetConfig(width=4, depth=2), DataShape(5, 4, 16), student, "meta")
    shape = (3, 4, 16, 16)
    a = activation_bytes(net, shape, method="forward")
    weights = 4 * sum(p.numel() for p in net.parameters())
    train8, clip = student_bytes(net, shape, 8)
    assert clip == a.input + a.train_saved and a.train_saved > 0
    assert train8 == 4 * weights + 8 * 3 * clip
    assert student_bytes(net, shape, 4)[0] < train8


def test_source_normalises_uint8_clips_per_batch():
    from vdfast.ops import normalize_clips

    u8 = torch.randint(0, 256, (5, 4, 8, 8, 3), dtype=torch.uint8)
    y = torch.arange(5)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    src = train.Source(u8, y, mean, std)
    idx = torch.tensor([3, 0])
    x, yb = src.batch(idx)
    assert len(src) == 5 and torch.equal(yb, y[idx])
    torch.testing.assert_close(x, normalize_clips(u8[idx], mean, std))
    f = torch.randn(5, 3, 4, 8, 8)
    assert torch.equal(train.Source(f, y).batch(idx)[0], f[idx])


class _Synset:
    def __init__(self, meta):
        self.meta = meta


def test_teacher_record_reads_the_neutral_record(tmp_path):
    recipe = {"net": {"width": 4, "depth": 2, "norm": "none"}, "epochs": 1, "seed": 0,
              "eval": {"lr": 0.01}}
    meta = {"method": "gvd", "teacher": {"temperature": 2.5, "select": 3, "recipe": recipe,
                                         "cache": str(tmp_path / "teacher-abc"), "weights": None},
            "gvd": {"workdir": str(tmp_path), "stages": {"teacher": "abc"}}}
    rec = train.teacher_record(_Synset(meta))
    assert (rec.temperature, rec.select, rec.recipe, rec.cache) == (2.5, 3, recipe, None)
    (tmp_path / "teacher-abc").mkdir()
    (tmp_path / "teacher-abc" / "teacher.safetensors").write_bytes(b"")
    assert train.teacher_record(_Synset(meta)).cache == tmp_path / "teacher-abc"
    bare = _Synset({"method": "dm"})
    assert train.teacher_record(bare) == train.TeacherRecord()
    # the engine reads no method's own layout: a teacher described only under "gvd" is not one
    gvd_only = _Synset({"method": "gvd", "gvd": {"workdir": str(tmp_path), "temperature": 2.5,
                                                 "select": 3, "stages": {"teacher": "abc"},
                                                 "teacher": recipe}})
    assert train.teacher_record(gvd_only) == train.TeacherRecord()
    assert train.soft_temperature(bare, EvalConfig(soft_temperature=3.0)) == 3.0
    assert train.soft_temperature(_Synset(meta), EvalConfig(soft_temperature=3.0)) == 2.5
    assert train.teacher_of(bare, None, "cpu") is None


def test_a_split_larger_than_the_budget_is_streamed_and_trains_the_same_teacher(monkeypatch):
    from vdfast.data import store as store_mod
    from vdfast.data.store import ClipStore

    s = ClipStore.builtin(train_per_class=5, test_per_class=1, frames=4, size=16)
    x, y = s.tensors("train")
    idx = torch.tensor([59, 0, 7, 33, 34, 5, 12])
    assert torch.equal(s.rows("train", idx), x[idx])  # any order, across classes
    cfg, net = EvalConfig(batch=16), NetConfig(width=4, depth=2)
    resident = train.train_teacher(s, net, cfg, 2, 0, "cpu", progress=False)
    assert isinstance(train.split_source(s, "train", "cpu"), train.Source)
    monkeypatch.setattr(store_mod, "resident_budget", lambda device: 0)
    src = train.split_source(s, "train", "cpu")
    assert isinstance(src, train.StoreSplit) and len(src) == 60
    xb, yb = src.batch(idx)
    torch.testing.assert_close(xb, train.Source(x, y, s.mean, s.std).batch(idx)[0])
    assert torch.equal(yb, y[idx])
    streamed = train.train_teacher(s, net, cfg, 2, 0, "cpu", progress=False)
    for a, b in zip(resident.state_dict().values(), streamed.state_dict().values()):
        assert torch.equal(a, b)
