// blend_static_dynamic on CUDA. See vdfast/ops/blend_static_dynamic.py for the contract and
// vdfast/reference/blend_static_dynamic.py for the truth. Light headers (see csrc/cuda/dm_loss_cuda.cu).
//
// Forward: one thread per output pixel (n, t, y, x) loads the 27 dynamic taps once into
// registers and writes all C_out channels: plane[static_idx[n], p(t), co] + bias[co] + taps . w[co]
// (weights and bias in shared memory). Grid x = (video, frame) rows (x allows 2**31 - 1, y
// only 65535), y = pixel blocks. Backward kernels write per-video gradients (gathered dynamic
// [N, T, H, W], planes [N, K, C_out, H, W]); the launcher in Python sums repeated indices with
// index_add_ and takes the stencil weight/bias gradients from torch.
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

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

__device__ __forceinline__ int64_t plane_of(int64_t t, int64_t T) {
  return t == 0 ? 0 : (t == T - 1 ? 1 : 2);
}

template <typename scalar_t, typename acc_t>
__global__ void blend_fwd_kernel(const scalar_t* __restrict__ planes,
                                 const scalar_t* __restrict__ dyn, const scalar_t* __restrict__ wd,
                                 const scalar_t* __restrict__ bias,
                                 const int64_t* __restrict__ sidx,
                                 const int64_t* __restrict__ didx, scalar_t* __restrict__ out,
                                 int64_t K, int64_t Co, int64_t T, int64_t H, int64_t W) {
  extern __shared__ __align__(sizeof(double)) unsigned char smem[];
  acc_t* w = reinterpret_cast<acc_t*>(smem);  // [Co * 27] then bias [Co]
  for (int64_t i = threadIdx.x; i < Co * 28; i += blockDim.x)
    w[i] = static_cast<acc_t>(i < Co * 27 ? wd[i] : bias[i - Co * 27]);
  __syncthreads();
  const int64_t nt = blockIdx.x, n = nt / T, t = nt % T, HW = H * W;
  const int64_t i = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= HW) return;
  const int64_t y = i / W, x = i % W;
  const scalar_t* dn = dyn + didx[n] * T * HW;
  acc_t taps[27];
#pragma unroll
  for (int k = 0; k < 27; ++k) {
    const int64_t ts = t + k / 9 - 1, ys = y + (k / 3) % 3 - 1, xs = x + k % 3 - 1;
    const bool ok = ts >= 0 && ts < T && ys >= 0 && ys < H && xs >= 0 && xs < W;
    taps[k] = ok ? static_cast<acc_t>(dn[ts * HW + ys * W + xs]) : acc_t(0);
  }
  const scalar_t* pl = planes + (sidx[n] * K + plane_of(t, T)) * Co * HW + i;
  scalar_t* o = out + (n * Co * T + t) * HW + i;
  for (int64_t co = 0; co < Co; ++co) {
    acc_t acc = static_cast<acc_t>(pl[co * HW]) + w[Co * 27 + co];
#pragma unroll
    for (int k = 0; k < 27; ++k) acc += w[co * 27 + k] * taps[k];
    o[co * T * HW] = static_cast<scalar_t>(acc);
  }
}

// gd[n, ts, ys, xs] = sum_{co, kt, ky, kx} wd[co, kt, ky, kx] * grad[n, co, ts-kt+1, ys-ky+1, xs-kx+1]
template <typename scalar_t, typename acc_t>
__global__ void blend_bwd_dyn_kernel(const scalar_t* __restrict__ grad,
                                     const scalar_t* __restrict__ wd, scalar_t* __restrict__ gd,
                                     int64_t Co, int64_t T, int64_t H, int64_t W) {
  extern __shared__ __align__(sizeof(double)) unsigned char smem[];
  acc_t* w = reinterpret_cast<acc_t*>(smem);
  for (int64_t j = threadIdx.x; j < Co * 27; j += blockDim.x) w[j] = static_cast<acc_t>(wd[j]);
  __syncthreads();
  const int64_t nt = blockIdx.x, n = nt / T, ts = nt % T, HW = H * W;
  const int64_t i = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= HW) return;
  const int64_t ys = i / W, xs = i % W;
  acc_t acc = 0;
  for (int64_t co = 0; co < Co; ++co) {
    const scalar_t* g = grad + (n * Co + co) * T * HW;
#pragma unroll
    for (int k = 0; k < 27; ++k) {
      const int64_t t = ts - k / 9 + 1, y = ys - (k / 3) % 3 + 1, x = xs - k % 3 + 1;
      if (t >= 0 && t < T && y >= 0 && y < H && x >= 0 && x < W)
        acc += w[co * 27 + k] * static_cast<acc_t>(g[t * HW + y * W + x]);
    }
  }
  gd[nt * HW + i] = static_cast<scalar_t>(acc);
}

