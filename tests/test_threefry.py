"""gru4rec_jax.threefry draws exactly what jax.random draws for the same key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru4rec_jax import threefry

SHAPES = [(), (1,), (7,), (80, 224), (3, 5, 11)]


def _keys():
    base = jax.random.PRNGKey(1234)
    return {
        "PRNGKey": base,
        "folded": jax.random.fold_in(base, 77),
        "split": jax.random.split(base)[1],
        "typed": jax.random.key(99),
    }


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("key_name", list(_keys()))
def test_bits_uniform_and_bernoulli_equal_jax_random(key_name, shape):
    key = _keys()[key_name]
    np.testing.assert_array_equal(threefry.bits(key, shape), jax.random.bits(key, shape, jnp.uint32))
    np.testing.assert_array_equal(threefry.uniform(key, shape), jax.random.uniform(key, shape))
    np.testing.assert_array_equal(threefry.uniform(key, shape, -0.37, 0.37),
                                  jax.random.uniform(key, shape, jnp.float32, -0.37, 0.37))
    for p in (0.5, 0.95, 0.6):
        np.testing.assert_array_equal(threefry.bernoulli(key, p, shape), jax.random.bernoulli(key, p, shape))


@pytest.mark.parametrize("maxval", [1, 2, 7, 2933, 1_000_000, 2**31 - 1])
@pytest.mark.parametrize("key_name", list(_keys()))
def test_randint_equals_jax_random(key_name, maxval):
    key = _keys()[key_name]
    for shape in [(), (2048,), (6, 9)]:
        np.testing.assert_array_equal(threefry.randint(key, shape, maxval),
                                      jax.random.randint(key, shape, 0, maxval, jnp.int32))


def test_equal_under_jit_and_vmap_over_keys():
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.PRNGKey(0), s))(jnp.arange(6))
    ours = jax.jit(jax.vmap(lambda k: threefry.bernoulli(k, 0.5, (80, 224))))(keys)
    theirs = jax.jit(jax.vmap(lambda k: jax.random.bernoulli(k, 0.5, (80, 224))))(keys)
    np.testing.assert_array_equal(ours, theirs)
    assert 0.49 < float(ours.mean()) < 0.51  # not, say, all False on both sides
    # Scaled draws inside a larger compiled function (as a model's initialisation draws them).
    ours = jax.jit(lambda k: 2.0 * threefry.uniform(k, (300, 224), -0.08, 0.08))(keys[1])
    theirs = jax.jit(lambda k: 2.0 * jax.random.uniform(k, (300, 224), jnp.float32, -0.08, 0.08))(keys[1])
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("key_name", ["PRNGKey", "typed"])
def test_the_hash_is_not_jax_random_in_disguise(key_name):
    # Where JAX would hash with Threefry-2x32, the module computes the hash itself:
    # the jaxpr has no random primitive and no loop (the point of the module).
    jaxpr = str(jax.make_jaxpr(lambda k: threefry.bernoulli(k, 0.5, (4, 4)))(_keys()[key_name]))
    assert "threefry" not in jaxpr and "random_bits" not in jaxpr and "while" not in jaxpr


@pytest.mark.parametrize("setting, value", [("jax_default_prng_impl", "rbg"),
                                            ("jax_threefry_partitionable", False)])
def test_other_generators_fall_back_to_jax_random(setting, value):
    previous = getattr(jax.config, setting)
    jax.config.update(setting, value)
    try:
        key = jax.random.PRNGKey(5)
        np.testing.assert_array_equal(threefry.bits(key, (9, 4)), jax.random.bits(key, (9, 4), jnp.uint32))
        np.testing.assert_array_equal(threefry.bernoulli(key, 0.3, (9, 4)), jax.random.bernoulli(key, 0.3, (9, 4)))
        np.testing.assert_array_equal(threefry.randint(key, (9, 4), 13), jax.random.randint(key, (9, 4), 0, 13))
        np.testing.assert_array_equal(threefry.uniform(key, (9, 4), -0.2, 0.3),
                                      jax.random.uniform(key, (9, 4), jnp.float32, -0.2, 0.3))
    finally:
        jax.config.update(setting, previous)
