// The per-neuron core of the CLIF/LIF neuron, shared by the CUDA kernel and the C++ CPU kernel.
//
// Everything here is host-and-device inline code: one step forward, one step backward (the
// spec's formulas), and the drivers that run a small group of L neighbouring neurons over all T
// steps. A kernel supplies only an IO object that loads and stores one group's values, so the
// math the CPU tests prove is the math the GPU runs.
//
// Memory plan: the forward writes spikes and, when a backward will follow, an fp32 checkpoint of
// (v, m) at the start of every segment of kCkptEvery steps after the first. The backward keeps
// only the input x; it recomputes each segment's h_t and m_{t-1} into a register array, then walks
// the segment in reverse. Per element-step it reads x and grad_spikes and writes grad_x.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "clif_params.h"

#if defined(__CUDACC__)
#define CLIF_HD __host__ __device__ __forceinline__
#define CLIF_UNROLL _Pragma("unroll")
#define CLIF_LANES _Pragma("unroll")
#else
// Forced: GCC left the AVX-512 build's step, step_backward and sigmoid (on 8 registers at once)
// as calls, which spilled every operand to the stack and took away the interleaving of
// independent neurons (a quarter or more of the CPU kernel's time, benchmarks/NOTES.md).
#if defined(__GNUC__)
#define CLIF_HD inline __attribute__((always_inline))
#else
#define CLIF_HD inline
#endif
// On the CPU, loops over time are left alone (the arrays live on the stack there anyway) and
// loops over the lanes of a group, which are independent, are vectorised: `omp simd` (the build
// passes -fopenmp) asks for it where GCC's cost model would not.
#define CLIF_UNROLL
#if !defined(CLIF_LANES)
#define CLIF_LANES _Pragma("omp simd")
#endif
#endif

// GCC cannot see that the drivers read the segment arrays only at the steps k < len they wrote:
// its -Wmaybe-uninitialized warnings on them are false alarms, by the hundred.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace clif {

// Steps per recomputed segment; options.CKPT_EVERY is the Python twin (a test checks that they
// agree: the fake kernels and the checkpoint tensor's shape depend on it).
constexpr int kCkptEvery = 8;

// options.SURROGATES is the Python twin (a test checks that the two agree); docs/clif-spec.md has
// the formulas. Ids from 4 on take SpikingJelly 2.0's parameters.
enum Surrogate : int {
  kRectangle = 0,
  kSigmoid = 1,
  kAtan = 2,
  kTriangle = 3,
  kPiecewiseLeakyRelu = 4,
  kPiecewiseExp = 5,
  kSoftSign = 6,
  kSuperSpike = 7,
  kErf = 8,
  kNumSurrogates = 9
};

// How a kernel knows the reset mode: at run time from Params::hard (the GPU kernels, where the
// branch is warp-uniform), or at compile time (the CPU builds, where a select on a
// loop-invariant flag would keep GCC from vectorising the lane loops).
enum Reset : int { kAnyReset = 0, kSoftReset = 1, kHardReset = 2 };

#if !defined(__CUDA_ARCH__)
// exp for float on the CPU, written so that the lane loops vectorise (std::exp is a scalar
// call unless -ffast-math, which this project does not use: it would let the forward and the
// backward's recompute round differently). exp(z) = 2^n * exp(r) with n = round(z / ln 2) and
// |r| <= ln(2)/2, exp(r) by its Taylor series to degree 7 (truncation error < 3e-9, under one
// float ulp), 2^n assembled in the exponent bits. Inputs are clamped to [-87, 88], where 2^n
// stays a normal float; NaN passes through.
inline float exp_host(float z) {
  z = z < -87.0f ? -87.0f : z;
  z = z > 88.0f ? 88.0f : z;
  // Round to nearest by adding and subtracting 1.5 * 2^23 (SSE2 has no vector round).
  const float n = (z * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  // z - n ln2 in two parts: the first is exact in float for |n| < 2^9.
  const float r = (z - n * 0.693359375f) + n * 2.12194440054690583e-4f;
  float q = 1.0f / 5040.0f;
  q = q * r + 1.0f / 720.0f;
  q = q * r + 1.0f / 120.0f;
  q = q * r + 1.0f / 24.0f;
  q = q * r + 1.0f / 6.0f;
  q = q * r + 0.5f;
  q = q * r + 1.0f;
  q = q * r + 1.0f;
  // Type punning through a union (GCC and Clang define it); memcpy here kept GCC from
  // vectorising loops with two inlined copies.
  union {
    int32_t i;
    float f;
  } scale;
  // (n + 127) << 23 as one float-to-int conversion: GCC does not vectorise that shift's
  // int-to-unsigned step for SSE2. The product is exact and below 2^31.
  scale.i = static_cast<int32_t>((n + 127.0f) * 8388608.0f);
  return q * scale.f;
}
#endif

// On the GPU, the special functions are the MUFU unit's approximations with no fix-up code:
// ex2.approx.ftz (2 ulp; a result below 2^-126 flushes to 0) and rcp.approx.ftz (1 ulp; every
// argument the core passes is >= 1). IEEE division and __expf's subnormal handling cost about
// 20 instructions per element-step and a slow-path call each (benchmarks/NOTES.md). The forward
// and the backward's recompute run the same instructions, so they agree bit for bit.
CLIF_HD float exp_approx(float z) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(z * 1.4426950408889634f));
  return r;
