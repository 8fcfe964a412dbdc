"""Quantization grids: the map between a stored quantized weight and the real values it stands for.

A weight stored as integers (int8, uint8, int4, uint4) or float8 (e4m3fn, e5m2)
stands for ``real = (q - zero_point) * scale`` element-wise (``/ scale`` for the
weight-only exports that divide), the scale and zero point broadcast over the
stored tensor (one value, one per channel, or one per block).  2:4 pruning of
such a weight works on the real values (the members of a group of 4 may have
different scales) and writes a pruned entry as the zero point, which stands for
exactly 0.  Kept entries keep their stored value, or, when a method updates
the kept weights (SparseGPT), are rounded back onto the same grid
(:meth:`QuantGrid.quantize`, round half to even and saturate, as ONNX's
``QuantizeLinear`` does).

NumPy only (float8 and 4-bit arrays are ``ml_dtypes`` types, which NumPy handles once registered).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["QuantGrid", "largest_value", "symmetric_grid"]


def _is_float8(dtype: np.dtype) -> bool:
    return dtype.name.startswith("float8")


@dataclass(frozen=True)
class QuantGrid:
    """A quantization grid over a stored tensor.

    Attributes:
        dtype: The stored element type (``np.int8``, ``ml_dtypes.float8_e4m3fn`` ...).
        scale: Scales, float32 or wider, broadcastable to the stored tensor's shape.
        zero_point: Zero points in the stored type, broadcastable likewise.
        divide: The real value is ``(q - zero_point) / scale`` (weight-only
            exports that divide by the scale) instead of ``* scale``.
    """

    dtype: np.dtype
    scale: np.ndarray
    zero_point: np.ndarray
    divide: bool = False

    @property
    def float8(self) -> bool:
        return _is_float8(np.dtype(self.dtype))

    @property
    def symmetric(self) -> bool:
        """Whether every zero point is 0 (what TensorRT's explicit quantization needs)."""
        return not np.any(self._zero_as_float())

    def _zero_as_float(self) -> np.ndarray:
        return np.asarray(self.zero_point).astype(np.float32)

    def _scale(self) -> np.ndarray:
        scale = np.asarray(self.scale)
        return scale if scale.dtype.itemsize >= 4 and scale.dtype.kind == "f" else scale.astype(np.float32)

    def dequantize(self, stored: np.ndarray) -> np.ndarray:
        """The real values of ``stored`` (float32, or the scale's wider type), as onnxruntime computes them."""
        scale = self._scale()
        stored = np.asarray(stored)
        if self.float8 or stored.dtype.name in ("int4", "uint4"):
            # ml_dtypes' element-wise conversion is slow; a 256-entry table read through the bytes is not.
            table = np.arange(256, dtype=np.uint8).view(stored.dtype).astype(scale.dtype)
            centred = table[stored.view(np.uint8)]
        else:
            centred = stored.astype(scale.dtype)
        if not self.symmetric:
            centred -= self._zero_as_float().astype(scale.dtype)
        return np.divide(centred, scale, out=centred) if self.divide else np.multiply(centred, scale, out=centred)

    def keep(self, stored: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``stored`` where ``mask`` is true, the zero point (real 0) elsewhere."""
        stored = np.asarray(stored)
        if self.symmetric:  # the zero point is the all-zero bit pattern (0, or +0.0 in float8)
            bits = stored.view(f"u{stored.dtype.itemsize}")
            return np.multiply(bits, mask, dtype=bits.dtype).view(stored.dtype)
        zero = np.broadcast_to(np.asarray(self.zero_point, dtype=stored.dtype), stored.shape)
        return np.where(mask, stored, zero)

    def quantize(self, real: np.ndarray) -> np.ndarray:
        """The stored values nearest to ``real`` on this grid (round half to even, saturated)."""
        scale = self._scale()
        real = np.asarray(real, dtype=scale.dtype)
        scaled = real * scale if self.divide else real / scale
        dtype = np.dtype(self.dtype)
        if _is_float8(dtype):
            limit = float(_finfo_max(dtype))
            scaled = np.clip(scaled + self._zero_as_float(), -limit, limit)
            return scaled.astype(dtype)
        info = _int_range(dtype)
        values = np.rint(scaled) + self._zero_as_float().astype(scale.dtype)
        return np.clip(values, info[0], info[1]).astype(np.int64).astype(dtype)

    def round(self, real: np.ndarray) -> np.ndarray:
        """``real`` rounded onto the grid, as real values: ``dequantize(quantize(real))``."""
        return self.dequantize(self.quantize(real))

    def broadcast(self, shape: tuple[int, ...]) -> QuantGrid:
        """The same grid with scale and zero point expanded to ``shape`` (read-only views)."""
        return QuantGrid(
            self.dtype,
            np.broadcast_to(self.scale, shape),
            np.broadcast_to(self.zero_point, shape),
            self.divide,
        )

    def rows(self, start: int, stop: int, shape: tuple[int, ...]) -> QuantGrid:
        """The grid of rows ``start:stop`` (along axis 0) of a stored tensor of ``shape``."""

        def part(array: np.ndarray) -> np.ndarray:
            array = np.asarray(array)
            if array.ndim < len(shape) or array.shape[0] == 1:
                return array  # broadcast along axis 0 (or aligned to trailing axes)
            return array[start:stop]

        return QuantGrid(self.dtype, part(self.scale), part(self.zero_point), self.divide)


def _int_range(dtype: np.dtype) -> tuple[int, int]:
    name = dtype.name
    if name == "int4":
        return -8, 7
    if name == "uint4":
        return 0, 15
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


#: Largest finite value of each float8 type (ONNX's saturating QuantizeLinear clips to it).
_FLOAT8_MAX = {
    "float8_e4m3fn": 448.0,
    "float8_e4m3fnuz": 240.0,
    "float8_e5m2": 57344.0,
    "float8_e5m2fnuz": 57344.0,
}


def _finfo_max(dtype: np.dtype) -> float:
    try:
        return _FLOAT8_MAX[dtype.name]
    except KeyError:
        raise TypeError(f"no quantization grid for dtype {dtype.name}") from None


def largest_value(dtype: np.dtype) -> float:
    """The largest magnitude a symmetric grid of ``dtype`` stores: 127 for int8 (-128 is left unused, as
    TensorRT's symmetric quantization does), 448 for FP8 E4M3."""
    dtype = np.dtype(dtype)
    return _finfo_max(dtype) if _is_float8(dtype) else float(_int_range(dtype)[1])


def symmetric_grid(weights: np.ndarray, out_axis: int, dtype: np.dtype, headroom: float = 1.0) -> QuantGrid:
    """A symmetric per-output-channel grid of ``dtype`` for ``weights`` (TensorRT's weight quantization).

    Each channel along ``out_axis`` gets ``scale = max|w| / Q`` over its other axes (``Q`` =
    :func:`largest_value`: 127 for int8, 448 for FP8 E4M3), so that its largest weight lands on the
    grid's largest value and the rest round to the nearest step; the zero point is 0.  A channel of zeros
    gets scale 1 (any scale stores zeros exactly).  Scale and zero point keep the channel axis and have
    length 1 on the others, so they broadcast over ``weights``.

    ``headroom`` multiplies the scales: room above the dense weights' largest magnitude for values that
    grow later (SparseGPT's kept weights absorb their pruned neighbours' contribution), at the price of a
    coarser step.
    """
    dtype = np.dtype(dtype)
    weights = np.asarray(weights, dtype=np.float32)
    axis = out_axis % weights.ndim
    others = tuple(a for a in range(weights.ndim) if a != axis)
    amax = np.max(np.abs(weights), axis=others) if others else np.abs(weights)
    step = amax * np.float32(headroom) / np.float32(largest_value(dtype))
    scale = np.where(amax > 0, step, np.float32(1.0)).astype(np.float32)
    shape = [1] * weights.ndim
    shape[axis] = scale.size
    return QuantGrid(dtype, scale.reshape(shape), np.zeros(shape, dtype=dtype))
