// Clip normalisation on the CPU (OpenMP). See vdfast/ops/normalize_clips.py for the contract and
// vdfast/reference/normalize_clips.py for the truth.
//
// The input is uint8, so out = scale[c] * x + shift[c] takes only 256 values per channel: a
// per-channel lookup table (computed in double, rounded once to the output dtype) replaces the
// arithmetic. The batch statistics for ``standardize`` come from exact integer sums of x and x^2
// per channel (the launcher folds them into scale/shift), so the output is written exactly once.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

namespace {

struct Geom {
  int64_t N, T, H, W, C;
  int64_t sN, sT, sH, sW, sC;
};

Geom geom(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 5 && x.scalar_type() == at::kByte, "normalize_clips: uint8 [N, T, H, W, C]");
  return {x.size(0), x.size(1), x.size(2), x.size(3), x.size(4),
          x.stride(0), x.stride(1), x.stride(2), x.stride(3), x.stride(4)};
}

// sums [C, 2] int64: sum of x and of x^2 per channel (exact).
void normalize_clips_stats_cpu(at::Tensor clips, at::Tensor sums) {
  const Geom g = geom(clips);
  TORCH_CHECK(sums.is_contiguous() && sums.scalar_type() == at::kLong && sums.numel() == 2 * g.C,
              "normalize_clips_stats_cpu: sums must be int64 [C, 2]");
  const uint8_t* x = clips.data_ptr<uint8_t>();
  const int64_t outer = g.N * g.T;
  std::vector<int64_t> total(2 * g.C, 0);
#pragma omp parallel
  {
    std::vector<int64_t> hist(256 * g.C, 0);
#pragma omp for schedule(static)
    for (int64_t nt = 0; nt < outer; ++nt) {
      const uint8_t* base = x + (nt / g.T) * g.sN + (nt % g.T) * g.sT;
      for (int64_t h = 0; h < g.H; ++h)
        for (int64_t w = 0; w < g.W; ++w) {
          const uint8_t* px = base + h * g.sH + w * g.sW;
          for (int64_t c = 0; c < g.C; ++c) ++hist[c * 256 + px[c * g.sC]];
        }
    }
#pragma omp critical
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t v = 0; v < 256; ++v) {
        total[2 * c] += hist[c * 256 + v] * v;
        total[2 * c + 1] += hist[c * 256 + v] * v * v;
      }
  }
  int64_t* sp = sums.data_ptr<int64_t>();
  for (int64_t k = 0; k < 2 * g.C; ++k) sp[k] = total[k];
}

template <typename out_t>
void apply_impl(const uint8_t* x, const Geom& g, const double* scale, const double* shift, out_t* out) {
  std::vector<out_t> lut(256 * g.C);
  for (int64_t c = 0; c < g.C; ++c)
    for (int v = 0; v < 256; ++v) lut[c * 256 + v] = static_cast<out_t>(scale[c] * v + shift[c]);
  const int64_t P = g.T * g.H * g.W, outer = g.N * g.T, HW = g.H * g.W;
#pragma omp parallel for schedule(static)
  for (int64_t nt = 0; nt < outer; ++nt) {
    const int64_t n = nt / g.T, t = nt % g.T;
    const uint8_t* base = x + n * g.sN + t * g.sT;
    out_t* o = out + n * g.C * P + t * HW;
    for (int64_t h = 0; h < g.H; ++h)
      for (int64_t w = 0; w < g.W; ++w) {
        const uint8_t* px = base + h * g.sH + w * g.sW;
        const int64_t p = h * g.W + w;
        for (int64_t c = 0; c < g.C; ++c) o[c * P + p] = lut[c * 256 + px[c * g.sC]];
      }
  }
}

// out [N, C, T, H, W] contiguous = scale[c] * clips[n, t, h, w, c] + shift[c]; scale/shift float64 [C].
void normalize_clips_apply_cpu(at::Tensor clips, at::Tensor scale, at::Tensor shift, at::Tensor out) {
  const Geom g = geom(clips);
  TORCH_CHECK(scale.scalar_type() == at::kDouble && shift.scalar_type() == at::kDouble &&
              scale.is_contiguous() && shift.is_contiguous() && scale.numel() == g.C &&
              shift.numel() == g.C, "normalize_clips_apply_cpu: scale/shift float64 [C]");
  TORCH_CHECK(out.is_contiguous() && out.dim() == 5 && out.size(0) == g.N && out.size(1) == g.C &&
              out.size(2) == g.T && out.size(3) == g.H && out.size(4) == g.W,
              "normalize_clips_apply_cpu: out must be contiguous [N, C, T, H, W]");
  const uint8_t* x = clips.data_ptr<uint8_t>();
  const double* sc = scale.data_ptr<double>();
  const double* sh = shift.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "normalize_clips_apply_cpu", [&] {
    apply_impl<scalar_t>(x, g, sc, sh, out.data_ptr<scalar_t>());
  });
}

}  // namespace

// One schema per kernel, implemented here for CPU and in csrc/cuda/normalize_clips_cuda.cu for CUDA.
TORCH_LIBRARY_FRAGMENT(vdfast, m) {
  m.def("normalize_clips_stats(Tensor clips, Tensor(a!) sums) -> ()");
  m.def("normalize_clips_apply(Tensor clips, Tensor scale, Tensor shift, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(vdfast, CPU, m) {
  m.impl("normalize_clips_stats", &normalize_clips_stats_cpu);
  m.impl("normalize_clips_apply", &normalize_clips_apply_cpu);
}
