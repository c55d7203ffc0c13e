"""Build and install vdfast.

One build: ``csrc/*.cpp`` (C++ with OpenMP) always, ``csrc/cuda/*_cuda.cu`` only when the installed
torch has CUDA, all linked into the single extension ``vdfast._C``. The CUDA sources live in their
own folder with their own stems: setuptools names an object after its source's stem, so
``csrc/op.cpp`` beside ``csrc/op.cu`` would both become ``op.o`` (ninja: "multiple rules generate").
``tests/test_cuda_compile.py`` checks that every source maps to its own object and compiles and links
the CUDA objects with the flags below. Each op's source registers itself with
``TORCH_LIBRARY_FRAGMENT(vdfast, m)``, so adding an op never touches a central bindings file.
The Triton kernels in ``kernels/`` install as ``vdfast._kernels`` (``kernels`` is an unrelated PyPI
package, so that name is never made importable).

The package's metadata (name, version, dependencies, extras, the ``vdfast`` command) is in
``pyproject.toml``; this file adds only what needs code: the extension and the ``kernels`` folder
installed under another name.

Install with ``pip install --no-build-isolation -c constraints.txt -e .`` after torch (the README's
``make install`` does this); build isolation would pull a CUDA torch.
"""
import glob
import os

from setuptools import find_packages, setup

CXX_FLAGS = ["-O3", "-fopenmp", "-std=c++17"]
NVCC_FLAGS = ["-O3", "--use_fast_math", "-std=c++17"]


def sources(with_cuda: bool) -> list[str]:
    """The extension's sources, relative to this folder (CUDA ones only ``with_cuda``)."""
    cpp = sorted(glob.glob("csrc/*.cpp"))
    return cpp + (sorted(glob.glob("csrc/cuda/*.cu")) if with_cuda else [])


def extensions():
    if os.environ.get("VDFAST_NO_EXT") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    # VDFAST_NO_CUDA=1: the C++ kernels only, even with a CUDA torch (benchmarks/gpu_check.sh falls
    # back to it when the CUDA build fails, so that Triton is still tested)
    with_cuda = torch.version.cuda is not None and os.environ.get("VDFAST_NO_CUDA") != "1"
    if with_cuda:
        ext = CUDAExtension("vdfast._C", sources(True), define_macros=[("WITH_CUDA", "1")],
                            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS},
                            extra_link_args=["-fopenmp"])
    else:
        ext = CppExtension("vdfast._C", sources(False), extra_compile_args=CXX_FLAGS,
                           extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


if __name__ == "__main__":  # pip runs this file as __main__; the tests import it for sources()
    ext_modules, cmdclass = extensions()
    setup(
        packages=find_packages(include=["vdfast", "vdfast.*"]) + ["vdfast._kernels"],
        package_dir={"vdfast._kernels": "kernels"},
        ext_modules=ext_modules,
        cmdclass=cmdclass,
    )
