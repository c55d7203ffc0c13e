// ThreadSanitizer annotations for GCC's OpenMP runtime (linked into the -DVDFAST_SANITIZE=thread
// tests only).
//
// libgomp synchronises its threads with futexes and atomics inside an uninstrumented library, so
// TSan never sees a parallel region's fork and join or a barrier: the OpenMP kernels' per-thread
// accumulators, written by the team and read by the master after the region, read as data races.
// The usual answers are Archer (LLVM's libomp tool, which reports these events to TSan through
// OMPT) or a libgomp built with --disable-linux-futex; neither is available with gcc and torch's
// bundled libgomp. This file does what Archer does, for libgomp: it defines the GOMP_* entry
// points that GCC's -fopenmp code calls, forwards each to libgomp's own (dlsym RTLD_NEXT), and tells
// TSan the happens-before edges the OpenMP specification guarantees:
//   fork     the encountering thread before the region  ->  every team thread at its start
//   join     every team thread at its end               ->  the encountering thread after it
//   barrier  every thread arriving at barrier k          ->  every thread leaving barrier k
//            (two sync objects per region used in turn, as Archer does, so that a thread still
//            leaving barrier k never acquires a fast thread's work done before barrier k+1)
//   critical / atomic / ordered: release at the end, acquire at the start
// Nothing else is ordered, so a real race between team threads is still reported. Definitions in
// the executable come before libgomp's in symbol lookup, which covers libtorch's own regions too.
// ctest `tsan_gomp_coverage` fails if a test executable still calls an unwrapped GOMP_* function
// (tasks, sections, ..., which csrc/ does not use): wrap it here first.
// Nested parallel regions are not modelled (csrc/ has none; libgomp serialises them by default).
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>

namespace {

struct Region {
  void (*fn)(void*);
  void* data;
  char fork, join, barrier[2];  // TSan sync objects (only their addresses matter)
};

thread_local Region* current = nullptr;  // the region this thread works in
thread_local unsigned barriers_passed = 0;
char global_barrier, critical_lock, atomic_lock, ordered_lock;

template <typename F>
F real(const char* name) {
  void* p = dlsym(RTLD_NEXT, name);
  if (!p) {
    std::fprintf(stderr, "tsan_gomp: %s not found in the OpenMP runtime\n", name);
    std::abort();
  }
  return reinterpret_cast<F>(p);
}

void team_thread(void* p) {
  Region* r = static_cast<Region*>(p);
  __tsan_acquire(&r->fork);
  Region* outer = current;
  const unsigned outer_passed = barriers_passed;
  current = r;
  barriers_passed = 0;
  r->fn(r->data);
  current = outer;
  barriers_passed = outer_passed;
  __tsan_release(&r->join);
}

// runs `start(team_thread, &region)` with fork and join edges around it
template <typename Start>
void parallel(void (*fn)(void*), void* data, Start start) {
  Region r{fn, data, 0, 0, {0, 0}};
  __tsan_release(&r.fork);
  start(&team_thread, static_cast<void*>(&r));
  __tsan_acquire(&r.join);
}

void* barrier_sync() {
  if (!current) return &global_barrier;
  return &current->barrier[barriers_passed++ % 2];
}

}  // namespace

extern "C" {

using fn_t = void (*)(void*);

void GOMP_parallel(fn_t fn, void* data, unsigned nthreads, unsigned flags) {
  static auto f = real<void (*)(fn_t, void*, unsigned, unsigned)>("GOMP_parallel");
  parallel(fn, data, [&](fn_t t, void* r) { f(t, r, nthreads, flags); });
}

// combined `parallel for` with a schedule: same fork/join, libgomp hands out the iterations
#define VDFAST_PARALLEL_LOOP(name)                                                              \
  void name(fn_t fn, void* data, unsigned nthreads, long start, long end, long incr,          \
            long chunk, unsigned flags) {                                                      \
    static auto f =                                                                            \
        real<void (*)(fn_t, void*, unsigned, long, long, long, long, unsigned)>(#name);        \
    parallel(fn, data, [&](fn_t t, void* r) { f(t, r, nthreads, start, end, incr, chunk, flags); }); \
  }
VDFAST_PARALLEL_LOOP(GOMP_parallel_loop_static)
VDFAST_PARALLEL_LOOP(GOMP_parallel_loop_dynamic)
VDFAST_PARALLEL_LOOP(GOMP_parallel_loop_guided)
VDFAST_PARALLEL_LOOP(GOMP_parallel_loop_nonmonotonic_dynamic)
VDFAST_PARALLEL_LOOP(GOMP_parallel_loop_nonmonotonic_guided)
#undef VDFAST_PARALLEL_LOOP

#define VDFAST_PARALLEL_LOOP_RUNTIME(name)                                                      \
  void name(fn_t fn, void* data, unsigned nthreads, long start, long end, long incr,          \
            unsigned flags) {                                                                  \
    static auto f = real<void (*)(fn_t, void*, unsigned, long, long, long, unsigned)>(#name);  \
    parallel(fn, data, [&](fn_t t, void* r) { f(t, r, nthreads, start, end, incr, flags); });  \
  }
VDFAST_PARALLEL_LOOP_RUNTIME(GOMP_parallel_loop_runtime)
VDFAST_PARALLEL_LOOP_RUNTIME(GOMP_parallel_loop_nonmonotonic_runtime)
VDFAST_PARALLEL_LOOP_RUNTIME(GOMP_parallel_loop_maybe_nonmonotonic_runtime)
#undef VDFAST_PARALLEL_LOOP_RUNTIME

// explicit barriers and the implicit ones that end `omp for` / `omp sections` without nowait
#define VDFAST_BARRIER(name)                                                                    \
  void name(void) {                                                                            \
    static auto f = real<void (*)(void)>(#name);                                               \
    void* s = barrier_sync();                                                                  \
    __tsan_release(s);                                                                         \
    f();                                                                                       \
    __tsan_acquire(s);                                                                         \
  }
VDFAST_BARRIER(GOMP_barrier)
VDFAST_BARRIER(GOMP_loop_end)
VDFAST_BARRIER(GOMP_sections_end)
#undef VDFAST_BARRIER

// the end of a `nowait` worksharing loop: no synchronisation, nothing to tell
void GOMP_loop_end_nowait(void) {
  static auto f = real<void (*)(void)>("GOMP_loop_end_nowait");
  f();
}

#define VDFAST_LOCK(start_name, end_name, sync)                                                 \
  void start_name(void) {                                                                      \
    static auto f = real<void (*)(void)>(#start_name);                                         \
    f();                                                                                       \
    __tsan_acquire(&sync);                                                                     \
  }                                                                                            \
  void end_name(void) {                                                                        \
    static auto f = real<void (*)(void)>(#end_name);                                           \
    __tsan_release(&sync);                                                                     \
    f();                                                                                       \
  }
VDFAST_LOCK(GOMP_critical_start, GOMP_critical_end, critical_lock)
VDFAST_LOCK(GOMP_atomic_start, GOMP_atomic_end, atomic_lock)
VDFAST_LOCK(GOMP_ordered_start, GOMP_ordered_end, ordered_lock)
#undef VDFAST_LOCK

// named critical sections: the name's lock pointer is the sync object
void GOMP_critical_name_start(void** lock) {
  static auto f = real<void (*)(void**)>("GOMP_critical_name_start");
  f(lock);
  __tsan_acquire(lock);
}
void GOMP_critical_name_end(void** lock) {
  static auto f = real<void (*)(void**)>("GOMP_critical_name_end");
  __tsan_release(lock);
  f(lock);
}

}  // extern "C"
