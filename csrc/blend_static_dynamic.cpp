// blend_static_dynamic, CPU (ATen's OpenMP thread pool via at::parallel_for; `omp simd` in rows).
//
// The fused stage of the static-dynamic integrator (see vdfast/ops/blend_static_dynamic.py):
//   out[n, co, t] = planes[sidx[n], p(t), co] + bias[co] + sum_{kt,ky,kx} wd[co,kt,ky,kx] *
//                   dyn[didx[n], t+kt-1, y+ky-1, x+kx-1]          (zero outside the video)
// with p(t) = 0 for the first frame, 1 for the last, 2 for interior frames (T == 1: plane 0).
// All tensors contiguous: planes [Ns, K, Co, H, W], dyn [Nd, T, H, W], wd [Co, 27], bias [Co],
// out [N, Co, T, H, W]. float32 and float64.
//
// Backward writes: grad_planes [Ns, K, Co, H, W] and grad_dyn [Nd, T, H, W] are gathered per
// target (each thread owns one target slice and scans the index list), so repeated indices
// accumulate without atomics and the result is deterministic; grad_wd [Co, 27] and grad_bias [Co]
// are reduced from per-(n, t) float64 partials in a fixed order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

namespace {

// tasks of fewer than ~16k pixels are grouped: waking the thread pool costs more than they do
inline int64_t grain_for(int64_t pixels_per_task) {
  return std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(pixels_per_task, 1));
}

inline int64_t plane_of(int64_t t, int64_t T) { return t == 0 ? 0 : (t == T - 1 ? 1 : 2); }

// o[x] += w[0] * d[x-1] + w[1] * d[x] + w[2] * d[x+1], zero padding at both ends
template <typename scalar_t>
inline void stencil_row(scalar_t* o, const scalar_t* d, const scalar_t* w, int64_t W) {
  const scalar_t w0 = w[0], w1 = w[1], w2 = w[2];
#pragma omp simd
  for (int64_t x = 1; x < W; ++x) o[x] += w0 * d[x - 1];
#pragma omp simd
  for (int64_t x = 0; x < W; ++x) o[x] += w1 * d[x];
#pragma omp simd
  for (int64_t x = 0; x < W - 1; ++x) o[x] += w2 * d[x + 1];
}

// the transpose: d[x] += w[0] * o[x+1] + w[1] * o[x] + w[2] * o[x-1]
template <typename scalar_t>
inline void stencil_row_t(scalar_t* d, const scalar_t* o, const scalar_t* w, int64_t W) {
  const scalar_t w0 = w[0], w1 = w[1], w2 = w[2];
#pragma omp simd
  for (int64_t x = 0; x < W - 1; ++x) d[x] += w0 * o[x + 1];
#pragma omp simd
  for (int64_t x = 0; x < W; ++x) d[x] += w1 * o[x];
#pragma omp simd
  for (int64_t x = 1; x < W; ++x) d[x] += w2 * o[x - 1];
}

