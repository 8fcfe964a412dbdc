"""The ``sparse24`` entry a pruned model carries in its ``metadata_props``."""

from __future__ import annotations

import json
from typing import Any

import onnx_ir as ir

__all__ = ["PROVENANCE_KEY", "read_provenance"]

#: Key of the provenance entry in the model's ``metadata_props``.
PROVENANCE_KEY = "sparse24"


def read_provenance(model: ir.Model) -> dict[str, Any]:
    """The ``sparse24`` entry of a model's metadata_props, or ``{}`` when absent or unreadable."""
    text = model.metadata_props.get(PROVENANCE_KEY)
    if not text:
        return {}
    try:
        entry = json.loads(text)
    except ValueError:
        return {}
    return entry if isinstance(entry, dict) else {}
