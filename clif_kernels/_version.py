"""The package's version, defined here only: pyproject.toml reads it (setuptools' `attr:`, parsed
without importing the package), and so do `clif_kernels.__version__` and `clif-kernels --version`."""
__version__ = "0.1.0"
