// Entry points of the CPU kernel built for AVX-512 (clif_cpu_avx512.cpp), chosen at run time.
//
// That file compiles the shared core with AVX-512 enabled while the rest of the extension stays
// baseline x86-64, so the two must not share any inline function: they meet only through the
// functions declared here and the plain structs of clif_params.h, passed as the host filled them.
#pragma once

#include <cstdint>

#include "clif_params.h"

namespace clif {

// Neurons per group of the AVX-512 build: 8 registers of 16 fp32, interleaved (clif_simd.h);
// benchmarks/NOTES.md has the measurements that chose 8.
constexpr int kAvx512Lanes = 128;

// Storage types the AVX-512 build reads and writes (compute is fp32 for all three).
enum class CpuStorage : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

// Whether this processor and OS run AVX-512 (F, VL, DQ, BW) code.
bool cpu_has_avx512();
// Groups [g_begin, g_end) of kAvx512Lanes neurons each, forward or backward over all T steps;
// `data` points to storage of type `storage` (checkpoints are fp32).
void clif_fwd_avx512(const Params<float>& p, const GroupData<float>& data, CpuStorage storage,
                     int64_t g_begin, int64_t g_end);
void clif_bwd_avx512(const Params<float>& p, const GroupData<float>& data, CpuStorage storage,
                     int64_t g_begin, int64_t g_end);

}  // namespace clif
