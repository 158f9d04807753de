// The drivers of clif_core.h in the configurations the GPU kernels use, run on the CPU: every
// configuration must give the same bits as the plainest one (one neuron per group, loads next to
// their uses, the surrogate read at run time). Built and run by tests/test_core_variants.py;
// prints one line per mismatch and "checked N cases" at the end; exits non-zero on a mismatch.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "clif_core.h"

using namespace clif;

namespace {

struct Problem {
  int64_t T, N;
  std::vector<float> x, gs, v0, m0, gvT, gmT;
};

struct Result {
  std::vector<float> spikes, vT, mT, gx, gv0, gm0, ckpt;
};

template <int L, bool ALIGNED, int SG, bool PREFETCH>
Result run(const Params<float>& p, const Problem& pb, bool is_clif) {
  const int64_t T = pb.T, N = pb.N, nck = T > kCkptEvery ? (T - 1) / kCkptEvery : 0;
  Result r;
  r.spikes.assign(T * N, NAN);
  r.vT.assign(N, NAN);
  r.mT.assign(N, NAN);
  r.gx.assign(T * N, NAN);
  r.gv0.assign(N, NAN);
  r.gm0.assign(N, NAN);
  r.ckpt.assign(nck * 2 * N + 1, NAN);
  GroupData<float> d{};
  d.x = pb.x.data();
  d.v0 = pb.v0.data();
  d.m0 = is_clif ? pb.m0.data() : nullptr;
  d.ckpt = r.ckpt.data();
  d.spikes = r.spikes.data();
  d.vT = r.vT.data();
  d.mT = is_clif ? r.mT.data() : nullptr;
  d.gs = pb.gs.data();
  d.gvT = pb.gvT.data();
  d.gmT = is_clif ? pb.gmT.data() : nullptr;
  d.gx = r.gx.data();
  d.gv0 = r.gv0.data();
  d.gm0 = is_clif ? r.gm0.data() : nullptr;
  d.T = T;
  d.N = N;
  d.save = true;
  GroupIO<float, float, L, ALIGNED> io(d);
  for (int64_t n0 = 0; n0 < N; n0 += L) {
    io.n0 = n0;
    if (is_clif) {
      forward_sequence<true, L, kAnyReset, PREFETCH>(p, T, io);
      backward_sequence<true, L, kAnyReset, SG, PREFETCH>(p, T, io);
    } else {
      forward_sequence<false, L, kAnyReset, PREFETCH>(p, T, io);
      backward_sequence<false, L, kAnyReset, SG, PREFETCH>(p, T, io);
    }
  }
  return r;
}

bool same(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

int compare(const Result& a, const Result& b, const char* what) {
  const char* names[] = {"spikes", "vT", "mT", "grad_x", "grad_v0", "grad_m0", "ckpt"};
  const std::vector<float>* fa[] = {&a.spikes, &a.vT, &a.mT, &a.gx, &a.gv0, &a.gm0, &a.ckpt};
  const std::vector<float>* fb[] = {&b.spikes, &b.vT, &b.mT, &b.gx, &b.gv0, &b.gm0, &b.ckpt};
  int bad = 0;
  for (int i = 0; i < 7; ++i) {
    if (!same(*fa[i], *fb[i])) {
      std::printf("MISMATCH %s: %s\n", what, names[i]);
      ++bad;
    }
  }
  return bad;
}

}  // namespace

int main() {
  std::mt19937 gen(1234);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  int bad = 0, cases = 0;
  const int64_t Ts[] = {1, 2, 7, 8, 9, 17, 64};
  for (int64_t T : Ts) {
    for (int surrogate = 0; surrogate < kNumSurrogates; ++surrogate) {
      for (int hard = 0; hard < 2; ++hard) {
        for (int clif = 0; clif < 2; ++clif) {
          Problem pb;
          pb.T = T;
          pb.N = 8;  // a multiple of every group width below
          auto fill = [&](std::vector<float>& v, int64_t n, float scale) {
            v.resize(n);
            for (auto& e : v) e = scale * normal(gen);
          };
          fill(pb.x, T * pb.N, 1.5f);
          fill(pb.gs, T * pb.N, 1.0f);
          fill(pb.v0, pb.N, 0.5f);
          fill(pb.m0, pb.N, 0.5f);
          fill(pb.gvT, pb.N, 1.0f);
          fill(pb.gmT, pb.N, 1.0f);
          Params<float> p{};
          const float tau = 2.0f;
          p.inv_tau = 1.0f / tau;
          p.gamma = 1.0f - p.inv_tau;
          p.c = 1.0f;
          p.th = 1.0f;
          p.v_reset = hard ? 0.25f : 0.0f;
          p.b = hard ? p.v_reset / tau : 0.0f;
          p.v_init = p.v_reset;
          p.alpha = surrogate == kPiecewiseLeakyRelu ? 0.5f : 2.0f;
          p.beta = surrogate == kPiecewiseLeakyRelu ? 0.01f : 0.0f;
          p.inv_alpha = 1.0f / p.alpha;
          p.half_inv_alpha = 0.5f / p.alpha;
          p.surrogate = surrogate;
          p.hard = hard;
          p.keep_reset = true;
          p.is_clif = clif;
          const Result base = run<1, false, kAnySurrogate, false>(p, pb, clif);
          char what[128];
          std::snprintf(what, sizeof what, "T=%lld surrogate=%d hard=%d clif=%d",
                        static_cast<long long>(T), surrogate, hard, clif);
          bad += compare(base, run<1, false, kAnySurrogate, true>(p, pb, clif), what);
          bad += compare(base, run<4, true, kAnySurrogate, false>(p, pb, clif), what);
          bad += compare(base, run<4, true, kAnySurrogate, true>(p, pb, clif), what);
          with_surrogate(surrogate, [&](auto sg) {
            constexpr int SG = decltype(sg)::value;
            bad += compare(base, run<2, true, SG, true>(p, pb, clif), what);
            bad += compare(base, run<8, true, SG, true>(p, pb, clif), what);
          });
          ++cases;
        }
      }
    }
  }
  std::printf("checked %d cases, %d mismatches\n", cases, bad);
  return bad ? 1 : 0;
}
