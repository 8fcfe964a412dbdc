"""Peak memory on an external-data model stays far below the model's size, for every command.

A 256 MiB model (8 layers of 2896 x 2896 fp32, 32 MiB each) in external data goes through
``optimize`` (dense and compressed), ``expand`` and ``check``, each in its own process
under ``benchmarks/peak_rss.py``.  Each may hold a few copies of one layer, never the
model: the peak above that of ``check`` on a tiny model (the interpreter and imports)
must stay under half the model's size.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from models.build_models import square_mlp

ROOT = Path(__file__).resolve().parent.parent
MODEL_MIB = 256


def peak_mib(*args: str | Path, cwd: Path, exit_code: int = 0) -> float:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "peak_rss.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )
    info = json.loads(result.stderr.strip().splitlines()[-1])
    assert info["exit_code"] == exit_code, result.stderr
    return info["peak_rss_mib"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, models_dir) -> Path:
    """big.onnx (+ big.onnx.data): 8 MatMuls of 2896 x 2896 fp32 weights (32 MiB each)."""
    folder = tmp_path_factory.mktemp("memory")
    onnx.save(square_mlp(8, 2896), folder / "big.onnx", save_as_external_data=True, location="big.onnx.data")
    (folder / "tiny.onnx").write_bytes((models_dir / "mlp.onnx").read_bytes())
    return folder


@pytest.fixture(scope="module")
def baseline(folder) -> float:
    """The interpreter and every import: ``check`` on a tiny model (dense: exit code 1)."""
    return peak_mib("sparse24_onnx.check", "tiny.onnx", cwd=folder, exit_code=1)


def test_every_command_holds_a_few_layers_not_the_model(folder, baseline):
    run = ["--no-validate", "-q"]
    peaks = {
        "optimize": peak_mib("sparse24_onnx.optimize", "big.onnx", "d.onnx", "--external-data", *run, cwd=folder),
        "optimize compressed": peak_mib(
            "sparse24_onnx.optimize",
            "big.onnx",
            "c.onnx",
            "--external-data",
            "--format",
            "compressed",
            *run,
            cwd=folder,
        ),
        "expand": peak_mib("sparse24_onnx.expand", "c.onnx", "e.onnx", "--external-data", "-q", cwd=folder),
        "check": peak_mib("sparse24_onnx.check", "d.onnx", cwd=folder),
        "check compressed": peak_mib("sparse24_onnx.check", "c.onnx", cwd=folder),
    }
    above = {name: round(peak - baseline) for name, peak in peaks.items()}
    assert all(mib < MODEL_MIB / 2 for mib in above.values()), above
    assert (folder / "e.onnx.data").read_bytes() == (folder / "d.onnx.data").read_bytes()
