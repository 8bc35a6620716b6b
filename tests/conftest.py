"""Shared fixtures: the real benchmark data folder and the small hand-written fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Tests never reach a model hub: everything loads from packaged wheels.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real SuperGLUE/GLUE files: $RETRIKT_DATA, else ../shared/data beside the repo."""
    path = Path(os.environ.get("RETRIKT_DATA", REPO.parent / "shared" / "data"))
    if not (path / "superglue").is_dir():
        pytest.skip(f"real benchmark data not found at {path}")
    return path


@pytest.fixture(scope="session")
def fixture_data_dir() -> Path:
    """Small files written by hand in the official schema of the tasks absent from shared/data."""
    return FIXTURES / "data"
