"""Shared fixtures: the small test models, built once per session."""

from __future__ import annotations

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
