// csrc/dm_loss.cpp against scalar loops: per-class means of real and synthetic features, their
// difference and squared norm (forward), scale[label] * diff[label] (backward).
//
// The forward keeps one [2, nc, D] accumulator per OpenMP thread and adds them in thread order, so
// its float rounding depends on the thread count. The tests therefore check three things:
//   exact    integer features and power-of-two class counts make every sum, mean and the loss
//            exact: the result is bit-for-bit the reference at 1, 2, 3, 4 and 7 threads
//   random   N(0, 1) features, every input dtype: within float32 (or float64) rounding of the
//            reference at every thread count, and bit-for-bit repeatable at a given one
//   strided  rows with a stride > D give the contiguous result
#include "check.h"

#include <algorithm>
#include <numeric>
#include <random>

namespace {

struct Ref {
  std::vector<double> diff;  // [nc, D]
  std::vector<double> cnt;   // [2, nc]
  double loss = 0.0;
};

// the definition: mean_real[c] - mean_syn[c] where both sides have class c, else 0
Ref reference(const at::Tensor& real, const at::Tensor& rl, const at::Tensor& syn,
              const at::Tensor& sl, int64_t nc) {
  const int64_t D = real.size(1);
  const std::vector<double> xr = vdtest::values(real), xs = vdtest::values(syn);
  const int64_t* lr = rl.data_ptr<int64_t>();
  const int64_t* ls = sl.data_ptr<int64_t>();
  std::vector<double> sum_r(nc * D, 0.0), sum_s(nc * D, 0.0);
  Ref ref;
  ref.cnt.assign(2 * nc, 0.0);
  for (int64_t i = 0; i < real.size(0); ++i) {
    ref.cnt[lr[i]] += 1;
    for (int64_t j = 0; j < D; ++j) sum_r[lr[i] * D + j] += xr[i * D + j];
  }
  for (int64_t i = 0; i < syn.size(0); ++i) {
    ref.cnt[nc + ls[i]] += 1;
    for (int64_t j = 0; j < D; ++j) sum_s[ls[i] * D + j] += xs[i * D + j];
  }
  ref.diff.assign(nc * D, 0.0);
  for (int64_t c = 0; c < nc; ++c) {
    const double cr = ref.cnt[c], cs = ref.cnt[nc + c];
    if (cr == 0 || cs == 0) continue;
    for (int64_t j = 0; j < D; ++j) {
      const double d = sum_r[c * D + j] / cr - sum_s[c * D + j] / cs;
      ref.diff[c * D + j] = d;
      ref.loss += d * d;
    }
  }
  return ref;
}

struct Out {
  at::Tensor diff, cnt, loss;
};

Out forward(const at::Tensor& real, const at::Tensor& rl, const at::Tensor& syn,
            const at::Tensor& sl, int64_t nc, at::ScalarType out_dtype) {
  const auto opt = at::TensorOptions().dtype(out_dtype);
  Out o{at::full({nc, real.size(1)}, 1234.5, opt), at::full({2, nc}, -1.0, opt),
        at::full({}, -1.0, opt)};  // filled with junk: the kernel must overwrite every element
  vdtest::call("dm_loss_fwd", {real, rl, syn, sl, o.diff, o.cnt, o.loss});
  return o;
}

// labels 0..nc-1 with the given count per class, shuffled (so every thread's rows mix classes)
at::Tensor labels(const std::vector<int64_t>& per_class, std::mt19937& rng) {
  std::vector<int64_t> l;
  for (int64_t c = 0; c < static_cast<int64_t>(per_class.size()); ++c)
    l.insert(l.end(), per_class[c], c);
  std::shuffle(l.begin(), l.end(), rng);
  return at::tensor(l, at::kLong);
}

void check_against(const Out& o, const Ref& ref, double rtol, double atol) {
  const std::vector<double> diff = vdtest::values(o.diff), cnt = vdtest::values(o.cnt);
  VD_CHECK(diff.size() == ref.diff.size());
  for (size_t k = 0; k < std::min(diff.size(), ref.diff.size()); ++k)
    VD_CHECK_CLOSE(diff[k], ref.diff[k], rtol, atol);
  for (size_t k = 0; k < ref.cnt.size(); ++k) VD_CHECK(cnt[k] == ref.cnt[k]);
  VD_CHECK_CLOSE(o.loss.item<double>(), ref.loss, rtol * 10, atol);
}

void test_exact(at::ScalarType dtype) {
  std::mt19937 rng(1);
  const int64_t nc = 5, D = 37;
  // real: 8 rows per class; syn: 2 per class, class 4 absent (its diff row must be 0); class 3
  // has 16 real rows
  const at::Tensor rl = labels({8, 8, 8, 16, 8}, rng), sl = labels({2, 2, 2, 2, 0}, rng);
  const at::Tensor real = at::randint(-8, 9, {rl.size(0), D}, at::kDouble).to(dtype);
  const at::Tensor syn = at::randint(-8, 9, {sl.size(0), D}, at::kDouble).to(dtype);
  const Ref ref = reference(real, rl, syn, sl, nc);
  const at::ScalarType out = dtype == at::kDouble ? at::kDouble : at::kFloat;
  Out first;
  for (int nt : {1, 2, 3, 4, 7}) {
    vdtest::set_threads(nt);
    const Out o = forward(real, rl, syn, sl, nc, out);
    check_against(o, ref, 0.0, 0.0);  // exact
    if (nt == 1) {
      first = o;
    } else {
      VD_CHECK(vdtest::same_bits(o.diff, first.diff));
      VD_CHECK(vdtest::same_bits(o.loss, first.loss));
    }
  }
  for (int64_t j = 0; j < D; ++j) VD_CHECK(first.diff[4][j].item<double>() == 0.0);
}

void test_random(at::ScalarType dtype, at::ScalarType out) {
  std::mt19937 rng(2);
  const int64_t nc = 7, D = 53;
  const at::Tensor rl = labels({30, 1, 17, 25, 9, 40, 3}, rng);
  const at::Tensor sl = labels({3, 2, 0, 5, 1, 4, 2}, rng);
  at::manual_seed(3);
  const at::Tensor real = at::randn({rl.size(0), D}, at::kDouble).to(dtype);
  const at::Tensor syn = at::randn({sl.size(0), D}, at::kDouble).to(dtype);
  const Ref ref = reference(real, rl, syn, sl, nc);
  // row sums run in float32 unless the features are float64
  const double rtol = dtype == at::kDouble ? 1e-12 : 2e-5, atol = dtype == at::kDouble ? 1e-12 : 2e-5;
  for (int nt : vdtest::thread_counts()) {
    vdtest::set_threads(nt);
    const Out a = forward(real, rl, syn, sl, nc, out);
    check_against(a, ref, rtol, atol);
    const Out b = forward(real, rl, syn, sl, nc, out);
    VD_CHECK(vdtest::same_bits(a.diff, b.diff));
    VD_CHECK(vdtest::same_bits(a.loss, b.loss));
  }
}

void test_strided() {
  std::mt19937 rng(4);
  const int64_t nc = 3, D = 19;
  const at::Tensor rl = labels({11, 6, 9}, rng), sl = labels({2, 3, 1}, rng);
  at::manual_seed(5);
  const at::Tensor wide = at::randn({rl.size(0), D + 5});
  const at::Tensor real = wide.narrow(1, 2, D);  // row stride D + 5, unit column stride
  const at::Tensor syn = at::randn({sl.size(0), D});
  VD_CHECK(real.stride(0) == D + 5 && !real.is_contiguous());
  for (int nt : vdtest::thread_counts()) {
    vdtest::set_threads(nt);
    const Out a = forward(real, rl, syn, sl, nc, at::kFloat);
    const Out b = forward(real.contiguous(), rl, syn, sl, nc, at::kFloat);
    VD_CHECK(vdtest::same_bits(a.diff, b.diff));
    VD_CHECK(vdtest::same_bits(a.loss, b.loss));
  }
}

void test_backward(at::ScalarType gdtype, at::ScalarType ddtype) {
  const int64_t nc = 6, D = 29, N = 41;
  at::manual_seed(6);
  const at::Tensor lab = at::randint(0, nc, {N}, at::kLong);
  const at::Tensor diff = at::randn({nc, D}, at::kDouble).to(ddtype);
  const at::Tensor scale = at::randn({nc}, at::kDouble).to(ddtype);
  const std::vector<double> d = vdtest::values(diff), s = vdtest::values(scale);
  const int64_t* l = lab.data_ptr<int64_t>();
  // float32 products of float32 values are exact in double, then rounded once: bit-exact for
  // float32/float64 gradients; half/bfloat16 round once more
  const double rtol = gdtype == at::kHalf ? 1e-3 : gdtype == at::kBFloat16 ? 8e-3 : 0.0;
  for (int nt : vdtest::thread_counts()) {
    vdtest::set_threads(nt);
    const at::Tensor grad = at::full({N, D}, 99.0, at::TensorOptions().dtype(gdtype));
    vdtest::call("dm_loss_bwd", {grad, lab, diff, scale});
    const std::vector<double> g = vdtest::values(grad);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < D; ++j) {
        double want = s[l[i]] * d[l[i] * D + j];
        if (ddtype == at::kFloat) want = static_cast<float>(want);
        VD_CHECK_CLOSE(g[i * D + j], want, rtol, 0.0);
      }
  }
}

void test_bad_label() {
  const at::Tensor real = at::zeros({4, 3}), syn = at::zeros({2, 3});
  const at::Tensor rl = at::tensor(std::vector<int64_t>{0, 1, 2, 1}, at::kLong);
  const at::Tensor sl = at::tensor(std::vector<int64_t>{0, 1}, at::kLong);
  VD_CHECK_THROWS(forward(real, rl, syn, sl, 2, at::kFloat));  // label 2 with nc = 2
}

}  // namespace

int main() {
  test_exact(at::kFloat);
  test_exact(at::kDouble);
  test_exact(at::kHalf);
  test_random(at::kFloat, at::kFloat);
  test_random(at::kFloat, at::kDouble);
  test_random(at::kDouble, at::kDouble);
  test_random(at::kHalf, at::kFloat);
  test_random(at::kBFloat16, at::kFloat);
  test_strided();
  test_backward(at::kFloat, at::kFloat);
  test_backward(at::kDouble, at::kDouble);
  test_backward(at::kHalf, at::kFloat);
  test_backward(at::kBFloat16, at::kFloat);
  test_bad_label();
  return vdtest::finish("test_dm_loss");
}
