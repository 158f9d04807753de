// AVX-512 vectors of fp32 neurons for the CPU kernel, and the IO that feeds the shared core
// (clif_core.h) with them: the core's step, step_backward and drivers run unchanged on `Vec<K>`
// lanes (K registers of 16 neurons), so the CPU tests still prove the math the GPU runs.
//
// Why not leave it to the compiler: GCC vectorises the core's scalar lane loops, but without
// -ffast-math (which this project does not use) it keeps two IEEE divisions per sigmoid and
// round-trips every lane array through the stack. Here a reciprocal estimate with one Newton
// step replaces the division, vscalefps the exponent assembly, masks the spike selects, and
// every operation is issued for all K registers back to back: the recurrence is a chain of
// dependent operations (two sigmoids per step, about 150 cycles of latency), so independent
// neurons must be interleaved in the instruction stream for the out-of-order core to overlap
// them. benchmarks/NOTES.md has what each of these steps bought.
//
// Include it inside the same namespace as clif_core.h, after it, in a translation unit compiled
// for AVX-512 (clif_cpu_avx512.cpp); <immintrin.h> must be included before, at file scope.
#pragma once

#define CLIF_EACH _Pragma("GCC unroll 16") for (int i = 0; i < K; ++i)
// Inlined always: as calls, the Vec<8> operands would go through the stack (see CLIF_HD).
#define CLIF_VEC inline __attribute__((always_inline))

namespace clif {

// K registers of 16 fp32 neurons.
template <int K>
struct Vec {
  __m512 v[K];
  Vec() = default;
  // Implicit, so that the core's scalar parameters broadcast: vec_t(p.th), Vec(0), ...
  Vec(float f) {  // NOLINT(google-explicit-constructor)
    CLIF_EACH v[i] = _mm512_set1_ps(f);
  }
};

// The operators and functions below are function templates, not friends or plain functions:
// templates carry the target options of their definition (AVX-512) wherever they are
// instantiated, and they are more specialised than the core's generic versions. Templates do
// not convert arguments, hence the float/Vec mixes of each operator.
#define CLIF_VEC_BINARY(OP, INTRIN)                                         \
  template <int K>                                                          \
  CLIF_VEC Vec<K> operator OP(const Vec<K>& a, const Vec<K>& b) {           \
    Vec<K> o;                                                               \
    CLIF_EACH o.v[i] = INTRIN(a.v[i], b.v[i]);                              \
    return o;                                                               \
  }                                                                         \
  template <int K>                                                          \
  CLIF_VEC Vec<K> operator OP(float a, const Vec<K>& b) {                   \
    return Vec<K>(a) OP b;                                                  \
  }                                                                         \
  template <int K>                                                          \
  CLIF_VEC Vec<K> operator OP(const Vec<K>& a, float b) {                   \
    return a OP Vec<K>(b);                                                  \
  }
CLIF_VEC_BINARY(+, _mm512_add_ps)
CLIF_VEC_BINARY(-, _mm512_sub_ps)
CLIF_VEC_BINARY(*, _mm512_mul_ps)
CLIF_VEC_BINARY(/, _mm512_div_ps)
#undef CLIF_VEC_BINARY

template <int K>
CLIF_VEC Vec<K> operator-(const Vec<K>& a) {
  Vec<K> o;
  const __m512i sign = _mm512_set1_epi32(INT32_MIN);
  CLIF_EACH o.v[i] = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a.v[i]), sign));
  return o;
}
template <int K>
CLIF_VEC Vec<K>& operator+=(Vec<K>& a, const Vec<K>& b) { return a = a + b; }
template <int K>
CLIF_VEC Vec<K>& operator-=(Vec<K>& a, const Vec<K>& b) { return a = a - b; }

