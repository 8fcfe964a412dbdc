"""The calibrated methods (Wanda, SparseGPT, ADMM): from the layer inputs' statistics, tuned per layer on
held-out calibration rows to what generalises (:class:`CalibratedMethod`), or layer by layer on the model
already pruned before each (:class:`SequentialMethod`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..calibration.capture import LayerStats
from ..calibration.paired import PairedStats, Unpaired
from ..core import prune_24_dense
from ..core.admm import admm_24
from ..core.correction import Residual, corrected_target, paired_output_error
from ..core.quantized import QuantGrid
from ..core.sparsegpt import (
    factor_inverse,
    layer_output_error,
    refit_kept,
    sparsegpt_24,
    sparsegpt_factor,
    wanda_importance,
)
from ..passes.weights import NOT_FINITE, Declined, WeightRecord

__all__ = [
    "ADMMMethod",
    "CalibratedMethod",
    "SequentialMethod",
    "SparseGPTMethod",
    "WandaMethod",
]


#: Largest K for which the kept weights are refit when asked (``--refit``).
REFIT_MAX_K = 4096
#: The tuned methods try the refit only on layers where it costs at most this many floating-point
#: operations (its conjugate-gradient steps: ~24 products of (rows, K) by (K, K)): ~1-2 s on the
#: machines measured.  A 2048 x 2048 layer (200 GFLOP) is refit only when asked.
TUNED_REFIT_FLOPS = 1e11
#: A more complex candidate is chosen only when its held-out error is more than this share lower.
TIE = 0.01
#: Rows of a weight the candidates are compared on (a fixed random sample when there are more).
TUNE_ROWS = 128
#: Dampening the tuned methods choose from (fractions of the Hessian's mean diagonal): light when there
#: are at least twice as many calibration rows as inputs, strong when fewer (``X^T X`` is then poorly
#: determined and strong dampening generalises better: measured by benchmarks/bench_accuracy.py).
DAMP_GRID = {"rich": (0.01, 0.1), "scarce": (0.1, 0.5)}
#: Dampening of the untuned methods (``tune=False``): SparseGPT's and ADMM's papers' defaults.
DEFAULT_DAMP = {"sparsegpt": 0.01, "admm": 0.1, "wanda": 0.01}
#: The calibrated method families, weakest first.
FAMILIES = ("wanda", "sparsegpt", "admm")


@dataclass(frozen=True)
class Config:
    """One way to prune a layer: how the mask (and the kept weights) are chosen, and whether they are refit.

    ``solver`` is ``magnitude``, ``wanda``, ``sparsegpt`` or ``admm``; ``damp`` the
    Hessian dampening of SparseGPT, ADMM and the refit.
    """

    solver: str
    damp: float = 0.01
    refit: bool = False

    @property
    def label(self) -> str:
        text = self.solver if self.solver in ("magnitude", "wanda") else f"{self.solver} (damp {self.damp:g})"
        return text + (" + refit" if self.refit else "")

    def solve(
        self, w: np.ndarray, h: np.ndarray, grid: QuantGrid | None, factors: _Factors | None = None
    ) -> np.ndarray:
        """The pruned ``(rows, K)`` weights for weights ``w`` and ``H = X^T X`` (float64).

        ``factors`` caches SparseGPT's factorisation of ``h`` for weights that share it.
        """
        if self.solver == "magnitude":
            pruned = prune_24_dense(w, 1)
        elif self.solver == "wanda":
            pruned = prune_24_dense(w, 1, np.abs(w) * np.sqrt(np.maximum(np.diag(h), 0.0)))
        elif self.solver == "sparsegpt":
            factor = factors.get(h, self.damp) if factors is not None else None
            pruned = sparsegpt_24(w, h, damp=self.damp, grid=grid, factor=factor)
        else:
            pruned = admm_24(w, h, damp=self.damp, grid=grid)
        if self.refit:
            inverse = factors.inverse(h, self.damp) if factors is not None else None
            pruned = refit_kept(w, pruned, h, damp=self.damp, preconditioner=inverse)
            if grid is not None:  # back onto the stored weight's grid: the errors include the rounding
                pruned = grid.round(pruned)
        return np.asarray(pruned, dtype=np.float64)


class _Factors:
    """SparseGPT factorisations of the last few Hessians (and the inverses the refit preconditions with), so
    that weights reading one input, and the candidates tried on one layer, share them.

    Keyed by the Hessian array's identity (the method hands out one array per layer
    input and kind) and the dampening; a handful are kept (q, k and v follow each other).
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.entries: dict[tuple[int, float], tuple[np.ndarray, tuple, list]] = {}

    def _entry(self, h: np.ndarray, damp: float) -> tuple[np.ndarray, tuple, list]:
        key = (id(h), damp)
        found = self.entries.get(key)
        if found is None or found[0] is not h:
            while len(self.entries) >= self.size:
                self.entries.pop(next(iter(self.entries)))
            found = self.entries[key] = (h, sparsegpt_factor(h, damp), [])
        return found

    def get(self, h: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
        return self._entry(h, damp)[1]

    def inverse(self, h: np.ndarray, damp: float) -> np.ndarray:
        """The dampened ``H^-1``, from the factor (computed once)."""
        _, factor, inverse = self._entry(h, damp)
        if not inverse:
            inverse.append(factor_inverse(factor))
        return inverse[0]


def candidates(family: str, k: int, rows: int, damp: float | None, refit: bool | None) -> list[Config]:
    """What a tuned method of ``family`` chooses from for a layer with ``K = k`` and ``rows`` calibration rows.

    Always magnitude and Wanda (so that a calibrated method is never worse than
    magnitude on held-out rows); SparseGPT and ADMM on the dampening grid for
    the amount of data (:data:`DAMP_GRID`), or at the ``damp`` the user forced.
    The refit candidate is tried afterwards, on the winner.
    """
    damps = DAMP_GRID["rich" if rows >= 2 * k else "scarce"] if damp is None else (damp,)
    configs = [Config("magnitude"), Config("wanda")]
    if family in ("sparsegpt", "admm"):
        configs += [Config(family, d) for d in damps]
    if refit is True and k <= REFIT_MAX_K:
        configs = [Config(c.solver, c.damp if damp is None else damp, refit=True) for c in configs]
    return configs


def _tune_sample(w: np.ndarray, grid: QuantGrid | None) -> tuple[np.ndarray, QuantGrid | None, np.ndarray | None]:
    """At most :data:`TUNE_ROWS` of a weight's rows (a fixed random sample) and their grid, to compare
    candidates on: each row's problem is separate, so a sample ranks them as the whole would.  Also the
    rows taken (None: all)."""
    if w.shape[0] <= TUNE_ROWS:
        return w, grid, None
    sample = np.sort(np.random.default_rng(0).choice(w.shape[0], TUNE_ROWS, replace=False))
    if grid is not None:
        grid = QuantGrid(grid.dtype, grid.scale[sample], grid.zero_point[sample], grid.divide)
    return w[sample], grid, sample


def _residual_rows(residual: Residual | None, rows: np.ndarray | None) -> Residual | None:
    """The residual terms of some of the weight's rows (each term is per output row)."""
    if residual is None or rows is None:
        return residual
    return Residual(residual.g[:, rows], residual.f[:, rows], residual.sq_norms[rows])


def _refit_affordable(rows: int, k: int) -> bool:
    """Whether the tuned methods try the refit on a ``(rows, K)`` weight (:data:`TUNED_REFIT_FLOPS`)."""
    return 24.0 * rows * k * k <= TUNED_REFIT_FLOPS


#: The targets ``--correct`` offers each paired layer: its own weight (``none``), the dense output from the
#: pruned input (``layer``), and, where the layer feeds a residual stream, the dense block's output
#: (``block``: also undo the stream's error).
CORRECTIONS = ("none", "layer", "block")
_CORRECTION_LABEL = {"none": "", "layer": " + correction", "block": " + block correction"}


def _target(w: np.ndarray, blocks, stream: Residual | None, correction: str, damp: float) -> np.ndarray:
    """What a paired layer's weights are fitted to: ``w``, or the corrected target (with the stream's error
    for ``block``)."""
    if correction == "none":
        return w
    return corrected_target(w, blocks[0], blocks[1], damp, residual=stream if correction == "block" else None)


def _rows_used(stats: LayerStats) -> dict[str, int]:
    """The report's account of the rows ``X^T X`` took: how many, of how many there were."""
    return {"hessian_rows": stats.hessian_rows, "hessian_rows_available": stats.hessian_available}


class _MatrixView:
    """A weight as the ``(rows, K)`` matrix its layer's Hessian ``X^T X`` is ``(K, K)`` for.

    MatMul/Gemm weights: K is the reduction axis.  Conv weights (1-D, 2-D, 3-D) with
    im2col statistics: ``[M, C, k1, ...]`` as ``(M, k1 * ... * C)``, channels fastest,
    so that 4 consecutive columns are 4 input channels at one kernel position.
    """

    def __init__(self, weights: np.ndarray, axis: int, im2col: bool, groups: int = 1) -> None:
        self.shape = weights.shape
        self.axis = axis
        self.im2col = im2col
        #: A grouped convolution's groups: rows ``[g * M / groups, (g + 1) * M / groups)`` read group ``g``.
        self.groups = groups

    @classmethod
    def of(cls, weights: np.ndarray, axis: int, stats: LayerStats | None) -> _MatrixView | None:
        """The view that matches ``stats.hessian``, or None when there is none."""
        if stats is None or stats.hessian is None:
            return None
        if stats.im2col and weights.ndim >= 3 and axis == 1:
            k = int(np.prod(weights.shape[1:]))
            groups = stats.groups
            fits = stats.hessian.shape[-1] == k and weights.shape[0] % groups == 0
            return cls(weights, axis, True, groups) if fits else None
        if weights.ndim == 2 and stats.hessian.shape[0] == weights.shape[axis]:
            return cls(weights, axis, False)
        return None

    def rows(self, weights: np.ndarray) -> np.ndarray:
        if self.im2col:
            return np.moveaxis(weights, 1, -1).reshape(weights.shape[0], -1)
        return np.moveaxis(weights, self.axis, -1).reshape(-1, weights.shape[self.axis])

    def grid(self, grid: QuantGrid | None) -> QuantGrid | None:
        """A weight's quantization grid laid over this ``(rows, K)`` view."""
        if grid is None:
            return None
        scale = self.rows(np.broadcast_to(grid.scale, self.shape))
        zero = self.rows(np.broadcast_to(grid.zero_point, self.shape))
        return QuantGrid(grid.dtype, scale, zero, grid.divide)

    def tensor(self, rows: np.ndarray, dtype) -> np.ndarray:
        if self.im2col:
            m, c, *kernel = self.shape
            array = np.moveaxis(rows.reshape(m, *kernel, c), -1, 1)
        else:
            moved = list(self.shape)
            moved.append(moved.pop(self.axis))
            array = np.moveaxis(rows.reshape(moved), -1, self.axis)
        # Casting to a narrower dtype can only add zeros; pruned entries are exact zeros already.
        return np.ascontiguousarray(array).astype(dtype)


class CalibratedMethod:
    """Wanda, SparseGPT or ADMM from the calibration statistics, tuned per layer on held-out rows.

    With ``tune`` (the default) and held-out statistics, each layer is pruned with
    every candidate of :func:`candidates` on the calibration rows that are not held
    out; the one whose layer output error on the held-out rows is lowest wins (then
    whether refitting its kept weights by least squares helps is tried the same
    way, where it is affordable: :data:`TUNED_REFIT_FLOPS`), and the winner is computed again on all
    rows.  ``damp`` and ``refit`` force a choice when given.  Without ``tune`` the
    family's own solver runs with its default dampening.

    Weights without a Hessian (grouped or 1-D/3-D convolutions, K over the
    capture limit) are pruned with Wanda's importance; those whose layer input was
    not captured (inside a subgraph or function) with magnitude; the report says
    which, and per layer what was chosen, from which candidates, and its error.

    Args:
        family: ``wanda``, ``sparsegpt`` or ``admm``.
        stats: Per weight, its layer input's statistics.
        damp: Force this dampening (None: choose from :data:`DAMP_GRID`).
        refit: Force the refit on (True) or off (False); None: choose.
        tune: Choose per layer on held-out rows (needs ``held_out`` statistics).
    """

    blockwise = False
    values_kept = False

    def __init__(
        self,
        family: str,
        stats: dict[str, LayerStats],
        *,
        damp: float | None = None,
        refit: bool | None = None,
        tune: bool = True,
    ) -> None:
        if family not in FAMILIES:
            raise ValueError(f"unknown calibrated method {family!r}")
        self.name = family
        self.stats = stats
        self.damp = damp
        self.refit = refit
        self.tune = tune
        self._factors = _Factors()
        #: What the layer being pruned is on (a candidate, the final solve): for the progress heartbeat.
        self.step = ""
        self._hessians: tuple[LayerStats, dict[str, np.ndarray | None]] | None = None

    def _hessian(self, stats: LayerStats, kind: str) -> np.ndarray | None:
        """``full``, ``fit`` or ``held`` Hessian (float64) of ``stats``; the last layer input's are kept,
        so that the weights reading it (q, k, v) share them and their factorisations."""
        if self._hessians is None or self._hessians[0] is not stats:
            self._hessians = (stats, {})
        found = self._hessians[1]
        if kind not in found:
            found[kind] = {
                "full": stats.full_hessian,
                "fit": stats.fit_hessian,
                "held": stats.held_out_hessian,
            }[kind]()
        return found[kind]

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        stats = self.stats.get(record.name)
        if isinstance(stats, PairedStats):
            return self._prune_paired(record, weights, stats, out)
        return self._prune(record, weights, stats, out)

    def _prune_paired(
        self, record: WeightRecord, weights: np.ndarray, paired: PairedStats, out: np.ndarray | None
    ) -> np.ndarray:
        """Prune towards the dense model's output from the pruned model's input (:mod:`..core.correction`).

        Tuned: every candidate is tried on the weight as it is and on the corrected target, and the
        lowest held-out ``||X~ W'^T - X W^T||`` wins (the uncorrected one on a tie), so the correction is
        used where it pays.  Untuned: the family's solver on the corrected target.
        """
        own = paired.pruned_stats
        view = _MatrixView.of(weights, record.axis, own)
        if view is None or view.groups > 1 or not np.isfinite(weights).all() or own.rows == 0:
            pruned = self._prune(record, weights, own, out)
            if record.calibration is not None:
                record.calibration["uncorrected"] = "no Hessian matching the weight's layout"
            return pruned
        w = view.rows(weights).astype(np.float64)
        grid = view.grid(record.grid)
        k = w.shape[1]
        note: dict[str, object] = {"samples": own.rows, "k": k, **_rows_used(own), "paired": True}
        blocks = {kind: paired.blocks(kind) for kind in ("full", "fit", "held")}
        streams = {kind: paired.residual(kind) for kind in ("full", "fit", "held")}
        if streams["full"] is not None and streams["full"].g.shape[1] != w.shape[0]:
            streams = dict.fromkeys(streams)  # the stream's features are not this view's rows
        note["residual"] = streams["full"] is not None
        if paired.residual_note:
            note["residual_note"] = paired.residual_note
        if self.tune and blocks["held"] is not None and own.held_out_rows > 0:
            config, correction = self._choose_paired(w, grid, blocks, streams, own, note)
        else:
            config, correction = self._fixed(k), ("block" if streams["full"] is not None else "layer")
        full, stream = blocks["full"], streams["full"]
        self.step = f"{config.label}{' towards the dense output' if correction != 'none' else ''} on all rows"
        target = _target(w, full, stream, correction, config.damp)
        pruned = config.solve(target, full[0], grid, self._factors)
        note.update(
            method=config.label + _CORRECTION_LABEL[correction] + (" (im2col)" if view.im2col else ""),
            solver=config.solver,
            damp=config.damp if config.solver in ("sparsegpt", "admm") or config.refit else None,
            refit=config.refit,
            corrected=correction != "none",
            correction=correction,
            layer_output_error=paired_output_error(w, pruned, *full, residual=stream),
            own_input_error=layer_output_error(w, pruned, full[0]),
        )
        record.calibration = note
        return view.tensor(pruned, weights.dtype)

    def _choose_paired(self, w, grid, blocks, streams, stats, note) -> tuple[Config, str]:
        """The candidate (and which correction) with the lowest held-out error against the dense output (the
        dense block's, where the layer feeds a residual stream); then, as :meth:`_choose` does, whether
        refitting its kept weights (towards its own target) helps."""
        full_rows = w.shape[0]
        w, grid, rows = _tune_sample(w, grid)
        fit, held = blocks["fit"], blocks["held"]
        fit_stream, held_stream = (_residual_rows(streams[kind], rows) for kind in ("fit", "held"))
        corrections = CORRECTIONS if fit_stream is not None else ("none", "layer")
        errors: dict[tuple[Config, str], float] = {}
        tried = candidates(self.name, w.shape[1], stats.hessian_rows - stats.held_out_rows, self.damp, self.refit)
        for number, config in enumerate(tried, start=1):
            for correction in corrections:
                self.step = f"candidate {number}/{len(tried)}: {config.label}{_CORRECTION_LABEL[correction]}"
                target = _target(w, fit, fit_stream, correction, config.damp)
                pruned = config.solve(target, fit[0], grid, self._factors)  # one factor for all
                errors[(config, correction)] = paired_output_error(w, pruned, *held, residual=held_stream)
        lowest = min(errors.values())
        best = next(c for c in errors if errors[c] <= lowest * (1 + TIE))
        config, correction = best
        if self.refit is None and config.solver != "admm" and _refit_affordable(full_rows, w.shape[1]):
            refit = Config(config.solver, config.damp, refit=True)
            self.step = f"candidate {refit.label}{_CORRECTION_LABEL[correction]}"
            target = _target(w, fit, fit_stream, correction, config.damp)
            pruned = refit.solve(target, fit[0], grid, self._factors)
            errors[(refit, correction)] = paired_output_error(w, pruned, *held, residual=held_stream)
            if errors[(refit, correction)] < errors[best] * (1 - TIE):
                best = (refit, correction)
        note["held_out_samples"] = stats.held_out_rows
        note["held_out_error"] = errors[best]
        note["candidates"] = {c.label + _CORRECTION_LABEL[correction]: e for (c, correction), e in errors.items()}
        return best

    def evaluate(self, record: WeightRecord, weights: np.ndarray, stats: LayerStats) -> float | None:
        """The calibrated layer error this method reaches on ``weights`` with ``stats`` (held-out if tuned).

        ``record`` is left as it was; None when the layer has no Hessian.
        """
        trial = replace(record, calibration=None)
        try:
            self._prune(trial, weights, stats, None)
        except Declined:
            return None
        note = trial.calibration or {}
        value = note.get("held_out_error", note.get("layer_output_error"))
        return None if value is None else float(value)

    def _prune(
        self, record: WeightRecord, weights: np.ndarray, stats: LayerStats | None, out: np.ndarray | None
    ) -> np.ndarray:
        if not np.isfinite(weights).all():
            raise Declined(NOT_FINITE)
        if stats is None or stats.rows == 0:
            if stats is None:
                why = "no calibration activations reach this layer"
            else:
                why = stats.no_rows or "every calibration row of this layer's input held NaN or Inf"
            record.calibration = {
                "method": f"magnitude ({why})",
                "solver": "magnitude",
                "fallback": why,
                "samples": 0,
                "layer_output_error": None,
            }
            return prune_24_dense(weights, record.axis, out=out)
        view = _MatrixView.of(weights, record.axis, stats)
        if view is None:
            k, channels = weights.shape[record.axis], stats.sq_norm.shape[0]
            groups = channels // k if record.axis == 1 and weights.ndim >= 3 and channels % k == 0 else 0
            if groups < 1 or (groups > 1 and weights.shape[0] % groups):
                raise Declined(f"its layer input has {channels} channels, which its {k} inputs do not divide into")
            importance = wanda_importance(weights, stats.sq_norm, record.axis, groups)
            why = f"no Hessian for {self.name} on this layer ({stats.no_hessian or 'its shape does not match'})"
            note = {"method": "wanda", "solver": "wanda", "samples": stats.rows, "layer_output_error": None}
            if self.name != "wanda":
                note.update(method=f"wanda ({why})", fallback=why)
            record.calibration = note
            return prune_24_dense(weights, record.axis, importance, out=out)
        w = view.rows(weights).astype(np.float64)
        grid = view.grid(record.grid)
        if view.groups > 1:
            record.calibration, pruned = self._prune_groups(w, grid, stats, view.groups)
            return view.tensor(pruned, weights.dtype)
        k = w.shape[1]
        note: dict[str, object] = {"samples": stats.rows, "k": k, **_rows_used(stats)}
        if stats.hessian_rows < k:
            note["warning"] = (
                f"{stats.hessian_rows} calibration rows for K = {k} inputs: X^T X is rank-deficient, so the fit "
                "can overfit; bring more calibration data"
            )
        if self.tune and stats.held_out is not None and stats.held_out_rows > 0:
            config = self._choose(w, stats, grid, note)
        else:
            config = self._fixed(k)
        h = self._hessian(stats, "full")
        self.step = f"{config.label} on all rows"
        pruned = config.solve(w, h, grid, self._factors)
        note.update(
            method=config.label + (" (im2col)" if view.im2col else ""),
            solver=config.solver,
            damp=config.damp if config.solver in ("sparsegpt", "admm") or config.refit else None,
            refit=config.refit,
            layer_output_error=layer_output_error(w, pruned, h),
        )
        record.calibration = note
        return view.tensor(pruned, weights.dtype)

    def _prune_groups(
        self, w: np.ndarray, grid: QuantGrid | None, stats: LayerStats, groups: int
    ) -> tuple[dict[str, object], np.ndarray]:
        """A grouped convolution, group by group, each with its own ``X^T X``: the candidate is chosen on the
        first group's held-out rows (tuned) and used for every group; the note gives the mean layer error."""
        per = w.shape[0] // groups
        note: dict[str, object] = {"samples": stats.rows, "k": w.shape[1], "groups": groups, **_rows_used(stats)}
        pruned = np.empty_like(w)
        config, errors = None, []
        for g in range(groups):
            rows = slice(g * per, (g + 1) * per)
            part = stats.group(g)
            part_grid = None if grid is None else QuantGrid(grid.dtype, grid.scale[rows], grid.zero_point[rows],
                                                            grid.divide)  # fmt: skip
            if config is None:
                tuned = self.tune and part.held_out is not None and part.held_out_rows > 0
                config = self._choose(w[rows], part, part_grid, note) if tuned else self._fixed(w.shape[1])
            h = self._hessian(part, "full")
            self.step = f"group {g + 1}/{groups}: {config.label}"
            pruned[rows] = config.solve(w[rows], h, part_grid, self._factors)
            errors.append(layer_output_error(w[rows], pruned[rows], h))
        note.update(
            method=config.label + f" (im2col, {groups} groups)",
            solver=config.solver,
            damp=config.damp if config.solver in ("sparsegpt", "admm") or config.refit else None,
            refit=config.refit,
            layer_output_error=float(np.mean(errors)),
        )
        return note, pruned

    def _fixed(self, k: int) -> Config:
        solver = self.name
        damp = self.damp if self.damp is not None else DEFAULT_DAMP[solver]
        return Config(solver, damp, refit=bool(self.refit) and k <= REFIT_MAX_K)

    def _choose(self, w: np.ndarray, stats: LayerStats, grid: QuantGrid | None, note: dict) -> Config:
        """The candidate with the lowest layer output error on the held-out rows, fitted on the others.

        Candidates are compared on at most :data:`TUNE_ROWS` of the weight's rows (a
        fixed random sample: each row's problem is separate, so a sample ranks the
        candidates as the whole would, at a fraction of the cost).
        """
        fit, held = self._hessian(stats, "fit"), self._hessian(stats, "held")
        full_rows = w.shape[0]
        w, grid, _ = _tune_sample(w, grid)
        errors: dict[Config, float] = {}
        fit_rows = stats.hessian_rows - stats.held_out_rows
        tried = candidates(self.name, w.shape[1], fit_rows, self.damp, self.refit)
        for number, config in enumerate(tried, start=1):
            self.step = f"candidate {number}/{len(tried)}: {config.label}"
            errors[config] = layer_output_error(w, config.solve(w, fit, grid, self._factors), held)
        # The simplest candidate (magnitude first) within TIE of the lowest error: a held-out estimate
        # from few rows is noisy, and a more complex fit must earn its place.
        lowest = min(errors.values())
        best = next(c for c in errors if errors[c] <= lowest * (1 + TIE))
        # ADMM's last iterations already refine its kept weights towards least squares: no refit candidate.
        if self.refit is None and best.solver != "admm" and _refit_affordable(full_rows, w.shape[1]):
            refit = Config(best.solver, best.damp, refit=True)
            self.step = f"candidate {refit.label}"
            errors[refit] = layer_output_error(w, refit.solve(w, fit, grid, self._factors), held)
            if errors[refit] < errors[best] * (1 - TIE):
                best = refit
        note["held_out_samples"] = stats.held_out_rows
        note["held_out_error"] = errors[best]
        note["candidates"] = {c.label: e for c, e in errors.items()}
        return best


class WandaMethod(CalibratedMethod):
    """Wanda (``|w| * ||X_j||``), tuned against magnitude; see :class:`CalibratedMethod`."""

    def __init__(self, stats, *, damp: float | None = None, refit: bool | None = None, tune: bool = True) -> None:
        super().__init__("wanda", stats, damp=damp, refit=refit, tune=tune)


class SparseGPTMethod(CalibratedMethod):
    """SparseGPT (masks and kept weights from ``H = X^T X``), tuned per layer; see :class:`CalibratedMethod`."""

    def __init__(self, stats, damp: float | None = None, *, refit: bool | None = None, tune: bool = True) -> None:
        super().__init__("sparsegpt", stats, damp=damp, refit=refit, tune=tune)


class ADMMMethod(CalibratedMethod):
    """ADMM with gradual mask selection (:func:`~sparse24_onnx.core.admm.admm_24`); see :class:`CalibratedMethod`."""

    def __init__(self, stats, damp: float | None = None, *, refit: bool | None = None, tune: bool = True) -> None:
        super().__init__("admm", stats, damp=damp, refit=refit, tune=tune)


class SequentialMethod:
    """A calibrated method, each layer calibrated on the model as already pruned before it.

    SparseGPT's recipe: layers are pruned in graph order, and each one's input
    statistics are captured from the model in which every earlier layer is
    already pruned.  With ``dense`` (the model before pruning), each layer is also
    offered the error-correcting target (GPTAQ's asymmetric fit): reproduce the
    dense model's output from the pruned model's input, so that it undoes what the
    earlier layers broke.  Costs one onnxruntime session per layer (two with ``dense``).
    """

    blockwise = False
    values_kept = False
    sequential = True

    def __init__(
        self,
        name: str,
        model,
        feeds: list[dict[str, np.ndarray]],
        *,
        damp: float | None = None,
        refit: bool | None = None,
        tune: bool = True,
        rows_per_feature: int | None = None,
        dense=None,
    ) -> None:
        self.name = name
        self.model = model
        #: The model before pruning (``None``: no correction): each layer is then fitted towards the dense
        #: model's output from the pruned model's input (:mod:`..core.correction`), where that helps.
        self.dense = dense
        self.feeds = feeds
        self.damp = damp
        self.refit = refit
        self.tune = tune
        self.rows_per_feature = rows_per_feature
        self._current: CalibratedMethod | None = None

    @property
    def step(self) -> str:
        """What the layer being pruned is on, for the progress heartbeat."""
        return "capturing its input on the model pruned so far" if self._current is None else self._current.step

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        from ..calibration.capture import collect_stats
        from ..calibration.paired import collect_paired_stats
        from ..choices import ROWS_PER_FEATURE

        rows = ROWS_PER_FEATURE if self.rows_per_feature is None else self.rows_per_feature
        self._current = None
        stats = None
        if self.dense is not None:
            paired = collect_paired_stats(
                self.dense, self.model, record, self.feeds, hold_out=self.tune, rows_per_feature=rows
            )
            stats = None if isinstance(paired, Unpaired) else {record.name: paired}
        if stats is None:
            stats = collect_stats(self.model, [record], self.feeds, hold_out=self.tune, rows_per_feature=rows)
        self._current = CalibratedMethod(self.name, stats, damp=self.damp, refit=self.refit, tune=self.tune)
        pruned = self._current.prune(record, weights, out)
        if self.dense is not None and isinstance(paired, Unpaired) and record.calibration is not None:
            record.calibration["uncorrected"] = paired.reason
        if record.calibration is not None:
            record.calibration["sequential"] = True
        return pruned
