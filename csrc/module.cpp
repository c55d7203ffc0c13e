// The Python module vdfast._C. Ops register themselves in their own files with
// TORCH_LIBRARY_FRAGMENT(vdfast, m) (one schema per kernel, defined in csrc/<op>.cpp) with a
// TORCH_LIBRARY_IMPL per dispatch key (CPU there, CUDA in csrc/cuda/<op>_cuda.cu), and are called
// as torch.ops.vdfast.<name>; the dispatcher picks the kernel by the tensors' device.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
}