#else
  return exp_host(z);
#endif
}
CLIF_HD double exp_approx(double z) { return std::exp(z); }

// The few operations that are not plain arithmetic, written as functions so that the core also
// runs on a SIMD vector type (clif_simd.h overloads each for it; overload resolution and
// argument-dependent lookup pick those). For float and double they are the obvious expressions.
template <typename T>
CLIF_HD T recip(T z) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same<T, float>::value) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(z));
    return r;
  }
#endif
  return T(1) / z;
}
// a * b + c and c - a * b; one fused instruction on SIMD types (CUDA contracts them anyway).
template <typename T>
CLIF_HD T madd(T a, T b, T c) {
  return a * b + c;
}
template <typename T>
CLIF_HD T nmadd(T a, T b, T c) {
  return c - a * b;
}
// 1 where h >= th (the spike; false for NaN), else 0.
template <typename T>
CLIF_HD T fire(T h, T th) {
  return h >= th ? T(1) : T(0);
}
// value where -w <= z <= w (false for NaN), else 0.
template <typename T>
CLIF_HD T box(T z, T w, T value) {
  return (z <= w && z >= -w) ? value : T(0);
}
// inside where -w < z < w (strict; false for NaN), else outside.
template <typename T>
CLIF_HD T window(T z, T w, T inside, T outside) {
  return (z < w && z > -w) ? inside : outside;
}
template <typename T>
CLIF_HD T abs_value(T z) {
  return z < T(0) ? -z : z;
}
// max(z, 0), and 0 for NaN.
template <typename T>
CLIF_HD T relu(T z) {
  return z > T(0) ? z : T(0);
}

template <typename acc_t>
CLIF_HD acc_t sigmoid(acc_t z) {
  return recip(acc_t(1) + exp_approx(-z));
}

// One forward step of one neuron (or of one vector of neurons: vec_t is acc_t, or a SIMD type of
// acc_t lanes on the CPU): updates v and m in place, returns h_t (s_t = h_t >= th) and sets
// a = sigmoid(h_t / tau), r = sigmoid(m_t) (both 0 for LIF), which the backward reuses.
template <bool IS_CLIF, int RESET, typename acc_t, typename vec_t>
CLIF_HD vec_t step(const Params<acc_t>& p, vec_t& v, vec_t& m, vec_t x, vec_t& a, vec_t& r) {
  vec_t h = madd(vec_t(p.gamma), v, p.c * x);
  if (RESET != kSoftReset) h = h + p.b;  // b is 0 for a soft reset
  const vec_t s = fire(h, vec_t(p.th));
  vec_t vn;
  if (RESET == kSoftReset) {
    vn = nmadd(s, vec_t(p.th), h);  // h - s th
  } else if (RESET == kHardReset) {
    vn = (vec_t(1) - s) * h + s * p.v_reset;
  } else {
    // A select, not a blend of both formulas: 0 * inf would turn an infinite h into NaN.
    vn = p.hard ? (vec_t(1) - s) * h + s * p.v_reset : nmadd(s, vec_t(p.th), h);
  }
  a = vec_t(0);
  r = vec_t(0);
  if (IS_CLIF) {
    a = sigmoid(h * p.inv_tau);
    m = madd(m, a, s);
    r = sigmoid(m);
    vn = nmadd(s, r, vn);
  }
  v = vn;
  return h;
}