// The core's non-arithmetic operations (see recip, fire, box, window, ... in clif_core.h).
template <int K>
CLIF_VEC Vec<K> fire(const Vec<K>& h, const Vec<K>& th) {
  Vec<K> o;
  CLIF_EACH o.v[i] = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(h.v[i], th.v[i], _CMP_GE_OQ),
                                         _mm512_set1_ps(1.0f));
  return o;
}
template <int K>
CLIF_VEC Vec<K> box(const Vec<K>& z, const Vec<K>& w, const Vec<K>& value) {
  Vec<K> o;
  CLIF_EACH {
    const __m512 nw = _mm512_sub_ps(_mm512_setzero_ps(), w.v[i]);
    const __mmask16 in = _mm512_cmp_ps_mask(z.v[i], w.v[i], _CMP_LE_OQ) &
                         _mm512_cmp_ps_mask(z.v[i], nw, _CMP_GE_OQ);
    o.v[i] = _mm512_maskz_mov_ps(in, value.v[i]);
  }
  return o;
}
template <int K>
CLIF_VEC Vec<K> window(const Vec<K>& z, const Vec<K>& w, const Vec<K>& inside,
                       const Vec<K>& outside) {
  Vec<K> o;
  // |z| < w, false for NaN (an unordered compare is false): NaN takes the outside value.
  CLIF_EACH o.v[i] = _mm512_mask_mov_ps(
      outside.v[i], _mm512_cmp_ps_mask(_mm512_abs_ps(z.v[i]), w.v[i], _CMP_LT_OQ), inside.v[i]);
  return o;
}
template <int K>
CLIF_VEC Vec<K> abs_value(const Vec<K>& z) {
  Vec<K> o;
  CLIF_EACH o.v[i] = _mm512_abs_ps(z.v[i]);
  return o;
}
// vmaxps returns its second operand when either is NaN: 0 for NaN, as the scalar version.
template <int K>
CLIF_VEC Vec<K> relu(const Vec<K>& z) {
  Vec<K> o;
  CLIF_EACH o.v[i] = _mm512_max_ps(z.v[i], _mm512_setzero_ps());
  return o;
}
template <int K>
CLIF_VEC Vec<K> madd(const Vec<K>& a, const Vec<K>& b, const Vec<K>& c) {
  Vec<K> o;
  CLIF_EACH o.v[i] = _mm512_fmadd_ps(a.v[i], b.v[i], c.v[i]);
  return o;
}
template <int K>
CLIF_VEC Vec<K> nmadd(const Vec<K>& a, const Vec<K>& b, const Vec<K>& c) {
  Vec<K> o;
  CLIF_EACH o.v[i] = _mm512_fnmadd_ps(a.v[i], b.v[i], c.v[i]);
  return o;
}

// 1/z from the 14-bit estimate and one Newton step: relative error about 2^-27, within an ulp of
// fp32. A division has a tenth of this throughput on AVX-512 cores.
template <int K>
CLIF_VEC Vec<K> recip(const Vec<K>& z) {
  Vec<K> o;
  __m512 r0[K], e[K];
  CLIF_EACH r0[i] = _mm512_rcp14_ps(z.v[i]);
  CLIF_EACH e[i] = _mm512_fnmadd_ps(z.v[i], r0[i], _mm512_set1_ps(1.0f));  // 1 - z r0
  CLIF_EACH o.v[i] = _mm512_fmadd_ps(r0[i], e[i], r0[i]);
  return o;
}

