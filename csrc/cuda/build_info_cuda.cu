// What this build of vdfast._C carries for the GPU: the architectures nvcc compiled the CUDA
// kernels for (__CUDA_ARCH_LIST__, e.g. 800,900 for sm_80 and sm_90). vdfast/ops/dispatch.py
// refuses the CUDA backend on a GPU that none of them can run (cuda_arch_reason).
#include <torch/library.h>

#include <vector>

namespace {

std::vector<int64_t> cuda_archs() { return {__CUDA_ARCH_LIST__}; }

}  // namespace

TORCH_LIBRARY_FRAGMENT(vdfast, m) { m.def("cuda_archs() -> int[]", &cuda_archs); }
