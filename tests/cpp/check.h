// A few helpers for the C++ kernel tests (tests/cpp/test_*.cpp, run by ctest; see CMakeLists.txt).
//
// The kernels live in anonymous namespaces and register themselves with the dispatcher, so a test
// calls them the way Python does (torch.ops.vdfast.<name>): by schema name, boxed, with CPU tensors.
// Each test computes its expectation with plain scalar loops over the inputs' data, never with the
// kernel's own arithmetic or with torch ops, and runs at several OpenMP thread counts.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace vdtest {

inline int& failures() {
  static int n = 0;
  return n;
}

inline void fail(const char* file, int line, const std::string& what) {
  ++failures();
  if (failures() <= 20) std::fprintf(stderr, "%s:%d: FAILED %s\n", file, line, what.c_str());
}

// VD_CHECK(cond): record a failure and go on (every failing check is printed, up to 20)
#define VD_CHECK(cond)                                       \
  do {                                                    \
    if (!(cond)) ::vdtest::fail(__FILE__, __LINE__, #cond); \
  } while (0)

// VD_CHECK_CLOSE(got, want, rtol, atol): |got - want| <= atol + rtol * |want|
#define VD_CHECK_CLOSE(got, want, rtol, atol)                                                      \
  do {                                                                                          \
    const double g_ = static_cast<double>(got), w_ = static_cast<double>(want);                 \
    if (!(std::fabs(g_ - w_) <= (atol) + (rtol) * std::fabs(w_)))                               \
      ::vdtest::fail(__FILE__, __LINE__, std::string(#got " ~ " #want ": ") +                   \
                                             std::to_string(g_) + " vs " + std::to_string(w_)); \
  } while (0)

// VD_CHECK_THROWS(expr): expr raises c10::Error (a TORCH_CHECK)
#define VD_CHECK_THROWS(expr)                                                         \
  do {                                                                             \
    bool thrown_ = false;                                                          \
    try {                                                                          \
      expr;                                                                        \
    } catch (const c10::Error&) {                                                  \
      thrown_ = true;                                                              \
    }                                                                              \
    if (!thrown_) ::vdtest::fail(__FILE__, __LINE__, "no c10::Error from " #expr); \
  } while (0)

// torch.ops.vdfast.<name>(*args): every vdfast op returns nothing and writes its outputs in place
inline void call(const char* name, std::vector<c10::IValue> args) {
  const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow((std::string("vdfast::") + name).c_str(), "");
  op.callBoxed(&args);
}

// The thread counts every kernel runs at: 1, 2, 3 and 4 (more threads than this machine's cores
// on purpose: the partitions, remainders and per-thread buffers are what is tested).
inline std::vector<int> thread_counts() { return {1, 2, 3, 4}; }

// at::set_num_threads sets the OpenMP runtime's team size (the one libgomp that libtorch and the
// kernels share); the check guards against a second, separate runtime being loaded.
inline void set_threads(int n) {
  at::set_num_threads(n);
#ifdef _OPENMP
  if (omp_get_max_threads() != n) {
    std::fprintf(stderr, "omp_get_max_threads() = %d after at::set_num_threads(%d): two OpenMP "
                 "runtimes?\n", omp_get_max_threads(), n);
    std::exit(2);
  }
#endif
}

// bit-for-bit equality of two tensors' bytes (same dtype and shape)
inline bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  return std::memcmp(ac.data_ptr(), bc.data_ptr(), ac.nbytes()) == 0;
}

// a tensor's elements as doubles (any float dtype, contiguous or not), in row-major order
inline std::vector<double> values(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kDouble).contiguous();
  const double* p = c.data_ptr<double>();
  return std::vector<double>(p, p + c.numel());
}

inline int finish(const char* name) {
  if (failures()) {
    std::fprintf(stderr, "%s: %d check(s) failed\n", name, failures());
    return 1;
  }
  std::printf("%s: all checks passed\n", name);
  return 0;
}

}  // namespace vdtest
