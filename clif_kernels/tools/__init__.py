"""What the command line runs (`clif-kernels check|bench|bench-model|demo`, parsed and checked by
`clif_kernels/cli.py`): the comparison with the float64 reference (`verify`, `check`), the
benchmarks of the neuron (`benchmark`) and of a spiking ResNet-18's training (`models`,
`bench_model`), and the CLIF-vs-LIF demo (`demo`). A training script imports none of them. The
plots and the model-zoo comparison live in `benchmarks/` of a clone, the GPU compilers and the
SASS cost model in `dev/`."""
