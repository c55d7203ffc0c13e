"""The CUDA build, checked on a machine without a GPU: every source of the extension maps to its
own object file, and every ``csrc/cuda/*.cu`` compiles with nvcc using setup.py's own flags and
the ones torch's ``BuildExtension`` adds, and the objects link into one shared object.

The CPU torch wheel ships the c10/cuda headers but not the generated
``c10/cuda/impl/cuda_cmake_macros.h``; a stub with its one macro (as torch's CMake writes it for a
shared-library build) is provided in a temporary include directory. The wheel also lacks cuBLAS /
cuSPARSE headers, so ``.cu`` files must not include ``ATen/cuda/CUDAContext.h`` (use
``c10/cuda/CUDAStream.h`` and ``c10/cuda/CUDAGuard.h``) nor ``torch/extension.h`` (~40 s each).
"""
import glob
import importlib.util
import os
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
NVCC = shutil.which("nvcc")
ARCH = "9.0"  # the lent H100 / H200


def _setup_module():
    """setup.py imported as a module (its ``setup()`` call runs only as ``__main__``)."""
    spec = importlib.util.spec_from_file_location("vdfast_setup", os.path.join(ROOT, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    cwd = os.getcwd()
    os.chdir(ROOT)  # its globs are relative to the project
    try:
        spec.loader.exec_module(mod)
    finally:
        os.chdir(cwd)
    return mod


SETUP = _setup_module()


def _objects(sources: list[str]) -> list[str]:
    """The object files setuptools (and torch's ninja build, which asks the same compiler) names
    for ``sources``."""
    from setuptools._distutils.ccompiler import new_compiler

    cc = new_compiler()
    cc.src_extensions = list(cc.src_extensions) + [".cu"]
    return cc.object_filenames(sources, output_dir="build/temp")


def test_every_source_has_its_own_object():
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        srcs = SETUP.sources(with_cuda=True)
    finally:
        os.chdir(cwd)
    assert any(s.endswith(".cu") for s in srcs) and any(s.endswith(".cpp") for s in srcs)
    assert len(srcs) == len(glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))) + len(SOURCES)
    objs = _objects(srcs)
    dup = sorted({o for o in objs if objs.count(o) > 1})
    assert not dup, f"sources that share an object file (ninja: multiple rules generate): {dup}"


def test_object_check_catches_a_shared_stem():
    objs = _objects(["csrc/op.cpp", "csrc/op.cu"])
    assert objs[0] == objs[1]  # the layout the CUDA sources moved away from