// sigmoid(z) = 1 / (1 + exp(-z)), 17 instructions per register. exp(w), w = -z, as exp_host
// (clif_core.h): w clamped to [-87, 88], n = round(w / ln 2), r = w - n ln 2 in two parts
// (Cody-Waite), exp(r) by a polynomial and 2^n by vscalefps; the negation is folded into the
// constants. The polynomial is the degree-6 minimax fit of exp on [-ln2/2, ln2/2] for relative
// error (Remez; 1.9e-9 in exact arithmetic, 1.25 ulp through fp32 Horner), one term shorter than
// the Taylor series exp_host uses. Over every third fp32 z in [-30, 30] (7.4e8 values) the result
// is within 2.5 ulp (relative 1.6e-7) of the float64 sigmoid. The clamp keeps NaN: vmaxps and
// vminps return their second operand, z, when it is NaN.
//
// exp_steps: exp(w) in the registers of e, for w = z (NEGATE false) or w = -z (NEGATE true: the sigmoid's
// exp(-z), with the negation folded into the constants instead of an instruction of its own). w
// is clamped to [-87, 88] (exp(-87) = 1.6e-38 stands for anything smaller); NaN passes through.
template <bool NEGATE, int K>
CLIF_VEC void exp_steps(const Vec<K>& z, __m512* e) {
  __m512 x[K], n[K], r[K], q[K];
  const float lo = NEGATE ? -88.0f : -87.0f, hi = NEGATE ? 87.0f : 88.0f;
  const float log2e = NEGATE ? -1.44269504088896341f : 1.44269504088896341f;
  CLIF_EACH x[i] = _mm512_max_ps(_mm512_set1_ps(lo), z.v[i]);
  CLIF_EACH x[i] = _mm512_min_ps(_mm512_set1_ps(hi), x[i]);
  CLIF_EACH n[i] = _mm512_roundscale_ps(_mm512_mul_ps(x[i], _mm512_set1_ps(log2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = w - n ln2, the first part exact
  if (NEGATE) {
    CLIF_EACH r[i] = _mm512_fnmsub_ps(n[i], _mm512_set1_ps(0.693359375f), x[i]);
  } else {
    CLIF_EACH r[i] = _mm512_fnmadd_ps(n[i], _mm512_set1_ps(0.693359375f), x[i]);
  }
  CLIF_EACH r[i] = _mm512_fmadd_ps(n[i], _mm512_set1_ps(2.12194440054690583e-4f), r[i]);
  CLIF_EACH q[i] = _mm512_fmadd_ps(_mm512_set1_ps(0.0013838205486536026f), r[i],
                                   _mm512_set1_ps(0.008374955505132675f));
  CLIF_EACH q[i] = _mm512_fmadd_ps(q[i], r[i], _mm512_set1_ps(0.041668206453323364f));
  CLIF_EACH q[i] = _mm512_fmadd_ps(q[i], r[i], _mm512_set1_ps(0.16666418313980103f));
  CLIF_EACH q[i] = _mm512_fmadd_ps(q[i], r[i], _mm512_set1_ps(0.49999991059303284f));
  CLIF_EACH q[i] = _mm512_fmadd_ps(q[i], r[i], _mm512_set1_ps(1.0f));
  CLIF_EACH q[i] = _mm512_fmadd_ps(q[i], r[i], _mm512_set1_ps(1.0f));
  CLIF_EACH e[i] = _mm512_scalef_ps(q[i], n[i]);
}

template <int K>
CLIF_VEC Vec<K> sigmoid(const Vec<K>& z) {
  Vec<K> e;  // 1 + exp(-z), in [1, 1.7e38]
  exp_steps<true>(z, e.v);
  CLIF_EACH e.v[i] = _mm512_add_ps(e.v[i], _mm512_set1_ps(1.0f));
  return recip(e);
}

// exp(w) for the surrogates that need it (piecewise_exp, erf).
template <int K>
CLIF_VEC Vec<K> exp_approx(const Vec<K>& w) {
  Vec<K> e;
  exp_steps<false>(w, e.v);
  return e;
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
CLIF_VEC __m512 load16(const typename StorageTraits<S>::type* p) {
  if constexpr (S == Storage::kF32) {
    return _mm512_loadu_ps(p);
  } else if constexpr (S == Storage::kBF16) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m512i w = _mm512_cvtepu16_epi32(raw);
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  } else {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
}

// fp32 to bfloat16 as c10::BFloat16 rounds: to nearest, ties to even; NaN becomes 0x7FC0.
CLIF_VEC __m256i bf16_of(__m512 v) {
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
CLIF_VEC void store16(typename StorageTraits<S>::type* p, __m512 v) {
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

// The IO of the drivers for a group of L lanes of Vec<K>, 16 * K * L neighbouring neurons from
// n0 (the same methods as GroupIO, clif_core.h). Register i of lane l holds neurons
// n0 + 16 (K l + i) .. + 15. Checkpoints are fp32.
template <Storage S, int K, int L, bool STREAM>
struct VecIO : TypedData<typename StorageTraits<S>::type, float>,
               FoldData<typename StorageTraits<S>::type, float> {
  using scalar_t = typename StorageTraits<S>::type;
  using vec_t = Vec<K>;
  static constexpr int lanes = L;
  static constexpr int width = 16 * K * L;
  // Rows of x and grad_spikes are read a group at a time (width * 4 bytes per row and step for
  // fp32), T rows N apart: too short a run per page for the hardware prefetcher, so the loads of
  // one group fetch the lines kPrefetchGroups groups ahead.
  static constexpr int kPrefetchGroups = 2;

  using Data = TypedData<scalar_t, float>;
  using Data::x; using Data::v0; using Data::m0; using Data::ckpt; using Data::spikes;
  using Data::vT; using Data::mT; using Data::gs; using Data::gvT; using Data::gmT;
  using Data::gx; using Data::gv0; using Data::gm0; using Data::N; using Data::n0;

  using Fold = FoldData<scalar_t, float>;
  explicit VecIO(const GroupData<float>& d) : Data(d), Fold(d) {}

  void load(const scalar_t* row, vec_t* out) const {
    for (int l = 0; l < L; ++l) {
      CLIF_EACH out[l].v[i] = load16<S>(row + n0 + 16 * (K * l + i));
    }
  }
  template <bool S_STREAM = STREAM>
  void store(scalar_t* row, const vec_t* in) const {
    for (int l = 0; l < L; ++l) {
      CLIF_EACH store16<S, S_STREAM>(row + n0 + 16 * (K * l + i), in[l].v[i]);
    }
  }
  void fill(vec_t* out, float value) const {
    for (int l = 0; l < L; ++l) out[l] = vec_t(value);
  }
  void prefetch(const scalar_t* row) const {
    const char* p = reinterpret_cast<const char*>(row + n0 + kPrefetchGroups * width);
    for (int b = 0; b < width * int(sizeof(scalar_t)); b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
  }

  void load_initial(vec_t* v, vec_t* m, float v_init) const {
    if (v0) load(v0, v); else fill(v, v_init);
    if (m0) load(m0, m); else fill(m, 0.0f);
  }
  // The [N] states are small and read soon: plain stores.
  void store_final(const vec_t* v, const vec_t* m) const {
    if (vT) store<false>(vT, v);
    if (mT) store<false>(mT, m);
  }
  void load_x(int64_t t, vec_t* out) const {
    prefetch(x + t * N);
    load(x + t * N, out);
  }
  void store_spikes(int64_t t, const vec_t* s) const { store(spikes + t * N, s); }
  // Rows as loaded (the core's prefetching drivers): converted to fp32 at once on the CPU.
  struct raw_t {
    vec_t v[L];
  };
  void load_x_raw(int64_t t, raw_t& out) const { load_x(t, out.v); }
  void load_gs_raw(int64_t t, raw_t& out) const { load_gs(t, out.v); }
  void unpack(const raw_t& in, vec_t* out) const {
    for (int l = 0; l < L; ++l) out[l] = in.v[l];
  }
  void store_ckpt(int64_t j, const vec_t* v, const vec_t* m) const {
    for (int l = 0; l < L; ++l) {
      CLIF_EACH {
        _mm512_storeu_ps(ckpt + (2 * j) * N + n0 + 16 * (K * l + i), v[l].v[i]);
        _mm512_storeu_ps(ckpt + (2 * j + 1) * N + n0 + 16 * (K * l + i), m[l].v[i]);
      }
    }
  }
  void load_ckpt(int64_t j, vec_t* v, vec_t* m) const {
    for (int l = 0; l < L; ++l) {
      CLIF_EACH {
        v[l].v[i] = _mm512_loadu_ps(ckpt + (2 * j) * N + n0 + 16 * (K * l + i));
        m[l].v[i] = _mm512_loadu_ps(ckpt + (2 * j + 1) * N + n0 + 16 * (K * l + i));
      }
    }
  }
  void load_final_grads(vec_t* gv, vec_t* gm) const {
    if (gvT) load(gvT, gv); else fill(gv, 0.0f);
    if (gmT) load(gmT, gm); else fill(gm, 0.0f);
  }
  void load_gs(int64_t t, vec_t* out) const {
    if (gs) {
      prefetch(gs + t * N);
      load(gs + t * N, out);
    } else {
      fill(out, 0.0f);
    }
  }
  void store_gx(int64_t t, const vec_t* g) const { store(gx + t * N, g); }
  void store_initial_grads(const vec_t* gv, const vec_t* gm) const {
    if (gv0) store<false>(gv0, gv);
    if (gm0) store<false>(gm0, gm);
  }
  // The fold (the drivers' FOLD path only): the group's per-neuron scale and shift, gathered
  // once per group from the channels' values.
  void load_affine(vec_t* s, vec_t* b) const {
    alignas(64) float sv[width], bv[width];
    this->template affine_of<width>(n0, sv, bv);
    for (int l = 0; l < L; ++l) {
      CLIF_EACH {
        s[l].v[i] = _mm512_load_ps(sv + 16 * (K * l + i));
        b[l].v[i] = _mm512_load_ps(bv + 16 * (K * l + i));
      }
    }
  }
  void apply_affine(vec_t* u, const vec_t* s, const vec_t* b) const {
    for (int l = 0; l < L; ++l) u[l] = madd(u[l], s[l], b[l]);
  }
  void load_res(int64_t t, vec_t* out) const {
    prefetch(this->residual + t * N);
    load(this->residual + t * N, out);
  }
  void load_res_raw(int64_t t, raw_t& out) const { load_res(t, out.v); }
};

}  // namespace clif

#undef CLIF_EACH
#undef CLIF_VEC
