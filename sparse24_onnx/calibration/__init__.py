"""Pruning methods and what they learn from data.

``methods`` holds every rule that chooses the kept weights (magnitude and
gradient, and the calibrated Wanda and SparseGPT), ``capture`` the layer-input
statistics they need, captured with onnxruntime.
"""
