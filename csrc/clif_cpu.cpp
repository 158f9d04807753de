// Fused C++ CPU kernel: the shared per-neuron core over groups of neighbouring neurons, in
// parallel over groups. Inside a group the core's lane loops run over contiguous memory, so the
// compiler can vectorise them.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "clif_host.h"

namespace clif {
namespace {

// 64 lanes: 256 contiguous bytes of fp32 per row and step. At 16 lanes the forward ran 3x
// slower (T=8, N=2^20, one thread, 2026-11-28): the T rows of a group sit N*4 bytes apart, a
// power of two for common N, so their lines compete for the same cache sets; longer runs per
// row amortise that. The backward's stack arrays take 4 * 8 * 64 floats (8 KiB).
constexpr int kLanes = 64;

template <typename scalar_t>
using acc_type = typename std::conditional<std::is_same<scalar_t, double>::value, double,
                                           float>::type;

// Runs `body(io)` for every group of neurons: full groups of kLanes, then the tail one by one.
template <typename scalar_t, typename acc_t, typename Body>
void for_each_group(const GroupData<scalar_t, acc_t>& data, int64_t work_per_neuron,
                    const Body& body) {
  const int64_t N = data.N, groups = N / kLanes;
  // Chunks of at least ~32k element-steps, so threads are not woken for tiny work.
  const int64_t grain =
      std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_neuron * kLanes));
  at::parallel_for(0, groups, grain, [&](int64_t begin, int64_t end) {
    GroupIO<scalar_t, acc_t, kLanes, false> io(data);
    for (int64_t g = begin; g < end; ++g) {
      io.n0 = g * kLanes;
      body(io);
    }
  });
  GroupIO<scalar_t, acc_t, 1, false> io(data);
  for (int64_t n = groups * kLanes; n < N; ++n) {
    io.n0 = n;
    body(io);
  }
}

FwdResult fwd_cpu(const at::Tensor& x, const OptTensor& v0, const OptTensor& m0, double tau,
                  double v_threshold, c10::optional<double> v_reset, bool decay_input,
                  bool is_clif, bool save, int64_t surrogate, double alpha, bool detach_reset) {
  FwdResult out = prepare_fwd(x, v0, m0, tau, v_threshold, surrogate, alpha, is_clif, save,
                              c10::DeviceType::CPU);
  const int64_t T = x.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "clif_fwd_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const auto p = make_params<acc_t>(tau, v_threshold, v_reset, decay_input, surrogate, alpha,
                                      detach_reset);
    CLIF_BOOL_SWITCH(is_clif, IS_CLIF, [&] {
      for_each_group(fwd_io<scalar_t, acc_t>(out, x, v0, m0, is_clif, p.v_init), T,
                     [&](auto& io) {
            constexpr int L = std::remove_reference_t<decltype(io)>::lanes;
            forward_sequence<IS_CLIF, L>(p, T, io);
          });
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
                              is_clif, c10::DeviceType::CPU);
  const int64_t T = x.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "clif_bwd_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const auto p = make_params<acc_t>(tau, v_threshold, v_reset, decay_input, surrogate, alpha,
                                      detach_reset);
    CLIF_BOOL_SWITCH(is_clif, IS_CLIF, [&] {
      for_each_group(bwd_io<scalar_t, acc_t>(out, x, v0, m0, ckpt, gs, gvT, gmT, is_clif,
                                             p.v_init),
                     2 * T, [&](auto& io) {
            constexpr int L = std::remove_reference_t<decltype(io)>::lanes;
            backward_sequence<IS_CLIF, L>(p, T, io);
          });
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
