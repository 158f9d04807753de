// Launchers of the CUDA kernels. Declared without torch headers, so that clif_cuda_kernels.cu
// compiles with nvcc in seconds and the torch glue (clif_cuda.cpp) compiles with the host
// compiler.
#pragma once

#include <cuda_runtime_api.h>

#include "clif_core.h"

namespace clif {

// Neighbours per thread on the vector path: a 16-byte load per row in fp32 (8 in fp16/bf16).
constexpr int kVec = 4;

// Launch the forward or backward over all groups of `data` (storage type scalar_t) on `stream`.
// `vec` selects kVec neighbours per thread (N % kVec == 0 and every pointer aligned to kVec
// elements), else one. Returns the launch's error code.
template <typename scalar_t>
cudaError_t launch_fwd(const Params<float>& p, const GroupData<float>& data, bool vec,
                       cudaStream_t stream);

template <typename scalar_t>
cudaError_t launch_bwd(const Params<float>& p, const GroupData<float>& data, bool vec,
                       cudaStream_t stream);

}  // namespace clif
