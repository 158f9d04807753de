"""Build script. The package is pure Python plus Triton; the compiled extensions come later."""
from setuptools import setup

setup()
