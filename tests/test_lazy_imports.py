"""sympy stays unimported through a whole run, and still works when something does use it.

Each check runs in a fresh interpreter: the point is what a process imports.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("validate", [False, True])
def test_optimize_never_imports_sympy(models_dir, tmp_path, validate):
    args = [str(models_dir / "transformer.onnx"), str(tmp_path / "out.onnx"), "--format", "compressed"]
    args += ["--shape", "batch=2", "--shape", "seq=8"] if validate else ["--no-validate"]
    out = run_python(
        f"""
        import runpy, sys
        sys.argv = ["optimize", *{args!r}]
        try:
            runpy.run_module("sparse24_onnx.optimize", run_name="__main__")
        except SystemExit as exit:
            assert exit.code in (0, None), exit.code
        print("sympy.core" in sys.modules, "onnx_ir" in sys.modules)
        """
    )
    assert out.splitlines()[-1] == "False True"
    assert (tmp_path / "out.onnx").exists()


def test_symbolic_arithmetic_still_works_after_deferral():
    out = run_python(
        """
        import sys
        from sparse24_onnx._lazy_imports import defer_sympy
        defer_sympy()  # what the sparse24 command does first
        import onnx_ir as ir
        before = "sympy.core" in sys.modules
        dims = [ir.SymbolicDim("N") + 1, ir.SymbolicDim("N") * 2, ir.SymbolicDim("max(a, b)") + 0]
        import sympy
        from sympy import Max
        import sympy.core.numbers
        print(before, [str(d) for d in dims], sympy.Symbol("x") + 1, Max(1, 2), sys.modules["sympy"] is sympy)
        """
    )
    assert out == "False ['N + 1', '2*N', 'Max(a, b)'] x + 1 2 True"


def test_importing_the_library_changes_nothing_global():
    out = run_python(
        """
        import sys, types
        before = set(sys.modules)
        import sparse24_onnx
        from sparse24_onnx._lazy_imports import _Deferred
        stand_ins = [n for n, m in sys.modules.items() if isinstance(m, _Deferred)]
        print(stand_ins, "prune_model" in dir(sparse24_onnx), "importlib" in dir(sparse24_onnx))
        """
    )
    assert out == "[] True False"


def test_no_validate_never_imports_onnxruntime(models_dir, tmp_path):
    args = [str(models_dir / "mlp.onnx"), str(tmp_path / "out.onnx"), "--no-validate", "-q"]
    out = run_python(
        f"""
        import sys
        from sparse24_onnx.cli import main
        assert main(["optimize", *{args!r}]) == 0
        print("onnxruntime" in sys.modules)
        """
    )
    assert out == "False"
