"""``--quantize``: the scale of each quantized product's input activation, from onnxruntime's own calibrators.

onnxruntime's ``create_calibrator`` (``MinMax``, ``Percentile``, ``Entropy``) runs the
pruned model, its weights already on the low type's grid, over the calibration feeds and
gives each activation a range; the scale is the range's largest magnitude over the low
type's largest value (127 for int8, 448 for FP8 E4M3), symmetric as TensorRT needs.
``minmax`` keeps every value representable; ``percentile`` (99.999 %) and ``entropy``
clip rare outliers for a finer step.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx_ir as ir

from ..core.quantized import largest_value
from ..passes.quantize_activations import ActivationScale
from ..passes.quantize_weights import LOW_TYPES

__all__ = ["activation_scales"]

log = logging.getLogger("sparse24_onnx")

#: onnxruntime's names of the ``--activation-calibration`` choices (``choices.ACTIVATION_CALIBRATIONS``).
_ORT_NAMES = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


class _Reader:
    """onnxruntime's ``CalibrationDataReader`` protocol over the run's feeds (read once)."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def activation_scales(
    model: ir.Model, names: list[str], feeds: Iterable[dict[str, np.ndarray]], method: str, kind: str
) -> dict[str, ActivationScale]:
    """Per activation in ``names``, its calibrated largest magnitude and scale.

    Activations the calibration saw no finite value of are left out (their products stay
    unquantized on the activation side; the caller says so).
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    largest = largest_value(LOW_TYPES[kind].numpy())
    with tempfile.TemporaryDirectory(prefix="sparse24-activations-") as folder:
        path = Path(folder) / "model.onnx"
        ir.save(model, path, external_data="model.onnx.data")
        calibrator = create_calibrator(
            path,
            ["MatMul", "Gemm", "Conv"],
            augmented_model_path=str(Path(folder) / "augmented.onnx"),
            calibrate_method=getattr(CalibrationMethod, _ORT_NAMES[method]),
            use_external_data_format=True,
            providers=["CPUExecutionProvider"],
            extra_options={"symmetric": True},
        )
        last = time.monotonic()
        for number, feed in enumerate(feeds, start=1):  # one at a time: the histogram calibrators stack a
            calibrator.collect_data(_Reader([feed]))  # batch's tensors, whose shapes can vary between feeds
            if time.monotonic() - last > 5:
                last = time.monotonic()
                log.info("activation calibration: feed %d", number)
        ranges = calibrator.compute_data()
        del calibrator
    scales = {}
    for name in names:
        try:
            low, high = ranges[name].range_value
        except (KeyError, AttributeError):
            continue
        amax = float(max(abs(float(np.max(low))), abs(float(np.max(high)))))
        if np.isfinite(amax) and amax > 0:
            scales[name] = ActivationScale(amax, amax / largest)
    return scales
