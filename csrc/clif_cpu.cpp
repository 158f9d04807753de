// Fused C++ CPU kernel: the shared per-neuron core over groups of neighbouring neurons, in
// parallel over groups. With AVX-512 (fp32, bf16, fp16) a group runs in clif_cpu_avx512.cpp on
// SIMD registers; otherwise, and for fp64, here, where the core's lane loops run over contiguous
// memory so that the compiler can vectorise them.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

#include "clif_cpu_cache.h"
#include "clif_cpu_isa.h"
#include "clif_host.h"

namespace clif {
namespace {

// 64 lanes: 256 contiguous bytes of fp32 per row and step. At 16 lanes the forward ran 3x
// slower (benchmarks/NOTES.md): the T rows of a group sit N*4 bytes apart, a power of two for
// common N, so their lines compete for the same cache sets; longer runs per row amortise that.
// The backward's stack arrays take 4 * 8 * 64 floats (8 KiB). This is the portable build's
// group; the AVX-512 build's is kAvx512Lanes.
constexpr int kLanes = 64;

// Subnormal operands cost a microcode assist per instruction on x86. The compiler-vectorised
// segment recompute of the backward met them (although no value it stores is subnormal, as a
// scalar build that classifies every value showed), and flushing them more than halved its
// backward (benchmarks/NOTES.md). The flags are set for the kernel's own loops only (both
// builds) and restored after; what they change are values under 1.2e-38.
class FlushDenormals {
 public:
#if defined(__x86_64__) || defined(_M_X64)
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#endif
};

// The AVX-512 build (fp32, bf16 and fp16 storage), unless the processor lacks it or
// CLIF_KERNELS_CPU_ISA=baseline asks for the portable build (the tests compare the two).
bool use_avx512() {
  static const bool has = cpu_has_avx512();
  const char* isa = std::getenv("CLIF_KERNELS_CPU_ISA");
  return has && !(isa && std::strcmp(isa, "baseline") == 0);
}

template <typename scalar_t>
using acc_type = typename std::conditional<std::is_same<scalar_t, double>::value, double,
                                           float>::type;

// Runs `body(io)` for every group of neurons: full groups of W, then the tail one by one.
// `full_groups(begin, end)`, when given, runs the full groups instead (the AVX-512 build).
template <typename scalar_t, int W = kLanes, typename acc_t, typename Body,
          typename Full = std::nullptr_t>
void for_each_group(const GroupData<acc_t>& data, int64_t work_per_neuron,
                    const Body& body, const Full& full_groups = nullptr) {
  const int64_t N = data.N, groups = N / W;
  // Chunks of at least ~32k element-steps, so threads are not woken for tiny work.
  const int64_t grain =
      std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_neuron * W));
  at::parallel_for(0, groups, grain, [&](int64_t begin, int64_t end) {
    FlushDenormals flush;
    if constexpr (!std::is_same<Full, std::nullptr_t>::value) {
      full_groups(begin, end);
    } else {
      FoldIO<scalar_t, acc_t, W, false> io(data);
      for (int64_t g = begin; g < end; ++g) {
        io.n0 = g * W;
        body(io);
      }
    }
  });
  FlushDenormals flush;
  FoldIO<scalar_t, acc_t, 1, false> io(data);
  for (int64_t n = groups * W; n < N; ++n) {
    io.n0 = n;
    body(io);
  }
}

// The AVX-512 build's name for a storage type; fp64 has none (it keeps the portable loops).
template <typename scalar_t>
constexpr int storage_of() {
  return std::is_same<scalar_t, float>::value            ? int(CpuStorage::kF32)
         : std::is_same<scalar_t, at::BFloat16>::value ? int(CpuStorage::kBF16)
         : std::is_same<scalar_t, at::Half>::value     ? int(CpuStorage::kF16)
                                                         : -1;
}

// Runs the full groups through the AVX-512 build when it applies; false otherwise.
template <bool BWD, typename scalar_t, typename acc_t, typename Body>
bool run_avx512(const Params<acc_t>& p, const GroupData<acc_t>& data, const Body& body) {
  if constexpr (storage_of<scalar_t>() < 0 || !std::is_same<acc_t, float>::value) {
    return false;
  } else {
    if (!use_avx512()) return false;
    const auto storage = static_cast<CpuStorage>(storage_of<scalar_t>());
    for_each_group<scalar_t, kAvx512Lanes>(
        data, BWD ? 2 * data.T : data.T, body, [&](int64_t begin, int64_t end) {
          if (BWD) {
            clif_bwd_avx512(p, data, storage, begin, end);
          } else {
            clif_fwd_avx512(p, data, storage, begin, end);
          }
        });
    return true;
  }
}

// The neuron and the reset mode become template constants on the CPU (the GPU reads the reset
// mode at run time, clif_core.h).
template <bool BWD, typename scalar_t>
void run_cpu(const Params<acc_type<scalar_t>>& p, const GroupData<acc_type<scalar_t>>& data) {
  CLIF_BOOL_SWITCH(p.is_clif, IS_CLIF, [&] {
    CLIF_BOOL_SWITCH(p.hard, HARD, [&] {
      constexpr int RESET = HARD ? kHardReset : kSoftReset;
      auto body = [&](auto& io) {
        constexpr int L = std::remove_reference_t<decltype(io)>::lanes;
        if (BWD) {
          backward_sequence<IS_CLIF, L, RESET>(p, data.T, io);
        } else {
          forward_sequence<IS_CLIF, L, RESET>(p, data.T, io);
        }
      };
      if (!run_avx512<BWD, scalar_t>(p, data, body)) {
        for_each_group<scalar_t>(data, BWD ? 2 * data.T : data.T, body);
      }
    });
  });
}

}  // namespace

template <>
c10::Allocator* output_allocator<c10::DeviceType::CPU>() {
  return cpu_output_cache();
}

template <>
void run_fwd<c10::DeviceType::CPU>(const FwdResult& out, const Tensor& x, const OptTensor& v0,
                                   const OptTensor& m0, const OpOptions& o, const Fold& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "clif_fwd_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    run_cpu<false, scalar_t>(make_params<acc_t>(o),
                             fwd_io<acc_t>(out, x, v0, m0, o.is_clif, f));
  });
}

template <>
void run_bwd<c10::DeviceType::CPU>(const BwdResult& out, const Tensor& x, const OptTensor& v0,
                                   const OptTensor& m0, const Tensor& ckpt, const OptTensor& gs,
                                   const OptTensor& gvT, const OptTensor& gmT,
                                   const OpOptions& o, const Fold& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "clif_bwd_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    run_cpu<true, scalar_t>(make_params<acc_t>(o),
                            bwd_io<acc_t>(out, x, v0, m0, ckpt, gs, gvT, gmT, o.is_clif, f));
  });
}

TORCH_LIBRARY_IMPL(clif_fused, CPU, m) {
  m.impl("fwd", &fwd_op<c10::DeviceType::CPU>);
  m.impl("bwd", &bwd_op<c10::DeviceType::CPU>);
}

}  // namespace clif