// sigma'(z), the surrogate derivative of the spike at z = h - threshold (spec, Backward), for
// the surrogate SG.
template <int SG, typename acc_t, typename vec_t>
CLIF_HD vec_t surrogate_grad(const Params<acc_t>& p, vec_t z) {
  const acc_t al = p.alpha;
  if constexpr (SG == kRectangle) {
    return box(z, vec_t(acc_t(0.5) * al), vec_t(p.inv_alpha));
  } else if constexpr (SG == kSigmoid) {
    const vec_t g = sigmoid(al * z);
    return al * g * (acc_t(1) - g);
  } else if constexpr (SG == kAtan) {
    const vec_t w = acc_t(1.5707963267948966) * al * z;
    return acc_t(0.5) * al / (acc_t(1) + w * w);
  } else if constexpr (SG == kTriangle) {
    return relu(p.inv_alpha - abs_value(z) / (al * al));
  } else if constexpr (SG == kPiecewiseLeakyRelu) {
    // 1/(2w) inside the open window |z| < w (alpha = w), c (beta) outside and on its edges.
    return window(z, vec_t(al), vec_t(p.half_inv_alpha), vec_t(p.beta));
  } else if constexpr (SG == kPiecewiseExp) {
    return acc_t(0.5) * al * exp_approx(-(al * abs_value(z)));
  } else if constexpr (SG == kSoftSign) {
    // SpikingJelly's 1 / (2 alpha (1/alpha + |z|)^2), without its two divisions.
    const vec_t q = madd(vec_t(al), abs_value(z), vec_t(1));
    return acc_t(0.5) * al * recip(q * q);
  } else if constexpr (SG == kSuperSpike) {
    const vec_t q = abs_value(z) + acc_t(1);
    return al * recip(q * q);
  } else {
    static_assert(SG == kErf, "unknown surrogate");
    const vec_t w = al * z;
    return acc_t(0.5641895835477563) * al * exp_approx(-(w * w));  // 1/sqrt(pi)
  }
}

template <int SG, int L, typename acc_t, typename vec_t>
CLIF_HD void surrogate_lanes(const Params<acc_t>& p, const vec_t* h, vec_t* out) {
CLIF_LANES
  for (int l = 0; l < L; ++l) out[l] = surrogate_grad<SG>(p, h[l] - p.th);
}

// The surrogate of a kernel: a template constant (SG), so that the loop holds one surrogate's
// code and no per-step jump table; or kAnySurrogate, read from Params at run time (the CPU
// kernel, where the switch sits outside the lane loops and costs nothing per neuron, and the
// GPU's unaligned fallback).
constexpr int kAnySurrogate = -1;

// sigma'(h - th) for a group of L neurons (or vectors).
template <int L, int SG = kAnySurrogate, typename acc_t, typename vec_t>
CLIF_HD void surrogate_grads(const Params<acc_t>& p, const vec_t* h, vec_t* out) {
  if constexpr (SG != kAnySurrogate) {
    surrogate_lanes<SG, L>(p, h, out);
  } else {
    switch (p.surrogate) {
      case kRectangle: surrogate_lanes<kRectangle, L>(p, h, out); break;
      case kSigmoid: surrogate_lanes<kSigmoid, L>(p, h, out); break;
      case kAtan: surrogate_lanes<kAtan, L>(p, h, out); break;
      case kTriangle: surrogate_lanes<kTriangle, L>(p, h, out); break;
      case kPiecewiseLeakyRelu: surrogate_lanes<kPiecewiseLeakyRelu, L>(p, h, out); break;
      case kPiecewiseExp: surrogate_lanes<kPiecewiseExp, L>(p, h, out); break;
      case kSoftSign: surrogate_lanes<kSoftSign, L>(p, h, out); break;
      case kSuperSpike: surrogate_lanes<kSuperSpike, L>(p, h, out); break;
      default: surrogate_lanes<kErf, L>(p, h, out);
    }
  }
}

// Runs `f` with SG a template constant equal to the run-time surrogate id (host-side dispatch of
// the kernels that take the surrogate as a template constant).
template <typename F>
void with_surrogate(int surrogate, const F& f) {
  switch (surrogate) {
    case kRectangle: f(std::integral_constant<int, kRectangle>{}); break;
    case kSigmoid: f(std::integral_constant<int, kSigmoid>{}); break;
    case kAtan: f(std::integral_constant<int, kAtan>{}); break;
    case kTriangle: f(std::integral_constant<int, kTriangle>{}); break;
    case kPiecewiseLeakyRelu: f(std::integral_constant<int, kPiecewiseLeakyRelu>{}); break;
    case kPiecewiseExp: f(std::integral_constant<int, kPiecewiseExp>{}); break;
    case kSoftSign: f(std::integral_constant<int, kSoftSign>{}); break;
    case kSuperSpike: f(std::integral_constant<int, kSuperSpike>{}); break;
    default: f(std::integral_constant<int, kErf>{});
  }
}

