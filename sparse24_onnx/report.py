"""Reports: the JSON document written by ``--report`` and the table printed on stdout."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ._version import __version__
from .errors import BadInput
from .passes.weights import Status, WeightRecord
from .validation.compare import OutputComparison

__all__ = ["StagedReport", "check_report_path", "format_table", "report_header", "tensor_entry", "write_json"]

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
        "quantization": record.quantization.as_dict() if record.quantization is not None else None,
        **{name: metrics.get(name) for name in _METRIC_FIELDS},
    }


def _finite_or_text(obj: object) -> object:
    """JSON has no NaN or infinity: write them as the strings "nan", "inf", "-inf"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite_or_text(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_text(v) for v in obj]
    return obj


def check_report_path(path: str | os.PathLike | None, protected: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse a ``--report`` path that cannot be written, before any work is done (``-`` is stdout).

    ``protected`` are files the report must never replace: the input model and its
    external data, OUT and its side file.
    """
    if path is None or str(path) == "-":
        return
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"--report {path}: is a directory; give a file path")
    folder = path.resolve().parent
    if not folder.is_dir():
        raise BadInput(f"--report {path}: folder {path.parent} does not exist")
    target = path.resolve()
    for other in protected:
        if Path(other).resolve() == target:
            raise BadInput(
                f"--report {path}: is {other}, a model file of this run, which the report would replace; "
                "give the report its own path"
            )
    if path.exists() and not path.is_file():
        if not os.access(path, os.W_OK):
            raise BadInput(f"--report {path}: cannot be written")
        return  # a pipe or /dev/stdout: written to as it is
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInput(f"--report {path}: folder {path.parent} is not writable")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def report_header(command: str) -> dict[str, object]:
    """The fields every report starts with: which tool, which version, which command."""
    return {"tool": "sparse24-onnx", "version": __version__, "command": command}


def _json_text(document: dict[str, object]) -> str:
    if "tool" not in document:
        document = {"tool": "sparse24-onnx", "version": __version__, **document}
    return json.dumps(_finite_or_text(document), indent=2, allow_nan=False) + "\n"


class StagedReport:
    """A report written to a temporary file beside its destination, put in place by :meth:`commit`.

    Staging the report before OUT is committed means a report that cannot be
    written (a full disk, a folder that refuses new files) stops the run while
    nothing is written yet: OUT and its report land together or not at all.
    ``-`` (stdout) and paths that are not regular files (``/dev/stdout``, a pipe)
    are written at :meth:`commit`.

    Raises:
        BadInput: The report cannot be staged (the message names ``--report``).
    """

    def __init__(self, path: str | os.PathLike, document: dict[str, object]) -> None:
        self.path = str(path)
        self.text = _json_text(document)
        self.temp: Path | None = None
        if self.path == "-":
            return
        target = Path(self.path)
        if target.exists() and not target.is_file():
            return
        try:
            handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
            self.temp = Path(temp)
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(self.text)
            os.chmod(temp, 0o666 & ~_umask())
        except OSError as error:
            self.discard()
            raise BadInput(f"--report {self.path}: cannot write the report ({error.strerror or error})") from None
        except BaseException:
            self.discard()
            raise

    def commit(self) -> None:
        """Put the report in place (a rename within its folder), or write it to stdout or the special file."""
        try:
            if self.path == "-":
                sys.stdout.write(self.text)
                sys.stdout.flush()
            elif self.temp is None:
                with open(self.path, "w", encoding="utf-8") as stream:
                    stream.write(self.text)
            else:
                os.replace(self.temp, self.path)
                self.temp = None
        except OSError as error:
            self.discard()
            raise BadInput(f"--report {self.path}: cannot write the report ({error.strerror or error})") from None

    def discard(self) -> None:
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)
            self.temp = None


def write_json(path: str | os.PathLike, document: dict[str, object]) -> None:
    """Write ``document`` as JSON to ``path`` (``-``: stdout).

    A file is replaced atomically (temp file + rename) and gets the mode a new
    file would (``0666`` less the umask), not the temp file's private ``0600``;
    a path that exists and is not a regular file (``/dev/stdout``, a pipe) is
    written to as it is, never replaced.
    """
    StagedReport(path, document).commit()


_TYPE_NAMES = {
    "FLOAT": "fp32",
    "FLOAT16": "fp16",
    "BFLOAT16": "bf16",
    "DOUBLE": "fp64",
    "FLOAT8E4M3FN": "e4m3",
    "FLOAT8E5M2": "e5m2",
}


def _type_label(record: WeightRecord) -> str:
    """The stored type and, for a quantized weight, its form: ``fp32``, ``int8/DQ``, ``fp32/QDQ``, ``int8/Cast``."""
    name = _TYPE_NAMES.get(record.dtype, record.dtype.lower())
    return f"{name}/{record.quantization.short}" if record.quantization is not None else name


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


#: Longest reason shown in a table row; the report has it whole.
REASON_WIDTH = 80


def _shorten(text: str, width: int) -> str:
    """The first ``width`` characters of a reason, cut at a word and marked with an ellipsis."""
    if len(text) <= width:
        return text
    cut = text[: width - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > width // 2 else cut).rstrip(" ,;:(") + "…"


def format_table(records: Iterable[WeightRecord], comparisons: list[OutputComparison] | None) -> str:
    """A human-readable table of the weights and, when validated, of the outputs.

    Pruned weights show their kept and pruned mean magnitudes and L1 error;
    every other row shows its reason or detail.
    """
    records = list(records)
    name_width = min(48, max([len("weight")] + [len(r.name) for r in records]))
    with_metrics = any(r.metrics is not None for r in records)
    tail = f"  {'kept|w|':>9}  {'pruned|w|':>9}  {'L1 err':>9}" if with_metrics else "  detail"
    lines = [f"{'weight':<{name_width}}  {'op':<6}  {'shape':<14}  {'axis':>4}  {'type':<9}  {'status':<7}{tail}"]
    for r in records:
        shape = "x".join(map(str, r.shape)) or "scalar"
        axis = "-" if r.axis is None else str(r.axis)
        kind = _type_label(r)
        head = (
            f"{_cut(r.name, name_width):<{name_width}}  {r.op_types:<6}  {shape:<14}  {axis:>4}  {kind:<9}  "
            f"{r.status:<7}"
        )
        if r.status == Status.PRUNED and r.metrics is not None:
            m = r.metrics
            lines.append(
                f"{head}  {m.kept_magnitude_mean:>9.3g}  {m.pruned_magnitude_mean:>9.3g}  {m.approximation_error:>9.3g}"
            )
        else:
            lines.append(f"{head}  {_shorten(r.reason, REASON_WIDTH)}".rstrip())
    if comparisons:
        out_width = max([len("output")] + [len(c.name) for c in comparisons])
        lines.append("")
        lines.append(f"{'output':<{out_width}}  {'max|Δ|':>10}  {'rel L2':>10}  {'cosine':>10}  {'top-1 agree':>11}")
        for c in comparisons:
            top1 = f"{c.top1_agreement:>11.4f}" if c.top1_agreement is not None else f"{'-':>11}"
            lines.append(
                f"{c.name:<{out_width}}  {c.max_abs_error:>10.4g}  {c.rel_l2_error:>10.4g}  "
                f"{c.cosine_similarity:>10.6f}  {top1}"
            )
    return "\n".join(lines)
