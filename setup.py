"""Build and install vdfast.

One build: ``csrc/*.cpp`` (C++ with OpenMP) always, ``csrc/*.cu`` only when the installed torch has
CUDA, all linked into the single extension ``vdfast._C``. Each op's source registers itself with
``TORCH_LIBRARY_FRAGMENT(vdfast, m)``, so adding an op never touches a central bindings file.
The Triton kernels in ``kernels/`` install as ``vdfast._kernels`` (``kernels`` is an unrelated PyPI
package, so that name is never made importable).

Install with ``pip install --no-build-isolation -c constraints.txt -e .`` after torch (the README's
``make install`` does this); build isolation would pull a CUDA torch.
"""
import glob
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    ns = {}
    with open(os.path.join(HERE, "vdfast", "version.py")) as f:
        exec(f.read(), ns)
    return ns["__version__"]


def extensions():
    if os.environ.get("VDFAST_NO_EXT") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    cpp = sorted(glob.glob("csrc/*.cpp"))
    cu = sorted(glob.glob("csrc/*.cu"))
    with_cuda = torch.version.cuda is not None and os.environ.get("VDFAST_NO_CUDA") != "1"
    cxx = ["-O3", "-fopenmp", "-std=c++17"]
    defs = [("WITH_CUDA", "1")] if with_cuda else []
    if with_cuda:
        ext = CUDAExtension("vdfast._C", cpp + cu, define_macros=defs,
                            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math",
                                                                   "-std=c++17"]},
                            extra_link_args=["-fopenmp"])
    else:
        ext = CppExtension("vdfast._C", cpp, extra_compile_args=cxx, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()

setup(
    name="vdfast",
    version=read_version(),
    description="Fast video dataset distillation: DM, MTT, DC, FRePo, static-dynamic, GVD, coresets",
    packages=find_packages(include=["vdfast", "vdfast.*"]) + ["vdfast._kernels"],
    package_dir={"vdfast._kernels": "kernels"},
    python_requires=">=3.10",
    install_requires=["numpy<2.4", "av", "safetensors", "tqdm", "pillow"],
    extras_require={"triton": ["triton"], "dist": ["accelerate"], "dali": ["nvidia-dali-cuda130"],
                    "test": ["pytest", "hypothesis"]},
    entry_points={"console_scripts": ["vdfast=vdfast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
