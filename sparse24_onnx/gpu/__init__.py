"""GPU measurement (PyTorch/cuSPARSELt per layer, TensorRT engines); imported only by ``sparse24 bench``."""
