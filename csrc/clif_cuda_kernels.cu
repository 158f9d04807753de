// Hand-written CUDA kernels: one thread per group of L neighbouring neurons, the loop over T
// inside, state in fp32 registers, the per-neuron core of clif_core.h.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "clif_cuda.h"

namespace clif {
namespace {

constexpr int kThreads = 256;

// One thread per group of L neurons; BWD picks the backward driver, SG the surrogate (a
// template constant, or kAnySurrogate: read at run time), PREFETCH the load order (clif_core.h).
// At (256, 2) ptxas keeps every variant spill-free: without the minimum of 2 blocks it capped
// two fp16/bf16 backward variants at 64 registers and spilled.
template <bool BWD, typename scalar_t, int L, bool IS_CLIF, int SG, bool PREFETCH>
__global__ void __launch_bounds__(kThreads, 2)
    clif_kernel(GroupIO<scalar_t, float, L, true> io, Params<float> p, int64_t T,
                int64_t groups) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= groups) return;
  io.n0 = g * L;
  // The drivers without the fold: these kernels never see one (a folded call launches
  // clif_fold_kernel), and a fold path beside the loop would raise the kernel's register count.
  if constexpr (BWD) {
    backward_steps<IS_CLIF, L, kAnyReset, SG, PREFETCH, false>(p, T, io);
  } else {
    forward_steps<IS_CLIF, L, kAnyReset, PREFETCH, false>(p, T, io);
  }
}

// The folded calls' kernels (u = x * scale + shift (+ residual), clif_core.h): the surrogate
// read at run time, the current load order; the forward at the vector width or 1 neuron per
// thread, the backward at 1 (at 2, the fp32 backward spilled on sm_80 and sm_90: the lanes'
// scale and shift and the residual's loads on top of the segment's rows). 18 kernels beside
// the 84 above, so that those keep their code and registers.
template <bool BWD, typename scalar_t, int L, bool IS_CLIF>
__global__ void __launch_bounds__(kThreads, 2)
    clif_fold_kernel(FoldIO<scalar_t, float, L, true> io, Params<float> p, int64_t T,
                     int64_t groups) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= groups) return;
  io.n0 = g * L;
  if constexpr (BWD) {
    backward_steps<IS_CLIF, L, kAnyReset, kAnySurrogate, true, true>(p, T, io);
  } else {
    forward_steps<IS_CLIF, L, kAnyReset, true, true>(p, T, io);
  }
}

template <bool BWD, typename scalar_t, int L, bool IS_CLIF>
cudaError_t launch_fold(const Params<float>& p, const GroupData<float>& data,
                        cudaStream_t stream) {
  const FoldIO<scalar_t, float, L, true> io(data);
  const int64_t groups = data.N / L;
  const unsigned blocks = static_cast<unsigned>((groups + kThreads - 1) / kThreads);
  clif_fold_kernel<BWD, scalar_t, L, IS_CLIF><<<blocks, kThreads, 0, stream>>>(io, p, data.T,
                                                                             groups);
  return cudaGetLastError();
}

template <bool BWD, typename scalar_t, int L, bool IS_CLIF, int SG, bool PREFETCH>
cudaError_t launch(const Params<float>& p, const GroupData<float>& data, cudaStream_t stream) {
  const GroupIO<scalar_t, float, L, true> io(data);
  const int64_t groups = data.N / L;
  const unsigned blocks = static_cast<unsigned>((groups + kThreads - 1) / kThreads);
  clif_kernel<BWD, scalar_t, L, IS_CLIF, SG, PREFETCH>
      <<<blocks, kThreads, 0, stream>>>(io, p, data.T, groups);
  return cudaGetLastError();
}

template <bool BWD, typename scalar_t, bool IS_CLIF>
cudaError_t dispatch_neuron(const Params<float>& p, const GroupData<float>& data,
                            KernelVariant variant, int lanes, cudaStream_t stream) {
  if (data.scale != nullptr || data.residual != nullptr) {  // the fold: any variant
    if constexpr (BWD) {
      return launch_fold<true, scalar_t, 1, IS_CLIF>(p, data, stream);
    } else {
      return lanes == 1 ? launch_fold<false, scalar_t, 1, IS_CLIF>(p, data, stream)
                        : launch_fold<false, scalar_t, kFwdLanes, IS_CLIF>(p, data, stream);
    }
  }
  if (lanes == 1) {  // the unaligned fallback: the surrogate read at run time
    return launch<BWD, scalar_t, 1, IS_CLIF, kAnySurrogate, true>(p, data, stream);
  }
  if (variant == KernelVariant::kPrevious) {
    return launch<BWD, scalar_t, kPreviousLanes, IS_CLIF, kAnySurrogate, false>(p, data, stream);
  }
  if constexpr (BWD) {
    cudaError_t err = cudaSuccess;
    with_surrogate(p.surrogate, [&](auto sg) {
      err = launch<true, scalar_t, kBwdLanes, IS_CLIF, decltype(sg)::value, true>(p, data,
                                                                                  stream);
    });
    return err;
  } else {
    return launch<false, scalar_t, kFwdLanes, IS_CLIF, kAnySurrogate, true>(
        p, data, stream);
  }
}

template <bool BWD, typename scalar_t>
cudaError_t dispatch(const Params<float>& p, const GroupData<float>& data, KernelVariant variant,
                     int lanes, cudaStream_t stream) {
  if (data.N == 0) return cudaSuccess;
  return p.is_clif ? dispatch_neuron<BWD, scalar_t, true>(p, data, variant, lanes, stream)
                   : dispatch_neuron<BWD, scalar_t, false>(p, data, variant, lanes, stream);
}

}  // namespace

template <typename scalar_t>
cudaError_t launch_fwd(const Params<float>& p, const GroupData<float>& data,
                       KernelVariant variant, int lanes, cudaStream_t stream) {
  return dispatch<false, scalar_t>(p, data, variant, lanes, stream);
}

template <typename scalar_t>
cudaError_t launch_bwd(const Params<float>& p, const GroupData<float>& data,
                       KernelVariant variant, int lanes, cudaStream_t stream) {
  return dispatch<true, scalar_t>(p, data, variant, lanes, stream);
}

#define CLIF_INSTANTIATE(T)                                                                  \
  template cudaError_t launch_fwd<T>(const Params<float>&, const GroupData<float>&,           \
                                     KernelVariant, int, cudaStream_t);                       \
  template cudaError_t launch_bwd<T>(const Params<float>&, const GroupData<float>&,           \
                                     KernelVariant, int, cudaStream_t);
CLIF_INSTANTIATE(float)
CLIF_INSTANTIATE(c10::Half)
CLIF_INSTANTIATE(c10::BFloat16)
#undef CLIF_INSTANTIATE

}  // namespace clif
