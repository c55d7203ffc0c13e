// Clip normalisation on CUDA. See vdfast/ops/normalize_clips.py for the contract and
// vdfast/reference/normalize_clips.py for the truth. Light headers (see csrc/cuda/dm_loss_cuda.cu).
//
// uint8 [N, T, H, W, C] (any strides) -> [N, C, T, H, W]: out = scale[c] * x + shift[c]. The
// input has 256 values per channel, so each block first builds a per-channel lookup table in
// shared memory (computed in double) and then only gathers. The stats kernel writes exact
// per-block integer sums of x and x^2 per channel, added up here; the Python side folds the batch
// statistics into scale/shift.
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
constexpr int kPerThread = 4;
constexpr int kBlock = kThreads * kPerThread;  // positions per block (vdfast/ops/normalize_clips.py)

struct Geom {
  int64_t T, H, W, C, sN, sT, sH, sW, sC;
};

__device__ __forceinline__ int64_t in_offset(const Geom& g, int64_t n, int64_t p) {
  const int64_t w = p % g.W, h = (p / g.W) % g.H, t = p / (g.W * g.H);
  return n * g.sN + t * g.sT + h * g.sH + w * g.sW;
}

__global__ void normalize_clips_stats_kernel(const uint8_t* __restrict__ x, Geom g,
                                             long long* __restrict__ partial) {
  __shared__ long long red[2][kThreads];
  const int64_t n = blockIdx.x, P = g.T * g.H * g.W;  // clips on x, pixel blocks on y
  for (int64_t c = 0; c < g.C; ++c) {
    long long s1 = 0, s2 = 0;
    for (int k = 0; k < kPerThread; ++k) {
      const int64_t p = blockIdx.y * static_cast<int64_t>(kBlock) + k * kThreads + threadIdx.x;
      if (p < P) {
        const long long v = x[in_offset(g, n, p) + c * g.sC];
        s1 += v;
        s2 += v * v;
      }
    }
    red[0][threadIdx.x] = s1;
    red[1][threadIdx.x] = s2;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) {
        red[0][threadIdx.x] += red[0][threadIdx.x + s];
        red[1][threadIdx.x] += red[1][threadIdx.x + s];
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      long long* dst = partial + ((n * gridDim.y + blockIdx.y) * g.C + c) * 2;
      dst[0] = red[0][0];
      dst[1] = red[1][0];
    }
    __syncthreads();
  }
}

template <typename out_t, typename acc_t>
__global__ void normalize_clips_apply_kernel(const uint8_t* __restrict__ x, Geom g,
                                             const double* __restrict__ scale,
                                             const double* __restrict__ shift, out_t* __restrict__ out) {
  extern __shared__ __align__(sizeof(double)) unsigned char smem[];
  acc_t* lut = reinterpret_cast<acc_t*>(smem);
  for (int64_t i = threadIdx.x; i < 256 * g.C; i += kThreads) {
    const int64_t c = i / 256, v = i % 256;
    lut[i] = static_cast<acc_t>(scale[c] * static_cast<double>(v) + shift[c]);
  }
  __syncthreads();
  const int64_t n = blockIdx.x, P = g.T * g.H * g.W;  // clips on x, pixel blocks on y
  for (int k = 0; k < kPerThread; ++k) {
    const int64_t p = blockIdx.y * static_cast<int64_t>(kBlock) + k * kThreads + threadIdx.x;
    if (p >= P) continue;
    const uint8_t* px = x + in_offset(g, n, p);
    out_t* o = out + n * g.C * P + p;
    for (int64_t c = 0; c < g.C; ++c) o[c * P] = static_cast<out_t>(lut[c * 256 + px[c * g.sC]]);
  }
}

Geom geom(const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 5 && x.scalar_type() == at::kByte,
              "normalize_clips: uint8 CUDA [N, T, H, W, C]");
  return {x.size(1), x.size(2), x.size(3), x.size(4),
          x.stride(0), x.stride(1), x.stride(2), x.stride(3), x.stride(4)};
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grids: clips on x (any number), blocks of 1024 positions on y (at most 65535: T*H*W < 2^26).
int64_t pixel_blocks(int64_t P) {
  TORCH_CHECK(cdiv(P, kBlock) <= 65535, "normalize_clips: at most 65535 * 1024 positions (T*H*W) per clip");
  return cdiv(P, kBlock);
}

// sums [C, 2] int64: sums of x and x^2 per channel (exact; the schema of csrc/normalize_clips.cpp).
// Blocks write their own partial sums [N, cdiv(T*H*W, 1024), C, 2] (scratch), added up here.
void normalize_clips_stats_cuda(at::Tensor clips, at::Tensor sums) {
  const Geom g = geom(clips);
  const int64_t N = clips.size(0), P = g.T * g.H * g.W;
  TORCH_CHECK(sums.scalar_type() == at::kLong && sums.dim() == 2 && sums.size(0) == g.C &&
              sums.size(1) == 2, "normalize_clips_stats_cuda: sums must be int64 [C, 2]");
  const c10::cuda::OptionalCUDAGuard guard(clips.device());
  if (N * P * g.C == 0) {
    sums.zero_();
    return;
  }
  at::Tensor partial = at::empty({N, pixel_blocks(P), g.C, 2}, sums.options());
  dim3 grid(N, pixel_blocks(P));
  normalize_clips_stats_kernel<<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      clips.data_ptr<uint8_t>(), g, reinterpret_cast<long long*>(partial.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  sums.copy_(partial.sum(at::IntArrayRef{0, 1}));
}

// out [N, C, T, H, W] contiguous; scale/shift float64 [C] on the same device.
void normalize_clips_apply_cuda(at::Tensor clips, at::Tensor scale, at::Tensor shift, at::Tensor out) {
  const Geom g = geom(clips);
  const int64_t N = clips.size(0), P = g.T * g.H * g.W;
  TORCH_CHECK(scale.scalar_type() == at::kDouble && shift.scalar_type() == at::kDouble &&
              scale.is_contiguous() && shift.is_contiguous() && scale.numel() == g.C &&
              shift.numel() == g.C, "normalize_clips_apply_cuda: scale/shift float64 [C]");
  TORCH_CHECK(out.is_contiguous() && out.numel() == N * g.C * P,
              "normalize_clips_apply_cuda: out must be contiguous [N, C, T, H, W]");
  if (out.numel() == 0) return;
  const c10::cuda::OptionalCUDAGuard guard(clips.device());
  dim3 grid(N, pixel_blocks(P));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "normalize_clips_apply_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t smem = sizeof(acc_t) * 256 * g.C;  // the lookup table of every channel
    TORCH_CHECK(smem <= 48 * 1024, "normalize_clips (cuda): ", g.C, " channels exceed its 48 KiB "
                "lookup table in shared memory; use backend='triton' or 'reference'");
    normalize_clips_apply_kernel<scalar_t, acc_t><<<grid, kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
        clips.data_ptr<uint8_t>(), g, scale.data_ptr<double>(), shift.data_ptr<double>(),
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

// The schemas are defined once, in csrc/normalize_clips.cpp; these are their CUDA kernels.
TORCH_LIBRARY_IMPL(vdfast, CUDA, m) {
  m.impl("normalize_clips_stats", &normalize_clips_stats_cuda);
  m.impl("normalize_clips_apply", &normalize_clips_apply_cuda);
}
