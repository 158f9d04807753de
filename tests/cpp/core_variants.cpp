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

// The fold's inputs: per-channel scale and shift over `inner` neighbours, and a residual (each
// may be empty: absent).
struct Fold {
  std::vector<float> scale, shift, residual;
  int64_t inner = 1;
};

// FOLD: the fold's kernels' IO (FoldIO), else the plain one.
template <int L, bool ALIGNED, int SG, bool PREFETCH, bool FOLD = false>
Result run(const Params<float>& p, const Problem& pb, bool is_clif, const Fold* fold = nullptr) {
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
  if (FOLD) {
    d.scale = fold->scale.empty() ? nullptr : fold->scale.data();
    d.shift = fold->shift.empty() ? nullptr : fold->shift.data();
    d.residual = fold->residual.empty() ? nullptr : fold->residual.data();
    d.inner = fold->inner;
    d.channels = fold->scale.empty() ? 1 : static_cast<int64_t>(fold->scale.size());
  }
  typename std::conditional<FOLD, FoldIO<float, float, L, ALIGNED>,
                            GroupIO<float, float, L, ALIGNED>>::type io(d);
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
  // The fold in the fold kernels' configurations (GPU: the forward at 8 neurons per thread or 1,
  // the backward at 1, the surrogate read at run time; the CPU's at 1): the same bits as the
  // plain drivers on u = x * scale + shift (+ residual), computed here as the core does.
  int fold_bad = 0, fold_cases = 0;
  for (int64_t T : Ts) {
    for (int kind = 0; kind < 3; ++kind) {  // scale and shift, residual, both
      for (int clif = 0; clif < 2; ++clif) {
        Problem pb;
        pb.T = T;
        pb.N = 24;  // 3 channels of 4 neighbours, twice: a multiple of every group width
        auto fill = [&](std::vector<float>& v, int64_t n, float scale, float offset) {
          v.resize(n);
          for (auto& e : v) e = offset + scale * normal(gen);
        };
        fill(pb.x, T * pb.N, 1.5f, 0.3f);
        fill(pb.gs, T * pb.N, 1.0f, 0.0f);
        fill(pb.v0, pb.N, 0.5f, 0.0f);
        fill(pb.m0, pb.N, 0.5f, 0.0f);
        fill(pb.gvT, pb.N, 1.0f, 0.0f);
        fill(pb.gmT, pb.N, 1.0f, 0.0f);
        Fold f;
        f.inner = 4;
        if (kind != 1) {
          fill(f.scale, 3, 0.4f, 1.0f);
          fill(f.shift, 3, 0.3f, 0.0f);
        }
        if (kind != 0) fill(f.residual, T * pb.N, 0.5f, 0.0f);
        Problem pu = pb;  // the same problem on u
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t n = 0; n < pb.N; ++n) {
            const int64_t c = (n / f.inner) % 3;
            float u = pb.x[t * pb.N + n];
            u = f.scale.empty() ? madd(u, 1.0f, 0.0f) : madd(u, f.scale[c], f.shift[c]);
            if (!f.residual.empty()) u = u + f.residual[t * pb.N + n];
            pu.x[t * pb.N + n] = u;
          }
        }
        Params<float> p{};
        p.inv_tau = 0.5f;
        p.gamma = 0.5f;
        p.c = 1.0f;
        p.th = 1.0f;
        p.alpha = 2.0f;
        p.inv_alpha = 0.5f;
        p.half_inv_alpha = 0.25f;
        p.surrogate = kSigmoid;
        p.keep_reset = true;
        p.is_clif = clif;
        const Result base = run<1, false, kAnySurrogate, false>(p, pu, clif);
        char what[128];
        std::snprintf(what, sizeof what, "fold T=%lld kind=%d clif=%d",
                      static_cast<long long>(T), kind, clif);
        fold_bad += compare(base, run<1, false, kAnySurrogate, true, true>(p, pb, clif, &f), what);
        fold_bad += compare(base, run<1, true, kAnySurrogate, true, true>(p, pb, clif, &f), what);
        fold_bad += compare(base, run<8, true, kAnySurrogate, true, true>(p, pb, clif, &f), what);
        ++fold_cases;
      }
    }
  }
  std::printf("checked %d fold cases, %d mismatches\n", fold_cases, fold_bad);
  return bad || fold_bad ? 1 : 0;
}
