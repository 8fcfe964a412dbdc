"""Pruning methods: how the importance of each weight element is scored.

A method turns one weight tensor into its dense 2:4-pruned version (or says why
it cannot), so the prune pass does not care which rule chose the kept elements.
New methods (activation-aware, Hessian-based) implement the same two members.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from .core import gradient_importance, prune_24_dense
from .errors import BadInput
from .weights import WeightRecord

__all__ = ["GradientMethod", "MagnitudeMethod", "PruneMethod", "load_gradients"]


class PruneMethod(Protocol):
    """What the prune pass needs from a method."""

    #: Name recorded in the report and the model's provenance.
    name: str
    #: Whether kept values stay as they were (only the mask is chosen): faster metrics.
    values_kept: bool
    #: Whether any block of whole rows (along axis 0, in multiples of 4 when the
    #: groups run along axis 0) can be pruned on its own: large external tensors
    #: are then streamed block by block.
    blockwise: bool

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | str:
        """The dense 2:4 version of ``weights`` along ``record.axis``; a string is the reason to skip it.

        ``out``, when given, is a buffer of the weights' shape and dtype to write into.
        """
        ...


class MagnitudeMethod:
    """Keep the 2 largest ``|w|`` of every group of 4."""

    name = "magnitude"
    blockwise = True
    values_kept = True

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | str:
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

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | str:
        if record.name not in self.gradients:
            return "no gradient for this tensor in --gradients"
        gradient = np.asarray(self.gradients[record.name])
        if gradient.shape != weights.shape:
            raise BadInput(f"--gradients: '{record.name}' has shape {gradient.shape}, the weight has {weights.shape}")
        if not np.isfinite(gradient).all():
            return "its gradient contains NaN or Inf"
        if not np.isfinite(weights).all():
            return "contains NaN or Inf"
        return prune_24_dense(weights, record.axis, gradient_importance(weights, gradient), out=out)


def load_gradients(path: str | os.PathLike) -> Mapping[str, np.ndarray]:
    """Open a ``.npz`` of gradients keyed by initializer name (arrays load on access)."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise BadInput(f"{path}: no such gradients file") from None
    except (OSError, ValueError) as error:
        raise BadInput(f"{path}: not a readable .npz file ({error})") from None
