"""Shared test fixtures."""

import os

import pytest

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(scope="session")
def shared_data():
    """Path of ../shared/data (real dataset samples); tests needing it fail loudly if absent."""
    path = os.path.abspath(SHARED_DATA)
    assert os.path.isdir(path), f"missing shared data directory {path}"
    return path
