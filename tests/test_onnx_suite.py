"""The ONNX package's own backend test models (shipped in its wheel): none may end in an internal error.

Per model: ``prune_model`` with generated feeds either succeeds or refuses in one line (BadInput); where
nothing is prunable and onnxruntime runs the model it succeeds; ``check`` passes on every output; and the
compressed format, expanded, gives the dense route's weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from sparse24_onnx import BadInput, check_model, expand_model, prune_model
from tests.helpers import all_tensors

SUITE = Path(onnx.__file__).parent / "backend" / "test" / "data"
MODELS = sorted(
    str(path.relative_to(SUITE))
    for folder in ("pytorch-converted", "pytorch-operator", "simple", "light")
    for path in (SUITE / folder).glob("**/*.onnx")
)

pytestmark = pytest.mark.slow


def _runs_in_onnxruntime(path: Path) -> bool:
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True


def _attempt(source: Path, out: Path, **options):
    """The run's result, or the one-line message of its refusal (anything else propagates: a bug)."""
    try:
        return prune_model(source, out, tc_shapes="off", **options), None
    except BadInput as refused:
        return None, str(refused)


@pytest.mark.skipif(not MODELS, reason="this onnx wheel ships no backend test data")
@pytest.mark.parametrize("name", MODELS)
def test_suite_model(tmp_path, name):
    source = SUITE / name
    dense = tmp_path / "dense.onnx"
    result, refusal = _attempt(source, dense)
    if refusal is not None:
        assert "\n" not in refusal
        result, refusal = _attempt(source, dense, validate=False)  # refused for its inputs, or for what it is
        if refusal is not None:
            assert "\n" not in refusal
            return
    pruned = result.report["summary"]["pruned"]
    if pruned == 0 and _runs_in_onnxruntime(source):
        assert result.exit_code == 0
    assert check_model(dense).passed, name
    if pruned:
        compressed, expanded = tmp_path / "c.onnx", tmp_path / "e.onnx"
        prune_model(source, compressed, tc_shapes="off", validate=False, format="compressed")
        assert check_model(compressed).passed
        expand_model(compressed, expanded)
        want, got = all_tensors(dense), all_tensors(expanded)
        for key, array in want.items():
            if key in got and got[key].shape == array.shape:
                np.testing.assert_array_equal(got[key], array, err_msg=f"{name}: {key}")


_PRODUCTS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul"}


def _frozen_cases(folder: Path) -> list[Path]:
    """onnx's generated node tests of the product ops, with operand 1 (B, W) frozen into an initializer."""
    from onnx import numpy_helper
    from onnx.backend.test.case.node import collect_testcases

    paths = []
    for case in collect_testcases(None):
        graph = case.model.graph
        if len(graph.node) != 1 or graph.node[0].op_type not in _PRODUCTS or not case.data_sets:
            continue
        inputs, _ = case.data_sets[0]
        node = graph.node[0]
        if len(node.input) < 2 or len(inputs) < 2 or not isinstance(inputs[1], np.ndarray):
            continue
        model = onnx.ModelProto()
        model.CopyFrom(case.model)
        weight = node.input[1]
        keep = [i for i in model.graph.input if i.name != weight]
        del model.graph.input[:]
        model.graph.input.extend(keep)
        model.graph.initializer.append(numpy_helper.from_array(inputs[1], weight))
        path = folder / f"{case.name}.onnx"
        onnx.save(model, path)
        paths.append(path)
    return paths


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # onnx's generators overflow on purpose
def test_onnx_node_cases_with_frozen_weights(tmp_path):
    cases = _frozen_cases(tmp_path)
    assert len(cases) > 40
    pruned_any = 0
    for source in cases:
        out = tmp_path / f"{source.stem}.out.onnx"
        result, refusal = _attempt(source, out)
        if refusal is not None:
            assert "\n" not in refusal, source.name
            result, refusal = _attempt(source, out, validate=False)
            if refusal is not None:
                continue
        pruned_any += bool(result.report["summary"]["pruned"])
        assert check_model(out, tc_shapes="off").passed, source.name
    assert pruned_any >= 5  # most node cases have K of 3-10 or are ConvTranspose, skipped with reasons
