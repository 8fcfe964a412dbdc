"""Pass infrastructure: onnx-ir's passes, plus a pipeline that keeps every step's result.

A pass is an :class:`onnx_ir.passes.InPlacePass`: it takes the model, changes it
in place and returns a :class:`PassResult` saying whether it changed anything
and which weights it looked at.  :class:`Pipeline` runs passes in order, like
``onnx_ir.passes.Sequential``, but keeps the result of each step so that a
caller can report what every pass did.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassBase, PreconditionError
from onnx_ir.passes import PassResult as _IRPassResult

from .weights import META_KEY, WeightRecord

__all__ = ["InPlacePass", "NeedsWeights", "PassResult", "Pipeline", "PipelineResult"]


@dataclass
class PassResult(_IRPassResult):
    """``onnx_ir`` pass result, plus the weight records this pass acted on."""

    weights: list[WeightRecord] = field(default_factory=list)


@dataclass
class PipelineResult(_IRPassResult):
    """The model after all passes, and each pass's own result, in order."""

    steps: list[tuple[str, _IRPassResult]] = field(default_factory=list)


class Pipeline(PassBase):
    """Run passes in order on one model, keeping each step's result."""

    def __init__(self, *passes: PassBase) -> None:
        if not passes:
            raise ValueError("a pipeline needs at least one pass")
        self.passes = list(passes)

    @property
    def in_place(self) -> bool:
        return all(p.in_place for p in self.passes)

    @property
    def changes_input(self) -> bool:
        return any(p.changes_input for p in self.passes)

    def call(self, model: ir.Model) -> PipelineResult:
        steps: list[tuple[str, _IRPassResult]] = []
        modified = False
        for pass_ in self.passes:
            result = pass_(model)
            steps.append((type(pass_).__name__, result))
            model = result.model
            modified = modified or result.modified
        return PipelineResult(model, modified, steps)


class NeedsWeights(InPlacePass):
    """A pass that works on the weight records :class:`~sparse24_onnx.passes.FindWeights` attaches: without
    them it would silently do nothing, so it refuses to run (onnx-ir's ``requires`` hook)."""

    def requires(self, model: ir.Model) -> None:
        if META_KEY not in model.meta:
            raise PreconditionError(f"{type(self).__name__} needs FindWeights to have run on the model first")
