"""Random draws bit for bit equal to ``jax.random``'s, with the hash written out.

JAX's default generator hashes counters with Threefry-2x32 (Salmon et al.,
SC 2011: 20 rounds in five groups of four, a key injection after each group).
On CPU, JAX lowers the hash as a loop over those five groups, each group one
pass over the whole output. For the dropout masks of a training chunk
(steps x lanes x units words per mask) that loop streams its state through
memory five times: 7% of the BPR-max training step on the 2-core CPU. The
same hash written here as one elementwise expression compiles to a single
fused kernel: a chunk's (338, 80, 224) mask took 2.8 ms instead of 61 ms.

The functions return exactly what ``jax.random.bits``, ``uniform``,
``bernoulli`` and ``randint`` return for the same key (tests/test_threefry.py
checks it), so training draws what it drew before. Where JAX would not use this hash
(another ``jax_default_prng_impl``, a typed key of another implementation, or
``jax_threefry_partitionable`` off, which numbers the counters differently),
``bits`` calls ``jax.random`` instead, and the others convert its words as JAX does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["bits", "uniform", "bernoulli", "randint"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))  # alternate between groups of rounds
_KEY_PARITY = np.uint32(0x1BD11BDA)


def _hash(key_words, counter_hi, counter_lo):
    """Threefry-2x32 with 20 rounds of the counter pair under the key pair."""
    k0, k1 = key_words
    schedule = (k0, k1, k0 ^ k1 ^ _KEY_PARITY)
    x0, x1 = counter_hi + schedule[0], counter_lo + schedule[1]
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = (x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))
            x1 = x1 ^ x0
        x0 = x0 + schedule[(group + 1) % 3]
        x1 = x1 + schedule[(group + 2) % 3] + np.uint32(group + 1)
    return x0, x1


def _key_words(key):
    """The key's two uint32 words, or None where JAX would not hash with Threefry-2x32."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(key)) != "threefry2x32":
            return None
        key = jax.random.key_data(key)
    elif jax.config.jax_default_prng_impl != "threefry2x32":
        return None
    if not jax.config.jax_threefry_partitionable or key.shape != (2,):
        return None
    return key[0], key[1]


def bits(key: jax.Array, shape: tuple) -> jax.Array:
    """``jax.random.bits(key, shape, jnp.uint32)``: uint32 words of ``shape``."""
    words = _key_words(key)
    size = math.prod(shape)
    if words is None or size >= 2**32:
        return jax.random.bits(key, shape, jnp.uint32)
    # Word i (row-major) hashes the 64-bit counter i: high half 0 below 2**32.
    counter = jax.lax.iota(jnp.uint32, size).reshape(shape)
    x0, x1 = _hash(words, jnp.zeros_like(counter), counter)
    return x0 ^ x1


def uniform(key: jax.Array, shape: tuple, minval: float = 0.0, maxval: float = 1.0) -> jax.Array:
    """``jax.random.uniform(key, shape, jnp.float32, minval, maxval)`` for static bounds."""
    # JAX's conversion of random words (``bits`` defers to JAX for other generators):
    # the 23 high bits of each word as the mantissa of a float in [1, 2).
    one_to_two = (bits(key, shape) >> np.uint32(9)) | np.float32(1.0).view(np.uint32)
    unit = jax.lax.bitcast_convert_type(one_to_two, jnp.float32) - np.float32(1.0)
    if (minval, maxval) == (0.0, 1.0):
        return unit
    return _scale(unit, np.float32(minval), np.float32(maxval))


@jax.jit
def _scale(unit, low, high):
    # As JAX scales: compiled as a unit, the bounds as arguments (XLA then fuses
    # the product and the sum into one rounding, as in jax.random.uniform), and
    # apart from the hash (fused with it, the last bit can differ).
    return jnp.maximum(low, jax.lax.optimization_barrier(unit) * (high - low) + low)


def bernoulli(key: jax.Array, p: float | jax.Array, shape: tuple) -> jax.Array:
    """``jax.random.bernoulli(key, p, shape)``: True with probability ``p`` (a float32 array may be traced)."""
    return uniform(key, shape) < (p if isinstance(p, jax.Array) else np.float32(p))


def randint(key: jax.Array, shape: tuple, maxval: int) -> jax.Array:
    """``jax.random.randint(key, shape, 0, maxval, jnp.int32)`` for a static ``maxval`` >= 1."""
    if not 1 <= maxval <= np.iinfo(np.int32).max:
        return jax.random.randint(key, shape, 0, maxval, jnp.int32)
    # JAX's reduction of two random words modulo the span: (hi * m + lo) % span with
    # m = (2**16 % span)**2 % span, the square taken in uint32 (so m is 0 for spans
    # above 2**16, where the square wraps to 0); all products wrap as in JAX.
    key_high, key_low = jax.random.split(key)
    span = np.uint32(maxval)
    multiplier = np.uint32((2**16 % maxval) ** 2 % 2**32 % maxval)
    offset = (bits(key_high, shape) % span) * multiplier + bits(key_low, shape) % span
    return (offset % span).astype(jnp.int32)
