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


def _subparser(name):
    import argparse

    p = build_parser()
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def test_distill_help_is_grouped_by_config_section(capsys):
    _help("distill")
    text = capsys.readouterr().out
    for title in ("run", "distill", *SECTIONS):
        assert f"\n{title}:\n" in text, title
    assert text.startswith("usage: vdfast distill [--data STORE]")
    # each section's group holds exactly that section's flags
    groups = {g.title: {o for a in g._group_actions for o in a.option_strings}
              for g in _subparser("distill")._action_groups}
    for name, cls in SECTIONS.items():
        want = {"--" + f"{name}-{f.name}".replace("_", "-") for f in dataclasses.fields(cls)}
        got = {o for o in groups[name] if not o.startswith(f"--no-{name}-")}
        assert got == want, name
    assert "--iterations" in groups["distill"] and "--data" in groups["run"]


def test_every_distill_flag_still_parses():
    """Every config field's flag, given a value of its type, reaches the run's overrides."""
    from vdfast.cli import _overrides

    argv, want = ["distill"], {}
    for cls, prefix in ((DistillConfig, ""), *((c, n) for n, c in SECTIONS.items())):
        for f in dataclasses.fields(cls):
            if f.name in SECTIONS:
                continue
            flag = "--" + (f"{prefix}-{f.name}" if prefix else f.name).replace("_", "-")
            key = f"{prefix}.{f.name}" if prefix else f.name
            d = f.default
            if isinstance(d, bool):
                argv.append(flag if not d else flag.replace("--", "--no-", 1))
                want[key] = not d
            else:
                typ = f.metadata.get("cli_type", type(d))
                value = "3" if d is None else str(d)
                argv += [flag, value]
                want[key] = typ(value)
    ns = build_parser().parse_args(argv)
    assert _overrides(ns) == want


def test_unknown_layout_is_refused_before_any_folder(tmp_path, capsys):
    src = tmp_path / "data"
    src.mkdir()
    out = tmp_path / "store"
    assert main(["prepare", str(src), "--out", str(out), "--layout", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "layout='imagenet' is not one of: auto, ucf101" in err
    assert not out.exists()
    with pytest.raises(ConfigError, match="layout"):
        vdfast.prepare(src, out, layout="imagenet")
    assert not out.exists()
    assert PrepareConfig(layout="hmdb51").layout == "hmdb51"
