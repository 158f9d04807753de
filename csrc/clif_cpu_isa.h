// Entry points of the CPU kernel built for AVX-512 (clif_cpu_avx512.cpp), chosen at run time.
//
// That file compiles the shared core with AVX-512 enabled while the rest of the extension stays
// baseline x86-64, so the two must not share any inline function: they meet only through the
// plain structs and functions declared here (no core or torch types).
#pragma once

#include <cstdint>

namespace clif {

// Neurons per group of the CPU kernels: 64 fp32 lanes are 4 AVX-512 vectors, 256 bytes per row.
constexpr int kCpuLanes = 64;

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
// Groups [g_begin, g_end) of kCpuLanes neurons each, forward or backward over all T steps.
void clif_fwd_avx512(const CpuJob& job, int64_t g_begin, int64_t g_end);
void clif_bwd_avx512(const CpuJob& job, int64_t g_begin, int64_t g_end);

}  // namespace clif
