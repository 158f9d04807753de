// The CPU kernel's group loops compiled for AVX-512 (fp32, bf16 and fp16 storage), called when
// the processor has it (clif_cpu.cpp decides). The shared core runs here on Vec<8> lanes
// (clif_simd.h): 128 neurons per group, reset mode and store kind as template constants.
// History on the 2-core development machine (T=8, N=2^20, fp32, forward / backward): the
// portable SSE2 build 105 / 140 ms on one core; GCC's auto-vectorisation of the core for
// AVX-512 20 / 32 ms on one core; this build 3.4-5 / 5.6-8 ms on two cores (2026-11-28,
// benchmarks/NOTES.md).
//
// The core is included inside an anonymous namespace, so every function it defines is private to
// this file and the linker cannot merge one with its baseline copy from clif_cpu.cpp (which must
// run on processors without AVX-512). The standard headers it uses are included first, outside
// the target region, so they keep their baseline code.
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "clif_cpu_isa.h"

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

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,prefer-vector-width=512")

// A group is one lane of Vec<8> here (clif_simd.h interleaves its registers); a lane loop is
// unrolled rather than vectorised again.
#define CLIF_LANES _Pragma("GCC unroll 16")

namespace {
namespace avx512 {
#include "clif_core.h"
#include "clif_simd.h"
}  // namespace avx512

using avx512::clif::Params;
using avx512::clif::Storage;
using avx512::clif::VecIO;
constexpr int kRegs = clif::kAvx512Lanes / 16;

Params<float> params_of(const clif::CpuJob& j) {
  Params<float> p;
  p.gamma = j.gamma; p.c = j.c; p.b = j.b; p.inv_tau = j.inv_tau; p.th = j.th;
  p.v_reset = j.v_reset; p.v_init = j.v_init; p.alpha = j.alpha; p.hard = j.hard;
  p.keep_reset = j.keep_reset; p.surrogate = j.surrogate;
  return p;
}

template <Storage S, bool STREAM>
VecIO<S, kRegs, 1, STREAM> io_of(const clif::CpuJob& j) {
  using scalar_t = typename VecIO<S, kRegs, 1, STREAM>::scalar_t;
  VecIO<S, kRegs, 1, STREAM> io;
  io.x = static_cast<const scalar_t*>(j.x);
  io.v0 = static_cast<const scalar_t*>(j.v0);
  io.m0 = static_cast<const scalar_t*>(j.m0);
  io.gs = static_cast<const scalar_t*>(j.gs);
  io.gvT = static_cast<const scalar_t*>(j.gvT);
  io.gmT = static_cast<const scalar_t*>(j.gmT);
  io.spikes = static_cast<scalar_t*>(j.spikes);
  io.vT = static_cast<scalar_t*>(j.vT);
  io.mT = static_cast<scalar_t*>(j.mT);
  io.gx = static_cast<scalar_t*>(j.gx);
  io.gv0 = static_cast<scalar_t*>(j.gv0);
  io.gm0 = static_cast<scalar_t*>(j.gm0);
  io.ckpt = j.ckpt;
  io.N = j.N;
  io.n0 = 0;
  io.v_init = j.v_init;
  io.save = j.save;
  return io;
}

template <bool BWD, Storage S, bool IS_CLIF, int RESET, bool STREAM>
void run_groups(const clif::CpuJob& job, int64_t g_begin, int64_t g_end) {
  const Params<float> p = params_of(job);
  auto io = io_of<S, STREAM>(job);
  for (int64_t g = g_begin; g < g_end; ++g) {
    io.n0 = g * clif::kAvx512Lanes;
    if (BWD) {
      avx512::clif::backward_sequence<IS_CLIF, 1, RESET>(p, job.T, io);
    } else {
      avx512::clif::forward_sequence<IS_CLIF, 1, RESET>(p, job.T, io);
    }
  }
  // Streaming stores are weakly ordered: make them visible before the caller's threads join.
  if (STREAM) _mm_sfence();
}

// Streaming stores for the [T, N] output (spikes or grad_x) when every row is aligned to a
// vector's 16 values (64 bytes for fp32, 32 for the 16-bit types; streaming stores need it) and
// the output is large: the kernel never reads it back, and it is far larger than the 2 MiB L2 of
// a core here. A stand-alone driver of this build (T=8, N=2^20, fp32, 2 threads, inputs rotating
// over 4 buffers, best of 12, three alternating runs, 2026-11-28): forward 4.7-5.2 ms with plain
// stores, 4.2-4.6 streamed; backward 7.8-9.3 and 7.1.
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

// The job's storage, neuron, reset mode and store kind as template constants: 3 x 2 x 2 x 2
// instantiations per direction.
template <bool BWD>
void dispatch(const clif::CpuJob& job, int64_t g_begin, int64_t g_end) {
  auto with_storage = [&](auto storage) {
    constexpr Storage S = decltype(storage)::value;
    const bool stream =
        stream_output(BWD ? job.gx : job.spikes, job.T, job.N, S == Storage::kF32 ? 4 : 2);
    with_flag(job.is_clif, [&](auto is_clif) {
      with_flag(job.hard != 0.0f, [&](auto hard) {
        with_flag(stream, [&](auto streamed) {
          constexpr int RESET = decltype(hard)::value ? avx512::clif::kHardReset
                                                      : avx512::clif::kSoftReset;
          run_groups<BWD, S, decltype(is_clif)::value, RESET, decltype(streamed)::value>(
              job, g_begin, g_end);
        });
      });
    });
  };
  switch (job.storage) {
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

void clif::clif_fwd_avx512(const CpuJob& job, int64_t g_begin, int64_t g_end) {
  dispatch<false>(job, g_begin, g_end);
}

void clif::clif_bwd_avx512(const CpuJob& job, int64_t g_begin, int64_t g_end) {
  dispatch<true>(job, g_begin, g_end);
}

#pragma GCC pop_options
#else
// Not an x86-64 GCC/Clang build: cpu_has_avx512() is false and these are never called.
void clif::clif_fwd_avx512(const CpuJob&, int64_t, int64_t) {}
void clif::clif_bwd_avx512(const CpuJob&, int64_t, int64_t) {}
#endif
