// guided_step on CUDA. See vdfast/ops/guided_step.py for the contract and
// vdfast/reference/guided_step.py for the truth. Light headers (see csrc/cuda/dm_loss_cuda.cu).
//
// Elementwise and memory-bound: each element of x_t, eps, (noise) is read once, the guide once per
// frame that uses it (a per-instance guide is re-read from L2 by each frame), the result written
// once. Grid x = (b, f) rows (up to 2**31 - 1), y = blocks of kThreads * kPerThread elements of a
// row, so lam[f] and the guide row are per-block constants. `out` may alias `x`.
//   x0 = a * x - b * eps
//   DDPM: out = c0 * x0 + c1 * x + (lam[f] * s) * (m - x0) [+ s * z]
//   DDIM: out = c0 * (x0 + lam[f] * (m - x0)) + c1 * x
// Half and bfloat16 compute in float32, float64 in float64 (at::opmath_type).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace {

constexpr int kThreads = 256;
constexpr int kPerThread = 4;

template <typename scalar_t, typename acc_t, bool DDIM, bool NOISE>
__global__ void guided_step_kernel(const scalar_t* x, const scalar_t* __restrict__ eps,
                                   const scalar_t* __restrict__ guide,
                                   const scalar_t* __restrict__ lam,
                                   const scalar_t* __restrict__ noise, scalar_t* out, int64_t F,
                                   int64_t CHW, bool guide_per_frame, acc_t a, acc_t b, acc_t c0,
                                   acc_t c1, acc_t s) {
  const int64_t row = blockIdx.x;
  const int64_t off = row * CHW;
  const scalar_t* m = guide + (guide_per_frame ? row : row / F) * CHW;
  const acc_t l = static_cast<acc_t>(lam[row % F]);
  const acc_t g = l * s;
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int64_t i =
        (static_cast<int64_t>(blockIdx.y) * kPerThread + k) * kThreads + threadIdx.x;
    if (i >= CHW) return;
    const acc_t xi = static_cast<acc_t>(x[off + i]);
    const acc_t x0 = a * xi - b * static_cast<acc_t>(eps[off + i]);
    const acc_t mi = static_cast<acc_t>(m[i]);
    acc_t r;
    if (DDIM) {
      r = c0 * (x0 + l * (mi - x0)) + c1 * xi;
    } else {
      r = c0 * x0 + c1 * xi + g * (mi - x0);
      if (NOISE) r += s * static_cast<acc_t>(noise[off + i]);
    }
    out[off + i] = static_cast<scalar_t>(r);
  }
}

void guided_step_fwd_cuda(const at::Tensor& x, const at::Tensor& eps, const at::Tensor& guide,
                          const at::Tensor& lam, const std::optional<at::Tensor>& noise, double a,
                          double b, double c0, double c1, double s, bool ddim,
                          const at::Tensor& out) {
  for (const at::Tensor* t : {&x, &eps, &guide, &lam, &out})
    TORCH_CHECK(t->is_cuda() && t->is_contiguous() && t->scalar_type() == x.scalar_type(),
                "guided_step_fwd_cuda: contiguous CUDA tensors of one dtype required");
  TORCH_CHECK(x.dim() == 5 && eps.sizes() == x.sizes() && out.sizes() == x.sizes(),
              "guided_step_fwd_cuda: latents must be [B, F, C, h, w]");
  const int64_t B = x.size(0), F = x.size(1);
  if (x.numel() == 0) return;
  const int64_t CHW = x.numel() / (B * F);
  TORCH_CHECK(lam.numel() == F, "guided_step: lam must have F entries");
  const bool per_frame = guide.numel() == x.numel();
  TORCH_CHECK(per_frame || guide.numel() == B * CHW, "guided_step: guide shape");
  const bool has_noise = noise.has_value() && !ddim;
  if (has_noise)
    TORCH_CHECK(noise->sizes() == x.sizes() && noise->is_contiguous() && noise->is_cuda() &&
                noise->scalar_type() == x.scalar_type(), "guided_step: noise like x_t");
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "guided_step_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dim3 grid(B * F, (CHW + kThreads * kPerThread - 1) / (kThreads * kPerThread));
    const scalar_t* z = has_noise ? noise->data_ptr<scalar_t>() : nullptr;
    auto kernel = ddim ? guided_step_kernel<scalar_t, acc_t, true, false>
                  : has_noise ? guided_step_kernel<scalar_t, acc_t, false, true>
                              : guided_step_kernel<scalar_t, acc_t, false, false>;
    kernel<<<grid, kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), eps.data_ptr<scalar_t>(), guide.data_ptr<scalar_t>(),
        lam.data_ptr<scalar_t>(), z, out.data_ptr<scalar_t>(), F, CHW, per_frame,
        static_cast<acc_t>(a), static_cast<acc_t>(b), static_cast<acc_t>(c0),
        static_cast<acc_t>(c1), static_cast<acc_t>(s));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

// The schema is defined once, in csrc/guided_step.cpp; this is its CUDA kernel.
TORCH_LIBRARY_IMPL(vdfast, CUDA, m) { m.impl("guided_step_fwd", &guided_step_fwd_cuda); }
