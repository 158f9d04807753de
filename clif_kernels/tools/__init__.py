"""Tools around the runtime package, reached through `python -m clif_kernels check|bench|demo`:
the comparison with the float64 reference (`verify`, `check`), benchmarks (`benchmark`,
`plot`), and the CLIF-vs-LIF demo (`demo`). A training script imports none of them. The GPU compilers
and the SASS cost model are developer tools and live outside the package, in `dev/`."""
