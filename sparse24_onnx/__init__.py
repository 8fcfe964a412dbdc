"""sparse24-onnx: prune ONNX models to NVIDIA 2:4 structured sparsity."""

from ._lazy_imports import defer_sympy

__version__ = "0.1.0"

defer_sympy()
