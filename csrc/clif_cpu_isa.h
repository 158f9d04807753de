// Entry points of the CPU kernel built for AVX-512 (clif_cpu_avx512.cpp), chosen at run time.
//
// That file compiles the shared core with AVX-512 enabled while the rest of the extension stays
// baseline x86-64, so the two must not share any inline function: they meet only through the
// plain structs and functions declared here (no core or torch types).
#pragma once

#include <cstdint>

namespace clif {

// Neurons per group of the AVX-512 build: 8 registers of 16 fp32, interleaved (clif_simd.h).
// Forward / backward at T=8, N=2^20, 2 threads, best of 12 (2026-11-28): 4 registers 5.5-6.0 /
// 7.6-8.3 ms, 6 registers 4.8 / 7.5-7.7, 8 registers 4.3-4.8 / 7.0-7.6, 12 registers 5.0-5.2 /
// 7.9-8.4, 16 registers 6.4-6.6 / 10-11 (spills); one register per lane, 4 lanes, 8.2 / 10.
constexpr int kAvx512Lanes = 128;

// Storage types the AVX-512 build reads and writes (compute is fp32 for all three).
enum class CpuStorage : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

// One launch: the fields of Params<float> and GroupData, by value, with untyped pointers to
// storage of type `storage` (checkpoints are fp32).
struct CpuJob {
  float gamma, c, b, inv_tau, th, v_reset, v_init, alpha, hard, keep_reset;
  int surrogate;
  bool is_clif, save;
  CpuStorage storage;
  int64_t T, N;
  const void *x, *v0, *m0, *gs, *gvT, *gmT;
  void *spikes, *vT, *mT, *gx, *gv0, *gm0;
  float* ckpt;
};

// Whether this processor and OS run AVX-512 (F, VL, DQ, BW) code.
bool cpu_has_avx512();
// Groups [g_begin, g_end) of kAvx512Lanes neurons each, forward or backward over all T steps.
void clif_fwd_avx512(const CpuJob& job, int64_t g_begin, int64_t g_end);
void clif_bwd_avx512(const CpuJob& job, int64_t g_begin, int64_t g_end);

}  // namespace clif
