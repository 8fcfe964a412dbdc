"""The feeds and the measure the model-level checks (``--permute``'s channel order, ``--correct``'s
correction) compare two prunings of the whole model on.

Without gates, the held-out calibration feeds (every 4th), by the worst relative L2 error of
the outputs (or the validation feeds when there is no calibration data).  Where the user gave
gates (``--max-rel-error``, ``--min-cosine``, ``--min-top1-agreement``), the validation feeds, by
the gates' violation: the user's own measure of the task decides.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from ..runtime.feeds import FeedSet
from ..runtime.sessions import open_model_session, run_feeds
from ..validation.compare import OutputComparison
from ..validation.gates import Gate, violation
from .layer_budget import worst_finite

__all__ = ["Guard"]


@dataclass
class Guard:
    """Feeds a whole pruned model is compared on, and how (lower is better).

    Attributes:
        feeds: The feeds.
        reference: The dense model's outputs on them (None: computed when needed from the model as it
            is before pruning; a channel permutation does not change the model's function).
        output_names: The outputs, in order (None with ``reference``).
        label: What the feeds are, for the progress lines and the report.
        hint: What to check when onnxruntime refuses them.
        score: A trial's score from its output comparisons (None: :func:`.layer_budget.worst_finite`).
        scored: What the score is, for the log, the warnings and the report.
    """

    feeds: list[dict[str, np.ndarray]]
    reference: list[list[np.ndarray]] | None
    output_names: list[str] | None
    label: str
    hint: str = ""
    score: Callable[[list[OutputComparison]], float] | None = None
    scored: str = "worst relative L2 error"

    @classmethod
    def held_out(cls, calibration: FeedSet) -> Guard:
        """The held-out calibration feeds (every 4th; all of them when there are fewer than 4)."""
        feeds = calibration.feeds[3::4] if len(calibration) >= 4 else calibration.feeds
        return cls(feeds, None, None, "held-out calibration feeds", calibration.hint)

    @classmethod
    def for_run(cls, calibration: FeedSet | None, reference, gates: list[Gate]) -> Guard | None:
        """The run's guard (the module docstring); ``reference`` is the validation's (None without one)."""
        if gates and reference is not None:
            return cls(
                reference.feeds.feeds, reference.outputs, reference.output_names, "validation feeds",
                score=lambda comparisons: violation(gates, comparisons), scored="gates' violation",
            )  # fmt: skip
        if calibration is not None:
            return cls.held_out(calibration)
        if reference is not None:
            return cls(reference.feeds.feeds, reference.outputs, reference.output_names, "validation feeds")
        return None

    def measure(self, comparisons: list[OutputComparison]) -> float:
        """The score of one trial."""
        return (self.score or worst_finite)(comparisons)

    def outputs(self, model: ir.Model) -> tuple[list[list[np.ndarray]], list[str]]:
        if self.reference is None:
            with tempfile.TemporaryDirectory(prefix="sparse24-guard-") as folder:
                session = open_model_session(model, Path(folder) / "model.onnx")
                self.reference = run_feeds(session, self.feeds, hint=self.hint)
                self.output_names = [o.name for o in session.get_outputs()]
                del session
        return self.reference, self.output_names
