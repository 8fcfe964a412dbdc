"""Shared fixtures: the small test models, built once per session."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

from models.build_models import build_all


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """Folder holding every model of ``models/build_models.py``."""
    folder = tmp_path_factory.mktemp("models")
    build_all(folder)
    return folder


@pytest.fixture
def model(models_dir, tmp_path, request) -> Path:
    """A private copy of one test model (parametrize indirectly with its file name)."""
    source = models_dir / request.param
    target = tmp_path / request.param
    target.write_bytes(source.read_bytes())
    return target


PYTHON = sys.executable


#: Test modules that are end to end as a whole: trained models, memory bounds, fuzzing, the ONNX suite.
SLOW_MODULES = {"test_trained_models", "test_memory", "test_damaged_input", "test_onnx_suite"}
#: A test that starts a fresh interpreter (~0.4 s of start-up per run) or reads a trained model from a wheel
#: is end to end.
_PROCESS_CALLS = ("run_module(", "subprocess.run(", "run_python(", "subprocess.Popen(", "packaged_file(")


def _process_helpers(module) -> tuple[str, ...]:
    """The calls that start a process, with the module's own helpers that do (``name(``)."""
    calls = list(_PROCESS_CALLS)
    for name, function in vars(module).items():
        if inspect.isfunction(function) and not name.startswith("test_") and function.__module__ == module.__name__:
            try:
                if any(call in inspect.getsource(function) for call in _PROCESS_CALLS):
                    calls.append(f"{name}(")
            except (OSError, TypeError):
                continue
    return tuple(calls)


def pytest_collection_modifyitems(config, items):
    """Mark end-to-end tests ``slow``, so that ``pytest -m "not slow"`` is the quick loop."""
    helpers: dict[str, tuple[str, ...]] = {}
    for item in items:
        module = item.module
        name = module.__name__.rsplit(".", 1)[-1]
        if name not in helpers:
            helpers[name] = _process_helpers(module)
        try:
            source = inspect.getsource(item.function)
        except (OSError, TypeError):
            source = ""
        if name in SLOW_MODULES or any(call in source for call in helpers[name]):
            item.add_marker(pytest.mark.slow)
