// Distribution-matching loss on CUDA. See vdfast/ops/dm_loss.py for the contract and
// vdfast/reference/dm_loss.py for the truth. Headers are kept light (no torch/extension.h):
// the whole of ATen costs ~40 s of nvcc time per file.
//
// Forward: a block owns kCols columns and kRows rows and adds them into per-class sums with
// atomics. Consecutive rows of one class (the usual class-sorted real batch) are summed in a
// register first, so a sorted batch costs one atomic per class run instead of one per row.
// The diff kernel turns sums into diff = mean_real - mean_syn and per-block partial sums of
// diff**2 (added up on the device after the kernels). Backward: grad[i, :] = scale[label_i] * diff[label_i, :].
// Rows whose label lies outside [0, nc) are ignored (and get a zero gradient): checking would
// need a host synchronisation.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace {

constexpr int kCols = 256;  // threads per block = columns per block (vdfast/ops/dm_loss.py)
constexpr int kRows = 64;   // rows per block in the segmented sum and the gather

template <typename scalar_t, typename acc_t>
__global__ void dm_loss_fwd_kernel(const scalar_t* __restrict__ x, int64_t stride,
                                   const int64_t* __restrict__ lab, int64_t N, int64_t D,
                                   int64_t nc, acc_t* __restrict__ sums, acc_t* __restrict__ cnt) {
  // row blocks on x (up to 2^31 - 1 of them), column blocks on y (at most 65535: D < 2^24)
  const int64_t col = blockIdx.y * static_cast<int64_t>(kCols) + threadIdx.x;
  const int64_t r0 = blockIdx.x * static_cast<int64_t>(kRows);
  const int64_t r1 = min(r0 + kRows, N);
  const bool counter = blockIdx.y == 0 && threadIdx.x == 0;
  acc_t run = 0, nrun = 0;
  int64_t cur = -1;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t l = lab[r];  // the same for every thread of the block: no divergence
    if (l < 0 || l >= nc) continue;
    if (l != cur) {
      if (cur >= 0) {
        if (col < D) atomicAdd(sums + cur * D + col, run);
        if (counter) atomicAdd(cnt + cur, nrun);
      }
      cur = l;
      run = 0;
      nrun = 0;
    }
    if (col < D) run += static_cast<acc_t>(x[r * stride + col]);
    nrun += 1;
  }
  if (cur >= 0) {
    if (col < D) atomicAdd(sums + cur * D + col, run);
    if (counter) atomicAdd(cnt + cur, nrun);
  }
}

