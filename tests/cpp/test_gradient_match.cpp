// csrc/gradient_match.cpp against scalar loops, over a list of [out, K] layers (rows in parallel,
// dynamic schedule): forward stats[row] = (<r, s>, |r|^2, |s|^2) in double; backward
// grad_s = c0 r + c1 s, grad_r = c2 s + c3 r per row (either list may be empty).
#include "check.h"

namespace {

void test(at::ScalarType dtype) {
  at::manual_seed(31);
  const std::vector<std::pair<int64_t, int64_t>> shapes{{16, 75}, {1, 7}, {33, 130}, {10, 10}};
  std::vector<at::Tensor> real, syn;
  int64_t R = 0;
  for (const auto& [o, k] : shapes) {
    real.push_back(at::randn({o, k}, at::kDouble).to(dtype));
    syn.push_back(at::randn({o, k}, at::kDouble).to(dtype));
    R += o;
  }
  const at::Tensor coef = at::randn({R, 4}, at::kDouble);
  const double* cf = coef.data_ptr<double>();
  const double rtol = dtype == at::kDouble ? 1e-13 : dtype == at::kFloat ? 1e-6 : 1e-2;
  for (int nt : vdtest::thread_counts()) {
    vdtest::set_threads(nt);
    const at::Tensor stats = at::full({R, 3}, -1.0, at::kDouble);
    vdtest::call("gradient_match_fwd", {real, syn, stats});
    std::vector<at::Tensor> gr, gs;
    for (const at::Tensor& r : real) {
      gr.push_back(at::full_like(r, 3.0));
      gs.push_back(at::full_like(r, 3.0));
    }
    vdtest::call("gradient_match_bwd", {real, syn, coef, gr, gs});
    const double* st = stats.data_ptr<double>();
    int64_t row = 0;
    for (size_t l = 0; l < real.size(); ++l) {
      const std::vector<double> r = vdtest::values(real[l]), s = vdtest::values(syn[l]);
      const std::vector<double> g_r = vdtest::values(gr[l]), g_s = vdtest::values(gs[l]);
      const int64_t K = real[l].size(1);
      for (int64_t o = 0; o < real[l].size(0); ++o, ++row) {
        double dot = 0, rr = 0, ss = 0;
        for (int64_t j = 0; j < K; ++j) {
          dot += r[o * K + j] * s[o * K + j];
          rr += r[o * K + j] * r[o * K + j];
          ss += s[o * K + j] * s[o * K + j];
        }
        VD_CHECK_CLOSE(st[3 * row], dot, 1e-12, 1e-12);
        VD_CHECK_CLOSE(st[3 * row + 1], rr, 1e-12, 0.0);
        VD_CHECK_CLOSE(st[3 * row + 2], ss, 1e-12, 0.0);
        const double* c = cf + 4 * row;
        for (int64_t j = 0; j < K; ++j) {
          const double x = r[o * K + j], y = s[o * K + j];
          VD_CHECK_CLOSE(g_s[o * K + j], c[0] * x + c[1] * y, rtol, 1e-12);
          VD_CHECK_CLOSE(g_r[o * K + j], c[2] * y + c[3] * x, rtol, 1e-12);
        }
      }
    }
    // grad_real not wanted
    std::vector<at::Tensor> gs2;
    for (const at::Tensor& r : real) gs2.push_back(at::full_like(r, 3.0));
    vdtest::call("gradient_match_bwd", {real, syn, coef, std::vector<at::Tensor>{}, gs2});
    for (size_t l = 0; l < real.size(); ++l) VD_CHECK(vdtest::same_bits(gs2[l], gs[l]));
  }
}

}  // namespace

int main() {
  test(at::kFloat);
  test(at::kDouble);
  test(at::kBFloat16);
  return vdtest::finish("test_gradient_match");
}
