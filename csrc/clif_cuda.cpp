// Torch glue of the CUDA backend: input checks, output allocation, device guard, current stream,
// and the check of every launch. The kernels are in clif_cuda_kernels.cu.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <Python.h>
#include <torch/library.h>

#include "clif_cuda.h"
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

bool aligned(const void* ptr, size_t bytes) {
  return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

// The vector path needs N to be a multiple of kVec and every row start aligned to kVec elements.
template <typename scalar_t>
bool can_vectorize(const GroupData<scalar_t, float>& d) {
  const size_t b = sizeof(scalar_t) * kVec;
  return d.N % kVec == 0 && aligned(d.x, b) && aligned(d.v0, b) && aligned(d.m0, b) &&
         aligned(d.spikes, b) && aligned(d.vT, b) && aligned(d.mT, b) && aligned(d.gs, b) &&
         aligned(d.gvT, b) && aligned(d.gmT, b) && aligned(d.gx, b) && aligned(d.gv0, b) &&
         aligned(d.gm0, b);
}

#define CLIF_DISPATCH_CUDA_TYPES(TYPE, NAME, ...)                                       \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)                \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)             \
                                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

FwdResult fwd_cuda(const at::Tensor& x, const OptTensor& v0, const OptTensor& m0, double tau,
                   double v_threshold, c10::optional<double> v_reset, bool decay_input,
                   bool is_clif, bool save, int64_t surrogate, double alpha, bool detach_reset) {
  FwdResult out = prepare_fwd(x, v0, m0, tau, v_threshold, surrogate, alpha, is_clif, save,
                              c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  CLIF_DISPATCH_CUDA_TYPES(x.scalar_type(), "clif_fwd_cuda", [&] {
    const auto p = make_params<float>(tau, v_threshold, v_reset, decay_input, surrogate, alpha,
                                      detach_reset);
    const auto data = fwd_io<scalar_t, float>(out, x, v0, m0, is_clif, p.v_init);
    C10_CUDA_CHECK(launch_fwd<scalar_t>(data, p, x.size(0), is_clif, can_vectorize(data),
                                        at::cuda::getCurrentCUDAStream()));
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
  const c10::cuda::CUDAGuard guard(x.device());
  CLIF_DISPATCH_CUDA_TYPES(x.scalar_type(), "clif_bwd_cuda", [&] {
    const auto p = make_params<float>(tau, v_threshold, v_reset, decay_input, surrogate, alpha,
                                      detach_reset);
    const auto data = bwd_io<scalar_t, float>(out, x, v0, m0, ckpt, gs, gvT, gmT, is_clif,
                                              p.v_init);
    C10_CUDA_CHECK(launch_bwd<scalar_t>(data, p, x.size(0), is_clif, can_vectorize(data),
                                        at::cuda::getCurrentCUDAStream()));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(clif_fused, CUDA, m) {
  m.impl("fwd", &fwd_cuda);
  m.impl("bwd", &bwd_cuda);
}

}  // namespace clif
