// The CPU kernel's group loops compiled for AVX-512 (fp32, bf16 and fp16 storage), called when
// the processor has it (clif_cpu.cpp decides). The shared core runs here on Vec<8> lanes
// (clif_simd.h): 128 neurons per group, reset mode and store kind as template constants.
// benchmarks/NOTES.md has what each step of this build bought.
//
// This file is compiled twice: as itself it holds the forward (and cpu_has_avx512()); included by
// clif_cpu_avx512_bwd.cpp with CLIF_AVX512_BWD set to 1, the backward. Each half is about half
// of what was the extension's longest compile, and the two build in parallel.
//
// The core is included inside an anonymous namespace, so every function it defines is private to
// this file and the linker cannot merge one with its baseline copy from clif_cpu.cpp (which must
// run on processors without AVX-512). The standard headers it uses are included first, outside
// the target region, so they keep their baseline code.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "clif_cpu_isa.h"

#ifndef CLIF_AVX512_BWD
#define CLIF_AVX512_BWD 0
#endif

#if !CLIF_AVX512_BWD
bool clif::cpu_has_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  // libgcc's feature bits include the OS's support for the 512-bit register state (XCR0).
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
#else
  return false;
#endif
}
#endif  // !CLIF_AVX512_BWD

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,prefer-vector-width=512")

// A group is one lane of Vec<8> here (clif_simd.h interleaves its registers); a lane loop is
// unrolled rather than vectorised again.
#define CLIF_LANES _Pragma("GCC unroll 16")

namespace {
namespace avx512 {
namespace clif {
// The host's structs, as they are (clif_params.h, included above outside this region).
using ::clif::GroupData;
using ::clif::Params;
}  // namespace clif
#include "clif_core.h"
#include "clif_simd.h"
}  // namespace avx512

using avx512::clif::Storage;
using avx512::clif::VecIO;
using ::clif::GroupData;
using ::clif::Params;
constexpr int kRegs = clif::kAvx512Lanes / 16;

template <bool BWD, Storage S, bool IS_CLIF, int RESET, bool STREAM>
void run_groups(const Params<float>& p, const GroupData<float>& data, int64_t g_begin,
                int64_t g_end) {
  VecIO<S, kRegs, 1, STREAM> io(data);
  for (int64_t g = g_begin; g < g_end; ++g) {
    io.n0 = g * clif::kAvx512Lanes;
    if (BWD) {
      avx512::clif::backward_sequence<IS_CLIF, 1, RESET>(p, data.T, io);
    } else {
      avx512::clif::forward_sequence<IS_CLIF, 1, RESET>(p, data.T, io);
    }
  }
  // Streaming stores are weakly ordered: make them visible before the caller's threads join.
  if (STREAM) _mm_sfence();
}

// Streaming stores for the [T, N] output (spikes or grad_x) when every row is aligned to a
// vector's 16 values (64 bytes for fp32, 32 for the 16-bit types; streaming stores need it) and
// the output is large: the kernel never reads it back, and it is far larger than the 2 MiB L2 of
// a core here (benchmarks/NOTES.md has the measurement).
constexpr int64_t kStreamMinBytes = int64_t(4) << 20;

bool stream_output(const void* out, int64_t T, int64_t N, int64_t elt) {
  return reinterpret_cast<uintptr_t>(out) % (16 * elt) == 0 && N % 16 == 0 &&
         T * N * elt >= kStreamMinBytes;
}

// Calls f(std::integral_constant<bool, flag>()).
template <typename F>
void with_flag(bool flag, const F& f) {
  if (flag) f(std::true_type()); else f(std::false_type());
}

// The storage, neuron, reset mode and store kind as template constants: 3 x 2 x 2 x 2
// instantiations per direction.
template <bool BWD>
void dispatch(const Params<float>& p, const GroupData<float>& data, clif::CpuStorage storage,
              int64_t g_begin, int64_t g_end) {
  auto with_storage = [&](auto storage) {
    constexpr Storage S = decltype(storage)::value;
    const bool stream = stream_output(BWD ? data.gx : data.spikes, data.T, data.N,
                                      S == Storage::kF32 ? 4 : 2);
    with_flag(p.is_clif, [&](auto is_clif) {
      with_flag(p.hard, [&](auto hard) {
        with_flag(stream, [&](auto streamed) {
          constexpr int RESET = decltype(hard)::value ? avx512::clif::kHardReset
                                                      : avx512::clif::kSoftReset;
          run_groups<BWD, S, decltype(is_clif)::value, RESET, decltype(streamed)::value>(
              p, data, g_begin, g_end);
        });
      });
    });
  };
  switch (storage) {
    case clif::CpuStorage::kF32:
      with_storage(std::integral_constant<Storage, Storage::kF32>());
      break;
    case clif::CpuStorage::kBF16:
      with_storage(std::integral_constant<Storage, Storage::kBF16>());
      break;
    case clif::CpuStorage::kF16:
      with_storage(std::integral_constant<Storage, Storage::kF16>());
      break;
  }
}

}  // namespace

#if !CLIF_AVX512_BWD
void clif::clif_fwd_avx512(const Params<float>& p, const GroupData<float>& data,
                           CpuStorage storage, int64_t g_begin, int64_t g_end) {
  dispatch<false>(p, data, storage, g_begin, g_end);
}
#else
void clif::clif_bwd_avx512(const Params<float>& p, const GroupData<float>& data,
                           CpuStorage storage, int64_t g_begin, int64_t g_end) {
  dispatch<true>(p, data, storage, g_begin, g_end);
}
#endif

#pragma GCC pop_options
#else
// Not an x86-64 GCC/Clang build: cpu_has_avx512() is false and these are never called.
#if !CLIF_AVX512_BWD
void clif::clif_fwd_avx512(const Params<float>&, const GroupData<float>&, CpuStorage, int64_t,
                           int64_t) {}
#else
void clif::clif_bwd_avx512(const Params<float>&, const GroupData<float>&, CpuStorage, int64_t,
                           int64_t) {}
#endif
#endif
