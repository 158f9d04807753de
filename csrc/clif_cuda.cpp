// Torch glue of the CUDA backend: input checks, output allocation, device guard, current stream,
// and the check of every launch. The kernels are in clif_cuda_kernels.cu.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <Python.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

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

// CLIF_KERNELS_GPU_KERNELS=previous selects the previous kernels (clif_cuda.h). Read at every
// launch, so that one process can time both (os.environ in Python sets the C environment).
KernelVariant kernel_variant() {
  const char* v = std::getenv("CLIF_KERNELS_GPU_KERNELS");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "current") == 0) return KernelVariant::kCurrent;
  TORCH_CHECK(std::strcmp(v, "previous") == 0,
              "CLIF_KERNELS_GPU_KERNELS must be 'current' or 'previous', got '", v, "'");
  return KernelVariant::kPrevious;
}

// The neighbours per thread a launch can use: `width` (the kernel's vector width) when N is a
// multiple of it and every row start is aligned to width elements, else 1.
int lanes_for(const GroupData<float>& d, size_t elt, int width) {
  const size_t b = elt * width;
  const bool ok = d.N % width == 0 && aligned(d.x, b) && aligned(d.v0, b) && aligned(d.m0, b) &&
                  aligned(d.spikes, b) && aligned(d.vT, b) && aligned(d.mT, b) &&
                  aligned(d.gs, b) && aligned(d.gvT, b) && aligned(d.gmT, b) &&
                  aligned(d.gx, b) && aligned(d.gv0, b) && aligned(d.gm0, b) &&
                  aligned(d.residual, b);
  return ok ? width : 1;
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
                                    const OptTensor& m0, const OpOptions& o, const Fold& f) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto p = make_params<float>(o);
  const auto data = fwd_io<float>(out, x, v0, m0, o.is_clif, f);
  const KernelVariant variant = kernel_variant();
  CLIF_DISPATCH_CUDA_TYPES(x.scalar_type(), "clif_fwd_cuda", [&] {
    // The fold has kernels of the current design only.
    const bool fold = data.scale != nullptr || data.residual != nullptr;
    const int width =
        variant == KernelVariant::kPrevious && !fold ? kPreviousLanes : kFwdLanes;
    C10_CUDA_CHECK(launch_fwd<scalar_t>(p, data, variant,
                                        lanes_for(data, sizeof(scalar_t), width),
                                        at::cuda::getCurrentCUDAStream()));
  });
}

template <>
void run_bwd<c10::DeviceType::CUDA>(const BwdResult& out, const Tensor& x, const OptTensor& v0,
                                    const OptTensor& m0, const Tensor& ckpt, const OptTensor& gs,
                                    const OptTensor& gvT, const OptTensor& gmT,
                                    const OpOptions& o, const Fold& f) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto p = make_params<float>(o);
  const auto data = bwd_io<float>(out, x, v0, m0, ckpt, gs, gvT, gmT, o.is_clif, f);
  const KernelVariant variant = kernel_variant();
  CLIF_DISPATCH_CUDA_TYPES(x.scalar_type(), "clif_bwd_cuda", [&] {
    // The fold's backward runs 1 neuron per thread (clif_cuda_kernels.cu).
    const bool fold = data.scale != nullptr || data.residual != nullptr;
    const int width = fold ? 1 : variant == KernelVariant::kPrevious ? kPreviousLanes : kBwdLanes;
    C10_CUDA_CHECK(launch_bwd<scalar_t>(p, data, variant,
                                        lanes_for(data, sizeof(scalar_t), width),
                                        at::cuda::getCurrentCUDAStream()));
  });
}

TORCH_LIBRARY_IMPL(clif_fused, CUDA, m) {
  m.impl("fwd", &fwd_op<c10::DeviceType::CUDA>);
  m.impl("bwd", &bwd_op<c10::DeviceType::CUDA>);
}

}  // namespace clif
