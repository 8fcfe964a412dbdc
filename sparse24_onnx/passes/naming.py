"""Names for what the passes add to a graph: never one a graph already holds."""

from __future__ import annotations

import onnx_ir as ir

__all__ = ["graph_names", "unique_name"]


def graph_names(graph: ir.Graph) -> set[str]:
    """Every value and node name of ``graph`` (inputs, initializers, node outputs, nodes)."""
    names = {v.name for n in graph for v in n.outputs if v.name} | {n.name for n in graph if n.name}
    return names | set(graph.initializers) | {v.name for v in graph.inputs if v.name}


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3`` ... the first not in ``taken``; added to ``taken``."""
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}_{number}"
    taken.add(candidate)
    return candidate
