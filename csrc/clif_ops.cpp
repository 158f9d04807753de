// Schemas of the clif_fused ops. This file compiles without nvcc; the CPU implementation is in
// clif_cpu.cpp and the CUDA one in clif_cuda.cu (a separate extension, loaded when built).
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
  // x: [T, N] contiguous. Returns (spikes [T, N], vT [N], mT [N] or [0] for LIF, ckpt fp32
  // [n_checkpoints(T), 2, N] or [0, 2, N] without `save`). surrogate: 0 rectangle, 1 sigmoid,
  // 2 atan, 3 triangle; the forward does not use it, detach_reset or alpha, but carries them so
  // one autograd formula serves every backend.
  m.def(
      "fwd(Tensor x, Tensor? v0, Tensor? m0, float tau, float v_threshold, float? v_reset, "
      "bool decay_input, bool is_clif, bool save, int surrogate, float alpha, "
      "bool detach_reset) -> (Tensor, Tensor, Tensor, Tensor)");
  // Returns (grad_x [T, N], grad_v0 [N] or [0], grad_m0 [N] or [0]); missing output gradients
  // count as zero.
  m.def(
      "bwd(Tensor x, Tensor? v0, Tensor? m0, Tensor ckpt, Tensor? grad_spikes, "
      "Tensor? grad_vT, Tensor? grad_mT, float tau, float v_threshold, float? v_reset, "
      "bool decay_input, int surrogate, float alpha, bool detach_reset, bool is_clif) "
      "-> (Tensor, Tensor, Tensor)");
}
