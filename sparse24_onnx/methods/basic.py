"""The methods that need no data: magnitude (``|w|``) and gradient (``|w * g|``), and results computed
earlier reused as a method."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from ..core import gradient_importance, prune_24_dense
from ..errors import BadInput
from ..passes.prune_weights import PruneMethod
from ..passes.weights import NOT_FINITE, Declined, WeightRecord

__all__ = ["GradientMethod", "MagnitudeMethod", "Precomputed", "load_gradients", "uncalibrated_method"]


class MagnitudeMethod:
    """Keep the 2 largest ``|w|`` of every group of 4."""

    name = "magnitude"
    blockwise = True
    values_kept = True

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return prune_24_dense(weights, record.axis, out=out)


class GradientMethod:
    """Keep the 2 largest ``|w * g|`` of every group of 4, ``g`` the loss gradient.

    Args:
        gradients: Gradient arrays keyed by weight (initializer) name, each the
            weight's shape.  Weights without a gradient are skipped.
    """

    name = "gradient"
    blockwise = False
    values_kept = True

    def __init__(self, gradients: Mapping[str, np.ndarray]) -> None:
        self.gradients = gradients

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if record.name not in self.gradients:
            raise Declined("no gradient for this tensor in --gradients")
        gradient = np.asarray(self.gradients[record.name])
        if gradient.shape != weights.shape:
            raise BadInput(f"--gradients: '{record.name}' has shape {gradient.shape}, the weight has {weights.shape}")
        if not np.isfinite(gradient).all():
            raise Declined("its gradient contains NaN or Inf")
        if not np.isfinite(weights).all():
            raise Declined(NOT_FINITE)
        return prune_24_dense(weights, record.axis, gradient_importance(weights, gradient), out=out)


def load_gradients(path: str | os.PathLike) -> Mapping[str, np.ndarray]:
    """Open a ``.npz`` of gradients keyed by initializer name (arrays load on access)."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise BadInput(f"{path}: no such gradients file") from None
    except (OSError, ValueError) as error:
        raise BadInput(f"{path}: not a readable .npz file ({error})") from None


class Precomputed:
    """A method whose results are already known (the accuracy budget computed them): reused, not redone."""

    blockwise = False

    def __init__(self, inner: PruneMethod, results: dict[str, np.ndarray], seconds: float = 0.0) -> None:
        self.inner = inner
        self.name = inner.name
        self.values_kept = inner.values_kept
        self.results = results
        #: Time spent computing ``results`` (said with the pruning time, which it belongs to).
        self.seconds = seconds

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if record.name not in self.results:
            return self.inner.prune(record, weights, out)
        return self.results[record.name]


def uncalibrated_method(
    method: str, gradients: str | os.PathLike | Mapping[str, np.ndarray] | None, names: set[str], warnings: list[str]
) -> MagnitudeMethod | GradientMethod:
    """Magnitude, or gradient with its gradients opened; gradients that match no weight (``names``) are said."""
    if method != "gradient":
        return MagnitudeMethod()
    if isinstance(gradients, (str, os.PathLike)):
        gradients = load_gradients(gradients)
    unknown = sorted(set(gradients) - names) if hasattr(gradients, "keys") else []
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        warnings.append(f"--gradients: {len(unknown)} key(s) match no weight of the model ({shown})")
    return GradientMethod(gradients)