template <typename acc_t>
__global__ void dm_loss_diff_kernel(const acc_t* __restrict__ sums_r, const acc_t* __restrict__ sums_s,
                                    const acc_t* __restrict__ cnt_r, const acc_t* __restrict__ cnt_s,
                                    acc_t* __restrict__ diff, acc_t* __restrict__ partial, int64_t D) {
  __shared__ acc_t red[kCols];
  const int64_t c = blockIdx.x;
  const int64_t col = blockIdx.y * static_cast<int64_t>(kCols) + threadIdx.x;
  const acc_t cr = cnt_r[c], cs = cnt_s[c];
  acc_t d = 0;
  if (col < D) {
    if (cr > 0 && cs > 0) d = sums_r[c * D + col] / cr - sums_s[c * D + col] / cs;
    diff[c * D + col] = d;
  }
  red[threadIdx.x] = d * d;
  __syncthreads();
  for (int s = kCols / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[c * gridDim.y + blockIdx.y] = red[0];
}

template <typename scalar_t, typename acc_t>
__global__ void dm_loss_bwd_kernel(scalar_t* __restrict__ grad, const int64_t* __restrict__ lab,
                                   const acc_t* __restrict__ diff, const acc_t* __restrict__ scale,
                                   int64_t N, int64_t D, int64_t nc) {
  const int64_t col = blockIdx.y * static_cast<int64_t>(kCols) + threadIdx.x;
  if (col >= D) return;
  const int64_t r0 = blockIdx.x * static_cast<int64_t>(kRows);
  const int64_t r1 = min(r0 + kRows, N);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t l = lab[r];
    const acc_t g = (l >= 0 && l < nc) ? scale[l] * diff[l * D + col] : acc_t(0);
    grad[r * D + col] = static_cast<scalar_t>(g);
  }
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// real [Nr, D], syn [Ns, D] (unit column stride); labels int64. Writes diff [nc, D], cnt [2, nc]
// and loss [] in the accumulator dtype (float64 for float64, else float32): the schema of
// csrc/dm_loss.cpp. The class sums [2, nc, D] and the per-block partial sums of diff**2
// [nc, cdiv(D, kCols)] are scratch allocated here; loss is the sum of the partials.
void dm_loss_fwd_cuda(at::Tensor real, at::Tensor real_labels, at::Tensor syn, at::Tensor syn_labels,
                      at::Tensor diff, at::Tensor cnt, at::Tensor loss) {
  TORCH_CHECK(real.is_cuda() && syn.is_cuda(), "dm_loss_fwd_cuda: CUDA tensors only");
  TORCH_CHECK(real.stride(1) == 1 && syn.stride(1) == 1, "dm_loss: unit column stride required");
  TORCH_CHECK(cnt.is_contiguous() && diff.is_contiguous(), "dm_loss_fwd_cuda: outputs must be contiguous");
  TORCH_CHECK(diff.scalar_type() == cnt.scalar_type() && diff.scalar_type() == loss.scalar_type(),
              "dm_loss: output dtypes differ");
  const int64_t nc = diff.size(0), D = real.size(1);
  const c10::cuda::OptionalCUDAGuard guard(real.device());
  cnt.zero_();
  if (D == 0) {
    loss.zero_();
    return;
  }
  TORCH_CHECK(cdiv(D, kCols) <= 65535, "dm_loss: at most 65535 * 256 feature columns");
  at::Tensor sums = at::zeros({2, nc, D}, diff.options());
  at::Tensor partial = at::empty({nc, cdiv(D, kCols)}, diff.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real.scalar_type(), "dm_loss_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(diff.scalar_type() == c10::CppTypeToScalarType<acc_t>::value,
                "dm_loss_fwd_cuda: accumulator dtype");
    acc_t* sp = sums.data_ptr<acc_t>();
    acc_t* cp = cnt.data_ptr<acc_t>();
    const at::Tensor* xs[2] = {&real, &syn};
    const at::Tensor* ls[2] = {&real_labels, &syn_labels};
    for (int k = 0; k < 2; ++k) {
      const int64_t N = xs[k]->size(0);
      if (N == 0) continue;
      dim3 grid(cdiv(N, kRows), cdiv(D, kCols));
      dm_loss_fwd_kernel<scalar_t, acc_t><<<grid, kCols, 0, stream>>>(
          xs[k]->data_ptr<scalar_t>(), xs[k]->stride(0), ls[k]->data_ptr<int64_t>(), N, D, nc,
          sp + k * nc * D, cp + k * nc);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    dim3 grid(nc, cdiv(D, kCols));
    dm_loss_diff_kernel<acc_t><<<grid, kCols, 0, stream>>>(sp, sp + nc * D, cp, cp + nc,
                                                            diff.data_ptr<acc_t>(),
                                                            partial.data_ptr<acc_t>(), D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  loss.copy_(partial.sum());
}

// grad [N, D] contiguous (feature dtype); diff [nc, D] and scale [nc] in the accumulator dtype.
void dm_loss_bwd_cuda(at::Tensor grad, at::Tensor labels, at::Tensor diff, at::Tensor scale) {
  TORCH_CHECK(grad.is_cuda() && grad.is_contiguous() && diff.is_contiguous() && scale.is_contiguous(),
              "dm_loss_bwd_cuda: contiguous CUDA tensors required");
  const int64_t N = grad.size(0), D = grad.size(1), nc = diff.size(0);
  if (N == 0 || D == 0) return;
  const c10::cuda::OptionalCUDAGuard guard(grad.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "dm_loss_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(diff.scalar_type() == c10::CppTypeToScalarType<acc_t>::value &&
                scale.scalar_type() == diff.scalar_type(), "dm_loss_bwd_cuda: accumulator dtype");
    dim3 grid(cdiv(N, kRows), cdiv(D, kCols));
    dm_loss_bwd_kernel<scalar_t, acc_t><<<grid, kCols, 0, stream>>>(
        grad.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(), diff.data_ptr<acc_t>(),
        scale.data_ptr<acc_t>(), N, D, nc);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

// The schemas are defined once, in csrc/dm_loss.cpp; these are their CUDA kernels.
TORCH_LIBRARY_IMPL(vdfast, CUDA, m) {
  m.impl("dm_loss_fwd", &dm_loss_fwd_cuda);
  m.impl("dm_loss_bwd", &dm_loss_bwd_cuda);
}