def _nvcc_flags() -> list[str]:
    """What torch's BuildExtension passes nvcc for setup.py's CUDAExtension (unix_cuda_flags)."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, _get_cuda_arch_flags, include_paths

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", ARCH)
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return (list(COMMON_NVCC_FLAGS) + ["--compiler-options", "-fPIC"] + SETUP.NVCC_FLAGS
            + _get_cuda_arch_flags() + ["-DWITH_CUDA=1", "-DTORCH_API_INCLUDE_EXTENSION_H",
                                        "-DTORCH_EXTENSION_NAME=_C", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
                                        "-diag-suppress=3306"]
            + [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"])


_results: dict = {}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Compile every source once, in parallel (nvcc spends most of its time in torch's headers),
    then link the objects into one shared object."""
    if NVCC is None:
        pytest.skip("nvcc not on PATH")
    if _results:
        return _results
    tmp = str(tmp_path_factory.mktemp("nvcc"))
    stub = os.path.join(tmp, "c10", "cuda", "impl")
    os.makedirs(stub, exist_ok=True)
    with open(os.path.join(stub, "cuda_cmake_macros.h"), "w") as f:
        f.write("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    base = [NVCC, f"-I{tmp}"] + _nvcc_flags()

    def one(src):
        out = os.path.join(tmp, os.path.basename(src)[:-3] + ".o")
        res = subprocess.run(base + ["-c", src, "-o", out], capture_output=True, text=True,
                             timeout=900)
        return src, out, res

    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as ex:
        for src, out, res in ex.map(one, SOURCES):
            _results[src] = (out, res)
    objs = [o for o, r in _results.values() if r.returncode == 0]
    so = os.path.join(tmp, "_C_cuda.so")
    _results["link"] = (so, subprocess.run([NVCC, "-shared", "-o", so] + objs, capture_output=True,
                                           text=True, timeout=300))
    return _results


def test_flags_are_setup_pys():
    flags = _nvcc_flags()
    for f in ("-O3", "--use_fast_math", "-D__CUDA_NO_HALF_OPERATORS__", "--expt-relaxed-constexpr"):
        assert f in flags
    assert any(f.startswith("-gencode=arch=compute_90") for f in flags)


@pytest.mark.slow
@pytest.mark.parametrize("src", SOURCES, ids=[os.path.basename(s) for s in SOURCES])
def test_cu_compiles(src, compiled):
    res = compiled[src][1]
    assert res.returncode == 0, f"nvcc failed on {os.path.basename(src)}:\n{res.stderr[-4000:]}"


def _strong_symbols(path: str, dynamic: bool = False) -> set[str]:
    out = subprocess.run(["nm", "--defined-only", "-g"] + (["-D"] if dynamic else []) + [path],
                         capture_output=True, text=True, check=True).stdout
    return {p[2] for p in (line.split() for line in out.splitlines()) if len(p) == 3
            and p[1] in "TDBR"}


@pytest.mark.slow
def test_objects_link_into_one_extension(compiled):
    so, res = compiled["link"]
    assert all(r.returncode == 0 for k, (o, r) in compiled.items() if k != "link")
    assert res.returncode == 0, f"linking the CUDA objects failed:\n{res.stderr[-4000:]}"
    # the real build links these with the C++ objects: no strong symbol may be defined twice
    import vdfast._C as C
    clash = _strong_symbols(so, dynamic=True) & _strong_symbols(C.__file__, dynamic=True)
    clash = {s for s in clash if not s.startswith(("_init", "_fini", "__bss", "_edata", "_end",
                                                   "__data_start", "__dso_handle"))}
    assert not clash, f"symbols defined by both the CUDA and the C++ objects: {sorted(clash)[:10]}"


CPP_SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))


def _registrations():
    """(schemas by kernel name with the file defining each, [(file, dispatch key, name, C++ fn)])
    from the ``m.def`` and ``TORCH_LIBRARY_IMPL`` blocks of every source."""
    import re

    defs, impls = {}, []
    for path in SOURCES + CPP_SOURCES:
        text = open(path).read()
        for m in re.finditer(r'm\.def\(((?:\s*"[^"]*")+)', text):
            s = "".join(re.findall(r'"([^"]*)"', m.group(1)))
            assert "(" in s, f"{os.path.basename(path)}: schema inferred from C++ for {s!r}; " \
                             f"write it out, with Tensor(a!) for written outputs"
            name = s.split("(")[0]
            assert name not in defs, f"{name} defined twice ({os.path.basename(defs[name][1])}, " \
                                     f"{os.path.basename(path)}): one schema per kernel"
            defs[name] = (torch._C.parse_schema("vdfast::" + s), path)
        for blk in re.finditer(r"TORCH_LIBRARY_IMPL\(vdfast,\s*(\w+),\s*m\)\s*\{(.*?)\}", text, re.S):
            for name, fn in re.findall(r'm\.impl\("(\w+)",\s*&(\w+)\)', blk.group(2)):
                impls.append((path, blk.group(1), name, fn))
    return defs, impls


