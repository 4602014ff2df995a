"""Shared fixtures: the builders' SavedModels, built once per test session."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))  # so test modules can `import builders`


@pytest.fixture(scope="session")
def built_models(tmp_path_factory) -> dict[str, str]:
    """Every model of `builders.BUILDERS` with default arguments: name -> SavedModel path.

    Shared by all tests: never modify these folders; copy one first (`shutil.copytree`).
    """
    import builders

    root = tmp_path_factory.mktemp("models")
    return {name: build(str(root / name)) for name, build in builders.BUILDERS.items()}


@pytest.fixture(scope="module")
def failing_models(tmp_path_factory):
    """Two small SavedModels whose session fails on some rows (see scoring_helpers)."""
    from scoring_helpers import build_checked_sqrt, build_parse_number

    root = tmp_path_factory.mktemp("failing_models")
    return {
        "checked_sqrt": build_checked_sqrt(str(root / "checked_sqrt")),
        "parse_number": build_parse_number(str(root / "parse_number")),
    }
