"""``check_model``: is every eligible weight of a model 2:4 along its axis?

The library side of ``sparse24 check``, the gate a CI pipeline runs on a
converted model.  Weights are found with the same rules as ``prune_model``
(same axes, same skip reasons) and each eligible one is checked.  Weights that
``optimize`` left dense on purpose (``--exclude``, recorded in the model's
``sparse24`` metadata) are accepted unless ``strict``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import onnx_ir as ir

from ..choices import TC_SHAPES
from ..core import count_dense_groups
from ..errors import BadInput, ExitCode
from ..modelio.compressed import compressed_entries, read_sparse_weights
from ..modelio.load import external_files
from ..modelio.provenance import read_provenance
from ..passes import FindWeights
from ..passes.weights import Status, WeightRecord, all_graphs, data_problem
from ..report import check_report_path, format_table, report_header, tensor_entry, write_json
from ..validation.tensorrt_rules import tensorrt_violations
from .loading import input_path, load_input, refuse_unmatched

__all__ = ["CheckResult", "check_model"]

log = logging.getLogger("sparse24_onnx")


@dataclass
class CheckResult:
    """What ``check_model`` found.

    Attributes:
        report: The report, exactly the document ``check --report`` writes.
        records: Per weight: status ``2:4``, ``not 2:4`` or ``skipped``, with the detail.
        exit_code: 0 when every eligible weight is 2:4 (also when there is none), 1 otherwise.
    """

    report: dict[str, object]
    records: list[WeightRecord]
    exit_code: int

    @property
    def passed(self) -> bool:
        return self.exit_code == ExitCode.OK

    def table(self) -> str:
        return format_table(self.records, None)

    @property
    def verdict(self) -> str:
        summary = self.report["summary"]
        rules = self.report.get("tensorrt_rules") or {}
        if rules.get("violations"):
            broken = rules["violations"]
            return f"FAIL: {len(broken)} place(s) break TensorRT's explicit-quantization rules, first: {broken[0]}"
        if not self.records:
            return "no MatMul/Gemm/Conv weight held as a constant: nothing to check"
        eligible = summary["sparse"] + summary["not_sparse"]
        if summary["not_sparse"]:
            return f"FAIL: {summary['not_sparse']} of {eligible} eligible weights are not 2:4"
        on_purpose = summary.get("left_dense_on_purpose", 0)
        if not summary["sparse"] and on_purpose:
            return (
                f"FAIL: no weight is 2:4; all {on_purpose} eligible weights were left dense on purpose "
                "(--exclude or --auto-exclude when optimized)"
            )
        return f"OK: all {summary['sparse']} eligible weights are 2:4 ({summary['skipped']} skipped)"


def check_model(
    model: str | os.PathLike | object,
    *,
    exclude: list[str] | tuple[str, ...] = (),
    tc_shapes: str | None = None,
    strict: bool = False,
    tensorrt: bool = False,
    report: str | os.PathLike | None = None,
) -> CheckResult:
    """Check that every eligible MatMul/Gemm/Conv weight of ``model`` is 2:4 along its axis.

    Args:
        model: Path of the ONNX model, or an ``onnx.ModelProto``.
        exclude: Regular expressions; matching weights (or nodes using them) are not required to be 2:4.
        tc_shapes: Which shapes count as eligible (``strict``, ``relaxed``, ``off``); default: the rule
            recorded in the model's ``sparse24`` metadata, else ``strict``.
        strict: Also require 2:4 of the weights the metadata says were left dense on purpose.
        tensorrt: Also require the Q/DQ nodes to follow TensorRT's explicit-quantization rules
            (:mod:`~sparse24_onnx.validation.tensorrt_rules`; a model without Q/DQ follows them).
        report: Also write the report (JSON) there (``-``: stdout); never over the model or its data.

    Raises:
        BadInput: The model cannot be read, or an option is bad.
    """
    if tc_shapes is not None and tc_shapes not in TC_SHAPES:
        raise BadInput(f"--tc-shapes {tc_shapes!r}: choose one of {', '.join(TC_SHAPES)}")
    FindWeights(exclude)  # refuse a bad --exclude before loading the model
    warnings: list[str] = []
    with input_path(model) as (path, label):
        check_report_path(report, [path])
        loaded = load_input(path, warnings)
        check_report_path(report, external_files(loaded))
        for line in warnings:
            log.warning("%s", line)
        provenance = read_provenance(loaded)
        rule = tc_shapes or provenance.get("tc_shapes") or "strict"
        if rule not in TC_SHAPES:
            rule = "strict"
        finder = FindWeights(exclude, rule)
        records = finder(loaded).weights
        refuse_unmatched(finder, records, "--exclude")
        intended = {} if strict else provenance.get("dense", {})
        check_records(records, intended if isinstance(intended, dict) else {})
        records += compressed_records(loaded)
        violations = tensorrt_violations(loaded) if tensorrt else None
    failing = [r for r in records if r.status == Status.NOT_SPARSE]
    sparse = [r for r in records if r.status == Status.SPARSE]
    on_purpose = [r for r in records if r.deliberate]
    # A model none of whose weights is 2:4, because every eligible one was left dense on purpose, is not a
    # sparse model: the gate must not pass it as "all 0 eligible weights are 2:4".
    exit_code = ExitCode.FAILED_CHECK if failing or (on_purpose and not sparse) or violations else ExitCode.OK
    document = {
        **report_header("check"),
        "model": label,
        "tc_shapes": rule,
        "summary": {
            "weights_found": len(records),
            "sparse": len(sparse),
            "not_sparse": len(failing),
            "skipped": len(records) - len(sparse) - len(failing),
            "left_dense_on_purpose": len(on_purpose),
        },
        "warnings": warnings,
        "tensors": [tensor_entry(r) for r in records],
        "tensorrt_rules": None if violations is None else {"checked": True, "violations": violations},
        "exit_code": int(exit_code),
    }
    if report is not None:
        write_json(report, document)
    return CheckResult(document, records, int(exit_code))


def check_records(records: list[WeightRecord], intended_dense: dict[str, str]) -> None:
    """Set each candidate's status to 2:4 or not 2:4 (with the share of dense groups), in place."""
    for record in records:
        if record.status != Status.CANDIDATE:
            continue
        tensor = record.source.tensor
        weights = record.real(tensor.numpy())  # quantized weights: zero where they dequantize to 0
        problem = data_problem(weights)
        dense = 0 if problem else count_dense_groups(weights, record.axis)
        groups = weights.size // 4
        del weights
        if isinstance(tensor, ir.ExternalTensor):
            tensor.release()  # unmap it: one weight's pages in memory at a time
        if problem:
            record.skip(problem)
            continue
        if dense == 0:
            record.status = Status.SPARSE
            continue
        if record.name in intended_dense:
            record.skip(f"left dense on purpose by optimize ({intended_dense[record.name]})", deliberate=True)
            continue
        record.status = Status.NOT_SPARSE
        record.reason = f"{dense} of {groups} groups of 4 ({100 * dense / groups:.1f}%) have more than 2 non-zeros"