// One backward step (spec, Backward) from h_t, m_{t-1}, a_t = sigmoid(h_t / tau),
// r_t = sigmoid(m_t), the spike gradient gs_t and the surrogate derivative
// sg = sigma'(h_t - threshold). gv and gm carry the gradients of v_t and m_t in, and leave as
// those of v_{t-1} and m_{t-1}. Returns gx_t.
template <bool IS_CLIF, int RESET, typename acc_t, typename vec_t>
CLIF_HD vec_t step_backward(const Params<acc_t>& p, vec_t h, vec_t mp, vec_t a, vec_t r,
                            vec_t gs, vec_t sg, vec_t& gv, vec_t& gm) {
  const vec_t s = fire(h, vec_t(p.th));
  const vec_t gm1 = IS_CLIF ? nmadd(gv * s, r * (acc_t(1) - r), gm) : vec_t(0);
  // dv/ds: v_reset - h - r (hard) or -th - r (soft), and 0 when detach_reset.
  vec_t dvds;
  if (RESET == kSoftReset) {
    dvds = -p.th - r;
  } else if (RESET == kHardReset) {
    dvds = p.v_reset - h - r;
  } else {
    dvds = p.hard ? p.v_reset - h - r : -p.th - r;
  }
  // Selected, not multiplied by a 0/1 factor: 0 * inf is NaN where the reference has 0.
  const vec_t gs1 = (p.keep_reset ? madd(gv, dvds, gs) : gs) + gm1;
  // dv/dh: 1 - s (hard) or 1 (soft).
  vec_t gh;
  if (RESET == kSoftReset) {
    gh = madd(gs1, sg, gv);
  } else if (RESET == kHardReset) {
    gh = madd(gs1, sg, gv * (acc_t(1) - s));
  } else {
    gh = madd(gs1, sg, p.hard ? gv * (acc_t(1) - s) : gv);
  }
  if (IS_CLIF) {
    gh = madd(gm1 * mp, a * (acc_t(1) - a) * p.inv_tau, gh);
    gm = gm1 * a;
  }
  gv = p.gamma * gh;
  return p.c * gh;
}

// Whether the backward keeps a_t and r_t from its recompute (CPU: stack arrays, and the reverse
// loop then has no exp and vectorises) or computes them again (GPU: two more register arrays
// would cost 2 * K * L registers per thread, more than the two sigmoids cost).
#if defined(__CUDA_ARCH__)
constexpr bool kKeepSigmoids = false;
#else
constexpr bool kKeepSigmoids = true;
#endif

// ---------------------------------------------------------------------------------------------
// Drivers over all T steps for a group of L lanes. IO provides the lanes' register type vec_t
// (acc_t, one neuron per lane; or a SIMD vector of neighbouring neurons, clif_simd.h) and, for
// its group:
//   load_initial(v[L], m[L], v_init), store_final(v, m), load_x(t, x[L]), store_spikes(t, s[L]),
//   store_ckpt(j, v, m), load_ckpt(j, v, m), load_final_grads(gv, gm), load_gs(t, gs[L]),
//   store_gx(t, gx[L]), store_initial_grads(gv, gm), and the flag `save`; and, for PREFETCH,
//   a type raw_t holding one group's row as loaded, load_x_raw(t, raw), load_gs_raw(t, raw)
//   (zeros without grad_spikes) and unpack(raw, out[L]).
//
// PREFETCH orders the loads for a GPU's memory latency (the work is the same either way): the
// forward loads step t+1's input before step t's work, and the backward issues all of a
// segment's x and grad_spikes loads before its recompute, so a thread waits on memory once per
// segment instead of twice per step. Without it (the previous kernels, kept for comparison) each
// load sits right before its use.

//
// FOLD: the neuron runs on u = x * scale + shift (+ residual) (GroupData's fold): the lanes'
// scale and shift are loaded once, before the loop over time; the residual row of each step is
// loaded with x's (prefetched in the forward, at its use in the backward's recompute, where a
// segment's rows would not fit the GPU backward's registers). The public drivers branch on the
// IO's `fold` once, so the default path's loop is the one without any of it.

// Whether a FOLD driver has a residual to add (the IO of the other drivers has no such member).
template <bool FOLD, typename IO>
CLIF_HD bool has_residual(const IO& io) {
  if constexpr (FOLD) {
    return io.residual != nullptr;
  } else {
    return false;
  }
}

