"""Pass: record in the model what was pruned, how, and by which tool version."""

from __future__ import annotations

import json
from typing import Any

import onnx_ir as ir

from .._version import __version__
from ..modelio.compressed import FORMAT_VERSION
from ..modelio.provenance import PROVENANCE_KEY, read_provenance
from .base import NeedsWeights, PassResult
from .weights import Status, weight_records

__all__ = ["PROVENANCE_KEY", "RecordProvenance", "read_provenance"]


class RecordProvenance(NeedsWeights):
    """Write a ``sparse24`` JSON entry into the model's ``metadata_props``.

    The entry holds the tool and version, the method, the storage format, for
    every pruned tensor the axis its groups of 4 run along (and, in the
    compressed format, where its values and metadata are: see
    :mod:`sparse24_onnx.modelio.compressed`), and the weights left dense on purpose
    (``--exclude``) with the reason, which ``check`` accepts::

        {"tool": "sparse24-onnx", "version": "0.1.0", "method": "magnitude",
         "format": "dense", "tensors": {"fc1.weight": {"axis": 0}},
         "dense": {"lm_head.weight": "excluded by --exclude 'lm_head'"}}
    """

    def __init__(self, method: str, storage_format: str = "dense", tc_shapes: str = "strict") -> None:
        self.method = method
        self.storage_format = storage_format
        self.tc_shapes = tc_shapes

    def call(self, model: ir.Model) -> PassResult:
        records = weight_records(model)
        pruned = [r for r in records if r.status == Status.PRUNED]
        entry = {
            "tool": "sparse24-onnx",
            "version": __version__,
            "method": self.method,
            "format": self.storage_format,
            "tensors": {r.name: _tensor_entry(r) for r in pruned},
            "dense": {r.name: r.reason for r in records if r.deliberate},
            "tc_shapes": self.tc_shapes,
        }
        if self.storage_format == "compressed":
            entry["format_version"] = FORMAT_VERSION
        model.metadata_props[PROVENANCE_KEY] = json.dumps(entry, sort_keys=True)
        return PassResult(model, modified=True, weights=pruned)


def _tensor_entry(record) -> dict[str, Any]:
    if record.compressed is not None:
        return record.compressed.as_dict()
    entry: dict[str, Any] = {"axis": record.axis}
    if record.storage_note:
        entry["storage"] = "dense"
        entry["reason"] = record.storage_note
    return entry