template <typename scalar_t>
void fwd_impl(const scalar_t* planes, const scalar_t* dyn, const scalar_t* wd, const scalar_t* bias,
              const int64_t* sidx, const int64_t* didx, scalar_t* out, int64_t N, int64_t K,
              int64_t Co, int64_t T, int64_t H, int64_t W) {
  const int64_t HW = H * W;
  at::parallel_for(0, N * T, grain_for(H * W), [&](int64_t begin, int64_t end) {
    for (int64_t nt = begin; nt < end; ++nt) {
      const int64_t n = nt / T, t = nt % T;
      const scalar_t* pl = planes + (sidx[n] * K + plane_of(t, T)) * Co * HW;
      const scalar_t* dn = dyn + didx[n] * T * HW;
      for (int64_t co = 0; co < Co; ++co) {
        scalar_t* o = out + ((n * Co + co) * T + t) * HW;
        const scalar_t* p = pl + co * HW;
        const scalar_t b = bias[co];
        for (int64_t y = 0; y < H; ++y) {
          scalar_t* orow = o + y * W;
          const scalar_t* prow = p + y * W;
#pragma omp simd
          for (int64_t x = 0; x < W; ++x) orow[x] = prow[x] + b;
          for (int64_t kt = 0; kt < 3; ++kt) {
            const int64_t ts = t + kt - 1;
            if (ts < 0 || ts >= T) continue;
            for (int64_t ky = 0; ky < 3; ++ky) {
              const int64_t ys = y + ky - 1;
              if (ys < 0 || ys >= H) continue;
              stencil_row(orow, dn + ts * HW + ys * W, wd + co * 27 + kt * 9 + ky * 3, W);
            }
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void bwd_planes_impl(const scalar_t* g, const int64_t* sidx, scalar_t* gp, int64_t N, int64_t Ns,
                     int64_t K, int64_t Co, int64_t T, int64_t HW) {
  at::parallel_for(0, Ns * Co, grain_for(HW * T), [&](int64_t begin, int64_t end) {
    for (int64_t sc = begin; sc < end; ++sc) {
      const int64_t s = sc / Co, co = sc % Co;
      for (int64_t k = 0; k < K; ++k) {
        scalar_t* dst = gp + ((s * K + k) * Co + co) * HW;
        std::fill(dst, dst + HW, scalar_t(0));
      }
      for (int64_t n = 0; n < N; ++n) {
        if (sidx[n] != s) continue;
        for (int64_t t = 0; t < T; ++t) {
          scalar_t* dst = gp + ((s * K + plane_of(t, T)) * Co + co) * HW;
          const scalar_t* src = g + ((n * Co + co) * T + t) * HW;
#pragma omp simd
          for (int64_t i = 0; i < HW; ++i) dst[i] += src[i];
        }
      }
    }
  });
}

template <typename scalar_t>
void bwd_dyn_impl(const scalar_t* g, const scalar_t* wd, const int64_t* didx, scalar_t* gd,
                  int64_t N, int64_t Nd, int64_t Co, int64_t T, int64_t H, int64_t W) {
  const int64_t HW = H * W;
  at::parallel_for(0, Nd * T, grain_for(H * W), [&](int64_t begin, int64_t end) {
    for (int64_t dt = begin; dt < end; ++dt) {
      const int64_t d = dt / T, ts = dt % T;  // ts: the dynamic frame receiving the gradient
      scalar_t* dst = gd + dt * HW;
      std::fill(dst, dst + HW, scalar_t(0));
      for (int64_t n = 0; n < N; ++n) {
        if (didx[n] != d) continue;
        for (int64_t co = 0; co < Co; ++co) {
          for (int64_t kt = 0; kt < 3; ++kt) {
            const int64_t t = ts - kt + 1;  // output frame that read dynamic frame ts via tap kt
            if (t < 0 || t >= T) continue;
            const scalar_t* gf = g + ((n * Co + co) * T + t) * HW;
            for (int64_t ys = 0; ys < H; ++ys) {
              for (int64_t ky = 0; ky < 3; ++ky) {
                const int64_t y = ys - ky + 1;
                if (y < 0 || y >= H) continue;
                stencil_row_t(dst + ys * W, gf + y * W, wd + co * 27 + kt * 9 + ky * 3, W);
              }
            }
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void bwd_params_impl(const scalar_t* g, const scalar_t* dyn, const int64_t* didx, scalar_t* gw,
                     scalar_t* gb, int64_t N, int64_t Co, int64_t T, int64_t H, int64_t W) {
  const int64_t HW = H * W, P = Co * 28;  // per (n, t): Co*27 weight taps + Co bias sums
  std::vector<double> part(N * T * P, 0.0);
  at::parallel_for(0, N * T, grain_for(H * W), [&](int64_t begin, int64_t end) {
    for (int64_t nt = begin; nt < end; ++nt) {
      const int64_t n = nt / T, t = nt % T;
      double* acc = part.data() + nt * P;
      const scalar_t* dn = dyn + didx[n] * T * HW;
      for (int64_t co = 0; co < Co; ++co) {
        const scalar_t* gf = g + ((n * Co + co) * T + t) * HW;
        for (int64_t y = 0; y < H; ++y) {
          scalar_t s = 0;
#pragma omp simd reduction(+ : s)
          for (int64_t x = 0; x < W; ++x) s += gf[y * W + x];
          acc[Co * 27 + co] += s;
        }
        for (int64_t kt = 0; kt < 3; ++kt) {
          const int64_t ts = t + kt - 1;
          if (ts < 0 || ts >= T) continue;
          for (int64_t ky = 0; ky < 3; ++ky) {
            double* a = acc + co * 27 + kt * 9 + ky * 3;
            for (int64_t y = 0; y < H; ++y) {
              const int64_t ys = y + ky - 1;
              if (ys < 0 || ys >= H) continue;
              const scalar_t* grow = gf + y * W;
              const scalar_t* drow = dn + ts * HW + ys * W;
              scalar_t s0 = 0, s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s0)
              for (int64_t x = 1; x < W; ++x) s0 += grow[x] * drow[x - 1];
#pragma omp simd reduction(+ : s1)
              for (int64_t x = 0; x < W; ++x) s1 += grow[x] * drow[x];
#pragma omp simd reduction(+ : s2)
              for (int64_t x = 0; x < W - 1; ++x) s2 += grow[x] * drow[x + 1];
              a[0] += s0;
              a[1] += s1;
              a[2] += s2;
            }
          }
        }
      }
    }
  });
  at::parallel_for(0, P, grain_for(N * T), [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      double s = 0;
      for (int64_t nt = 0; nt < N * T; ++nt) s += part[nt * P + j];
      if (j < Co * 27) gw[j] = static_cast<scalar_t>(s);
      else gb[j - Co * 27] = static_cast<scalar_t>(s);
    }
  });
}

void check_common(const at::Tensor& dyn, const at::Tensor& wd, const at::Tensor& sidx,
                  const at::Tensor& didx) {
  TORCH_CHECK(dyn.device().is_cpu(), "blend_static_dynamic_*_cpu: CPU tensors only");
  TORCH_CHECK(dyn.dim() == 4 && dyn.is_contiguous(), "dynamic must be contiguous [Nd, T, H, W]");
  TORCH_CHECK(wd.dim() == 2 && wd.size(1) == 27 && wd.is_contiguous(),
              "wd must be contiguous [C_out, 27]");
  TORCH_CHECK(wd.scalar_type() == dyn.scalar_type(), "dtype mismatch");
  TORCH_CHECK(sidx.scalar_type() == at::kLong && didx.scalar_type() == at::kLong &&
                  sidx.is_contiguous() && didx.is_contiguous() && sidx.numel() == didx.numel(),
              "static_idx / dynamic_idx must be contiguous int64 [N]");
}

void blend_static_dynamic_fwd_cpu(const at::Tensor& planes, const at::Tensor& dyn,
                                  const at::Tensor& wd, const at::Tensor& bias,
                                  const at::Tensor& sidx, const at::Tensor& didx, at::Tensor& out) {
  check_common(dyn, wd, sidx, didx);
  TORCH_CHECK(planes.dim() == 5 && planes.is_contiguous(), "planes must be contiguous [Ns,K,Co,H,W]");
  TORCH_CHECK(out.dim() == 5 && out.is_contiguous(), "out must be contiguous [N, Co, T, H, W]");
  TORCH_CHECK(bias.is_contiguous() && bias.numel() == wd.size(0), "bias must be contiguous [Co]");
  const int64_t N = sidx.numel(), K = planes.size(1), Co = wd.size(0), T = dyn.size(1),
                H = dyn.size(2), W = dyn.size(3);
  TORCH_CHECK(planes.size(2) == Co && planes.size(3) == H && planes.size(4) == W, "planes shape");
  TORCH_CHECK(out.size(0) == N && out.size(1) == Co && out.size(2) == T && out.size(3) == H &&
                  out.size(4) == W, "out shape");
  AT_DISPATCH_FLOATING_TYPES(dyn.scalar_type(), "blend_static_dynamic_fwd_cpu", [&] {
    fwd_impl<scalar_t>(planes.data_ptr<scalar_t>(), dyn.data_ptr<scalar_t>(),
                       wd.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(),
                       sidx.data_ptr<int64_t>(), didx.data_ptr<int64_t>(),
                       out.data_ptr<scalar_t>(), N, K, Co, T, H, W);
  });
}

// Any of the four outputs may be None (not needed).
void blend_static_dynamic_bwd_cpu(const at::Tensor& grad, const at::Tensor& dyn,
                                  const at::Tensor& wd, const at::Tensor& sidx,
                                  const at::Tensor& didx,
                                  const std::optional<at::Tensor>& grad_planes,
                                  const std::optional<at::Tensor>& grad_dyn,
                                  const std::optional<at::Tensor>& grad_wd,
                                  const std::optional<at::Tensor>& grad_bias) {
  check_common(dyn, wd, sidx, didx);
  TORCH_CHECK(grad.dim() == 5 && grad.is_contiguous(), "grad must be contiguous [N,Co,T,H,W]");
  const int64_t N = sidx.numel(), Co = wd.size(0), T = dyn.size(1), H = dyn.size(2),
                W = dyn.size(3), Nd = dyn.size(0);
  TORCH_CHECK(grad.size(0) == N && grad.size(1) == Co && grad.size(2) == T &&
                  grad.size(3) == H && grad.size(4) == W, "grad shape");
  AT_DISPATCH_FLOATING_TYPES(dyn.scalar_type(), "blend_static_dynamic_bwd_cpu", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    if (grad_planes.has_value()) {
      const at::Tensor& gp = *grad_planes;
      TORCH_CHECK(gp.dim() == 5 && gp.is_contiguous() && gp.size(2) == Co, "grad_planes shape");
      bwd_planes_impl<scalar_t>(g, sidx.data_ptr<int64_t>(), gp.data_ptr<scalar_t>(), N,
                                gp.size(0), gp.size(1), Co, T, H * W);
    }
    if (grad_dyn.has_value()) {
      TORCH_CHECK(grad_dyn->sizes() == dyn.sizes() && grad_dyn->is_contiguous(), "grad_dyn shape");
      bwd_dyn_impl<scalar_t>(g, wd.data_ptr<scalar_t>(), didx.data_ptr<int64_t>(),
                             grad_dyn->data_ptr<scalar_t>(), N, Nd, Co, T, H, W);
    }
    if (grad_wd.has_value() || grad_bias.has_value()) {
      TORCH_CHECK(grad_wd.has_value() && grad_bias.has_value(),
                  "grad_wd and grad_bias are computed together");
      TORCH_CHECK(grad_wd->sizes() == wd.sizes() && grad_wd->is_contiguous() &&
                      grad_bias->numel() == Co && grad_bias->is_contiguous(), "grad_wd/bias shape");
      bwd_params_impl<scalar_t>(g, dyn.data_ptr<scalar_t>(), didx.data_ptr<int64_t>(),
                                grad_wd->data_ptr<scalar_t>(), grad_bias->data_ptr<scalar_t>(), N,
                                Co, T, H, W);
    }
  });
}

}  // namespace

// One schema per kernel. The forward has a CPU (here) and a CUDA kernel
// (csrc/cuda/blend_static_dynamic_cuda.cu). The backwards differ by design: the CPU's one kernel
// writes every gradient (parameter partials included); the GPU writes per-video plane and dynamic
// gradients (bwd_planes, bwd_dyn, CUDA only) and leaves the reductions to torch.
TORCH_LIBRARY_FRAGMENT(vdfast, m) {
  m.def("blend_static_dynamic_fwd(Tensor planes, Tensor dynamic, Tensor wd, Tensor bias, "
        "Tensor sidx, Tensor didx, Tensor(a!) out) -> ()");
  m.def("blend_static_dynamic_bwd(Tensor grad, Tensor dynamic, Tensor wd, Tensor sidx, "
        "Tensor didx, Tensor(a!)? grad_planes, Tensor(b!)? grad_dynamic, Tensor(c!)? grad_wd, "
        "Tensor(d!)? grad_bias) -> ()");
  m.def("blend_static_dynamic_bwd_dyn(Tensor grad, Tensor wd, Tensor(a!) grad_dynamic) -> ()");
  m.def("blend_static_dynamic_bwd_planes(Tensor grad, Tensor(a!) grad_planes) -> ()");
}

TORCH_LIBRARY_IMPL(vdfast, CPU, m) {
  m.impl("blend_static_dynamic_fwd", &blend_static_dynamic_fwd_cpu);
  m.impl("blend_static_dynamic_bwd", &blend_static_dynamic_bwd_cpu);
}
