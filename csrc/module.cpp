// The Python module vdfast._C. Ops register themselves in their own files with
// TORCH_LIBRARY_FRAGMENT(vdfast, m) and are called as torch.ops.vdfast.<name>.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
#ifdef _OPENMP
  m.attr("WITH_OPENMP") = true;
#else
  m.attr("WITH_OPENMP") = false;
#endif
}
