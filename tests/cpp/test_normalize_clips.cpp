// csrc/normalize_clips.cpp against scalar loops:
//   normalize_clips_stats  exact int64 sums of x and x^2 per channel (per-thread histograms merged
//                          in a critical section): identical at every thread count
//   normalize_clips_apply  out[n, c, t, h, w] = scale[c] * x[n, t, h, w, c] + shift[c] (double,
//                          rounded once to the output dtype), from contiguous and strided uint8
#include "check.h"

namespace {

// [N, T, H, W, C] uint8, contiguous or a permuted (channel-planar) view of the same values
at::Tensor clips(int64_t N, int64_t T, int64_t H, int64_t W, int64_t C, bool strided) {
  at::manual_seed(11);
  if (!strided) return at::randint(0, 256, {N, T, H, W, C}, at::kByte);
  const at::Tensor planar = at::randint(0, 256, {N, C, T, H, W}, at::kByte);
  return planar.permute({0, 2, 3, 4, 1});  // strides (C*T*H*W, H*W, W, 1, T*H*W)
}

uint8_t at5(const at::Tensor& x, int64_t n, int64_t t, int64_t h, int64_t w, int64_t c) {
  const uint8_t* p = x.data_ptr<uint8_t>();
  return p[n * x.stride(0) + t * x.stride(1) + h * x.stride(2) + w * x.stride(3) + c * x.stride(4)];
}

void test_stats(bool strided) {
  const int64_t N = 3, T = 5, H = 7, W = 6, C = 3;
  const at::Tensor x = clips(N, T, H, W, C, strided);
  std::vector<int64_t> want(2 * C, 0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w)
          for (int64_t c = 0; c < C; ++c) {
            const int64_t v = at5(x, n, t, h, w, c);
            want[2 * c] += v;
            want[2 * c + 1] += v * v;
          }
  for (int nt : {1, 2, 3, 4, 7}) {
    vdtest::set_threads(nt);
    const at::Tensor sums = at::full({C, 2}, -1, at::kLong);
    vdtest::call("normalize_clips_stats", {x, sums});
    const int64_t* s = sums.data_ptr<int64_t>();
    for (int64_t k = 0; k < 2 * C; ++k) VD_CHECK(s[k] == want[k]);
  }
}

template <typename out_t>
void test_apply(at::ScalarType dtype, bool strided) {
  const int64_t N = 2, T = 4, H = 5, W = 9, C = 3;
  const at::Tensor x = clips(N, T, H, W, C, strided);
  const at::Tensor scale = at::tensor(std::vector<double>{1 / (255 * 0.229), 1 / (255 * 0.224),
                                                          1 / (255 * 0.225)}, at::kDouble);
  const at::Tensor shift = at::tensor(std::vector<double>{-0.485 / 0.229, -0.456 / 0.224,
                                                          -0.406 / 0.225}, at::kDouble);
  const double* sc = scale.data_ptr<double>();
  const double* sh = shift.data_ptr<double>();
  for (int nt : vdtest::thread_counts()) {
    vdtest::set_threads(nt);
    const at::Tensor out = at::full({N, C, T, H, W}, 7.0, at::TensorOptions().dtype(dtype));
    vdtest::call("normalize_clips_apply", {x, scale, shift, out});
    const out_t* o = out.data_ptr<out_t>();
    int64_t k = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t t = 0; t < T; ++t)
          for (int64_t h = 0; h < H; ++h)
            for (int64_t w = 0; w < W; ++w, ++k) {
              const out_t want = static_cast<out_t>(sc[c] * at5(x, n, t, h, w, c) + sh[c]);
              VD_CHECK(static_cast<double>(o[k]) == static_cast<double>(want));
            }
  }
}

}  // namespace

int main() {
  test_stats(false);
  test_stats(true);
  test_apply<float>(at::kFloat, false);
  test_apply<float>(at::kFloat, true);
  test_apply<double>(at::kDouble, false);
  test_apply<at::Half>(at::kHalf, true);
  test_apply<at::BFloat16>(at::kBFloat16, false);
  const at::Tensor bad = at::zeros({1, 1, 1, 1, 3}, at::kFloat);
  VD_CHECK_THROWS(vdtest::call("normalize_clips_stats", {bad, at::zeros({3, 2}, at::kLong)}));
  return vdtest::finish("test_normalize_clips");
}
