"""Extra negative samples shared by the mini-batch (Hidasi & Karatzoglou, CIKM 2018).

Items are drawn i.i.d. with ``P(item) ~ support(item) ** alpha`` (support =
training event count; alpha 0 = uniform, 1 = popularity), on device, with
Walker's alias method: two table lookups per sample, O(S) per step whatever
the catalogue size. (The reference inverts the cumulative distribution with a
binary search over a pre-drawn store; the distribution is the same.)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gru4rec_jax import threefry

__all__ = ["AliasTable", "item_support", "alias_table", "draw_negatives", "logq_correction"]


def item_support(items: np.ndarray, n_items: int) -> np.ndarray:
    """Training event count of every item index, (n_items,) float64."""
    return np.bincount(items, minlength=n_items).astype(np.float64)


class AliasTable(NamedTuple):
    """Walker alias table: bucket k keeps k with probability ``keep[k]``, else ``alias[k]``."""

    keep: jax.Array  # float32 [n]
    alias: jax.Array  # int32 [n]


def alias_table(support: np.ndarray, alpha: float) -> AliasTable:
    """Alias table of ``P(item) ~ support ** alpha``, built on the host in O(n)."""
    weights = np.power(np.asarray(support, np.float64), alpha)
    n = len(weights)
    scaled_array = weights * (n / weights.sum())
    # Python floats and lists in the loop (the same float64 arithmetic, several times faster than numpy
    # scalars: catalogues of millions of items).
    scaled = scaled_array.tolist()
    keep = [1.0] * n
    alias = list(range(n))
    small = np.flatnonzero(scaled_array < 1.0).tolist()
    large = np.flatnonzero(scaled_array >= 1.0).tolist()
    while small and large:
        s, g = small.pop(), large.pop()
        keep[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    # Leftovers are 1 up to rounding: they keep themselves.
    return AliasTable(keep=jnp.asarray(np.asarray(keep), jnp.float32), alias=jnp.asarray(np.asarray(alias), jnp.int32))


def draw_negatives(key: jax.Array, table: AliasTable, n_sample: int) -> jax.Array:
    """``n_sample`` item indices drawn i.i.d. from the distribution of ``table``."""
    n = table.keep.shape[0]
    key_bucket, key_coin = jax.random.split(key)
    bucket = threefry.randint(key_bucket, (n_sample,), n)
    coin = threefry.uniform(key_coin, (n_sample,))
    return jnp.where(coin < table.keep[bucket], bucket, table.alias[bucket])


def logq_correction(
    log_support: jax.Array, columns: jax.Array, n_in_batch: int, logq: float, alpha: float
) -> jax.Array:
    """Per-column logQ offset to subtract from cross-entropy training scores.

    In-batch columns (the first ``n_in_batch``) were sampled with the data
    distribution (~support), extra samples with ~support**alpha.
    """
    scale = jnp.where(jnp.arange(columns.shape[0]) < n_in_batch, 1.0, alpha)
    return logq * scale * log_support[columns]
