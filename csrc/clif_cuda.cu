// Hand-written CUDA kernels: one thread per group of L neighbouring neurons, the loop over T
// inside, state in fp32 registers, the shared per-neuron core from clif_core.h.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <Python.h>
#include <torch/library.h>

#include "clif_host.h"

extern "C" {
// Importing this module registers the CUDA implementations of the clif_fused ops.
PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1,
                                          nullptr};
  return PyModule_Create(&module_def);
}
}

namespace clif {
namespace {

// Four neighbours per thread: a 16-byte load per row in fp32 (8 bytes in fp16/bf16); the
// backward's recompute arrays then take 2 * 8 * 4 = 64 registers.
constexpr int kVec = 4;
constexpr int kThreads = 256;

template <typename scalar_t, int L, bool IS_CLIF>
__global__ void __launch_bounds__(kThreads)
    clif_fwd_kernel(GroupIO<scalar_t, float, L, true> io, Params<float> p, int64_t T,
                    int64_t groups) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= groups) return;
  io.n0 = g * L;
  forward_sequence<IS_CLIF, L>(p, T, io);
}

template <typename scalar_t, int L, bool IS_CLIF>
__global__ void __launch_bounds__(kThreads)
    clif_bwd_kernel(GroupIO<scalar_t, float, L, true> io, Params<float> p, int64_t T,
                    int64_t groups) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= groups) return;
  io.n0 = g * L;
  backward_sequence<IS_CLIF, L>(p, T, io);
}

bool aligned(const void* ptr, size_t bytes) {
  return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

// Vector access needs N to be a multiple of kVec and every row pointer aligned to the vector.
template <typename scalar_t>
bool can_vectorize(const GroupData<scalar_t, float>& io, int64_t N) {
  const size_t b = sizeof(scalar_t) * kVec;
  return N % kVec == 0 && aligned(io.x, b) && aligned(io.v0, b) && aligned(io.m0, b) &&
         aligned(io.spikes, b) && aligned(io.vT, b) && aligned(io.mT, b) && aligned(io.gs, b) &&
         aligned(io.gvT, b) && aligned(io.gmT, b) && aligned(io.gx, b) && aligned(io.gv0, b) &&
         aligned(io.gm0, b);
}

template <typename scalar_t, int L, typename Launch>
void launch_groups(const GroupData<scalar_t, float>& data, const Launch& launch) {
  const GroupIO<scalar_t, float, L, true> io(data);
  const int64_t groups = data.N / L;
  const int64_t blocks = (groups + kThreads - 1) / kThreads;
  launch(io, groups, static_cast<unsigned>(blocks), at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define CLIF_DISPATCH_CUDA_TYPES(TYPE, NAME, ...)                                 \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)          \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)       \
                                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

FwdResult fwd_cuda(const at::Tensor& x, const OptTensor& v0, const OptTensor& m0, double tau,
                   double v_threshold, c10::optional<double> v_reset, bool decay_input,
                   bool is_clif, bool save, int64_t surrogate, double alpha, bool detach_reset) {
  FwdResult out = prepare_fwd(x, v0, m0, tau, v_threshold, surrogate, alpha, is_clif, save,
                              c10::DeviceType::CUDA);
  const int64_t T = x.size(0), N = x.size(1);
  if (N == 0) return out;
  const c10::cuda::CUDAGuard guard(x.device());
  CLIF_DISPATCH_CUDA_TYPES(x.scalar_type(), "clif_fwd_cuda", [&] {
    const auto p = make_params<float>(tau, v_threshold, v_reset, decay_input, surrogate, alpha,
                                      detach_reset);
    const auto io = fwd_io<scalar_t, float>(out, x, v0, m0, is_clif, p.v_init);
    const bool vec = can_vectorize<scalar_t>(io, N);
    CLIF_BOOL_SWITCH(is_clif, IS_CLIF, [&] {
      CLIF_BOOL_SWITCH(vec, VEC, [&] {
        constexpr int L = VEC ? kVec : 1;
        launch_groups<scalar_t, L>(io, [&](const auto& gio, int64_t groups, unsigned blocks,
                                              cudaStream_t stream) {
          clif_fwd_kernel<scalar_t, L, IS_CLIF><<<blocks, kThreads, 0, stream>>>(gio, p, T,
                                                                                 groups);
        });
      });
    });
  });
  return out;
}

BwdResult bwd_cuda(const at::Tensor& x, const OptTensor& v0, const OptTensor& m0,
                   const at::Tensor& ckpt, const OptTensor& gs, const OptTensor& gvT,
                   const OptTensor& gmT, double tau, double v_threshold,
                   c10::optional<double> v_reset, bool decay_input, int64_t surrogate,
                   double alpha, bool detach_reset, bool is_clif) {
  BwdResult out = prepare_bwd(x, v0, m0, ckpt, gs, gvT, gmT, tau, v_threshold, surrogate, alpha,
                              is_clif, c10::DeviceType::CUDA);
  const int64_t T = x.size(0), N = x.size(1);
  if (N == 0) return out;
  const c10::cuda::CUDAGuard guard(x.device());
  CLIF_DISPATCH_CUDA_TYPES(x.scalar_type(), "clif_bwd_cuda", [&] {
    const auto p = make_params<float>(tau, v_threshold, v_reset, decay_input, surrogate, alpha,
                                      detach_reset);
    const auto io = bwd_io<scalar_t, float>(out, x, v0, m0, ckpt, gs, gvT, gmT,
                                                        is_clif, p.v_init);
    const bool vec = can_vectorize<scalar_t>(io, N);
    CLIF_BOOL_SWITCH(is_clif, IS_CLIF, [&] {
      CLIF_BOOL_SWITCH(vec, VEC, [&] {
        constexpr int L = VEC ? kVec : 1;
        launch_groups<scalar_t, L>(io, [&](const auto& gio, int64_t groups, unsigned blocks,
                                              cudaStream_t stream) {
          clif_bwd_kernel<scalar_t, L, IS_CLIF><<<blocks, kThreads, 0, stream>>>(gio, p, T,
                                                                                 groups);
        });
      });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(clif_fused, CUDA, m) {
  m.impl("fwd", &fwd_cuda);
  m.impl("bwd", &bwd_cuda);
}

}  // namespace clif
