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
bool can_vectorize(const GroupData<float>& d, size_t elt) {
  const size_t b = elt * kVec;
  return d.N % kVec == 0 && aligned(d.x, b) && aligned(d.v0, b) && aligned(d.m0, b) &&
         aligned(d.spikes, b) && aligned(d.vT, b) && aligned(d.mT, b) && aligned(d.gs, b) &&
         aligned(d.gvT, b) && aligned(d.gmT, b) && aligned(d.gx, b) && aligned(d.gv0, b) &&
         aligned(d.gm0, b);
}

#define CLIF_DISPATCH_CUDA_TYPES(TYPE, NAME, ...)                                       \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)                \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)             \
                                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

}  // namespace

template <>
c10::Allocator* output_allocator<c10::DeviceType::CUDA>() {
  return nullptr;  // torch's caching allocator
}

template <>
void run_fwd<c10::DeviceType::CUDA>(const FwdResult& out, const Tensor& x, const OptTensor& v0,
                                    const OptTensor& m0, const OpOptions& o) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto p = make_params<float>(o);
  const auto data = fwd_io<float>(out, x, v0, m0, o.is_clif);
  CLIF_DISPATCH_CUDA_TYPES(x.scalar_type(), "clif_fwd_cuda", [&] {
    C10_CUDA_CHECK(launch_fwd<scalar_t>(p, data, can_vectorize(data, sizeof(scalar_t)),
                                        at::cuda::getCurrentCUDAStream()));
  });
}

template <>
void run_bwd<c10::DeviceType::CUDA>(const BwdResult& out, const Tensor& x, const OptTensor& v0,
                                    const OptTensor& m0, const Tensor& ckpt, const OptTensor& gs,
                                    const OptTensor& gvT, const OptTensor& gmT,
                                    const OpOptions& o) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto p = make_params<float>(o);
  const auto data = bwd_io<float>(out, x, v0, m0, ckpt, gs, gvT, gmT, o.is_clif);
  CLIF_DISPATCH_CUDA_TYPES(x.scalar_type(), "clif_bwd_cuda", [&] {
    C10_CUDA_CHECK(launch_bwd<scalar_t>(p, data, can_vectorize(data, sizeof(scalar_t)),
                                        at::cuda::getCurrentCUDAStream()));
  });
}

TORCH_LIBRARY_IMPL(clif_fused, CUDA, m) {
  m.impl("fwd", &fwd_op<c10::DeviceType::CUDA>);
  m.impl("bwd", &bwd_op<c10::DeviceType::CUDA>);
}

}  // namespace clif
