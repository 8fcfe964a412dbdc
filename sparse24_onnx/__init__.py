"""sparse24-onnx: prune ONNX models to NVIDIA 2:4 structured sparsity."""

__version__ = "0.1.0"
