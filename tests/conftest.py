"""Test-wide setup.

TRITON_INTERPRET must be set before any @triton.jit function is defined, so it is set here, before
any kernel module is imported: Triton kernels run on CPU tensors at tiny shapes in the CPU tests.
Collection never touches a GPU; GPU tests carry the ``gpu`` marker and skip without a device.
"""
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("VDFAST_PROGRESS", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

# the bundled benchmarks (a folder of scripts, no package): tests import the harness, the
# bench_<op>.py cases and the reference-style loops from it
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))


@pytest.fixture
def seed():
    return 1234


@pytest.fixture
def gen(seed):
    """A local generator: library code and tests never reseed the global RNG."""
    return torch.Generator().manual_seed(seed)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none visible")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny second-order unrolls: as fast as two, and on a shared
    2-core machine two threads per process oversubscribe it badly. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
