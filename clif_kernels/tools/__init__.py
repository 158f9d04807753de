"""Tools around the runtime package, reached through `python -m clif_kernels check|bench|demo`:
the comparison with the float64 reference (`verify`, `check`), benchmarks (`benchmark`,
`plot`), the CLIF-vs-LIF demo (`demo`), and the compilers that count a GPU kernel's registers
without a GPU (`cuda_aot`, `triton_aot`). A training script imports none of them."""
