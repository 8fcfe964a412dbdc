"""Pruning methods: how the kept elements of each group of 4 are chosen, and what they become.

A method turns one weight tensor into its dense 2:4-pruned version, or declines it
(:class:`~sparse24_onnx.passes.weights.Declined`), so the prune pass does not care
which rule chose the kept elements.  ``basic`` holds those that need no data,
``calibrated`` those that learn from the calibration statistics.
"""

from .basic import GradientMethod, MagnitudeMethod, Precomputed, load_gradients, uncalibrated_method
from .calibrated import ADMMMethod, CalibratedMethod, SequentialMethod, SparseGPTMethod, WandaMethod

__all__ = [
    "ADMMMethod",
    "CalibratedMethod",
    "GradientMethod",
    "MagnitudeMethod",
    "Precomputed",
    "SequentialMethod",
    "SparseGPTMethod",
    "WandaMethod",
    "load_gradients",
    "uncalibrated_method",
]