template <bool IS_CLIF, int L, int RESET, bool PREFETCH, bool FOLD, typename acc_t,
          typename IO>
CLIF_HD void forward_steps(const Params<acc_t>& params, int64_t T, IO& io) {
  // A private copy: the compiler cannot prove that the output stores leave `params` alone, and
  // would reload it (and keep its branches) inside the lane loops.
  const Params<acc_t> p = params;
  using vec_t = typename IO::vec_t;
  vec_t v[L], m[L], x[L], s[L];
  // The next step's row as loaded (storage type): converted only when used, so that the
  // conversion does not wait for the load.
  typename IO::raw_t next;
  constexpr int LF = FOLD ? L : 1;
  vec_t fscale[LF], fshift[LF];
  typename IO::raw_t next_res[1];
  const bool has_res = has_residual<FOLD>(io);
  if constexpr (FOLD) io.load_affine(fscale, fshift);
  io.load_initial(v, m, p.v_init);
  if (PREFETCH && T > 0) io.load_x_raw(0, next);
  if constexpr (FOLD) {
    if (PREFETCH && has_res && T > 0) io.load_res_raw(0, next_res[0]);
  }
  for (int64_t t = 0; t < T; ++t) {
    if (io.save && t > 0 && t % kCkptEvery == 0) io.store_ckpt(t / kCkptEvery - 1, v, m);
    if (PREFETCH) {
      io.unpack(next, x);
      // Unconditional: a load made only when t + 1 < T would be merged into `next` by a
      // predicated move, which waits for it. The last step reloads its own row (from L1).
      io.load_x_raw(t + 1 < T ? t + 1 : t, next);
    } else {
      io.load_x(t, x);
    }
    if constexpr (FOLD) {
      io.apply_affine(x, fscale, fshift);
      if (has_res) {
        vec_t r[L];
        if (PREFETCH) {
          io.unpack(next_res[0], r);
          io.load_res_raw(t + 1 < T ? t + 1 : t, next_res[0]);
        } else {
          io.load_res(t, r);
        }
CLIF_LANES
        for (int l = 0; l < L; ++l) x[l] = x[l] + r[l];
      }
    }
CLIF_LANES
    for (int l = 0; l < L; ++l) {
      vec_t a, r;
      s[l] = fire(step<IS_CLIF, RESET>(p, v[l], m[l], x[l], a, r), vec_t(p.th));
    }
    io.store_spikes(t, s);
  }
  io.store_final(v, m);
}

// Whether an IO type carries the fold's inputs (FoldIO, VecIO): only those get a FOLD path.
template <typename IO, typename = void>
struct HasFold : std::false_type {};
template <typename IO>
struct HasFold<IO, std::void_t<decltype(std::declval<const IO&>().fold)>> : std::true_type {};

template <bool IS_CLIF, int L, int RESET = kAnyReset, bool PREFETCH = true, typename acc_t,
          typename IO>
CLIF_HD void forward_sequence(const Params<acc_t>& params, int64_t T, IO& io) {
  if constexpr (HasFold<IO>::value) {
    if (io.fold) return forward_steps<IS_CLIF, L, RESET, PREFETCH, true>(params, T, io);
  }
  forward_steps<IS_CLIF, L, RESET, PREFETCH, false>(params, T, io);
}

template <bool IS_CLIF, int L, int RESET, int SG, bool PREFETCH, bool FOLD, typename acc_t,
          typename IO>
