// csrc/blend_static_dynamic.cpp against scalar loops. The forward is the definition
//   out[n, co, t, y, x] = planes[sidx[n], p(t), co, y, x] + bias[co]
//                       + sum_{kt, ky, kx} wd[co, kt*9 + ky*3 + kx] dyn[didx[n], t+kt-1, y+ky-1, x+kx-1]
// (zero outside the video; p(t) = 0 first frame, 1 last, 2 interior); the reference backward is
// the same loop nest run as its adjoint (every term's gradient scattered to its inputs).
// Indices repeat (two clips share a static part or a dynamic part), so the kernel's gathers must
// accumulate. Every output is bit-for-bit the same at 1, 2, 3 and 4 threads (each element or
// partial has one owner and a fixed summation order) and within rounding of the reference.
#include "check.h"

namespace {

struct Shape {
  int64_t Ns, K, Co, Nd, T, H, W;
  std::vector<int64_t> sidx, didx;
};

int64_t plane_of(int64_t t, int64_t T) { return t == 0 ? 0 : (t == T - 1 ? 1 : 2); }

template <typename T_>
void test(at::ScalarType dtype, const Shape& sh) {
  const int64_t N = static_cast<int64_t>(sh.sidx.size());
  const int64_t Ns = sh.Ns, K = sh.K, Co = sh.Co, Nd = sh.Nd, T = sh.T, H = sh.H, W = sh.W;
  const int64_t HW = H * W;
  at::manual_seed(51);
  const auto opt = at::TensorOptions().dtype(dtype);
  const at::Tensor planes = at::randn({Ns, K, Co, H, W}, opt), dyn = at::randn({Nd, T, H, W}, opt);
  const at::Tensor wd = at::randn({Co, 27}, opt), bias = at::randn({Co}, opt);
  const at::Tensor grad = at::randn({N, Co, T, H, W}, opt);
  const at::Tensor sidx = at::tensor(sh.sidx, at::kLong), didx = at::tensor(sh.didx, at::kLong);
  const std::vector<double> P = vdtest::values(planes), Dy = vdtest::values(dyn),
                            Wd = vdtest::values(wd), Bi = vdtest::values(bias),
                            G = vdtest::values(grad);

  // reference forward and its adjoint
  std::vector<double> out(N * Co * T * HW), gp(Ns * K * Co * HW, 0.0), gd(Nd * T * HW, 0.0),
      gw(Co * 27, 0.0), gb(Co, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t co = 0; co < Co; ++co)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t y = 0; y < H; ++y)
          for (int64_t x = 0; x < W; ++x) {
            const int64_t o = (((n * Co + co) * T + t) * H + y) * W + x;
            const int64_t p = (((sh.sidx[n] * K + plane_of(t, T)) * Co + co) * H + y) * W + x;
            double v = P[p] + Bi[co];
            gp[p] += G[o];
            gb[co] += G[o];
            for (int64_t kt = 0; kt < 3; ++kt)
              for (int64_t ky = 0; ky < 3; ++ky)
                for (int64_t kx = 0; kx < 3; ++kx) {
                  const int64_t ts = t + kt - 1, ys = y + ky - 1, xs = x + kx - 1;
                  if (ts < 0 || ts >= T || ys < 0 || ys >= H || xs < 0 || xs >= W) continue;
                  const int64_t d = ((sh.didx[n] * T + ts) * H + ys) * W + xs;
                  const int64_t k = co * 27 + kt * 9 + ky * 3 + kx;
                  v += Wd[k] * Dy[d];
                  gw[k] += G[o] * Dy[d];
                  gd[d] += G[o] * Wd[k];
                }
            out[o] = v;
          }

  const double tol = dtype == at::kDouble ? 1e-11 : 2e-4;
  at::Tensor first[5];
  for (int nt : vdtest::thread_counts()) {
    vdtest::set_threads(nt);
    const at::Tensor o = at::full({N, Co, T, H, W}, 3.0, opt);
    vdtest::call("blend_static_dynamic_fwd", {planes, dyn, wd, bias, sidx, didx, o});
    const at::Tensor g_p = at::full_like(planes, 3.0), g_d = at::full_like(dyn, 3.0),
                     g_w = at::full_like(wd, 3.0), g_b = at::full_like(bias, 3.0);
    vdtest::call("blend_static_dynamic_bwd", {grad, dyn, wd, sidx, didx, g_p, g_d, g_w, g_b});
    const at::Tensor got[5] = {o, g_p, g_d, g_w, g_b};
    const std::vector<double>* want[5] = {&out, &gp, &gd, &gw, &gb};
    for (int i = 0; i < 5; ++i) {
      const std::vector<double> v = vdtest::values(got[i]);
      VD_CHECK(v.size() == want[i]->size());
      double scale = 1.0;  // sums of many terms: compare relative to the output's magnitude
      for (double e : *want[i]) scale = std::max(scale, std::fabs(e));
      for (size_t k = 0; k < v.size() && k < want[i]->size(); ++k)
        VD_CHECK_CLOSE(v[k], (*want[i])[k], tol, tol * scale);
      if (nt == 1) first[i] = got[i];
      else VD_CHECK(vdtest::same_bits(got[i], first[i]));
    }
    // only the dynamic gradient wanted
    const at::Tensor g_d2 = at::full_like(dyn, 3.0);
    vdtest::call("blend_static_dynamic_bwd",
                 {grad, dyn, wd, sidx, didx, c10::IValue(), g_d2, c10::IValue(), c10::IValue()});
    VD_CHECK(vdtest::same_bits(g_d2, g_d));
  }
}

}  // namespace

int main() {
  // small, with edge cases: T = 1 (plane 0 only), a single row, a single column
  test<double>(at::kDouble, {2, 3, 2, 2, 1, 4, 5, {0, 1, 1}, {1, 0, 1}});
  test<double>(at::kDouble, {1, 3, 2, 2, 2, 1, 6, {0, 0}, {1, 1}});
  test<float>(at::kFloat, {2, 3, 3, 2, 3, 5, 1, {1, 0, 1}, {0, 0, 1}});
  // large enough for at::parallel_for to split every pass into several tasks (grain 16 tasks of
  // 32x32 pixels): N*T = 30 forward tasks, Nd*T = 18 dynamic-gradient tasks, Ns*Co planes tasks
  const Shape big{2, 3, 3, 3, 6, 32, 32, {0, 1, 1, 0, 1}, {2, 0, 2, 1, 2}};
  test<float>(at::kFloat, big);
  test<double>(at::kDouble, big);
  return vdtest::finish("test_blend_static_dynamic");
}
