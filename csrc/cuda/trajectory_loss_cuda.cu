// MTT's trajectory-matching loss on CUDA. See vdfast/ops/trajectory_loss.py for the contract and
// vdfast/reference/trajectory_loss.py for the truth. Light headers (see csrc/cuda/dm_loss_cuda.cu).
//
// Forward: each block reduces kThreads * kPerThread elements to partial sums of (s - t)^2 and
// (a - t)^2 (added up after the kernel, in float64: deterministic). Backward: one elementwise pass with
// coef = (2 g / den, -2 g num / den^2). Inputs are 1-D with any stride.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace {

constexpr int kThreads = 256;
constexpr int kPerThread = 8;
constexpr int kBlock = kThreads * kPerThread;  // elements per block (vdfast/ops/trajectory_loss.py)

template <typename scalar_t, typename acc_t>
__global__ void trajectory_loss_fwd_kernel(const scalar_t* __restrict__ s, int64_t ss,
                                           const scalar_t* __restrict__ a, int64_t sa,
                                           const scalar_t* __restrict__ t, int64_t st, int64_t n,
                                           acc_t* __restrict__ partial) {
  __shared__ acc_t red[2][kThreads];
  acc_t num = 0, den = 0;
  for (int k = 0; k < kPerThread; ++k) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(kBlock) + k * kThreads + threadIdx.x;
    if (i < n) {
      const acc_t ti = static_cast<acc_t>(t[i * st]);
      const acc_t ds = static_cast<acc_t>(s[i * ss]) - ti;
      const acc_t da = static_cast<acc_t>(a[i * sa]) - ti;
      num += ds * ds;
      den += da * da;
    }
  }
  red[0][threadIdx.x] = num;
  red[1][threadIdx.x] = den;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) {
      red[0][threadIdx.x] += red[0][threadIdx.x + w];
      red[1][threadIdx.x] += red[1][threadIdx.x + w];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = red[0][0];
    partial[2 * blockIdx.x + 1] = red[1][0];
  }
}

template <typename scalar_t, typename acc_t>
__global__ void trajectory_loss_bwd_kernel(const scalar_t* __restrict__ s, int64_t ss,
                                           const scalar_t* __restrict__ a, int64_t sa,
                                           const scalar_t* __restrict__ t, int64_t st, int64_t n,
                                           const acc_t* __restrict__ coef, scalar_t* gs,
                                           scalar_t* ga, scalar_t* gt) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (i >= n) return;
  const acc_t ti = static_cast<acc_t>(t[i * st]);
  const acc_t vs = coef[0] * (static_cast<acc_t>(s[i * ss]) - ti);
  const acc_t va = coef[1] * (static_cast<acc_t>(a[i * sa]) - ti);
  if (gs) gs[i] = static_cast<scalar_t>(vs);
  if (ga) ga[i] = static_cast<scalar_t>(va);
  if (gt) gt[i] = static_cast<scalar_t>(-(vs + va));
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

void check(const at::Tensor& s, const at::Tensor& a, const at::Tensor& t) {
  TORCH_CHECK(s.is_cuda() && s.dim() == 1 && a.dim() == 1 && t.dim() == 1,
              "trajectory_loss: 1-D CUDA inputs");
  TORCH_CHECK(s.numel() == a.numel() && s.numel() == t.numel(), "trajectory_loss: sizes differ");
  TORCH_CHECK(s.scalar_type() == a.scalar_type() && s.scalar_type() == t.scalar_type(),
              "trajectory_loss: dtypes differ");
}

// sums [2] float64 (num, den; the schema of csrc/trajectory_loss.cpp). Blocks write partial sums
// [cdiv(P, 2048), 2] in the accumulator dtype (float64 for float64 inputs, else float32; scratch),
// added up here in float64.
void trajectory_loss_fwd_cuda(at::Tensor s, at::Tensor a, at::Tensor t, at::Tensor sums) {
  check(s, a, t);
  const int64_t n = s.numel();
  TORCH_CHECK(sums.numel() == 2 && sums.scalar_type() == at::kDouble,
              "trajectory_loss_fwd_cuda: sums must be float64 [2]");
  const c10::cuda::OptionalCUDAGuard guard(s.device());
  if (n == 0) {
    sums.zero_();
    return;
  }
  at::Tensor partial = at::empty({cdiv(n, kBlock), 2}, s.options().dtype(at::toOpMathType(s.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "trajectory_loss_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    trajectory_loss_fwd_kernel<scalar_t, acc_t><<<cdiv(n, kBlock), kThreads, 0,
                                                  c10::cuda::getCurrentCUDAStream()>>>(
        s.data_ptr<scalar_t>(), s.stride(0), a.data_ptr<scalar_t>(), a.stride(0),
        t.data_ptr<scalar_t>(), t.stride(0), n, partial.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  sums.copy_(partial.sum(0, false, at::kDouble));
}

// coef [2] in the accumulator dtype; gs/ga/gt contiguous [P] of the input dtype, or empty to skip.
void trajectory_loss_bwd_cuda(at::Tensor s, at::Tensor a, at::Tensor t, at::Tensor coef,
                              at::Tensor gs, at::Tensor ga, at::Tensor gt) {
  check(s, a, t);
  const int64_t n = s.numel();
  if (n == 0) return;
  const c10::cuda::OptionalCUDAGuard guard(s.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "trajectory_loss_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(coef.scalar_type() == c10::CppTypeToScalarType<acc_t>::value && coef.numel() == 2,
                "trajectory_loss_bwd_cuda: coef");
    auto ptr = [](at::Tensor& g) { return g.numel() ? g.data_ptr<scalar_t>() : nullptr; };
    trajectory_loss_bwd_kernel<scalar_t, acc_t><<<cdiv(n, kThreads), kThreads, 0,
                                                  c10::cuda::getCurrentCUDAStream()>>>(
        s.data_ptr<scalar_t>(), s.stride(0), a.data_ptr<scalar_t>(), a.stride(0),
        t.data_ptr<scalar_t>(), t.stride(0), n, coef.data_ptr<acc_t>(), ptr(gs), ptr(ga), ptr(gt));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

// The schemas are defined once, in csrc/trajectory_loss.cpp; these are their CUDA kernels.
TORCH_LIBRARY_IMPL(vdfast, CUDA, m) {
  m.impl("trajectory_loss_fwd", &trajectory_loss_fwd_cuda);
  m.impl("trajectory_loss_bwd", &trajectory_loss_bwd_cuda);
}
