"""Adagrad with heavy-ball momentum, dense and row-sparse (GRU4REC.md section 6).

Per parameter, with accumulator ``acc`` and velocity ``v`` starting at zero::

    acc += g**2
    step = -lr * g / sqrt(acc + eps)          # eps inside the sqrt
    v = momentum * v + step;  theta += v

The references call this Nesterov momentum; the code is plain heavy-ball
momentum on the Adagrad-scaled step. ``optax.adagrad`` differs (initial
accumulator 0.1, eps outside the sqrt) and is a documented cause of a
third-party port's failure, hence the transformation here.

Item-indexed tables get the row-sparse form: only the rows touched in a step
change (parameter, accumulator and velocity rows); untouched rows keep their
stale velocity. Gradients of duplicate indices are summed before squaring.
Its cost is independent of the number of items.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "AdagradMomentumState",
    "adagrad_momentum",
    "sparse_adagrad_momentum_update",
    "sum_duplicate_rows",
]

EPS = 1e-6


class AdagradMomentumState(NamedTuple):
    accumulator: optax.Params
    velocity: optax.Params


def adagrad_momentum(
    learning_rate: float, momentum: float = 0.0, eps: float = EPS
) -> optax.GradientTransformation:
    """The dense GRU4Rec optimizer as an optax transformation.

    The returned updates are the velocities; apply them with
    ``optax.apply_updates``.
    """

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return AdagradMomentumState(accumulator=zeros, velocity=jax.tree.map(jnp.zeros_like, params))

    def update_fn(grads, state, params=None):
        del params
        acc = jax.tree.map(lambda a, g: a + jnp.square(g), state.accumulator, grads)
        velocity = jax.tree.map(
            lambda v, g, a: momentum * v - learning_rate * g / jnp.sqrt(a + eps),
            state.velocity,
            grads,
            acc,
        )
        return velocity, AdagradMomentumState(accumulator=acc, velocity=velocity)

    return optax.GradientTransformation(init_fn, update_fn)


def sum_duplicate_rows(indices: jax.Array, row_grads: jax.Array, num_rows: int):
    """Sums the gradient rows that share an index, with static shapes and no sort.

    Args:
      indices: (K,) int row indices; values outside ``[0, num_rows)`` mean "no row".
      row_grads: (K, ...) gradients of the gathered rows.
      num_rows: table size (the "no row" marker is mapped to this value).
    Returns ``(unique_indices, summed)``, both with leading size K: every
    index keeps the position of its first occurrence, where ``summed`` holds
    the sum of its gradients; the other positions hold ``num_rows`` (dropped
    by scatters).
    """
    k = indices.shape[0]
    position = jnp.arange(k, dtype=jnp.int32)
    valid = (indices >= 0) & (indices < num_rows)
    safe = jnp.where(valid, indices, num_rows)
    # First position of every index via a scatter-min into an index-sized
    # int32 vector: much cheaper than sorting the K indices (one memset of
    # 4 bytes per item; the work on the gradients stays O(K)).
    first = jnp.full((num_rows + 1,), k, jnp.int32).at[safe].min(position)
    representative = first[safe]
    summed = jnp.zeros_like(row_grads).at[representative].add(row_grads)
    unique = jnp.where(valid & (representative == position), safe, num_rows)
    return unique, summed


def sparse_adagrad_momentum_update(
    table: jax.Array,
    accumulator: jax.Array,
    velocity: jax.Array,
    indices: jax.Array,
    row_grads: jax.Array,
    *,
    learning_rate: float,
    momentum: float = 0.0,
    eps: float = EPS,
    strategy: str = "auto",
):
    """Row-sparse Adagrad-momentum step on an item table.

    Args:
      table, accumulator, velocity: (n, ...) arrays of the same shape.
      indices: (K,) touched rows, duplicates allowed; ``>= n`` means "none".
        Or a tuple of such arrays (e.g. input rows and output rows), which
        saves concatenating their gradients.
      row_grads: (K, ...) gradient of each gathered row; a tuple if indices is.
      strategy: how to compute the same result. ``"rows"`` works on the K
        touched rows only (deduplicate, gather, scatter): O(K),
        independent of n but for one memset of n int32. ``"masked"`` scatters the gradient into a table-sized
        buffer and updates under a touched-row mask: O(n), but it replaces
        several slow scatters by one, so it is faster while n is within a few
        times K. ``"auto"`` picks by that rule. Both give the same values.
    Returns the new ``(table, accumulator, velocity)``; only touched rows differ.
    """
    n = table.shape[0]
    if not isinstance(indices, (tuple, list)):
        indices, row_grads = (indices,), (row_grads,)
    n_touched = sum(i.shape[0] for i in indices)
    if strategy == "auto":
        strategy = "masked" if n <= _MASKED_MAX_RATIO * n_touched else "rows"
    if strategy == "masked":
        return _masked_update(table, accumulator, velocity, indices, row_grads, learning_rate, momentum, eps)
    if strategy != "rows":
        raise ValueError(f"strategy must be auto, rows or masked, got {strategy!r}")
    rows, grads = sum_duplicate_rows(jnp.concatenate(indices), jnp.concatenate(row_grads), n)
    acc_rows = accumulator.at[rows].get(mode="fill", fill_value=0) + jnp.square(grads)
    vel_rows = momentum * velocity.at[rows].get(mode="fill", fill_value=0) - (
        learning_rate * grads / jnp.sqrt(acc_rows + eps)
    )
    new_rows = table.at[rows].get(mode="fill", fill_value=0) + vel_rows
    return (
        table.at[rows].set(new_rows, mode="drop"),
        accumulator.at[rows].set(acc_rows, mode="drop"),
        velocity.at[rows].set(vel_rows, mode="drop"),
    )


# "auto" uses the masked form up to this many table rows per touched index
# (measured crossover on CPU, see experiments/benchmark.py).
_MASKED_MAX_RATIO = 4


def _masked_update(table, accumulator, velocity, indices, row_grads, learning_rate, momentum, eps):
    n = table.shape[0]
    grads = jnp.zeros_like(table)
    touched = jnp.zeros((n,), bool)
    for index, row_grad in zip(indices, row_grads):
        grads = grads.at[index].add(row_grad, mode="drop")
        touched = touched.at[index].set(True, mode="drop")
    touched = touched.reshape((n,) + (1,) * (table.ndim - 1))
    acc = jnp.where(touched, accumulator + jnp.square(grads), accumulator)
    vel = jnp.where(touched, momentum * velocity - learning_rate * grads / jnp.sqrt(acc + eps), velocity)
    return jnp.where(touched, table + vel, table), acc, vel