def compressed_records(model) -> list[WeightRecord]:
    """Records for the weights stored in the compressed format (2:4 when their metadata is well formed)."""
    try:
        entries = compressed_entries(model)
        weights = read_sparse_weights(model)
    except (ValueError, KeyError, TypeError) as error:
        raise BadInput(f"{model.graph.name}: unreadable compressed weights ({error})") from None
    consumers: dict[str, set[str]] = {}  # value name -> op types reading it (what the table shows as op)
    for _, graph in all_graphs(model):
        for node in graph:
            for value in node.inputs:
                if value is not None and value.name:
                    consumers.setdefault(value.name, set()).add(node.op_type)
    records = []
    for name, sparse in weights.items():
        entry = entries[name]
        record = WeightRecord(
            name=name,
            source=None,
            graph=str(entry.get("graph", "")),
            shape=sparse.shape,
            dtype=str(entry.get("dtype", "")),
            axis=sparse.axis,
            storage="compressed",
            declined_ops=tuple(sorted(consumers.get(name, ()))),
        )
        invalid = sparse.invalid_groups()
        if invalid:
            record.status = Status.NOT_SPARSE
            record.reason = f"{invalid} of {sparse.num_groups} groups have an invalid position code"
        else:
            record.status = Status.SPARSE
            record.reason = "stored compressed: 2 values and their positions per group of 4"
        records.append(record)
    return records