def _cpp_param_types(path: str, fn: str) -> list[str]:
    """The schema types of C++ function ``fn``'s parameters, as defined in ``path``."""
    import re

    text = open(path).read()
    m = re.search(r"\bvoid\s+" + fn + r"\s*\(([^)]*)\)\s*\{", text)
    assert m, f"{os.path.basename(path)}: no definition of {fn}"
    params, depth, cur = [], 0, ""
    for ch in m.group(1):
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "," and depth == 0:
            params.append(cur)
            cur = ""
        else:
            cur += ch
    params.append(cur)
    kinds = []
    for p in (p.strip() for p in params if p.strip()):
        if "optional<" in p and "Tensor" in p:
            kinds.append("Tensor?")
        elif "vector<at::Tensor>" in p or "TensorList" in p:
            kinds.append("Tensor[]")
        elif "Tensor" in p:
            kinds.append("Tensor")
        else:
            kinds.append({"double": "float", "bool": "bool", "int64_t": "int"}[p.split()[-2]])
    return kinds


def _schema_types(schema) -> list[str]:
    names = {"Tensor": "Tensor", "Optional[Tensor]": "Tensor?", "List[Tensor]": "Tensor[]",
             "float": "float", "bool": "bool", "int": "int"}
    return [names[str(a.type)] for a in schema.arguments]


def test_schemas_declare_written_outputs():
    """Every ``m.def`` schema in the CUDA and C++ sources parses, each kernel name is defined once
    (in ``csrc/<op>.cpp``, so a build without CUDA has every schema), and every kernel that returns
    nothing declares the arguments it writes (``Tensor(a!)``)."""
    defs, _ = _registrations()
    assert defs, "no schemas found"
    for name, (sch, path) in defs.items():
        if name == "cuda_archs":  # the build's own facts, CUDA builds only
            assert os.path.basename(path) == "build_info_cuda.cu"
            continue
        assert os.path.dirname(path) == os.path.join(ROOT, "csrc"), \
            f"{name}: kernel schemas live in csrc/<op>.cpp, not in {os.path.basename(path)}"
        written = [a.name for a in sch.arguments if a.alias_info is not None and a.alias_info.is_write]
        assert sch.returns or written, f"{name} returns nothing and declares no written output"


def test_kernels_register_per_dispatch_key():
    """The CPU kernels register under ``TORCH_LIBRARY_IMPL(vdfast, CPU, m)`` in ``csrc/*.cpp``,
    the CUDA ones under ``CUDA`` in ``csrc/cuda/*.cu``, each for a defined schema and with a C++
    signature matching it (argument for argument: a mismatch would only fail when a CUDA build
    loads), and every kernel schema has at least one implementation."""
    defs, impls = _registrations()
    assert any(k == "CPU" for _, k, _, _ in impls) and any(k == "CUDA" for _, k, _, _ in impls)
    seen = set()
    for path, key, name, fn in impls:
        where = os.path.basename(path)
        assert key == ("CUDA" if path.endswith(".cu") else "CPU"), f"{where}: {name} under {key}"
        assert name in defs, f"{where}: m.impl of {name}, which no source defines"
        assert (name, key) not in seen, f"{name}: two {key} kernels"
        seen.add((name, key))
        assert _cpp_param_types(path, fn) == _schema_types(defs[name][0]), \
            f"{where}: {fn}'s parameters do not match the schema of {name}: {defs[name][0]}"
    unimplemented = set(defs) - {n for n, _ in seen} - {"cuda_archs"}
    assert not unimplemented, f"schemas without a kernel: {sorted(unimplemented)}"


def test_signature_check_catches_a_mismatch(tmp_path):
    src = tmp_path / "k.cu"
    src.write_text("void k_cuda(at::Tensor x, const std::optional<at::Tensor>& y, double a,\n"
                   "            std::vector<at::Tensor> zs) {\n}\n")
    assert _cpp_param_types(str(src), "k_cuda") == ["Tensor", "Tensor?", "float", "Tensor[]"]
    sch = torch._C.parse_schema("vdfast::k(Tensor x, Tensor? y, float a, Tensor(a!)[] zs) -> ()")
    assert _schema_types(sch) == ["Tensor", "Tensor?", "float", "Tensor[]"]
    sch2 = torch._C.parse_schema("vdfast::k(Tensor x, Tensor y, float a, Tensor(a!)[] zs) -> ()")
    assert _schema_types(sch2) != _cpp_param_types(str(src), "k_cuda")
