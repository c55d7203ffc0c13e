// DC's gradient-matching distance on the CPU (OpenMP). See vdfast/ops/gradient_match.py for the
// contract and vdfast/reference/gradient_match.py for the truth.
//
// Inputs are the matrix layers only, each a contiguous [out, K] view. Forward: for every row of
// every layer (rows in parallel) the three sums <r, s>, ||r||^2, ||s||^2 in double; the launcher
// turns them into the loss and the backward coefficients. Backward: per row,
//   grad_s = cs_r * r + cs_s * s,   grad_r = cr_s * s + cr_r * r   (coef [R, 4]).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <utility>
#include <vector>

namespace {

std::vector<std::pair<int64_t, int64_t>> row_tasks(const std::vector<at::Tensor>& layers) {
  std::vector<std::pair<int64_t, int64_t>> tasks;
  for (int64_t l = 0; l < static_cast<int64_t>(layers.size()); ++l)
    for (int64_t o = 0; o < layers[l].size(0); ++o) tasks.emplace_back(l, o);
  return tasks;
}

void check(const std::vector<at::Tensor>& real, const std::vector<at::Tensor>& syn) {
  TORCH_CHECK(real.size() == syn.size(), "gradient_match: layer counts differ");
  for (size_t l = 0; l < real.size(); ++l) {
    TORCH_CHECK(real[l].dim() == 2 && real[l].sizes() == syn[l].sizes() && real[l].is_contiguous() &&
                syn[l].is_contiguous(), "gradient_match: layer ", l, " must be contiguous [out, K] on both sides");
    TORCH_CHECK(real[l].scalar_type() == syn[l].scalar_type() &&
                real[l].scalar_type() == real[0].scalar_type(), "gradient_match: dtypes differ");
  }
}

template <typename scalar_t>
void fwd_impl(const std::vector<at::Tensor>& real, const std::vector<at::Tensor>& syn, double* stats) {
  const auto tasks = row_tasks(real);
  std::vector<int64_t> first(real.size() + 1, 0);
  for (size_t l = 0; l < real.size(); ++l) first[l + 1] = first[l] + real[l].size(0);
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t k = 0; k < static_cast<int64_t>(tasks.size()); ++k) {
    const int64_t l = tasks[k].first, o = tasks[k].second, K = real[l].size(1);
    const scalar_t* r = real[l].data_ptr<scalar_t>() + o * K;
    const scalar_t* s = syn[l].data_ptr<scalar_t>() + o * K;
    double dot = 0.0, rr = 0.0, ss = 0.0;
#pragma omp simd reduction(+ : dot, rr, ss)
    for (int64_t j = 0; j < K; ++j) {
      const double a = static_cast<double>(r[j]), b = static_cast<double>(s[j]);
      dot += a * b;
      rr += a * a;
      ss += b * b;
    }
    double* st = stats + 3 * (first[l] + o);
    st[0] = dot;
    st[1] = rr;
    st[2] = ss;
  }
}

// stats [R, 3] float64, R = total rows of all layers.
void gradient_match_fwd_cpu(std::vector<at::Tensor> real, std::vector<at::Tensor> syn, at::Tensor stats) {
  check(real, syn);
  if (real.empty()) return;
  TORCH_CHECK(stats.scalar_type() == at::kDouble && stats.is_contiguous(), "gradient_match: stats");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real[0].scalar_type(), "gradient_match_fwd_cpu", [&] {
    fwd_impl<scalar_t>(real, syn, stats.data_ptr<double>());
  });
}

template <typename scalar_t>
void bwd_impl(const std::vector<at::Tensor>& real, const std::vector<at::Tensor>& syn, const double* coef,
              std::vector<at::Tensor>& grad_real, std::vector<at::Tensor>& grad_syn) {
  const auto tasks = row_tasks(real);
  std::vector<int64_t> first(real.size() + 1, 0);
  for (size_t l = 0; l < real.size(); ++l) first[l + 1] = first[l] + real[l].size(0);
  const bool want_r = !grad_real.empty(), want_s = !grad_syn.empty();
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t k = 0; k < static_cast<int64_t>(tasks.size()); ++k) {
    const int64_t l = tasks[k].first, o = tasks[k].second, K = real[l].size(1);
    const scalar_t* r = real[l].data_ptr<scalar_t>() + o * K;
    const scalar_t* s = syn[l].data_ptr<scalar_t>() + o * K;
    const double* c = coef + 4 * (first[l] + o);
    if (want_s) {
      scalar_t* g = grad_syn[l].data_ptr<scalar_t>() + o * K;
      for (int64_t j = 0; j < K; ++j)
        g[j] = static_cast<scalar_t>(c[0] * static_cast<double>(r[j]) + c[1] * static_cast<double>(s[j]));
    }
    if (want_r) {
      scalar_t* g = grad_real[l].data_ptr<scalar_t>() + o * K;
      for (int64_t j = 0; j < K; ++j)
        g[j] = static_cast<scalar_t>(c[2] * static_cast<double>(s[j]) + c[3] * static_cast<double>(r[j]));
    }
  }
}

// coef [R, 4] float64 (syn: on r, on s; real: on s, on r); grad lists empty or matching the layers.
void gradient_match_bwd_cpu(std::vector<at::Tensor> real, std::vector<at::Tensor> syn, at::Tensor coef,
                            std::vector<at::Tensor> grad_real, std::vector<at::Tensor> grad_syn) {
  check(real, syn);
  if (real.empty()) return;
  TORCH_CHECK(coef.scalar_type() == at::kDouble && coef.is_contiguous(), "gradient_match: coef");
  for (auto* gl : {&grad_real, &grad_syn}) {
    TORCH_CHECK(gl->empty() || gl->size() == real.size(), "gradient_match: gradient list length");
    for (size_t l = 0; l < gl->size(); ++l)
      TORCH_CHECK((*gl)[l].is_contiguous() && (*gl)[l].sizes() == real[l].sizes() &&
                  (*gl)[l].scalar_type() == real[l].scalar_type(), "gradient_match: gradient ", l);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real[0].scalar_type(), "gradient_match_bwd_cpu", [&] {
    bwd_impl<scalar_t>(real, syn, coef.data_ptr<double>(), grad_real, grad_syn);
  });
}

}  // namespace

// One schema per kernel, implemented here for CPU and in csrc/cuda/gradient_match_cuda.cu for CUDA.
TORCH_LIBRARY_FRAGMENT(vdfast, m) {
  m.def("gradient_match_fwd(Tensor[] real, Tensor[] syn, Tensor(a!) stats) -> ()");
  m.def("gradient_match_bwd(Tensor[] real, Tensor[] syn, Tensor coef, Tensor(a!)[] grad_real, "
        "Tensor(b!)[] grad_syn) -> ()");
}

TORCH_LIBRARY_IMPL(vdfast, CPU, m) {
  m.impl("gradient_match_fwd", &gradient_match_fwd_cpu);
  m.impl("gradient_match_bwd", &gradient_match_bwd_cpu);
}
