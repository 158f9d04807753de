// Schemas of the clif_fused ops. This file compiles without nvcc; the CPU implementation is in
// clif_cpu.cpp and the CUDA one in clif_cuda.cpp with its kernels in clif_cuda_kernels.cu (a
// separate extension, loaded when built).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// An importable module with nothing in it: importing it runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(clif_fused, m) {
  // The fused op pair (clif_kernels/ops.py describes it; its FWD_SCHEMA and BWD_SCHEMA must
  // equal these, which a test checks). The options after the tensors are ops.FusedOptions and
  // OpOptions (clif_host.h), in this order; surrogate: the index of options.SURROGATES (enum
  // Surrogate, clif_core.h), alpha and beta its parameters. The forward does not use the
  // surrogate, alpha, beta or detach_reset, but carries them so that one autograd formula serves
  // every backend.
  m.def(
      "fwd(Tensor x, Tensor? v0, Tensor? m0, float tau, float v_threshold, float? v_reset, "
      "bool decay_input, int surrogate, float alpha, float beta, bool detach_reset, "
      "bool is_clif, bool save) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "bwd(Tensor x, Tensor? v0, Tensor? m0, Tensor ckpt, Tensor? grad_spikes, "
      "Tensor? grad_vT, Tensor? grad_mT, float tau, float v_threshold, float? v_reset, "
      "bool decay_input, int surrogate, float alpha, float beta, bool detach_reset, "
      "bool is_clif) "
      "-> (Tensor, Tensor, Tensor)");
}
