"""Shared test fixtures."""

import os

import jax
import pytest

# Full float32 matrix products on every backend, so that tolerances written for
# float32 hold on GPUs too (their default may use TF32).
jax.config.update("jax_default_matmul_precision", "highest")

MULTIDEVICE_COUNT = 8  # tests/test_sharding.py reruns itself with this many CPU devices

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(scope="session")
def shared_data():
    """Path of ../shared/data (real dataset samples); tests needing it fail loudly if absent."""
    path = os.path.abspath(SHARED_DATA)
    assert os.path.isdir(path), f"missing shared data directory {path}"
    return path


def pytest_collection_modifyitems(config, items):
    """Runs the ``multidevice`` tests only where there are 8 devices, ``host_process`` ones only where not.

    The main test process has one device; tests/test_sharding.py reruns its multidevice
    tests in a subprocess with 8 and fails unless all of them pass there.
    """
    many = jax.device_count() >= MULTIDEVICE_COUNT
    unwanted = "host_process" if many else "multidevice"
    dropped = [item for item in items if item.get_closest_marker(unwanted)]
    if dropped:
        items[:] = [item for item in items if not item.get_closest_marker(unwanted)]
        config.hook.pytest_deselected(items=dropped)


@pytest.fixture
def rounding_differs_per_product(monkeypatch):
    """The k-th product of scores traced comes out k float32 steps higher: two products of the same
    values rounding differently, as two compiled kernels may. The order within a product is kept."""
    from gru4rec_jax import evaluation

    original, products = evaluation._scores, []

    def scores(*args):
        computed = original(*args)
        for _ in range(len(products)):
            computed = jax.numpy.nextafter(computed, jax.numpy.inf)
        products.append(computed.shape)
        return computed

    monkeypatch.setattr(evaluation, "_scores", scores)
    jax.clear_caches()  # trace anew, with the patched products (and never keep them for other tests)
    yield products
    monkeypatch.undo()
    jax.clear_caches()
