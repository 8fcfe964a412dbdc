"""The values an option can take, said once for the library and the command line (standard library only,
so that ``sparse24 --help`` stays fast)."""

from __future__ import annotations

__all__ = [
    "ACTIVATION_CALIBRATIONS",
    "CALIBRATED",
    "FORMATS",
    "METHODS",
    "QUANTIZE",
    "RECOMMENDED",
    "ROWS_PER_FEATURE",
    "TC_SHAPES",
]

#: Pruning methods: how the kept weights of each group of 4 are chosen.
METHODS = ("magnitude", "gradient", "wanda", "sparsegpt", "admm")
#: Methods that need calibration data.
CALIBRATED = ("wanda", "sparsegpt", "admm")
#: The calibrated method used when calibration data comes without a method (measured: docs/methods.md).
RECOMMENDED = "sparsegpt"
#: Storage formats of the pruned weights.
FORMATS = ("dense", "compressed")
#: Shape rules for Sparse Tensor Cores, strictest first.
TC_SHAPES = ("strict", "relaxed", "off")

#: Calibration: ``X^T X`` from at most this many rows per input feature (K) over the calibration set, a
#: sample of each feed's rows beyond that (``--rows-per-feature``; 0: every row).  Chosen by measurement:
#: docs/performance.md.
ROWS_PER_FEATURE = 16

#: ``--quantize``: the low types the pruned weights (and their layers' inputs) are stored and run in.
QUANTIZE = ("int8", "fp8")
#: ``--activation-calibration``: onnxruntime's calibrators for the activations' scales, the default first.
ACTIVATION_CALIBRATIONS = ("minmax", "percentile", "entropy")
