// guided_step, CPU (ATen's OpenMP thread pool via at::parallel_for; `omp simd` in rows).
//
// One GVD denoising update, elementwise over latents [B, F, C, h, w] (contiguous; one row per
// (b, f) of CHW elements, so the per-frame guidance lam[f] and the guide row are fixed per row):
//   x0   = a * x - b * eps                                  (predicted clean latent)
//   DDPM: out = c0 * x0 + c1 * x + (lam[f] * s) * (m - x0) [+ s * z]
//   DDIM: out = c0 * (x0 + lam[f] * (m - x0)) + c1 * x
// The scalars come from vdfast/ops/guided_step.py (float64 on the host). `out` may alias `x`
// (each element is read before it is written by the same iteration). float32 and float64.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace {

template <typename scalar_t>
void guided_step_impl(const scalar_t* x, const scalar_t* eps, const scalar_t* guide,
                      const scalar_t* lam, const scalar_t* noise, scalar_t* out, int64_t B,
                      int64_t F, int64_t CHW, bool guide_per_frame, double a_, double b_,
                      double c0_, double c1_, double s_, bool ddim) {
  const scalar_t a = a_, b = b_, c0 = c0_, c1 = c1_, s = s_;
  // small steps run on the calling thread: waking the pool costs more than ~64k elements
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(CHW, 1));
  at::parallel_for(0, B * F, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t off = row * CHW;
      const scalar_t* m = guide + (guide_per_frame ? row : row / F) * CHW;
      const scalar_t l = lam[row % F];
      const scalar_t* xr = x + off;
      const scalar_t* er = eps + off;
      scalar_t* o = out + off;
      if (ddim) {
#pragma omp simd
        for (int64_t i = 0; i < CHW; ++i) {
          const scalar_t xi = xr[i];
          const scalar_t x0 = a * xi - b * er[i];
          o[i] = c0 * (x0 + l * (m[i] - x0)) + c1 * xi;
        }
      } else {
        const scalar_t g = l * s;
        const scalar_t* z = noise ? noise + off : nullptr;
        if (z) {
#pragma omp simd
          for (int64_t i = 0; i < CHW; ++i) {
            const scalar_t xi = xr[i];
            const scalar_t x0 = a * xi - b * er[i];
            o[i] = c0 * x0 + c1 * xi + g * (m[i] - x0) + s * z[i];
          }
        } else {
#pragma omp simd
          for (int64_t i = 0; i < CHW; ++i) {
            const scalar_t xi = xr[i];
            const scalar_t x0 = a * xi - b * er[i];
            o[i] = c0 * x0 + c1 * xi + g * (m[i] - x0);
          }
        }
      }
    }
  });
}

void guided_step_fwd_cpu(const at::Tensor& x, const at::Tensor& eps, const at::Tensor& guide,
                         const at::Tensor& lam, const std::optional<at::Tensor>& noise, double a,
                         double b, double c0, double c1, double s, bool ddim,
                         const at::Tensor& out) {
  TORCH_CHECK(x.device().is_cpu(), "guided_step_fwd_cpu: CPU tensors only");
  TORCH_CHECK(x.dim() == 5, "guided_step_fwd_cpu: latents must be [B, F, C, h, w]");
  const int64_t B = x.size(0), F = x.size(1), CHW = x.numel() / std::max<int64_t>(B * F, 1);
  for (const at::Tensor* t : {&x, &eps, &guide, &lam, &out})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == x.scalar_type(),
                "guided_step_fwd_cpu: contiguous tensors of one dtype required");
  TORCH_CHECK(eps.sizes() == x.sizes() && out.sizes() == x.sizes(), "guided_step: shapes");
  TORCH_CHECK(lam.numel() == F, "guided_step: lam must have F entries");
  const bool per_frame = guide.numel() == x.numel();
  TORCH_CHECK(per_frame || guide.numel() == B * CHW, "guided_step: guide must be [B, C, h, w] "
              "or [B, F, C, h, w]");
  if (noise.has_value())
    TORCH_CHECK(noise->sizes() == x.sizes() && noise->is_contiguous() &&
                noise->scalar_type() == x.scalar_type(), "guided_step: noise like x_t");
  if (x.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "guided_step_fwd_cpu", [&] {
    guided_step_impl<scalar_t>(x.data_ptr<scalar_t>(), eps.data_ptr<scalar_t>(),
                               guide.data_ptr<scalar_t>(), lam.data_ptr<scalar_t>(),
                               noise.has_value() ? noise->data_ptr<scalar_t>() : nullptr,
                               out.data_ptr<scalar_t>(), B, F, CHW, per_frame, a, b, c0, c1, s,
                               ddim);
  });
}

}  // namespace

// One schema, implemented here for CPU and in csrc/cuda/guided_step_cuda.cu for CUDA.
TORCH_LIBRARY_FRAGMENT(vdfast, m) {
  m.def("guided_step_fwd(Tensor x, Tensor eps, Tensor guide, Tensor lam, Tensor? noise, "
        "float a, float b, float c0, float c1, float s, bool ddim, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(vdfast, CPU, m) { m.impl("guided_step_fwd", &guided_step_fwd_cpu); }
