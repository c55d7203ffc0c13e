// DC's gradient-matching distance on CUDA. See vdfast/ops/gradient_match.py for the contract and
// vdfast/reference/gradient_match.py for the truth. Light headers (see csrc/cuda/dm_loss_cuda.cu).
//
// Inputs are the matrix layers only, each a contiguous [out, K] view; one launch per layer.
// Forward: one block per row reduces <r, s>, ||r||^2, ||s||^2 into that row's slot of stats
// [R, 3]. Backward: grad_s = c0 r + c1 s, grad_r = c2 s + c3 r with coef [R, 4] per row.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void gradient_match_fwd_kernel(const scalar_t* __restrict__ r, const scalar_t* __restrict__ s,
                                          int64_t K, acc_t* __restrict__ stats) {
  __shared__ acc_t red[3][kThreads];
  const int64_t row = blockIdx.x;
  const scalar_t* rp = r + row * K;
  const scalar_t* sp = s + row * K;
  acc_t dot = 0, rr = 0, ss = 0;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) {
    const acc_t a = static_cast<acc_t>(rp[k]), b = static_cast<acc_t>(sp[k]);
    dot += a * b;
    rr += a * a;
    ss += b * b;
  }
  red[0][threadIdx.x] = dot;
  red[1][threadIdx.x] = rr;
  red[2][threadIdx.x] = ss;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w)
      for (int q = 0; q < 3; ++q) red[q][threadIdx.x] += red[q][threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x < 3) stats[3 * row + threadIdx.x] = red[threadIdx.x][0];
}

template <typename scalar_t, typename acc_t>
__global__ void gradient_match_bwd_kernel(const scalar_t* __restrict__ r, const scalar_t* __restrict__ s,
                                          int64_t K, const acc_t* __restrict__ coef, scalar_t* gr,
                                          scalar_t* gs) {
  // rows on x (any number), blocks of K on y (at most 65535: K < 2^24)
  const int64_t row = blockIdx.x;
  const int64_t k = blockIdx.y * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (k >= K) return;
  const acc_t a = static_cast<acc_t>(r[row * K + k]), b = static_cast<acc_t>(s[row * K + k]);
  const acc_t* c = coef + 4 * row;
  if (gs) gs[row * K + k] = static_cast<scalar_t>(c[0] * a + c[1] * b);
  if (gr) gr[row * K + k] = static_cast<scalar_t>(c[2] * b + c[3] * a);
}

void check(const std::vector<at::Tensor>& real, const std::vector<at::Tensor>& syn) {
  TORCH_CHECK(real.size() == syn.size(), "gradient_match: layer counts differ");
  for (size_t l = 0; l < real.size(); ++l)
    TORCH_CHECK(real[l].is_cuda() && real[l].dim() == 2 && real[l].sizes() == syn[l].sizes() &&
                real[l].is_contiguous() && syn[l].is_contiguous() &&
                real[l].scalar_type() == syn[l].scalar_type() &&
                real[l].scalar_type() == real[0].scalar_type(),
                "gradient_match: layer ", l, " must be contiguous CUDA [out, K] of one dtype on both sides");
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// stats [R, 3] in the accumulator dtype (float64 for float64 inputs, else float32).
void gradient_match_fwd_cuda(std::vector<at::Tensor> real, std::vector<at::Tensor> syn, at::Tensor stats) {
  check(real, syn);
  if (real.empty()) return;
  const c10::cuda::OptionalCUDAGuard guard(real[0].device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real[0].scalar_type(), "gradient_match_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(stats.scalar_type() == c10::CppTypeToScalarType<acc_t>::value && stats.is_contiguous(),
                "gradient_match_fwd_cuda: stats");
    int64_t first = 0;
    for (size_t l = 0; l < real.size(); ++l) {
      const int64_t rows = real[l].size(0), K = real[l].size(1);
      if (rows > 0) {
        gradient_match_fwd_kernel<scalar_t, acc_t><<<rows, kThreads, 0, stream>>>(
            real[l].data_ptr<scalar_t>(), syn[l].data_ptr<scalar_t>(), K,
            stats.data_ptr<acc_t>() + 3 * first);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      first += rows;
    }
  });
}

// coef [R, 4] in the accumulator dtype; grad lists empty or matching the layers.
void gradient_match_bwd_cuda(std::vector<at::Tensor> real, std::vector<at::Tensor> syn, at::Tensor coef,
                             std::vector<at::Tensor> grad_real, std::vector<at::Tensor> grad_syn) {
  check(real, syn);
  if (real.empty()) return;
  TORCH_CHECK(grad_real.empty() || grad_real.size() == real.size(), "gradient_match: grad_real");
  TORCH_CHECK(grad_syn.empty() || grad_syn.size() == real.size(), "gradient_match: grad_syn");
  const c10::cuda::OptionalCUDAGuard guard(real[0].device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real[0].scalar_type(), "gradient_match_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(coef.scalar_type() == c10::CppTypeToScalarType<acc_t>::value && coef.is_contiguous(),
                "gradient_match_bwd_cuda: coef");
    int64_t first = 0;
    for (size_t l = 0; l < real.size(); ++l) {
      const int64_t rows = real[l].size(0), K = real[l].size(1);
      if (rows > 0 && K > 0) {
        TORCH_CHECK(cdiv(K, kThreads) <= 65535, "gradient_match: layer ", l,
                    " has more than 65535 * 256 weights per output channel");
        dim3 grid(rows, cdiv(K, kThreads));
        gradient_match_bwd_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
            real[l].data_ptr<scalar_t>(), syn[l].data_ptr<scalar_t>(), K,
            coef.data_ptr<acc_t>() + 4 * first,
            grad_real.empty() ? nullptr : grad_real[l].data_ptr<scalar_t>(),
            grad_syn.empty() ? nullptr : grad_syn[l].data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      first += rows;
    }
  });
}

}  // namespace

// The schemas are defined once, in csrc/gradient_match.cpp; these are their CUDA kernels.
TORCH_LIBRARY_IMPL(vdfast, CUDA, m) {
  m.impl("gradient_match_fwd", &gradient_match_fwd_cuda);
  m.impl("gradient_match_bwd", &gradient_match_bwd_cuda);
}