CLIF_HD void backward_steps(const Params<acc_t>& params, int64_t T, IO& io) {
  const Params<acc_t> p = params;  // see forward_steps
  using vec_t = typename IO::vec_t;
  constexpr int K = kCkptEvery;
  vec_t gv[L], gm[L];
  constexpr int LF = FOLD ? L : 1;
  vec_t fscale[LF], fshift[LF];
  const bool has_res = has_residual<FOLD>(io);
  if constexpr (FOLD) io.load_affine(fscale, fshift);
  io.load_final_grads(gv, gm);
  for (int64_t j = (T + K - 1) / K - 1; j >= 0; --j) {
    const int64_t t0 = j * K;
    const int len = T - t0 < K ? static_cast<int>(T - t0) : K;
    // The segment's inputs and spike gradients as loaded (with PREFETCH; converted when used),
    // h_t and m_{t-1} (and a_t, r_t where kept): with full unrolling the indices are constants,
    // so on the GPU these arrays live in registers. Only entries k < len are read, so they are
    // not zeroed (on the CPU the zeroing, 8 KiB per group and segment, was 14% of the AVX-512
    // backward).
    constexpr int KP = PREFETCH ? K : 1;
    typename IO::raw_t XR[KP], GR[KP];
    if (PREFETCH) {
CLIF_UNROLL
      for (int k = 0; k < K; ++k) {
        if (k < len) io.load_x_raw(t0 + k, XR[PREFETCH ? k : 0]);
      }
CLIF_UNROLL
      for (int k = 0; k < K; ++k) {
        if (k < len) io.load_gs_raw(t0 + k, GR[PREFETCH ? k : 0]);
      }
    }
    // The state before the segment, loaded after the segment's rows: the first use of the state
    // waits for its loads, and by then the rows are in flight too.
    vec_t v[L], m[L];
    if (j == 0) {
      io.load_initial(v, m, p.v_init);
    } else {
      io.load_ckpt(j - 1, v, m);
    }
    vec_t H[K][L], MP[K][L];
    vec_t A[kKeepSigmoids ? K : 1][L], R[kKeepSigmoids ? K : 1][L];
CLIF_UNROLL
    for (int k = 0; k < K; ++k) {
      if (k < len) {
        vec_t x[L];
        if (PREFETCH) {
          io.unpack(XR[PREFETCH ? k : 0], x);
        } else {
          io.load_x(t0 + k, x);
        }
        if constexpr (FOLD) {
          io.apply_affine(x, fscale, fshift);
          if (has_res) {
            vec_t r[L];
            io.load_res(t0 + k, r);
CLIF_LANES
            for (int l = 0; l < L; ++l) x[l] = x[l] + r[l];
          }
        }
CLIF_LANES
        for (int l = 0; l < L; ++l) {
          MP[k][l] = m[l];
          vec_t a, r;
          H[k][l] = step<IS_CLIF, RESET>(p, v[l], m[l], x[l], a, r);
          if (kKeepSigmoids) {
            A[kKeepSigmoids ? k : 0][l] = a;
            R[kKeepSigmoids ? k : 0][l] = r;
          }
        }
      }
    }
CLIF_UNROLL
    for (int k = K - 1; k >= 0; --k) {
      if (k < len) {
        vec_t gs[L], gx[L], sg[L];
        if (PREFETCH) {
          io.unpack(GR[PREFETCH ? k : 0], gs);
        } else {
          io.load_gs(t0 + k, gs);
        }
        surrogate_grads<L, SG>(p, H[k], sg);
CLIF_LANES
        for (int l = 0; l < L; ++l) {
          const vec_t h = H[k][l], mp = MP[k][l];
          vec_t a(0), r(0);
          if (kKeepSigmoids) {
            a = A[kKeepSigmoids ? k : 0][l];
            r = R[kKeepSigmoids ? k : 0][l];
          } else if (IS_CLIF) {
            a = sigmoid(h * p.inv_tau);
            r = sigmoid(madd(mp, a, fire(h, vec_t(p.th))));
          }
          gx[l] = step_backward<IS_CLIF, RESET>(p, h, mp, a, r, gs[l], sg[l], gv[l], gm[l]);
        }
        io.store_gx(t0 + k, gx);
      }
    }
  }
  io.store_initial_grads(gv, gm);
}

template <bool IS_CLIF, int L, int RESET = kAnyReset, int SG = kAnySurrogate,
          bool PREFETCH = true, typename acc_t, typename IO>
CLIF_HD void backward_sequence(const Params<acc_t>& params, int64_t T, IO& io) {
  if constexpr (HasFold<IO>::value) {
    if (io.fold) return backward_steps<IS_CLIF, L, RESET, SG, PREFETCH, true>(params, T, io);
  }
  backward_steps<IS_CLIF, L, RESET, SG, PREFETCH, false>(params, T, io);
}

// ---------------------------------------------------------------------------------------------
// The IO both kernels use: a group of L neighbouring neurons starting at n0 of rows of length N.
// With ALIGNED, a group's L values are loaded and stored as one vector (16 bytes for L = 4 fp32),
// which the caller guarantees is aligned.

template <typename scalar_t, int L, bool ALIGNED>
struct alignas(ALIGNED ? sizeof(scalar_t) * L : alignof(scalar_t)) Pack {
  scalar_t v[L];
};

// BYTES of a row as whole 32-bit words (see GroupIO::raw_t).
template <int BYTES>
struct alignas(BYTES < 16 ? BYTES : 16) Words {
  uint32_t w[BYTES / 4];
};

