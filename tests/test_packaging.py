"""The package's metadata: pyproject.toml's [project] is the one place, and the installed package
reports it (version, the `vdfast` command, torch declared, DALI an extra, numpy unpinned)."""
import importlib.metadata as md
import os
import re
import tomllib

import vdfast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def test_installed_metadata_is_pyprojects():
    proj = _pyproject()
    assert md.version("vdfast") == vdfast.__version__  # version.py is the one version
    assert "version" in proj["dynamic"]
    dist = md.distribution("vdfast")
    (script,) = [e for e in dist.entry_points if e.group == "console_scripts"]
    assert (script.name, script.value) == ("vdfast", "vdfast.cli:main")
    assert dist.metadata["Requires-Python"] == proj["requires-python"]


def test_dependencies():
    proj = _pyproject()
    names = {re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0]: d for d in proj["dependencies"]}
    assert "torch" in names
    # numpy's upper bound is the test environment's (Triton 3.6's interpreter): constraints.txt only
    assert names["numpy"] == "numpy"
    assert proj["optional-dependencies"]["dali"] == ["nvidia-dali-cuda130"]
    assert not any("dali" in d for d in proj["dependencies"])
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        reqs = [ln.split("#")[0].strip() for ln in f]
    assert "nvidia-dali-cuda130" not in reqs  # installed through the extra (make install-dali)
    with open(os.path.join(ROOT, "constraints.txt")) as f:
        assert "numpy<2.4" in f.read().split()


def test_setup_py_has_no_metadata():
    with open(os.path.join(ROOT, "setup.py")) as f:
        src = f.read()
    for key in ("name=", "version=", "install_requires", "extras_require", "entry_points",
                "python_requires", "description="):
        assert key not in src, key
