// Micro-benchmark of the CPU kernels in csrc/, called through the dispatcher as Python calls them.
//   build/cmake/bench_kernels [--smoke] [--threads 1,2,4] [--iters N]
// prints, per kernel and thread count, the median time of one call. Sizes are those of a DM /
// static-dynamic step at 112x112 (see vdfast/ops/*.py); --smoke runs tiny sizes once (ctest
// `bench_smoke`, label `bench`, which `make ctest` leaves out). Timings are this machine's only:
// the cross-backend figures are `vdfast bench` (BENCHMARKS.md).
#include "check.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <sstream>

namespace {

struct Case {
  std::string name;
  std::function<void()> run;
};

double median_ms(const std::function<void()>& f, int iters) {
  f();  // warm-up (page faults, the thread pool)
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    const auto a = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

std::vector<Case> cases(bool smoke) {
  const int64_t s = smoke ? 1 : 8;  // linear scale of every size
  std::vector<Case> cs;
  {  // DM: 256 real + 10 synthetic feature rows of 2048 per class-batch, 10 classes
    const int64_t nc = 10, D = smoke ? 64 : 2048, Nr = 32 * s, Ns = 2 * s;
    auto real = at::randn({Nr * nc, D}), syn = at::randn({Ns * nc, D});
    auto rl = at::arange(Nr * nc, at::kLong).remainder(nc), sl = at::arange(Ns * nc, at::kLong).remainder(nc);
    auto diff = at::empty({nc, D}), cnt = at::empty({2, nc}), loss = at::empty({});
    cs.push_back({"dm_loss_fwd", [=] { vdtest::call("dm_loss_fwd", {real, rl, syn, sl, diff, cnt, loss}); }});
    auto grad = at::empty({Ns * nc, D}), scale = at::ones({nc});
    cs.push_back({"dm_loss_bwd", [=] { vdtest::call("dm_loss_bwd", {grad, sl, diff, scale}); }});
  }
  {  // a batch of uint8 clips [N, T, H, W, 3]
    const int64_t N = 2 * s, T = 8, H = smoke ? 16 : 112;
    auto x = at::randint(0, 256, {N, T, H, H, 3}, at::kByte);
    auto sums = at::empty({3, 2}, at::kLong), sc = at::ones({3}, at::kDouble), sh = at::zeros({3}, at::kDouble);
    auto out = at::empty({N, 3, T, H, H});
    cs.push_back({"normalize_clips_stats", [=] { vdtest::call("normalize_clips_stats", {x, sums}); }});
    cs.push_back({"normalize_clips_apply", [=] { vdtest::call("normalize_clips_apply", {x, sc, sh, out}); }});
  }
  {  // static-dynamic: 10 static x 10 dynamic parts at 112x112, 8 frames, 3 channels
    const int64_t Ns = s, Nd = s, N = 2 * s, Co = 3, T = 8, H = smoke ? 8 : 112;
    auto planes = at::randn({Ns, 3, Co, H, H}), dyn = at::randn({Nd, T, H, H});
    auto wd = at::randn({Co, 27}), bias = at::randn({Co});
    auto sidx = at::arange(N, at::kLong).remainder(Ns), didx = at::arange(N, at::kLong).remainder(Nd);
    auto out = at::empty({N, Co, T, H, H}), g = at::randn({N, Co, T, H, H});
    auto gp = at::empty_like(planes), gd = at::empty_like(dyn), gw = at::empty_like(wd), gb = at::empty_like(bias);
    cs.push_back({"blend_static_dynamic_fwd", [=] {
      vdtest::call("blend_static_dynamic_fwd", {planes, dyn, wd, bias, sidx, didx, out}); }});
    cs.push_back({"blend_static_dynamic_bwd", [=] {
      vdtest::call("blend_static_dynamic_bwd", {g, dyn, wd, sidx, didx, gp, gd, gw, gb}); }});
  }
  {  // gradient matching over a ConvNet's matrix layers
    std::vector<at::Tensor> r, sy, gr, gs;
    for (auto [o, k] : std::vector<std::pair<int64_t, int64_t>>{{128, 81}, {128, 3456}, {10, 2048 * s}}) {
      r.push_back(at::randn({o, k})), sy.push_back(at::randn({o, k}));
      gr.push_back(at::empty({o, k})), gs.push_back(at::empty({o, k}));
    }
    int64_t R = 0;
    for (auto& t : r) R += t.size(0);
    auto stats = at::empty({R, 3}, at::kDouble), coef = at::randn({R, 4}, at::kDouble);
    cs.push_back({"gradient_match_fwd", [=] { vdtest::call("gradient_match_fwd", {r, sy, stats}); }});
    cs.push_back({"gradient_match_bwd", [=] { vdtest::call("gradient_match_bwd", {r, sy, coef, gr, gs}); }});
  }
  {  // MTT: a flattened parameter vector
    const int64_t P = smoke ? 4096 : 1 << 21;
    auto a = at::randn({P}), b = at::randn({P}), c = at::randn({P});
    auto sums = at::empty({2}, at::kDouble), coef = at::ones({2}, at::kDouble);
    auto g0 = at::empty({P}), g1 = at::empty({P}), g2 = at::empty({P});
    cs.push_back({"trajectory_loss_fwd", [=] { vdtest::call("trajectory_loss_fwd", {a, b, c, sums}); }});
    cs.push_back({"trajectory_loss_bwd", [=] { vdtest::call("trajectory_loss_bwd", {a, b, c, coef, g0, g1, g2}); }});
  }
  {  // GVD: latents [B, F, 4, 28, 28]
    const int64_t B = s, F = 8, h = smoke ? 4 : 28;
    auto x = at::randn({B, F, 4, h, h}), e = at::randn({B, F, 4, h, h}), m = at::randn({B, 4, h, h});
    auto lam = at::rand({F}), out = at::empty({B, F, 4, h, h});
    cs.push_back({"guided_step_fwd", [=] {
      vdtest::call("guided_step_fwd", {x, e, m, lam, c10::IValue(), 1.0, 0.1, 0.9, 0.1, 0.0, true, out}); }});
  }
  return cs;
}

}  // namespace

int main(int argc, char** argv) {
  bool smoke = false;
  int iters = 20;
  std::vector<int> threads;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--smoke") {
      smoke = true;
    } else if (a == "--iters" && i + 1 < argc) {
      iters = std::atoi(argv[++i]);
    } else if (a == "--threads" && i + 1 < argc) {
      std::stringstream ss(argv[++i]);
      for (std::string t; std::getline(ss, t, ',');) threads.push_back(std::stoi(t));
    } else {
      std::printf("usage: %s [--smoke] [--threads 1,2,4] [--iters N]\n", argv[0]);
      return a == "--help" ? 0 : 2;
    }
  }
  if (threads.empty()) {
    for (int t = 1; t <= at::get_num_threads(); t *= 2) threads.push_back(t);
    if (threads.back() != at::get_num_threads()) threads.push_back(at::get_num_threads());
  }
  if (smoke) iters = 1;
  at::manual_seed(0);
  const std::vector<Case> cs = cases(smoke);
  std::printf("%-26s %8s %12s\n", "kernel", "threads", "median ms");
  for (const Case& c : cs)
    for (int t : threads) {
      vdtest::set_threads(t);
      std::printf("%-26s %8d %12.3f\n", c.name.c_str(), t, median_ms(c.run, iters));
    }
  return 0;
}
