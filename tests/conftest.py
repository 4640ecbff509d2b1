"""Shared test fixtures."""

import os

import jax
import pytest

# Full float32 matrix products on every backend, so that tolerances written for
# float32 hold on GPUs too (their default may use TF32).
jax.config.update("jax_default_matmul_precision", "highest")

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(scope="session")
def shared_data():
    """Path of ../shared/data (real dataset samples); tests needing it fail loudly if absent."""
    path = os.path.abspath(SHARED_DATA)
    assert os.path.isdir(path), f"missing shared data directory {path}"
    return path
