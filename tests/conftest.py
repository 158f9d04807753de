import os
import sys

# The Triton kernels run on CPU tensors only in the interpreter, and Triton reads this variable
# when the kernels are decorated: set it before anything imports clif_kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(__file__))
