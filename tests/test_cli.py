"""The command line's conventions: every config field's doc is its flag's help, and a run repeats from
its saved config.json (``vdfast distill --config FILE``)."""
import dataclasses
import json

import pytest
import torch

import vdfast
from vdfast.cli import build_parser, main
from vdfast.config import SECTIONS, ConfigError, DistillConfig, PrepareConfig, field_doc

# a tiny DM run on the embedded data: 3 iterations, a small network, no evaluation or preview
TINY = ["distill", "--method", "dm", "--ipc", "1", "--iterations", "3", "--net-width", "8",
        "--batch-real", "4", "--no-evaluate", "--no-preview"]


def _help(*argv) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])


def _fields():
    for cls in (DistillConfig, PrepareConfig, *SECTIONS.values()):
        for f in dataclasses.fields(cls):
            if f.name not in SECTIONS:
                yield cls, f


def test_every_config_field_has_a_one_line_doc():
    missing = [f"{cls.__name__}.{f.name}" for cls, f in _fields() if not field_doc(f).strip()]
    assert not missing, missing
    multi = [f"{cls.__name__}.{f.name}" for cls, f in _fields() if "\n" in field_doc(f)]
    assert not multi, multi


def test_help_shows_each_fields_doc_and_default(capsys):
    _help("distill")
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for flag, cls, name in (("--net-width", SECTIONS["net"], "width"),
                            ("--iterations", DistillConfig, "iterations"),
                            ("--mtt-syn-steps", SECTIONS["mtt"], "syn_steps"),
                            ("--gvd-min-snr", SECTIONS["gvd"], "min_snr")):
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        doc = " ".join(field_doc(f).split())
        metavar = flag.lstrip("-").upper().replace("-", "_")
        assert f"{flag} {metavar} {doc} (default: {f.default}" in text, flag
    assert "--config FILE" in text
    _help("prepare")
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(PrepareConfig):
        assert " ".join(field_doc(f).split()) in text, f.name


def test_prepare_config_is_validated_once():
    assert PrepareConfig(classes="a, b,,c").classes == ("a", "b", "c")
    assert PrepareConfig(classes=["x"]).classes == ("x",) and PrepareConfig().classes is None
    for bad, needle in ((dict(workers=-3), "workers"), (dict(workers=True), "workers"),
                        (dict(frames=0), "impossible clip spec"), (dict(size=4), "size"),
                        (dict(test_clips=0), "test_clips"), (dict(decoder="ffmpeg"), "decoder"),
                        (dict(frames=1.5), "frames")):
        with pytest.raises(ConfigError, match=needle):
            PrepareConfig(**bad)
    with pytest.raises(ConfigError, match="unknown prepare option 'fps'"):
        vdfast.prepare("/nonexistent", "/tmp/never", fps=3)


def _synset(run):
    return {k: v.clone() for k, v in vdfast.load(run / "synset").state_dict().items()}


def test_a_run_repeats_from_its_config_json(tmp_path, capsys):
    a, b, c = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    assert main(TINY + ["--out", str(a)]) == 0
    saved = json.loads((a / "config.json").read_text())
    assert saved["iterations"] == 3 and saved["preset"] == "builtin"
    # the same run from the file alone (method, ipc, preset, data and every field come from it)
    assert main(["distill", "--config", str(a / "config.json"), "--out", str(b), "--no-evaluate",
                 "--no-preview"]) == 0
    sa, sb = _synset(a), _synset(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    again = json.loads((b / "config.json").read_text())
    assert {k: v for k, v in again.items() if k != "vdfast"} == {k: v for k, v in saved.items()
                                                                 if k != "vdfast"}
    # explicit flags override the file
    assert main(["distill", "--config", str(a / "config.json"), "--out", str(c), "--iterations", "2",
                 "--net-width", "4", "--no-evaluate", "--no-preview"]) == 0
    over = json.loads((c / "config.json").read_text())
    assert over["iterations"] == 2 and over["net"]["width"] == 4 and over["batch_real"] == 4
    capsys.readouterr()


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.update(frobnicate=1), "unknown key 'frobnicate'"),
    (lambda d: d["net"].update(colour="red"), "unknown key 'net.colour'"),
    (lambda d: d.update(data={"name": "ucf-small", "classes": 5, "frames": 8, "size": 32}), "--data STORE"),
])
def test_bad_config_file_is_one_line(tmp_path, capsys, edit, needle):
    d = {"vdfast": vdfast.__version__, "preset": "builtin", "data": {"name": "builtin"},
         **DistillConfig().to_dict()}
    edit(d)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    capsys.readouterr()
    rc = main(["distill", "--config", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_missing_config_file_is_one_line(tmp_path, capsys):
    rc = main(["distill", "--config", str(tmp_path / "nope.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "nope.json" in err and len(err.strip().splitlines()) == 1


def test_config_is_a_leaf_module():
    """config imports no other vdfast module (the registries' names are looked up late, through
    register_names), yet a name outside a registry is still refused."""
    import ast

    import vdfast.config as config_module

    tree = ast.parse(open(config_module.__file__).read())
    imported = [n.module if isinstance(n, ast.ImportFrom) else a.name
                for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names]
    assert not [m for m in imported if m and m.split(".")[0] == "vdfast"], imported
    with pytest.raises(ConfigError, match="method='dmm' is not one of"):
        DistillConfig(method="dmm")
    with pytest.raises(ConfigError, match="eval student='vit' is not one of"):
        SECTIONS["eval"](student="vit")
    with pytest.raises(ConfigError, match="gvd generator='XXL' is not one of"):
        SECTIONS["gvd"](generator="XXL")
