// Distribution-matching loss on the CPU (OpenMP). See vdfast/ops/dm_loss.py for the contract and
// vdfast/reference/dm_loss.py for the truth.
//
// Forward, one pass over the features: each thread adds its share of the rows (read contiguously)
// into its own [2, nc, D] accumulator; then, classes in parallel, the accumulators are
// added in thread order and diff[c, :] = mean_real - mean_syn (0 where a class is absent on either
// side) and the loss are written. Deterministic for a given thread count.
// Backward: grad[i, :] = scale[label_i] * diff[label_i, :], rows in parallel.
#include <ATen/ATen.h>
#include <torch/library.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <type_traits>
#include <vector>

namespace {

template <typename scalar_t, typename acc_t>
void add_rows(const scalar_t* x, int64_t stride, const int64_t* lab, int64_t begin, int64_t end,
              int64_t D, acc_t* acc) {
  for (int64_t i = begin; i < end; ++i) {
    const scalar_t* row = x + i * stride;
    acc_t* a = acc + lab[i] * D;
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) a[j] += static_cast<acc_t>(row[j]);
  }
}

int num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
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
              const std::vector<double>& counts, out_t* dp, int64_t nc, double* loss) {
  const in_t* xr = real.data_ptr<in_t>();
  const in_t* xs = syn.data_ptr<in_t>();
  const int64_t D = real.size(1), Nr = real.size(0), Ns = syn.size(0);
  const int64_t sr = real.stride(0), ss = syn.stride(0);
  const int nt = num_threads();
  // One [2, nc, D] accumulator per thread; rows are read once, contiguously. Row sums run in
  // float32 for float32/half inputs (as the reference's index_add; twice as fast as double),
  // float64 for float64; everything after (thread sums, means, loss) is double.
  using acc_t = std::conditional_t<std::is_same_v<in_t, double>, double, float>;
  std::vector<acc_t> acc(static_cast<size_t>(nt) * 2 * nc * D, acc_t(0));
#pragma omp parallel num_threads(nt)
  {
    acc_t* a = acc.data() + static_cast<int64_t>(thread_id()) * 2 * nc * D;
    const int t = thread_id();
    add_rows(xr, sr, lr, Nr * t / nt, Nr * (t + 1) / nt, D, a);
    add_rows(xs, ss, ls, Ns * t / nt, Ns * (t + 1) / nt, D, a + nc * D);
  }
  // the loss: per-class sums, then added in class order (an OpenMP `reduction` would combine the
  // threads' partial sums in whatever order they finish: a loss differing in its last bits from
  // one call to the next; tests/cpp/test_dm_loss.cpp repeats calls to check)
  std::vector<double> class_sq(nc, 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < nc; ++c) {
    const double cr = counts[c], cs = counts[nc + c];
    const bool both = cr > 0 && cs > 0;
    double sq = 0.0;
    for (int64_t j = 0; j < D; ++j) {
      double d = 0.0;
      if (both) {
        double sum_r = 0.0, sum_s = 0.0;
        for (int t = 0; t < nt; ++t) {
          sum_r += acc[(static_cast<int64_t>(t) * 2 * nc + c) * D + j];
          sum_s += acc[(static_cast<int64_t>(t) * 2 * nc + nc + c) * D + j];
        }
        d = sum_r / cr - sum_s / cs;
      }
      dp[c * D + j] = static_cast<out_t>(d);
      sq += d * d;
    }
    class_sq[c] = sq;
  }
  double total = 0.0;
  for (int64_t c = 0; c < nc; ++c) total += class_sq[c];
  *loss = total;
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
  double total = 0.0;
  const int64_t* lr = real_labels.data_ptr<int64_t>();
  const int64_t* ls = syn_labels.data_ptr<int64_t>();
  const bool out64 = diff.scalar_type() == at::kDouble;
  TORCH_CHECK(out64 || diff.scalar_type() == at::kFloat, "dm_loss: diff must be float32/float64");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real.scalar_type(), "dm_loss_fwd_cpu", [&] {
    if (out64) {
      fwd_impl<scalar_t, double>(real, lr, syn, ls, counts, diff.data_ptr<double>(), nc, &total);
    } else {
      fwd_impl<scalar_t, float>(real, lr, syn, ls, counts, diff.data_ptr<float>(), nc, &total);
    }
  });
  // a cast, not fill_: a diverged run's total beyond float's range becomes inf (which the run
  // reports as divergence), where fill_ would raise a conversion error
  if (out64) loss.data_ptr<double>()[0] = total;
  else loss.data_ptr<float>()[0] = static_cast<float>(total);
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

// One schema per kernel; this CPU kernel and the CUDA one (csrc/cuda/dm_loss_cuda.cu) implement
// it, and the dispatcher picks by the tensors' device.
TORCH_LIBRARY_FRAGMENT(vdfast, m) {
  m.def("dm_loss_fwd(Tensor real, Tensor real_labels, Tensor syn, Tensor syn_labels, "
        "Tensor(a!) diff, Tensor(b!) cnt, Tensor(c!) loss) -> ()");
  m.def("dm_loss_bwd(Tensor(a!) grad, Tensor labels, Tensor diff, Tensor scale) -> ()");
}

TORCH_LIBRARY_IMPL(vdfast, CPU, m) {
  m.impl("dm_loss_fwd", &dm_loss_fwd_cpu);
  m.impl("dm_loss_bwd", &dm_loss_bwd_cpu);
}
