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
// slower (T=8, N=2^20, one thread, 2026-11-28): the T rows of a group sit N*4 bytes apart, a
// power of two for common N, so their lines compete for the same cache sets; longer runs per
// row amortise that. The backward's stack arrays take 4 * 8 * 64 floats (8 KiB). This is the
// portable build's group; the AVX-512 build's is kAvx512Lanes.
constexpr int kLanes = 64;

// Subnormal operands cost a microcode assist per instruction on x86. The compiler-vectorised
// segment recompute of the backward met them (although no value it stores is subnormal, as a
// scalar build that classifies every value showed), and flushing them took its backward from 327
// to 140 ms (SSE2) and from 69 to 31 ms (GCC's AVX-512 vectorisation, since replaced) on one
// core, T=8, N=2^20. The flags are set for the kernel's own loops only (both builds) and
// restored after; what they change are values under 1.2e-38.
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
CpuJob job_of(const Params<float>& p, const GroupData<scalar_t, float>& d, int64_t T,
              bool is_clif, CpuStorage storage) {
  CpuJob j;
  j.gamma = p.gamma; j.c = p.c; j.b = p.b; j.inv_tau = p.inv_tau; j.th = p.th;
  j.v_reset = p.v_reset; j.v_init = p.v_init; j.alpha = p.alpha; j.hard = p.hard;
  j.keep_reset = p.keep_reset; j.surrogate = p.surrogate; j.is_clif = is_clif; j.save = d.save;
  j.storage = storage; j.T = T; j.N = d.N;
  j.x = d.x; j.v0 = d.v0; j.m0 = d.m0; j.gs = d.gs; j.gvT = d.gvT; j.gmT = d.gmT;
  j.ckpt = d.ckpt; j.spikes = d.spikes; j.vT = d.vT; j.mT = d.mT; j.gx = d.gx; j.gv0 = d.gv0;
  j.gm0 = d.gm0;
  return j;
}

template <typename scalar_t>
using acc_type = typename std::conditional<std::is_same<scalar_t, double>::value, double,
                                           float>::type;

// Runs `body(io)` for every group of neurons: full groups of W, then the tail one by one.
// `full_groups(begin, end)`, when given, runs the full groups instead (the AVX-512 build).
template <int W = kLanes, typename scalar_t, typename acc_t, typename Body,
          typename Full = std::nullptr_t>
void for_each_group(const GroupData<scalar_t, acc_t>& data, int64_t work_per_neuron,
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
      GroupIO<scalar_t, acc_t, W, false> io(data);
      for (int64_t g = begin; g < end; ++g) {
        io.n0 = g * W;
        body(io);
      }
    }
  });
  FlushDenormals flush;
  GroupIO<scalar_t, acc_t, 1, false> io(data);
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
bool run_avx512(const Params<acc_t>& p, const GroupData<scalar_t, acc_t>& data, int64_t T,
                bool is_clif, const Body& body) {
  if constexpr (storage_of<scalar_t>() < 0 || !std::is_same<acc_t, float>::value) {
    return false;
  } else {
    if (!use_avx512()) return false;
    const CpuJob job =
        job_of(p, data, T, is_clif, static_cast<CpuStorage>(storage_of<scalar_t>()));
    for_each_group<kAvx512Lanes>(data, BWD ? 2 * T : T, body, [&](int64_t begin, int64_t end) {
      if (BWD) {
        clif_bwd_avx512(job, begin, end);
      } else {
        clif_fwd_avx512(job, begin, end);
      }
    });
    return true;
  }
}

FwdResult fwd_cpu(const at::Tensor& x, const OptTensor& v0, const OptTensor& m0, double tau,
                  double v_threshold, c10::optional<double> v_reset, bool decay_input,
                  bool is_clif, bool save, int64_t surrogate, double alpha, bool detach_reset) {
  FwdResult out = prepare_fwd(x, v0, m0, tau, v_threshold, surrogate, alpha, is_clif, save,
                              c10::DeviceType::CPU, cpu_output_cache());
  const int64_t T = x.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "clif_fwd_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const auto p = make_params<acc_t>(tau, v_threshold, v_reset, decay_input, surrogate, alpha,
                                      detach_reset);
    const auto data = fwd_io<scalar_t, acc_t>(out, x, v0, m0, is_clif, p.v_init);
    CLIF_BOOL_SWITCH(is_clif, IS_CLIF, [&] {
      auto body = [&](auto& io) {
        constexpr int L = std::remove_reference_t<decltype(io)>::lanes;
        forward_sequence<IS_CLIF, L>(p, T, io);
      };
      if (!run_avx512<false>(p, data, T, is_clif, body)) for_each_group(data, T, body);
    });
  });
  return out;
}

BwdResult bwd_cpu(const at::Tensor& x, const OptTensor& v0, const OptTensor& m0,
                  const at::Tensor& ckpt, const OptTensor& gs, const OptTensor& gvT,
                  const OptTensor& gmT, double tau, double v_threshold,
                  c10::optional<double> v_reset, bool decay_input, int64_t surrogate,
                  double alpha, bool detach_reset, bool is_clif) {
  BwdResult out = prepare_bwd(x, v0, m0, ckpt, gs, gvT, gmT, tau, v_threshold, surrogate, alpha,
                              is_clif, c10::DeviceType::CPU, cpu_output_cache());
  const int64_t T = x.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "clif_bwd_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const auto p = make_params<acc_t>(tau, v_threshold, v_reset, decay_input, surrogate, alpha,
                                      detach_reset);
    const auto data = bwd_io<scalar_t, acc_t>(out, x, v0, m0, ckpt, gs, gvT, gmT, is_clif,
                                              p.v_init);
    CLIF_BOOL_SWITCH(is_clif, IS_CLIF, [&] {
      auto body = [&](auto& io) {
        constexpr int L = std::remove_reference_t<decltype(io)>::lanes;
        backward_sequence<IS_CLIF, L>(p, T, io);
      };
      if (!run_avx512<true>(p, data, T, is_clif, body)) for_each_group(data, 2 * T, body);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(clif_fused, CPU, m) {
  m.impl("fwd", &fwd_cpu);
  m.impl("bwd", &bwd_cpu);
}

}  // namespace clif