// GroupData's pointers cast to one storage type; the base of the kernels' IO objects (GroupIO
// here, VecIO in clif_simd.h), with n0 the first neuron of the current group.
template <typename scalar_t, typename acc_t>
struct TypedData {
  const scalar_t *x, *v0, *m0, *gs, *gvT, *gmT;
  scalar_t *spikes, *vT, *mT, *gx, *gv0, *gm0;
  acc_t* ckpt;
  int64_t N;
  int64_t n0 = 0;
  bool save;

  CLIF_HD explicit TypedData(const GroupData<acc_t>& d)
      : x(static_cast<const scalar_t*>(d.x)), v0(static_cast<const scalar_t*>(d.v0)),
        m0(static_cast<const scalar_t*>(d.m0)), gs(static_cast<const scalar_t*>(d.gs)),
        gvT(static_cast<const scalar_t*>(d.gvT)), gmT(static_cast<const scalar_t*>(d.gmT)),
        spikes(static_cast<scalar_t*>(d.spikes)), vT(static_cast<scalar_t*>(d.vT)),
        mT(static_cast<scalar_t*>(d.mT)), gx(static_cast<scalar_t*>(d.gx)),
        gv0(static_cast<scalar_t*>(d.gv0)), gm0(static_cast<scalar_t*>(d.gm0)), ckpt(d.ckpt),
        N(d.N), save(d.save) {}
};

// The fold's inputs (GroupData's), for the IO objects of the kernels that take it (FoldIO here,
// VecIO in clif_simd.h). Kept out of TypedData: the GPU kernels without the fold take a GroupIO
// as their parameter, whose layout (and with it their code) stays as it was.
template <typename scalar_t, typename acc_t>
struct FoldData {
  const acc_t *scale, *shift;
  const scalar_t* residual;
  int64_t inner, channels;
  bool fold;  // any of it there

  CLIF_HD explicit FoldData(const GroupData<acc_t>& d)
      : scale(d.scale), shift(d.shift), residual(static_cast<const scalar_t*>(d.residual)),
        inner(d.inner), channels(d.channels),
        fold(d.scale != nullptr || d.residual != nullptr) {}

  // scale[c] and shift[c] of the W neighbouring neurons from n0 into s[W] and b[W] (1 and 0
  // without scale): one division for the first, then a walk through the layout.
  template <int W>
  CLIF_HD void affine_of(int64_t n0, acc_t* s, acc_t* b) const {
    if (scale == nullptr) {
      for (int i = 0; i < W; ++i) {
        s[i] = acc_t(1);
        b[i] = acc_t(0);
      }
      return;
    }
    const int64_t q = n0 / inner;
    int64_t r = n0 - q * inner, c = q % channels;
    for (int i = 0; i < W; ++i) {
      s[i] = scale[c];
      b[i] = shift[c];
      if (++r == inner) {
        r = 0;
        if (++c == channels) c = 0;
      }
    }
  }
};

// The IO of a group of L neighbouring neurons, one per lane.
template <typename scalar_t, typename acc_t, int L, bool ALIGNED>
struct GroupIO : TypedData<scalar_t, acc_t> {
  using P = Pack<scalar_t, L, ALIGNED>;
  using Data = TypedData<scalar_t, acc_t>;
  using vec_t = acc_t;  // the drivers' register type: one neuron per lane
  static constexpr int lanes = L;
  using Data::x; using Data::v0; using Data::m0; using Data::ckpt; using Data::spikes;
  using Data::vT; using Data::mT; using Data::gs; using Data::gvT; using Data::gmT;
  using Data::gx; using Data::gv0; using Data::gm0; using Data::N; using Data::n0;
  using Data::save;

  CLIF_HD explicit GroupIO(const GroupData<acc_t>& d) : Data(d) {}

  CLIF_HD void load(const scalar_t* row, acc_t* out) const {
    const P pk = *reinterpret_cast<const P*>(row + n0);
CLIF_LANES
    for (int l = 0; l < L; ++l) out[l] = static_cast<acc_t>(pk.v[l]);
  }
  CLIF_HD void store(scalar_t* row, const acc_t* in) const {
    P pk;
CLIF_LANES
    for (int l = 0; l < L; ++l) pk.v[l] = static_cast<scalar_t>(in[l]);
    *reinterpret_cast<P*>(row + n0) = pk;
  }
  CLIF_HD void fill(acc_t* out, acc_t value) const {
CLIF_LANES
    for (int l = 0; l < L; ++l) out[l] = value;
  }

