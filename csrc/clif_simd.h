// An AVX-512 vector of 16 fp32 neurons for the CPU kernel, and the IO that feeds the shared core
// (clif_core.h) with it: the core's step, step_backward and drivers run unchanged on `Vec16`
// lanes, so the CPU tests still prove the math the GPU runs.
//
// Why not leave it to the compiler: GCC vectorises the core's scalar lane loops, but without
// -ffast-math (which this project does not use) it keeps two IEEE divisions per sigmoid and
// round-trips every lane array through the stack; the hand-picked instructions below (a
// reciprocal estimate with one Newton step, vscalefps for 2^n, masks for the spike) took the
// forward from 18 to 6 ms and the backward from 28 to 9 ms on one core (T=8, N=2^20, fp32,
// reused buffers, 2026-11-28).
//
// Include it inside the same namespace as clif_core.h, after it, in a translation unit compiled
// for AVX-512 (clif_cpu_avx512.cpp); <immintrin.h> must be included before, at file scope.
#pragma once

namespace clif {

struct Vec16 {
  __m512 v;
  Vec16() = default;
  // Implicit, so that the core's scalar parameters broadcast: p.gamma * v, acc_t(1) - r, ...
  Vec16(float f) : v(_mm512_set1_ps(f)) {}  // NOLINT(google-explicit-constructor)
  explicit Vec16(__m512 x) : v(x) {}
};

inline Vec16 operator+(Vec16 a, Vec16 b) { return Vec16(_mm512_add_ps(a.v, b.v)); }
inline Vec16 operator-(Vec16 a, Vec16 b) { return Vec16(_mm512_sub_ps(a.v, b.v)); }
inline Vec16 operator*(Vec16 a, Vec16 b) { return Vec16(_mm512_mul_ps(a.v, b.v)); }
inline Vec16 operator/(Vec16 a, Vec16 b) { return Vec16(_mm512_div_ps(a.v, b.v)); }
inline Vec16 operator-(Vec16 a) {
  return Vec16(_mm512_castsi512_ps(
      _mm512_xor_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(INT32_MIN))));
}
inline Vec16& operator+=(Vec16& a, Vec16 b) { return a = a + b; }
inline Vec16& operator-=(Vec16& a, Vec16 b) { return a = a - b; }

// The core's non-arithmetic operations (see recip, fire, box, ... in clif_core.h).
inline Vec16 fire(Vec16 h, Vec16 th) {
  return Vec16(_mm512_maskz_mov_ps(_mm512_cmp_ps_mask(h.v, th.v, _CMP_GE_OQ),
                                   _mm512_set1_ps(1.0f)));
}
inline Vec16 box(Vec16 z, Vec16 w, Vec16 value) {
  const __mmask16 in = _mm512_cmp_ps_mask(z.v, w.v, _CMP_LE_OQ) &
                       _mm512_cmp_ps_mask(z.v, (-w).v, _CMP_GE_OQ);
  return Vec16(_mm512_maskz_mov_ps(in, value.v));
}
inline Vec16 abs_value(Vec16 z) { return Vec16(_mm512_abs_ps(z.v)); }
// vmaxps returns its second operand when either is NaN: 0 for NaN, as the scalar version.
inline Vec16 relu(Vec16 z) { return Vec16(_mm512_max_ps(z.v, _mm512_setzero_ps())); }

inline Vec16 madd(Vec16 a, Vec16 b, Vec16 c) { return Vec16(_mm512_fmadd_ps(a.v, b.v, c.v)); }
inline Vec16 nmadd(Vec16 a, Vec16 b, Vec16 c) { return Vec16(_mm512_fnmadd_ps(a.v, b.v, c.v)); }

// 1/z from the 14-bit estimate and one Newton step: relative error about 2^-27, within an ulp of
// fp32. A division has a tenth of this throughput on AVX-512 cores.
inline Vec16 recip(Vec16 z) {
  const __m512 r0 = _mm512_rcp14_ps(z.v);
  const __m512 e = _mm512_fnmadd_ps(z.v, r0, _mm512_set1_ps(1.0f));  // 1 - z r0
  return Vec16(_mm512_fmadd_ps(r0, e, r0));
}

// sigmoid(z) = 1 / (1 + exp(-z)), 17 instructions. exp(w), w = -z, as exp_host (clif_core.h):
// w clamped to [-87, 88], n = round(w / ln 2), r = w - n ln 2 in two parts (Cody-Waite), exp(r)
// by a polynomial and 2^n by vscalefps; the negation is folded into the constants. The
// polynomial is the degree-6 minimax fit of exp on [-ln2/2, ln2/2] for relative error (Remez;
// 1.9e-9 in exact arithmetic, 1.25 ulp through fp32 Horner), one term shorter than the Taylor
// series exp_host uses for the same accuracy. Over all fp32 z in [-30, 30] the result is within
// 2 ulp of the float64 sigmoid (tests/test_fused.py checks the kernel's outputs against float64).
// The clamp keeps NaN: vmaxps/vminps return their second operand, z, when it is NaN.
inline Vec16 sigmoid(Vec16 z) {
  __m512 x = _mm512_max_ps(_mm512_set1_ps(-88.0f), z.v);
  x = _mm512_min_ps(_mm512_set1_ps(87.0f), x);  // w = -x in [-87, 88]
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(-1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmsub_ps(n, _mm512_set1_ps(0.693359375f), x);  // -x - n c1, exact
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440054690583e-4f), r);
  __m512 q = _mm512_set1_ps(0.0013838205486536026f);
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(0.008374955505132675f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(0.041668206453323364f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(0.16666418313980103f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(0.49999991059303284f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f));
  const __m512 e = _mm512_scalef_ps(q, n);  // exp(-z), in [1.6e-38, 1.7e38]
  return recip(Vec16(_mm512_add_ps(e, _mm512_set1_ps(1.0f))));
}

// 16 values of a storage type to and from fp32. Storage codes: float, and the raw 16-bit
// patterns of bfloat16 and float16 (c10::BFloat16 and c10::Half have the same layout).
enum class Storage { kF32, kBF16, kF16 };

template <Storage S>
struct StorageTraits;
template <>
struct StorageTraits<Storage::kF32> {
  using type = float;
};
template <>
struct StorageTraits<Storage::kBF16> {
  using type = uint16_t;
};
template <>
struct StorageTraits<Storage::kF16> {
  using type = uint16_t;
};

template <Storage S>
inline __m512 load16(const typename StorageTraits<S>::type* p) {
  if constexpr (S == Storage::kF32) {
    return _mm512_loadu_ps(p);
  } else if constexpr (S == Storage::kBF16) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  } else {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
}

// fp32 to bfloat16 as c10::BFloat16 rounds: to nearest, ties to even; NaN becomes 0x7FC0.
inline __m256i bf16_of(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q),
                            _mm512_set1_epi32(0x7FC00000));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}

