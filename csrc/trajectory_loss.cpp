// MTT's trajectory-matching loss on the CPU (OpenMP). See vdfast/ops/trajectory_loss.py for the
// contract and vdfast/reference/trajectory_loss.py for the truth.
//
// Forward: one pass, two sums in double: sum (s - t)^2 and sum (a - t)^2 (the launcher divides).
// Backward: one elementwise pass; coef = (2 g / den, -2 g num / den^2):
//   grad_s = coef0 (s - t),  grad_a = coef1 (a - t),  grad_t = -(grad_s + grad_a).
// Inputs are 1-D with any stride; a gradient passed empty is not computed.
#include <ATen/ATen.h>
#include <torch/library.h>

namespace {

template <typename scalar_t>
void fwd_impl(const scalar_t* s, int64_t ss, const scalar_t* a, int64_t sa, const scalar_t* t,
              int64_t st, int64_t n, double* out) {
  double num = 0.0, den = 0.0;
  if (ss == 1 && sa == 1 && st == 1) {
    // unit strides: `simd reduction` lets the compiler vectorise the double sums (reordered)
#pragma omp parallel for simd reduction(+ : num, den) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const double ti = static_cast<double>(t[i]);
      const double ds = static_cast<double>(s[i]) - ti;
      const double da = static_cast<double>(a[i]) - ti;
      num += ds * ds;
      den += da * da;
    }
    out[0] = num;
    out[1] = den;
    return;
  }
#pragma omp parallel for reduction(+ : num, den) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const double ti = static_cast<double>(t[i * st]);
    const double ds = static_cast<double>(s[i * ss]) - ti;
    const double da = static_cast<double>(a[i * sa]) - ti;
    num += ds * ds;
    den += da * da;
  }
  out[0] = num;
  out[1] = den;
}

template <typename scalar_t>
void bwd_impl(const scalar_t* s, int64_t ss, const scalar_t* a, int64_t sa, const scalar_t* t,
              int64_t st, int64_t n, double c0, double c1, scalar_t* gs, scalar_t* ga, scalar_t* gt) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const double ti = static_cast<double>(t[i * st]);
    const double vs = c0 * (static_cast<double>(s[i * ss]) - ti);
    const double va = c1 * (static_cast<double>(a[i * sa]) - ti);
    if (gs) gs[i] = static_cast<scalar_t>(vs);
    if (ga) ga[i] = static_cast<scalar_t>(va);
    if (gt) gt[i] = static_cast<scalar_t>(-(vs + va));
  }
}

void check(const at::Tensor& s, const at::Tensor& a, const at::Tensor& t) {
  TORCH_CHECK(s.dim() == 1 && a.dim() == 1 && t.dim() == 1, "trajectory_loss: 1-D inputs");
  TORCH_CHECK(s.numel() == a.numel() && s.numel() == t.numel(), "trajectory_loss: sizes differ");
  TORCH_CHECK(s.scalar_type() == a.scalar_type() && s.scalar_type() == t.scalar_type(),
              "trajectory_loss: dtypes differ");
}

// sums [2] float64: (sum (s - t)^2, sum (a - t)^2).
void trajectory_loss_fwd_cpu(at::Tensor s, at::Tensor a, at::Tensor t, at::Tensor sums) {
  check(s, a, t);
  TORCH_CHECK(sums.scalar_type() == at::kDouble && sums.numel() == 2 && sums.is_contiguous(),
              "trajectory_loss_fwd_cpu: sums float64 [2]");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "trajectory_loss_fwd_cpu", [&] {
    fwd_impl<scalar_t>(s.data_ptr<scalar_t>(), s.stride(0), a.data_ptr<scalar_t>(), a.stride(0),
                       t.data_ptr<scalar_t>(), t.stride(0), s.numel(), sums.data_ptr<double>());
  });
}

// coef [2] float64; gs/ga/gt contiguous [P] of the input dtype, or empty to skip.
void trajectory_loss_bwd_cpu(at::Tensor s, at::Tensor a, at::Tensor t, at::Tensor coef,
                             at::Tensor gs, at::Tensor ga, at::Tensor gt) {
  check(s, a, t);
  TORCH_CHECK(coef.scalar_type() == at::kDouble && coef.numel() == 2, "trajectory_loss: coef");
  const double c0 = coef.data_ptr<double>()[0], c1 = coef.data_ptr<double>()[1];
  for (const at::Tensor* g : {&gs, &ga, &gt})
    TORCH_CHECK(g->numel() == 0 || (g->is_contiguous() && g->numel() == s.numel() &&
                                    g->scalar_type() == s.scalar_type()),
                "trajectory_loss_bwd_cpu: gradients must be contiguous [P] of the input dtype");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "trajectory_loss_bwd_cpu", [&] {
    auto ptr = [](at::Tensor& g) { return g.numel() ? g.data_ptr<scalar_t>() : nullptr; };
    bwd_impl<scalar_t>(s.data_ptr<scalar_t>(), s.stride(0), a.data_ptr<scalar_t>(), a.stride(0),
                       t.data_ptr<scalar_t>(), t.stride(0), s.numel(), c0, c1, ptr(gs), ptr(ga),
                       ptr(gt));
  });
}

}  // namespace

// One schema per kernel, implemented here for CPU and in csrc/cuda/trajectory_loss_cuda.cu for CUDA.
TORCH_LIBRARY_FRAGMENT(vdfast, m) {
  m.def("trajectory_loss_fwd(Tensor s, Tensor a, Tensor t, Tensor(a!) sums) -> ()");
  m.def("trajectory_loss_bwd(Tensor s, Tensor a, Tensor t, Tensor coef, Tensor(a!) gs, "
        "Tensor(b!) ga, Tensor(c!) gt) -> ()");
}

TORCH_LIBRARY_IMPL(vdfast, CPU, m) {
  m.impl("trajectory_loss_fwd", &trajectory_loss_fwd_cpu);
  m.impl("trajectory_loss_bwd", &trajectory_loss_bwd_cpu);
}
