"""Reports: the JSON document written by ``--report`` and the table printed on stdout."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from . import __version__
from .errors import BadInput
from .validate import OutputComparison
from .weights import Status, WeightRecord

__all__ = ["check_report_path", "format_table", "tensor_entry", "validation_entry", "write_json"]

_METRIC_FIELDS = (
    "pruned_count",
    "total_count",
    "approximation_error",
    "kept_magnitude_mean",
    "pruned_magnitude_mean",
)


def tensor_entry(record: WeightRecord) -> dict[str, object]:
    """One tensor's report entry: identity, axis, status, reason and PruneMetrics fields.

    Metric fields are null for tensors that were not pruned.
    """
    metrics = record.metrics.as_dict() if record.metrics is not None else {}
    return {
        "name": record.name,
        "graph": record.graph,
        "op": record.op_types,
        "nodes": [use.node for use in record.uses],
        "shape": list(record.shape),
        "dtype": record.dtype,
        "axis": record.axis,
        "status": record.status,
        "reason": record.reason,
        "storage": record.storage if record.status in (Status.PRUNED, Status.SPARSE) else None,
        "storage_note": record.storage_note,
        "permutation": record.permutation,
        "calibration": record.calibration,
        **{name: metrics.get(name) for name in _METRIC_FIELDS},
    }


def validation_entry(
    comparisons: list[OutputComparison], *, feeds: int, source: str, bound: float | None
) -> dict[str, object]:
    """The report's ``validation`` object; ``passed`` is null when no bound was given."""
    worst = max((c.rel_l2_error for c in comparisons), key=_nan_first, default=0.0)
    return {
        "feeds": feeds,
        "source": source,
        "max_rel_error": bound,
        "worst_rel_l2_error": worst,
        "passed": None if bound is None else bool(worst <= bound),
        "outputs": [c.as_dict() for c in comparisons],
    }


def _nan_first(x: float) -> float:
    return math.inf if math.isnan(x) else x


def _finite_or_text(obj: object) -> object:
    """JSON has no NaN or infinity: write them as the strings "nan", "inf", "-inf"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite_or_text(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_text(v) for v in obj]
    return obj


def check_report_path(path: str | os.PathLike | None) -> None:
    """Refuse a ``--report`` path whose folder does not exist, before any work is done."""
    if path is not None and Path(path).is_dir():
        raise BadInput(f"--report {path}: is a directory; give a file path")
    if path is not None and not Path(path).resolve().parent.is_dir():
        raise BadInput(f"--report {path}: folder {Path(path).parent} does not exist")


def write_json(path: str | os.PathLike, document: dict[str, object]) -> None:
    """Write ``document`` (plus tool and version) as JSON to ``path``.

    A file is replaced atomically (temp file + rename); a path that exists and is
    not a regular file (``/dev/stdout``, a pipe) is written to as it is, never replaced.
    """
    path = Path(path)
    document = {"tool": "sparse24-onnx", "version": __version__, **document}
    text = json.dumps(_finite_or_text(document), indent=2, allow_nan=False) + "\n"
    if path.exists() and not path.is_file():
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(text)
        return
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def format_table(records: Iterable[WeightRecord], comparisons: list[OutputComparison] | None) -> str:
    """A human-readable table of the weights and, when validated, of the outputs.

    Pruned weights show their kept and pruned mean magnitudes and L1 error;
    every other row shows its reason or detail.
    """
    records = list(records)
    name_width = min(48, max([len("weight")] + [len(r.name) for r in records]))
    with_metrics = any(r.metrics is not None for r in records)
    tail = f"  {'kept|w|':>9}  {'pruned|w|':>9}  {'L1 err':>9}" if with_metrics else "  detail"
    lines = [f"{'weight':<{name_width}}  {'op':<6}  {'shape':<14}  {'axis':>4}  {'status':<7}{tail}"]
    for r in records:
        shape = "x".join(map(str, r.shape)) or "scalar"
        axis = "-" if r.axis is None else str(r.axis)
        head = f"{_cut(r.name, name_width):<{name_width}}  {r.op_types:<6}  {shape:<14}  {axis:>4}  {r.status:<7}"
        if r.status == Status.PRUNED and r.metrics is not None:
            m = r.metrics
            lines.append(
                f"{head}  {m.kept_magnitude_mean:>9.3g}  {m.pruned_magnitude_mean:>9.3g}  {m.approximation_error:>9.3g}"
            )
        else:
            lines.append(f"{head}  {r.reason}".rstrip())
    if comparisons:
        out_width = max([len("output")] + [len(c.name) for c in comparisons])
        lines.append("")
        lines.append(f"{'output':<{out_width}}  {'max|Δ|':>10}  {'rel L2':>10}  {'cosine':>10}")
        for c in comparisons:
            lines.append(
                f"{c.name:<{out_width}}  {c.max_abs_error:>10.4g}  {c.rel_l2_error:>10.4g}  "
                f"{c.cosine_similarity:>10.6f}"
            )
    return "\n".join(lines)
