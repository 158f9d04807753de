"""Developer tools that live only in a clone, outside the installed package: the compilers that
build every GPU kernel variant without a GPU (`cuda_aot`, `triton_aot`) and the static cost model
that reads their SASS (`cost_model`). Run them from the repository root, e.g.
`python -m dev.cost_model`."""
