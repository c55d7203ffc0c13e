// csrc/guided_step.cpp against scalar loops: one guided denoising update over latents
// [B, F, C, h, w], per frame f with guidance lam[f] and guide m (per clip or per frame):
//   x0 = a x - b eps
//   DDPM: out = c0 x0 + c1 x + lam[f] s (m - x0) [+ s z]
//   DDIM: out = c0 (x0 + lam[f] (m - x0)) + c1 x
// including `out` aliasing `x` (the sampler updates in place).
#include "check.h"

namespace {

template <typename T>
void test(at::ScalarType dtype, bool ddim, bool with_noise, bool guide_per_frame, bool in_place) {
  const int64_t B = 3, F = 4, C = 4, h = 16, w = 16, CHW = C * h * w;  // 1024 elements a row
  at::manual_seed(41);
  const auto opt = at::TensorOptions().dtype(dtype);
  const at::Tensor x = at::randn({B, F, C, h, w}, opt), eps = at::randn({B, F, C, h, w}, opt);
  const at::Tensor guide = guide_per_frame ? at::randn({B, F, C, h, w}, opt)
                                           : at::randn({B, C, h, w}, opt);
  const at::Tensor lam = at::rand({F}, opt);
  const at::Tensor noise = at::randn({B, F, C, h, w}, opt);
  const double a = 1.3, b = 0.4, c0 = 0.6, c1 = 0.35, s = 0.2;
  const T* px = x.data_ptr<T>();
  const T* pe = eps.data_ptr<T>();
  const T* pm = guide.data_ptr<T>();
  const T* pl = lam.data_ptr<T>();
  const T* pz = noise.data_ptr<T>();
  std::vector<double> want(x.numel());
  for (int64_t bb = 0; bb < B; ++bb)
    for (int64_t f = 0; f < F; ++f)
      for (int64_t i = 0; i < CHW; ++i) {
        const int64_t k = (bb * F + f) * CHW + i;
        const double xi = px[k], m = pm[(guide_per_frame ? bb * F + f : bb) * CHW + i];
        const double x0 = a * xi - b * pe[k], l = pl[f];
        want[k] = ddim ? c0 * (x0 + l * (m - x0)) + c1 * xi
                       : c0 * x0 + c1 * xi + l * s * (m - x0) + (with_noise ? s * pz[k] : 0.0);
      }
  const double tol = dtype == at::kDouble ? 1e-13 : 2e-6;
  for (int nt : vdtest::thread_counts()) {
    vdtest::set_threads(nt);
    const at::Tensor xin = x.clone();
    const at::Tensor out = in_place ? xin : at::full_like(x, 9.0);
    vdtest::call("guided_step_fwd", {xin, eps, guide, lam,
                                     with_noise ? c10::IValue(noise) : c10::IValue(), a, b, c0,
                                     c1, s, ddim, out});
    const T* po = out.data_ptr<T>();
    for (int64_t k = 0; k < x.numel(); ++k) VD_CHECK_CLOSE(po[k], want[k], tol, tol);
  }
}

}  // namespace

int main() {
  for (bool ddim : {false, true})
    for (bool per_frame : {false, true})
      for (bool in_place : {false, true}) {
        test<float>(at::kFloat, ddim, !ddim, per_frame, in_place);
        test<double>(at::kDouble, ddim, false, per_frame, in_place);
      }
  return vdtest::finish("test_guided_step");
}