// Stores 16 values. STREAM (the row is 64-byte aligned for fp32, 32-byte for the 16-bit types)
// writes around the cache: an output row is not read again by this kernel, and a plain store
// would first read each line from memory (a third more traffic on the forward's x -> spikes).
template <Storage S, bool STREAM>
inline void store16(typename StorageTraits<S>::type* p, __m512 v) {
  if constexpr (S == Storage::kF32) {
    if (STREAM) _mm512_stream_ps(p, v); else _mm512_storeu_ps(p, v);
  } else {
    const __m256i h = S == Storage::kBF16
                          ? bf16_of(v)
                          : _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    if (STREAM) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(p), h);
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
    }
  }
}

// The IO of the drivers for a group of L vectors, 16 * L neighbouring neurons from n0 (the same
// methods as GroupIO, clif_core.h). Checkpoints are fp32.
template <Storage S, int L, bool STREAM>
struct VecIO {
  static constexpr int kPrefetchGroups = 2;
  using scalar_t = typename StorageTraits<S>::type;
  using vec_t = Vec16;
  static constexpr int lanes = L;
  static constexpr int width = 16 * L;

  const scalar_t *x, *v0, *m0, *gs, *gvT, *gmT;
  scalar_t *spikes, *vT, *mT, *gx, *gv0, *gm0;
  float* ckpt;
  int64_t N, n0;
  float v_init;
  bool save;

  void load(const scalar_t* row, Vec16* out) const {
    for (int l = 0; l < L; ++l) out[l] = Vec16(load16<S>(row + n0 + 16 * l));
  }
  template <bool S_STREAM = STREAM>
  void store(scalar_t* row, const Vec16* in) const {
    for (int l = 0; l < L; ++l) store16<S, S_STREAM>(row + n0 + 16 * l, in[l].v);
  }
  void fill(Vec16* out, float value) const {
    for (int l = 0; l < L; ++l) out[l] = Vec16(value);
  }

  void load_initial(Vec16* v, Vec16* m) const {
    if (v0) load(v0, v); else fill(v, v_init);
    if (m0) load(m0, m); else fill(m, 0.0f);
  }
  // The [N] states are small and read soon: plain stores.
  void store_final(const Vec16* v, const Vec16* m) const {
    store<false>(vT, v);
    if (mT) store<false>(mT, m);
  }
  // Rows of x and grad_spikes are read a group at a time, 16 * L * 4 bytes per row and step, T
  // rows N apart: too short a run per page for the hardware prefetcher, so the loads of one
  // group fetch the lines kPrefetchGroups groups ahead.
  void prefetch(const scalar_t* row) const {
    const char* p = reinterpret_cast<const char*>(row + n0 + kPrefetchGroups * width);
    for (int b = 0; b < width * int(sizeof(scalar_t)); b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
  }
  void load_x(int64_t t, Vec16* out) const {
    prefetch(x + t * N);
    load(x + t * N, out);
  }
  void store_spikes(int64_t t, const Vec16* s) const { store(spikes + t * N, s); }
  void store_ckpt(int64_t j, const Vec16* v, const Vec16* m) const {
    for (int l = 0; l < L; ++l) {
      _mm512_storeu_ps(ckpt + (2 * j) * N + n0 + 16 * l, v[l].v);
      _mm512_storeu_ps(ckpt + (2 * j + 1) * N + n0 + 16 * l, m[l].v);
    }
  }
  void load_ckpt(int64_t j, Vec16* v, Vec16* m) const {
    for (int l = 0; l < L; ++l) {
      v[l] = Vec16(_mm512_loadu_ps(ckpt + (2 * j) * N + n0 + 16 * l));
      m[l] = Vec16(_mm512_loadu_ps(ckpt + (2 * j + 1) * N + n0 + 16 * l));
    }
  }
  void load_final_grads(Vec16* gv, Vec16* gm) const {
    if (gvT) load(gvT, gv); else fill(gv, 0.0f);
    if (gmT) load(gmT, gm); else fill(gm, 0.0f);
  }
  void load_gs(int64_t t, Vec16* out) const {
    if (gs) {
      prefetch(gs + t * N);
      load(gs + t * N, out);
    } else {
      fill(out, 0.0f);
    }
  }
  void store_gx(int64_t t, const Vec16* g) const { store(gx + t * N, g); }
  void store_initial_grads(const Vec16* gv, const Vec16* gm) const {
    if (gv0) store<false>(gv0, gv);
    if (gm0) store<false>(gm0, gm);
  }
};

}  // namespace clif