// gp[n, p, co] = sum of grad[n, co, t] over the frames t that read plane p
template <typename scalar_t, typename acc_t>
__global__ void blend_bwd_planes_kernel(const scalar_t* __restrict__ grad,
                                        scalar_t* __restrict__ gp, int64_t K, int64_t Co,
                                        int64_t T, int64_t HW) {
  const int64_t nc = blockIdx.x, n = nc / Co, co = nc % Co;
  const int64_t i = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= HW) return;
  const scalar_t* g = grad + nc * T * HW + i;
  scalar_t* dst = gp + (n * K * Co + co) * HW + i;
  dst[0] = g[0];
  if (T > 1) dst[Co * HW] = g[(T - 1) * HW];
  if (T > 2) {
    acc_t acc = 0;
    for (int64_t t = 1; t < T - 1; ++t) acc += static_cast<acc_t>(g[t * HW]);
    dst[2 * Co * HW] = static_cast<scalar_t>(acc);
  }
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.is_contiguous(), "blend_static_dynamic: ", name,
              " must be a contiguous CUDA tensor");
}

void blend_static_dynamic_fwd_cuda(const at::Tensor& planes, const at::Tensor& dyn,
                                   const at::Tensor& wd, const at::Tensor& bias,
                                   const at::Tensor& sidx, const at::Tensor& didx,
                                   const at::Tensor& out) {
  check_cuda(planes, "planes");
  check_cuda(dyn, "dynamic");
  check_cuda(wd, "wd");
  check_cuda(bias, "bias");
  check_cuda(sidx, "static_idx");
  check_cuda(didx, "dynamic_idx");
  check_cuda(out, "out");
  TORCH_CHECK(dyn.dim() == 4 && planes.dim() == 5 && out.dim() == 5 && wd.size(1) == 27,
              "blend_static_dynamic_fwd_cuda: shapes");
  const int64_t N = sidx.numel(), K = planes.size(1), Co = wd.size(0), T = dyn.size(1),
                H = dyn.size(2), W = dyn.size(3);
  if (N == 0 || H * W == 0) return;
  const c10::cuda::OptionalCUDAGuard guard(dyn.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dyn.scalar_type(),
                                  "blend_static_dynamic_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t smem = Co * 28 * sizeof(acc_t);  // the weights, in the 48 KiB a launch may take
    TORCH_CHECK(smem <= 48 * 1024, "blend_static_dynamic (cuda): ", Co, " output channels in ",
                dyn.scalar_type(), " exceed its 48 KiB of weights in shared memory; use "
                "backend='triton' or 'reference'");
    dim3 grid(N * T, cdiv(H * W, kThreads));
    blend_fwd_kernel<scalar_t, acc_t><<<grid, kThreads, smem, stream>>>(
        planes.data_ptr<scalar_t>(), dyn.data_ptr<scalar_t>(), wd.data_ptr<scalar_t>(),
        bias.data_ptr<scalar_t>(), sidx.data_ptr<int64_t>(), didx.data_ptr<int64_t>(),
        out.data_ptr<scalar_t>(), K, Co, T, H, W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// grad [N, Co, T, H, W] -> gd [N, T, H, W] (per video; not yet summed over repeated indices)
void blend_static_dynamic_bwd_dyn_cuda(const at::Tensor& grad, const at::Tensor& wd,
                                       const at::Tensor& gd) {
  check_cuda(grad, "grad");
  check_cuda(wd, "wd");
  check_cuda(gd, "grad_dynamic");
  const int64_t N = grad.size(0), Co = grad.size(1), T = grad.size(2), H = grad.size(3),
                W = grad.size(4);
  if (N == 0 || H * W == 0) return;
  const c10::cuda::OptionalCUDAGuard guard(grad.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "blend_static_dynamic_bwd_dyn_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t smem = Co * 27 * sizeof(acc_t);
    TORCH_CHECK(smem <= 48 * 1024, "blend_static_dynamic (cuda): ", Co, " output channels in ",
                grad.scalar_type(), " exceed its 48 KiB of weights in shared memory; use "
                "backend='triton' or 'reference'");
    dim3 grid(N * T, cdiv(H * W, kThreads));
    blend_bwd_dyn_kernel<scalar_t, acc_t><<<grid, kThreads, smem, stream>>>(
        grad.data_ptr<scalar_t>(), wd.data_ptr<scalar_t>(), gd.data_ptr<scalar_t>(), Co, T, H, W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// grad [N, Co, T, H, W] -> gp [N, K, Co, H, W] (per video)
void blend_static_dynamic_bwd_planes_cuda(const at::Tensor& grad, const at::Tensor& gp) {
  check_cuda(grad, "grad");
  check_cuda(gp, "grad_planes");
  const int64_t N = grad.size(0), Co = grad.size(1), T = grad.size(2),
                HW = grad.size(3) * grad.size(4), K = gp.size(1);
  if (N == 0 || HW == 0) return;
  const c10::cuda::OptionalCUDAGuard guard(grad.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "blend_static_dynamic_bwd_planes_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dim3 grid(N * Co, cdiv(HW, kThreads));
    blend_bwd_planes_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), gp.data_ptr<scalar_t>(), K, Co, T, HW);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

// The schemas are defined once, in csrc/blend_static_dynamic.cpp; these are their CUDA kernels
// (the per-video backwards bwd_dyn and bwd_planes have no CPU kernel).
TORCH_LIBRARY_IMPL(vdfast, CUDA, m) {
  m.impl("blend_static_dynamic_fwd", &blend_static_dynamic_fwd_cuda);
  m.impl("blend_static_dynamic_bwd_dyn", &blend_static_dynamic_bwd_dyn_cuda);
  m.impl("blend_static_dynamic_bwd_planes", &blend_static_dynamic_bwd_planes_cuda);
}
