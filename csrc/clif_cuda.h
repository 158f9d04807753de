// Launchers of the CUDA kernels. Declared without torch headers, so that clif_cuda_kernels.cu
// compiles with nvcc in seconds and the torch glue (clif_cuda.cpp) compiles with the host
// compiler.
#pragma once

#include <cuda_runtime_api.h>

#include "clif_core.h"

namespace clif {

// Which kernels run: the current ones, or the previous design (loads next to their uses, the
// surrogate switched per step, 4 neurons per thread both ways), kept buildable beside them until
// a GPU has timed the two in one process (CLIF_KERNELS_GPU_KERNELS=previous, read per launch).
enum class KernelVariant { kCurrent, kPrevious };

// Neighbours per thread on the vector path. Forward: 8, so that each row is loaded in 16-byte
// pieces (one in fp16/bf16, two in fp32) and a thread interleaves 8 independent recurrences.
// Backward: 2, so that a whole segment's x and grad_spikes (2 x 8 steps x 2 neurons) fit in
// registers beside h and m_{t-1} without spills.
constexpr int kFwdLanes = 8;
constexpr int kBwdLanes = 2;
constexpr int kPreviousLanes = 4;

// Launch the forward or backward over all groups of `data` (storage type scalar_t) on `stream`.
// `lanes` is the neighbours per thread the caller checked the tensors for (see lanes_for in
// clif_cuda.cpp): the variant's vector width, or 1 (any N, any alignment). Returns the launch's
// error code.
template <typename scalar_t>
cudaError_t launch_fwd(const Params<float>& p, const GroupData<float>& data,
                       KernelVariant variant, int lanes, cudaStream_t stream);

template <typename scalar_t>
cudaError_t launch_bwd(const Params<float>& p, const GroupData<float>& data,
                       KernelVariant variant, int lanes, cudaStream_t stream);

}  // namespace clif
