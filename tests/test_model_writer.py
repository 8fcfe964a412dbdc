"""The streaming embedded writer gives the same model as onnx-ir's own save."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest

from models.build_models import MODELS
from sparse24_onnx.modelio.load import load_model
from sparse24_onnx.modelio.writer import write_embedded


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_model_as_onnx_ir_save(models_dir, tmp_path, name):
    model = load_model(models_dir / name, check=False)
    ours, reference = tmp_path / "ours.onnx", tmp_path / "reference.onnx"
    size = write_embedded(model, ours)
    ir.save(model, reference)
    assert size == ours.stat().st_size
    a, b = onnx.load(str(ours)), onnx.load(str(reference))
    assert a == b  # field by field, after parsing
    onnx.checker.check_model(str(ours))


def test_tensors_from_external_data_are_embedded(models_dir, tmp_path):
    source = tmp_path / "in" / "mlp.onnx"
    source.parent.mkdir()
    onnx.save(onnx.load(str(models_dir / "mlp.onnx")), source, save_as_external_data=True, size_threshold=0)
    model = load_model(source)
    out = tmp_path / "out.onnx"
    write_embedded(model, out)
    proto = onnx.load(str(out))
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    reference = tmp_path / "reference.onnx"
    ir.save(load_model(models_dir / "mlp.onnx"), reference)
    assert proto == onnx.load(str(reference))
