"""The front door: the ``sparse24`` command, ``python -m sparse24_onnx``, and the old module entry points."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = ("optimize", "check", "expand", "bench")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*args], capture_output=True, text=True, timeout=300, cwd=cwd)


def sparse24() -> str:
    found = shutil.which("sparse24") or str(Path(sys.executable).parent / "sparse24")
    if not os.path.exists(found):
        pytest.skip("the sparse24 console script is not installed (pip install .)")
    return found


def test_console_script_lists_the_subcommands():
    result = run(sparse24(), "--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help_with_examples(command):
    result = run(sparse24(), command, "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout
    assert f"sparse24 {command}" in result.stdout
    assert "exit codes:" in result.stdout


def test_python_dash_m_package_is_the_same_command(models_dir, tmp_path):
    model, out = str(models_dir / "mlp.onnx"), str(tmp_path / "o.onnx")
    result = run(sys.executable, "-m", "sparse24_onnx", "optimize", model, out)
    assert result.returncode == 0, result.stderr
    assert "pruned 3 of 3 weights" in result.stdout
    assert run(sys.executable, "-m", "sparse24_onnx").returncode == 2  # no command: usage on stderr
    for module in COMMANDS:
        assert run(sys.executable, "-m", f"sparse24_onnx.{module}", "--version").stdout.startswith("sparse24-onnx")


def test_help_does_not_import_onnx_or_onnxruntime():
    script = (
        "import sys\n"
        "from sparse24_onnx.cli import main\n"
        "for argv in (['--help'], ['optimize', '--help'], ['check', '--help'], ['bench', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('onnx', 'onnxruntime', 'onnx_ir', 'numpy') if m in sys.modules)\n"
        "sys.stderr.write(repr(heavy))\n"
    )
    result = run(sys.executable, "-c", script)
    assert result.stderr.strip() == "[]"


def test_usage_errors_are_one_line_with_the_common_prefix(tmp_path):
    result = run(sparse24(), "optimize", "in.onnx", "--no-such-option", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("sparse24: error: ")
    missing = run(sparse24(), "check", "missing.onnx", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr == "sparse24: error: missing.onnx: no such file\n"
