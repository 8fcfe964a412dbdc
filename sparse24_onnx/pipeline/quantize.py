"""``--quantize``'s steps in a pruning run: before pruning, the weights on the low type's grid; after it, the
activations' Q/DQ pairs; at the end, TensorRT's rules checked on what was written.

The policy (which weights, which activations, what the report says) lives here;
the graph rewriting in :mod:`~sparse24_onnx.passes.quantize_weights` and
:mod:`~sparse24_onnx.passes.quantize_activations`, the scales in
:mod:`~sparse24_onnx.calibration.activation_ranges`, the rules in
:mod:`~sparse24_onnx.validation.tensorrt_rules`.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter

import onnx_ir as ir

from ..errors import BadInput
from ..passes.quantize_activations import QuantizeActivations, data_input_index
from ..passes.quantize_weights import UPDATE_HEADROOM, QuantizeWeights
from ..passes.weights import WeightRecord, all_graphs
from ..validation.tensorrt_rules import tensorrt_violations

__all__ = ["QuantizeStep", "check_quantizable"]

log = logging.getLogger("sparse24_onnx")

#: Lowest default-domain opset per type: per-axis DequantizeLinear (13), float8 (19).
MIN_OPSET = {"int8": 13, "fp8": 19}
#: DequantizeLinear takes float16/bfloat16 scales (so that it gives a half-precision model its own type) from 19.
HALF_SCALE_OPSET = 19
_HALF = {ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
#: Largest model ``onnx.version_converter`` is given (its protobuf form must stay under 2 GiB).
CONVERT_MAX_BYTES = 1_800_000_000


def check_quantizable(model: ir.Model, kind: str, option: str, warnings: list[str]) -> ir.Model:
    """Refuse a model that is quantized already; bring an older opset up to what the low type needs.

    The upgrade goes through ``onnx.version_converter``, as onnxruntime's own
    quantizer does for float8; a warning says so.
    """
    for _, graph in all_graphs(model):
        for node in graph:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.domain in ("", "ai.onnx"):
                raise BadInput(
                    f"{option}: the model is quantized already ({node.op_type} {node.name!r}); prune it "
                    "without it (its quantized weights are pruned through their own grid)"
                )
    have = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
    need = MIN_OPSET[kind]
    if any(v.const_value is not None and v.const_value.dtype in _HALF for v in model.graph.initializers.values()):
        need = max(need, HALF_SCALE_OPSET)  # the scales take the weights' own float type
    if have >= need:
        return model
    from onnx import version_converter

    size = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    if size > CONVERT_MAX_BYTES:
        raise BadInput(
            f"{option} {kind} needs opset {need} and the model is opset {have}: convert it first "
            f"(onnx.version_converter.convert_version(model, {need})); it is too large to convert here"
        )
    try:
        ir.external_data.load_to_model(model)  # the converter reads protobuf tensors, not files beside them
        converted = version_converter.convert_version(ir.to_proto(model), need)
    except Exception as error:  # the converter lacks an adapter for some op: say which
        reason = " ".join(str(error).split())[:200]
        raise BadInput(
            f"{option} {kind} needs opset {need}; converting the model from opset {have} failed: {reason}"
        ) from None
    warnings.append(f"{option} {kind}: the model was converted from opset {have} to {need} (onnx.version_converter)")
    result = ir.from_proto(converted)
    # The converter keeps neither the other domains' imports nor the model's local functions (each function
    # keeps its own opset imports, which onnxruntime honours).
    for domain, version in model.opset_imports.items():
        result.opset_imports.setdefault(domain, version)
    for key, function in model.functions.items():
        result.functions.setdefault(key, function)
    return result


class QuantizeStep:
    """One run's quantization: :meth:`weights` before pruning, :meth:`activations` after it, :meth:`entry`."""

    def __init__(self, kind: str, calibration_method: str, option: str, method: str) -> None:
        self.kind = kind
        self.calibration_method = calibration_method
        self.option = option
        # Wanda keeps the kept weights as they are: no headroom needed above the dense ones.
        self.quantizer = QuantizeWeights(kind, 1.0 if method == "wanda" else UPDATE_HEADROOM)
        self.scales: dict = {}
        self.unscaled: list[str] = []
        self.violations: list[str] = []

    def weights(self, model: ir.Model) -> None:
        """Store every float candidate weight in the low type (the caller finds the weights again)."""
        self.quantizer(model)

    def mark(self, records: list[WeightRecord]) -> None:
        """Say on the refound records which weights ``--quantize`` stored so, and how."""
        for record in records:
            made = self.quantizer.quantized.get(record.name)
            if made is not None and record.quantization is not None:
                record.quantization.quantized_by = made

    def left_float_lines(self) -> list[str]:
        """Warnings: how many weights stayed float, by reason."""
        reasons = Counter(self.quantizer.left_float.values())
        return [
            f"{self.option} {self.kind} left {count} weight(s) float (still pruned): {why}"
            for why, count in reasons.most_common()
        ]

    def activations(self, model: ir.Model, records: list[WeightRecord], feeds, warnings: list[str]) -> None:
        """Calibrate the quantized products' inputs and insert their Q/DQ pairs."""
        from ..calibration.activation_ranges import activation_scales

        products = []
        for record in records:
            if record.name not in self.quantizer.quantized:
                continue
            for use in record.uses:
                index = data_input_index(use.ref, use.input_index)
                if index is not None and use.ref.inputs[index] is not None:
                    products.append((use.ref, index))
        names = list(dict.fromkeys(node.inputs[index].name for node, index in products))
        log.info("calibrating %d activation(s) for %s (%s)", len(names), self.kind, self.calibration_method)
        with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime's calibrators print their progress
            self.scales = activation_scales(model, names, feeds, self.calibration_method, self.kind)
        self.unscaled = [name for name in names if name not in self.scales]
        if self.unscaled:
            _warn(
                warnings,
                f"{self.option}: {len(self.unscaled)} activation(s) had no non-zero finite range on the calibration "
                f"feeds ({', '.join(self.unscaled[:3])}{' ...' if len(self.unscaled) > 3 else ''}): their layers "
                "keep float inputs, which TensorRT runs in float",
            )
        QuantizeActivations(products, self.scales, self.kind)(model)

    def check(self, model: ir.Model, warnings: list[str]) -> None:
        """TensorRT's explicit-quantization rules on the written graph: each broken one is a warning."""
        self.violations = tensorrt_violations(model)
        for line in self.violations[:5]:
            _warn(warnings, f"TensorRT rules: {line}")
        if len(self.violations) > 5:
            _warn(warnings, f"TensorRT rules: ... and {len(self.violations) - 5} more (the report lists them)")
        if not self.violations:
            log.info("TensorRT's explicit-quantization rules: followed")

    def entry(self) -> dict[str, object]:
        """The report's ``quantize`` entry."""
        return {
            "type": self.kind,
            "activation_calibration": self.calibration_method,
            "weights": len(self.quantizer.quantized),
            "left_float": [{"weight": name, "why": why} for name, why in self.quantizer.left_float.items()],
            "activations": {name: {"amax": s.amax, "scale": s.scale} for name, s in self.scales.items()},
            "unscaled_activations": self.unscaled,
            "tensorrt_rules": {"checked": True, "violations": self.violations},
        }


def _warn(warnings: list[str], line: str) -> None:
    warnings.append(line)
    log.warning("%s", line)
