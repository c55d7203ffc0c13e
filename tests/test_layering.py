"""vdfast's imports point one way: down the layers below, never up.

Layers, highest first (a module may import its own layer and every layer below it):

6. ``cli``: the command line (``vdfast.cli``, ``vdfast.__main__``, ``vdfast.info``, ``vdfast.preview``);
5. ``api``: the Python API (``vdfast.api``, and the package ``vdfast`` itself, which re-exports it);
4. ``methods``: what makes or judges a synset (``vdfast.methods``, ``vdfast.evaluation``);
3. ``synsets/engine/data``: synset kinds, the training loop and its supervised training, checkpoints,
   clip stores and decoding (``vdfast.synsets``, ``vdfast.engine``, ``vdfast.data``,
   ``vdfast.videofolder``);
2. ``ops/models``: tensor operators and their kernels, reference implementations, networks and
   augmentation (``vdfast.ops``, ``vdfast.reference``, ``vdfast._kernels``, ``vdfast._C``,
   ``vdfast.models``, ``vdfast.augment``);
1. ``config``: settings and leaf utilities (``vdfast.config``, ``vdfast.version``,
   ``vdfast.profiling``, ``vdfast.progress``, ``vdfast.memory``, ``vdfast.distributed``).

Every ``import`` and ``from ... import`` in every ``.py`` file under ``vdfast/`` counts, at module
level and inside functions alike (a lazy import is still a dependency). ``from vdfast.pkg import
name`` where ``name`` is a submodule counts as importing that submodule.

Beside the layers: one method module does not import another's private (underscore) names (what
two methods share is public), and no module below the methods reads a method's own section of a
synset's metadata (``meta["gvd"]``), which would be method knowledge without an import edge.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "vdfast"

LAYERS = {"cli": 6, "api": 5, "methods": 4, "synsets/engine/data": 3, "ops/models": 2, "config": 1}

# module (or package: covers everything under it) -> layer; the longest prefix wins
LAYER_OF = {
    "vdfast.cli": "cli", "vdfast.__main__": "cli", "vdfast.info": "cli", "vdfast.preview": "cli",
    "vdfast": "api", "vdfast.api": "api",
    "vdfast.methods": "methods", "vdfast.evaluation": "methods",
    "vdfast.synsets": "synsets/engine/data", "vdfast.engine": "synsets/engine/data",
    "vdfast.data": "synsets/engine/data", "vdfast.videofolder": "synsets/engine/data",
    "vdfast.ops": "ops/models", "vdfast.reference": "ops/models", "vdfast._kernels": "ops/models",
    "vdfast._C": "ops/models", "vdfast.models": "ops/models", "vdfast.augment": "ops/models",
    "vdfast.config": "config", "vdfast.version": "config", "vdfast.profiling": "config",
    "vdfast.progress": "config", "vdfast.memory": "config", "vdfast.distributed": "config",
}

# (importer, imported) pairs allowed to point up, each with the reason; empty when the layering holds
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def layer(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYER_OF and (key != "vdfast" or n == len(parts)):
            return LAYER_OF[key]
    raise KeyError(f"{module} has no layer: add it (or its package) to LAYER_OF in {__file__}")


def modules() -> dict[str, Path]:
    """Every module under vdfast/ by dotted name (a package by its own name)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(module: str, path: Path, known: set[str]) -> list[tuple[str, tuple[str, ...], int]]:
    """(imported vdfast module, names taken from it, line) for every import in ``path``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, (), node.lineno) for a in node.names if a.name.split(".")[0] == "vdfast"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "vdfast":
                continue
            names = tuple(a.name for a in node.names)
            subs = [n for n in names if f"{target}.{n}" in known or f"{target}.{n}" in LAYER_OF]
            out += [(f"{target}.{n}", (), node.lineno) for n in subs]
            rest = tuple(n for n in names if n not in subs)
            if rest:
                out.append((target, rest, node.lineno))
    return out


def edges():
    mods = modules()
    known = set(mods)
    for mod, path in mods.items():
        for target, names, line in imports(mod, path, known):
            yield mod, target, names, f"{path.relative_to(ROOT.parent)}:{line}"


def test_every_module_has_a_layer():
    missing = []
    for mod in modules():
        try:
            layer(mod)
        except KeyError as e:
            missing.append(str(e))
    assert not missing, "\n".join(missing)


def test_imports_point_down():
    up = []
    for mod, target, _, where in edges():
        if LAYERS[layer(target)] > LAYERS[layer(mod)] and (mod, target) not in KNOWN_UPWARD:
            up.append(f"{where}: {mod} ({layer(mod)}) imports {target} ({layer(target)})")
    assert not up, "imports pointing up the layers:\n" + "\n".join(up)


def test_known_exceptions_still_exist():
    """An exception that no longer happens is removed from KNOWN_UPWARD, so the list stays true."""
    seen = {(mod, target) for mod, target, _, _ in edges()}
    assert not set(KNOWN_UPWARD) - seen


def test_methods_share_no_private_names():
    bad = []
    for mod, target, names, where in edges():
        if (mod.startswith("vdfast.methods.") and target.startswith("vdfast.methods.")
                and target != mod):
            bad += [f"{where}: {mod} imports {target}.{n}" for n in names
                    if n.startswith("_") and not n.startswith("__")]
    assert not bad, "methods importing each other's private names:\n" + "\n".join(bad)


@pytest.mark.parametrize("module, expected", [
    ("vdfast.synsets.static_dynamic", "synsets/engine/data"), ("vdfast", "api"),
    ("vdfast.ops.dispatch", "ops/models"), ("vdfast.methods.static", "methods"),
    ("vdfast.version", "config")])
def test_layer_lookup(module, expected):
    assert layer(module) == expected


def test_the_walk_sees_lazy_and_relative_imports(tmp_path):
    """The check can fail: a function-level upward import and a relative one are both found."""
    f = tmp_path / "mod.py"
    f.write_text("def f():\n    from vdfast.methods.static import get_static\n"
                 "from . import api\n")
    found = imports("vdfast.synsets.mod", f, {"vdfast.methods.static", "vdfast.synsets.api"})
    assert ("vdfast.methods.static", ("get_static",), 2) in found
    assert ("vdfast.synsets.api", (), 3) in found


def _is_meta(node: ast.AST) -> bool:
    """``meta`` or ``<anything>.meta``."""
    return ((isinstance(node, ast.Name) and node.id == "meta")
            or (isinstance(node, ast.Attribute) and node.attr == "meta"))


def method_keys(path: Path, names: set[str]) -> list[int]:
    """Lines of ``path`` that read a method's own section of a metadata mapping:
    ``synset.meta["gvd"]``, ``meta.get("compose")``."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        key = None
        if isinstance(node, ast.Subscript) and _is_meta(node.value):
            key = node.slice
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("get", "pop", "setdefault") and _is_meta(node.func.value)
              and node.args):
            key = node.args[0]
        if isinstance(key, ast.Constant) and key.value in names:
            lines.append(node.lineno)
    return lines


def test_lower_layers_read_no_methods_metadata():
    """Below the methods no module reads a method's own section of a synset's metadata
    (``meta["gvd"]``): what the engine, the synsets and the data need of a method is recorded under
    a neutral key (e.g. ``meta["teacher"]``, which compose and GVD write)."""
    from vdfast.methods import OBJECTIVES, PARAMETRIZATIONS

    names = set(OBJECTIVES) | set(PARAMETRIZATIONS)
    bad = []
    for mod, path in modules().items():
        if LAYERS[layer(mod)] in (LAYERS["synsets/engine/data"], LAYERS["ops/models"]):
            bad += [f"{path.relative_to(ROOT.parent)}:{n}" for n in method_keys(path, names)]
    assert not bad, "method metadata read below the methods:\n" + "\n".join(bad)
