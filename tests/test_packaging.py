"""The package's metadata: pyproject.toml's [project] is the one place, and the installed package
reports it (version, the `vdfast` command, torch declared at the tested version, DALI an extra,
numpy unpinned)."""
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


def _release(spec: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.match(r"\d+(?:\.\d+)*", spec).group().split("."))


def test_torch_floor_is_the_tested_torch():
    """pyproject's torch floor is the torch that CI installs (constraints.txt's pin), to the minor
    version: a lower floor promises versions no test runs (dispatch calls private torch._C
    functions, which can change between releases), a higher one refuses the tested torch."""
    (floor,) = [d for d in _pyproject()["dependencies"] if re.match(r"torch\b", d)]
    assert floor.startswith("torch>="), floor
    with open(os.path.join(ROOT, "constraints.txt")) as f:
        (pin,) = [ln.split("#")[0].strip() for ln in f if re.match(r"torch==", ln)]
    assert _release(floor[len("torch>="):])[:2] == _release(pin[len("torch=="):])[:2], (floor, pin)


def test_private_torch_functions_vdfast_calls_exist():
    """Every private ``torch._C._<name>`` and ``distributed_c10d._<name>`` the package calls exists
    in the installed torch: a torch without one fails here, by name, instead of deep in a kernel
    test or a multi-process run."""
    import torch
    from torch.distributed import distributed_c10d

    used = {"torch._C": set(), "distributed_c10d": set()}
    for root, _, files in os.walk(os.path.join(ROOT, "vdfast")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(root, name)) as f:
                    src = f.read()
                for mod in used:
                    used[mod] |= set(re.findall(re.escape(mod) + r"\.(_\w+)", src))
    assert used["torch._C"] and used["distributed_c10d"]  # dispatch and distributed use some
    missing = [f"torch._C.{n}" for n in sorted(used["torch._C"]) if not hasattr(torch._C, n)]
    missing += [f"distributed_c10d.{n}" for n in sorted(used["distributed_c10d"])
                if not hasattr(distributed_c10d, n)]
    assert not missing, f"torch {torch.__version__} lacks {missing}"


def test_setup_py_has_no_metadata():
    with open(os.path.join(ROOT, "setup.py")) as f:
        src = f.read()
    for key in ("name=", "version=", "install_requires", "extras_require", "entry_points",
                "python_requires", "description="):
        assert key not in src, key
