// csrc/trajectory_loss.cpp against scalar loops:
//   forward   sums = (sum (s - t)^2, sum (a - t)^2) in double (an OpenMP reduction: its order, so
//             its last bits, depend on the thread count; within 1e-12 of the reference at each)
//   backward  gs = c0 (s - t), ga = c1 (a - t), gt = -(gs + ga); any gradient may be skipped
// on contiguous and strided 1-D inputs.
#include "check.h"

namespace {

void test(at::ScalarType dtype, bool strided) {
  const int64_t P = 10007;
  at::manual_seed(21);
  auto make = [&]() {
    const at::Tensor v = at::randn({strided ? 3 * P : P}, at::kDouble).to(dtype);
    return strided ? v.slice(0, 1, 3 * P, 3) : v;  // stride 3
  };
  const at::Tensor s = make(), a = make(), t = make();
  const std::vector<double> vs = vdtest::values(s), va = vdtest::values(a), vt = vdtest::values(t);
  double num = 0, den = 0;
  for (int64_t i = 0; i < P; ++i) {
    num += (vs[i] - vt[i]) * (vs[i] - vt[i]);
    den += (va[i] - vt[i]) * (va[i] - vt[i]);
  }
  const double c0 = 0.75, c1 = -1.25;
  const at::Tensor coef = at::tensor(std::vector<double>{c0, c1}, at::kDouble);
  const double rtol = dtype == at::kDouble ? 1e-15 : dtype == at::kFloat ? 1e-7 : 1e-2;
  for (int nt : vdtest::thread_counts()) {
    vdtest::set_threads(nt);
    const at::Tensor sums = at::full({2}, -1.0, at::kDouble);
    vdtest::call("trajectory_loss_fwd", {s, a, t, sums});
    VD_CHECK_CLOSE(sums[0].item<double>(), num, 1e-12, 0.0);
    VD_CHECK_CLOSE(sums[1].item<double>(), den, 1e-12, 0.0);

    const auto opt = at::TensorOptions().dtype(dtype);
    const at::Tensor gs = at::full({P}, 5.0, opt), ga = at::full({P}, 5.0, opt),
                     gt = at::full({P}, 5.0, opt);
    vdtest::call("trajectory_loss_bwd", {s, a, t, coef, gs, ga, gt});
    const std::vector<double> g0 = vdtest::values(gs), g1 = vdtest::values(ga),
                              g2 = vdtest::values(gt);
    for (int64_t i = 0; i < P; ++i) {
      const double ws = c0 * (vs[i] - vt[i]), wa = c1 * (va[i] - vt[i]);
      VD_CHECK_CLOSE(g0[i], ws, rtol, 0.0);
      VD_CHECK_CLOSE(g1[i], wa, rtol, 0.0);
      VD_CHECK_CLOSE(g2[i], -(ws + wa), rtol, 0.0);
    }
    // only grad_t wanted: the others passed empty are skipped
    const at::Tensor empty = at::empty({0}, opt), gt2 = at::full({P}, 5.0, opt);
    vdtest::call("trajectory_loss_bwd", {s, a, t, coef, empty, empty, gt2});
    VD_CHECK(vdtest::same_bits(gt2, gt));
  }
}

}  // namespace

int main() {
  test(at::kFloat, false);
  test(at::kFloat, true);
  test(at::kDouble, false);
  test(at::kDouble, true);
  test(at::kHalf, false);
  return vdtest::finish("test_trajectory_loss");
}
