// The importable module of the C++ extension. This file compiles without nvcc; the CPU
// implementation of the clif_fused ops is in clif_cpu.cpp and the CUDA one in clif_cuda.cpp with
// its kernels in clif_cuda_kernels.cu (a separate extension, loaded when built).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// An importable module with nothing in it: importing it runs the registrations of the library
// (clif_cpu.cpp).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

// The clif_fused ops' schemas are declared once, in Python (clif_kernels/ops.py defines them from
// clif_kernels/options.py's OP_ARGS when the compiled backend is first used); clif_cpu.cpp and
// clif_cuda.cpp register the implementations (clif_host.h's fwd_op and bwd_op), whose parameter
// lists the dispatcher checks against those schemas.