  CLIF_HD void load_initial(acc_t* v, acc_t* m, acc_t v_init) const {
    if (v0) load(v0, v); else fill(v, v_init);
    if (m0) load(m0, m); else fill(m, acc_t(0));
  }
  CLIF_HD void store_final(const acc_t* v, const acc_t* m) const {
    if (vT) store(vT, v);
    if (mT) store(mT, m);
  }
  CLIF_HD void load_x(int64_t t, acc_t* out) const { load(x + t * N, out); }
  // A row as loaded: one vector load into whole 32-bit registers (two fp16/bf16 values each),
  // converted by unpack where it is used. As a struct of 16-bit members, a load that only some
  // steps make (k < len) would be merged into its array entry half by half, and that merge
  // waits for the load.
  using raw_t = typename std::conditional<ALIGNED && sizeof(P) % 4 == 0 && sizeof(P) <= 16,
                                          Words<sizeof(P)>, P>::type;
  CLIF_HD void load_x_raw(int64_t t, raw_t& out) const {
    out = *reinterpret_cast<const raw_t*>(x + t * N + n0);
  }
  CLIF_HD void load_gs_raw(int64_t t, raw_t& out) const {
    if (gs) {
      out = *reinterpret_cast<const raw_t*>(gs + t * N + n0);
    } else {
      out = raw_t{};  // all bits zero: 0 in every storage type
    }
  }
  CLIF_HD void unpack(const raw_t& raw, acc_t* out) const {
    P pk;
    memcpy(&pk, &raw, sizeof(P));
CLIF_LANES
    for (int l = 0; l < L; ++l) out[l] = static_cast<acc_t>(pk.v[l]);
  }
  CLIF_HD void store_spikes(int64_t t, const acc_t* s) const { store(spikes + t * N, s); }
  CLIF_HD void store_ckpt(int64_t j, const acc_t* v, const acc_t* m) const {
CLIF_LANES
    for (int l = 0; l < L; ++l) {
      ckpt[(2 * j) * N + n0 + l] = v[l];
      ckpt[(2 * j + 1) * N + n0 + l] = m[l];
    }
  }
  CLIF_HD void load_ckpt(int64_t j, acc_t* v, acc_t* m) const {
CLIF_LANES
    for (int l = 0; l < L; ++l) {
      v[l] = ckpt[(2 * j) * N + n0 + l];
      m[l] = ckpt[(2 * j + 1) * N + n0 + l];
    }
  }
  CLIF_HD void load_final_grads(acc_t* gv, acc_t* gm) const {
    if (gvT) load(gvT, gv); else fill(gv, acc_t(0));
    if (gmT) load(gmT, gm); else fill(gm, acc_t(0));
  }
  CLIF_HD void load_gs(int64_t t, acc_t* out) const {
    if (gs) load(gs + t * N, out); else fill(out, acc_t(0));
  }
  CLIF_HD void store_gx(int64_t t, const acc_t* g) const { store(gx + t * N, g); }
  CLIF_HD void store_initial_grads(const acc_t* gv, const acc_t* gm) const {
    if (gv0) store(gv0, gv);
    if (gm0) store(gm0, gm);
  }
};

// GroupIO with the fold (the drivers' FOLD path; the CPU kernel's IO, whose drivers branch on
// `fold` once per group).
template <typename scalar_t, typename acc_t, int L, bool ALIGNED>
struct FoldIO : GroupIO<scalar_t, acc_t, L, ALIGNED>, FoldData<scalar_t, acc_t> {
  using Base = GroupIO<scalar_t, acc_t, L, ALIGNED>;
  using Fold = FoldData<scalar_t, acc_t>;
  using typename Base::raw_t;
  using Base::N; using Base::n0; using Fold::residual;

  CLIF_HD explicit FoldIO(const GroupData<acc_t>& d) : Base(d), Fold(d) {}

  CLIF_HD void load_affine(acc_t* s, acc_t* b) const {
    this->template affine_of<L>(n0, s, b);
  }
  CLIF_HD void apply_affine(acc_t* u, const acc_t* s, const acc_t* b) const {
CLIF_LANES
    for (int l = 0; l < L; ++l) u[l] = madd(u[l], s[l], b[l]);
  }
  CLIF_HD void load_res(int64_t t, acc_t* out) const { this->load(residual + t * N, out); }
  CLIF_HD void load_res_raw(int64_t t, raw_t& out) const {
    out = *reinterpret_cast<const raw_t*>(residual + t * N + n0);
  }
};

}  // namespace clif

#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC diagnostic pop
#endif
