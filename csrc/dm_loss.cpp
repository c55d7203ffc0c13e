// Distribution-matching loss on the CPU (OpenMP). See vdfast/ops/dm_loss.py for the contract and
// vdfast/reference/dm_loss.py for the truth.
//
// Forward, one pass over the features: the columns are split into blocks of kBlock; each block is
// one task that sums the real and synthetic rows of every class into double accumulators, then
// writes diff[c, cols] = mean_real - mean_syn (0 where a class is absent on either side) and its
// partial loss. Column blocks make the result independent of the thread count (deterministic).
// Backward: grad[i, :] = scale[label_i] * diff[label_i, :], rows in parallel.
#include <torch/extension.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kBlock = 64;

template <typename scalar_t>
void segment_sum_block(const scalar_t* x, int64_t stride, const int64_t* lab, int64_t n,
                       int64_t d0, int64_t width, double* acc) {
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t* row = x + i * stride + d0;
    double* a = acc + lab[i] * width;
    for (int64_t j = 0; j < width; ++j) a[j] += static_cast<double>(row[j]);
  }
}

void count_labels(const at::Tensor& labels, int64_t num_classes, double* cnt) {
  const int64_t* lab = labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < labels.numel(); ++i) {
    TORCH_CHECK(lab[i] >= 0 && lab[i] < num_classes, "dm_loss: label ", lab[i], " at row ", i,
                " outside [0, ", num_classes, ")");
    cnt[lab[i]] += 1.0;
  }
}

template <typename in_t, typename out_t>
void fwd_impl(const at::Tensor& real, const int64_t* lr, const at::Tensor& syn, const int64_t* ls,
              const std::vector<double>& counts, out_t* dp, int64_t nc, std::vector<double>& partial) {
  const in_t* xr = real.data_ptr<in_t>();
  const in_t* xs = syn.data_ptr<in_t>();
  const int64_t D = real.size(1), Nr = real.size(0), Ns = syn.size(0);
  const int64_t sr = real.stride(0), ss = syn.stride(0);
  const int64_t nblocks = static_cast<int64_t>(partial.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t d0 = b * kBlock, width = std::min(kBlock, D - d0);
    std::vector<double> ar(nc * width, 0.0), as(nc * width, 0.0);
    segment_sum_block(xr, sr, lr, Nr, d0, width, ar.data());
    segment_sum_block(xs, ss, ls, Ns, d0, width, as.data());
    double part = 0.0;
    for (int64_t c = 0; c < nc; ++c) {
      const double cr = counts[c], cs = counts[nc + c];
      const bool both = cr > 0 && cs > 0;
      for (int64_t j = 0; j < width; ++j) {
        const double d = both ? ar[c * width + j] / cr - as[c * width + j] / cs : 0.0;
        dp[c * D + d0 + j] = static_cast<out_t>(d);
        part += d * d;
      }
    }
    partial[b] = part;
  }
}

// real [Nr, D], syn [Ns, D] (any row stride, unit column stride); labels int64 contiguous.
// Writes diff [nc, D] (float32 or float64), cnt [2, nc] (same dtype), loss [] (same dtype).
void dm_loss_fwd_cpu(at::Tensor real, at::Tensor real_labels, at::Tensor syn, at::Tensor syn_labels,
                     at::Tensor diff, at::Tensor cnt, at::Tensor loss) {
  TORCH_CHECK(real.device().is_cpu() && syn.device().is_cpu(), "dm_loss_fwd_cpu: CPU tensors only");
  TORCH_CHECK(real.dim() == 2 && syn.dim() == 2 && real.size(1) == syn.size(1), "dm_loss: shapes");
  TORCH_CHECK(real.scalar_type() == syn.scalar_type(), "dm_loss: real/syn dtypes differ");
  TORCH_CHECK(real.stride(1) == 1 && syn.stride(1) == 1, "dm_loss: unit column stride required");
  TORCH_CHECK(real_labels.is_contiguous() && syn_labels.is_contiguous(), "dm_loss: labels");
  TORCH_CHECK(diff.is_contiguous() && cnt.is_contiguous(), "dm_loss: outputs must be contiguous");
  TORCH_CHECK(diff.scalar_type() == cnt.scalar_type() && diff.scalar_type() == loss.scalar_type(),
              "dm_loss: output dtypes differ");
  const int64_t nc = diff.size(0), D = real.size(1);
  std::vector<double> counts(2 * nc, 0.0);
  count_labels(real_labels, nc, counts.data());
  count_labels(syn_labels, nc, counts.data() + nc);
  std::vector<double> partial((D + kBlock - 1) / kBlock, 0.0);
  const int64_t* lr = real_labels.data_ptr<int64_t>();
  const int64_t* ls = syn_labels.data_ptr<int64_t>();
  const bool out64 = diff.scalar_type() == at::kDouble;
  TORCH_CHECK(out64 || diff.scalar_type() == at::kFloat, "dm_loss: diff must be float32/float64");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real.scalar_type(), "dm_loss_fwd_cpu", [&] {
    if (out64) {
      fwd_impl<scalar_t, double>(real, lr, syn, ls, counts, diff.data_ptr<double>(), nc, partial);
    } else {
      fwd_impl<scalar_t, float>(real, lr, syn, ls, counts, diff.data_ptr<float>(), nc, partial);
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  loss.fill_(total);
  for (int64_t k = 0; k < 2 * nc; ++k) {
    if (out64) cnt.data_ptr<double>()[k] = counts[k];
    else cnt.data_ptr<float>()[k] = static_cast<float>(counts[k]);
  }
}

template <typename g_t, typename in_t>
void bwd_impl(g_t* g, const int64_t* lab, const in_t* dp, const in_t* sp, int64_t N, int64_t D) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const in_t s = sp[lab[i]];
    const in_t* src = dp + lab[i] * D;
    g_t* dst = g + i * D;
    for (int64_t j = 0; j < D; ++j) dst[j] = static_cast<g_t>(s * src[j]);
  }
}

// grad [N, D] contiguous (feature dtype) = scale[labels] * diff[labels]; scale [nc] and diff
// [nc, D] share a float32/float64 dtype.
void dm_loss_bwd_cpu(at::Tensor grad, at::Tensor labels, at::Tensor diff, at::Tensor scale) {
  TORCH_CHECK(grad.is_contiguous() && diff.is_contiguous() && scale.is_contiguous() &&
              labels.is_contiguous(), "dm_loss_bwd_cpu: contiguous tensors required");
  TORCH_CHECK(diff.scalar_type() == scale.scalar_type(), "dm_loss_bwd_cpu: diff/scale dtype");
  const int64_t N = grad.size(0), D = grad.size(1);
  const int64_t* lab = labels.data_ptr<int64_t>();
  const bool in64 = diff.scalar_type() == at::kDouble;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "dm_loss_bwd_cpu", [&] {
    if (in64) {
      bwd_impl<scalar_t, double>(grad.data_ptr<scalar_t>(), lab, diff.data_ptr<double>(),
                                 scale.data_ptr<double>(), N, D);
    } else {
      bwd_impl<scalar_t, float>(grad.data_ptr<scalar_t>(), lab, diff.data_ptr<float>(),
                                scale.data_ptr<float>(), N, D);
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vdfast, m) {
  m.def("dm_loss_fwd_cpu", &dm_loss_fwd_cpu);
  m.def("dm_loss_bwd_cpu", &dm_loss_bwd_cpu);
}
