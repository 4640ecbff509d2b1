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
    "adagrad_momentum_step",
    "sparse_adagrad_momentum_update",
    "masked_adagrad_momentum_update",
    "resolve_table_update",
    "sum_duplicate_rows",
    "dedup_workspace",
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


def adagrad_momentum_step(
    params, state: AdagradMomentumState, grads, *, learning_rate: float, momentum: float = 0.0,
    eps: float = EPS, apply=True,
):
    """The step of :func:`adagrad_momentum` applied to ``params`` in one call.

    Returns ``(new_params, new_state)``, the same values as the optax
    transformation followed by ``optax.apply_updates``; where the boolean
    ``apply`` is false, both come back unchanged (a padding step of the
    training loop, whose zero gradients would still move the velocity). It
    may also be an array that broadcasts against every leaf (a row mask).

    Inside a ``lax.scan`` whose carry holds ``params`` and ``state``, XLA can
    then update them in place: each new value is materialised before the next
    one reads it, so no old value is read after its buffer is overwritten.
    Left to itself XLA recomputes ``acc + g**2`` and the velocity inside later
    fusions and keeps the old buffers alive by copying every accumulator and
    velocity at each step; without those copies the cross-entropy training
    step of the benchmark ran 10% faster on CPU.
    """
    barrier = jax.lax.optimization_barrier
    keep = lambda new, old: jnp.where(apply, new, old)  # noqa: E731
    acc = barrier(jax.tree.map(lambda a, g: keep(a + jnp.square(g), a), state.accumulator, grads))
    velocity = barrier(jax.tree.map(
        lambda v, g, a: keep(momentum * v - learning_rate * g / jnp.sqrt(a + eps), v),
        state.velocity, grads, acc))
    new_params = jax.tree.map(lambda p, v: keep(p + v, p), params, velocity)
    return new_params, AdagradMomentumState(accumulator=acc, velocity=velocity)


_NO_POSITION = jnp.iinfo(jnp.int32).max


def dedup_workspace(num_rows: int) -> jax.Array:
    """The reusable workspace of :func:`sum_duplicate_rows` for a table of ``num_rows`` rows."""
    return jnp.full((num_rows + 1,), _NO_POSITION, jnp.int32)


def sum_duplicate_rows(indices, row_grads, num_rows: int, *, workspace=None):
    """Sums the gradient rows that share an index, with static shapes and no sort.

    Args:
      indices: (K,) int row indices; values outside ``[0, num_rows)`` mean "no row".
        Or a tuple of parts (e.g. input rows and output rows), taken as their
        concatenation.
      row_grads: (K, ...) gradients of the gathered rows; a tuple of parts if
        indices is. Parts are summed in place of being joined: the copy that
        joining makes cost 10% of a 1M-item training step on CPU.
      num_rows: table size (the "no row" marker is mapped to this value).
      workspace: optionally :func:`dedup_workspace` ``(num_rows)``, carried
        from call to call (e.g. through a ``lax.scan``) instead of filling a
        fresh index-sized vector every call; the only cost left that grows
        with ``num_rows`` then goes.
    Returns ``(unique_indices, summed)``, both with leading size K: every
    index keeps the position of its first occurrence, where ``summed`` holds
    the sum of its gradients; the other positions hold ``num_rows`` (dropped
    by scatters). With a ``workspace``, ``(unique_indices, summed, workspace)``:
    the workspace restored for the next call.
    """
    if not isinstance(indices, (tuple, list)):
        indices, row_grads = (indices,), (row_grads,)
    indices = jnp.concatenate(indices)
    k = indices.shape[0]
    position = jnp.arange(k, dtype=jnp.int32)
    valid = (indices >= 0) & (indices < num_rows)
    safe = jnp.where(valid, indices, num_rows)
    # First position of every index via a scatter-min into an index-sized
    # int32 vector: much cheaper than sorting the K indices (the work on the
    # gradients stays O(K)). Only the K entries written here are reset after.
    given = workspace is not None
    workspace = workspace if given else dedup_workspace(num_rows)
    first = workspace.at[safe].min(position)
    representative = first[safe]
    summed = jnp.zeros((k,) + row_grads[0].shape[1:], row_grads[0].dtype)
    start = 0
    for part in row_grads:
        summed = summed.at[representative[start:start + part.shape[0]]].add(part)
        start += part.shape[0]
    unique = jnp.where(valid & (representative == position), safe, num_rows)
    if not given:
        return unique, summed
    # The reset values depend on ``representative``: XLA then orders the read
    # of ``first`` before this in-place write instead of copying the whole
    # workspace to keep both (4 MB, about 65 us on CPU, per call at 1M rows).
    reset = jnp.where(representative < 0, representative, _NO_POSITION)
    return unique, summed, first.at[safe].set(reset)


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
    workspace=None,
):
    """Row-sparse Adagrad-momentum step on an item table.

    Args:
      table, accumulator, velocity: (n, ...) arrays of the same shape.
      indices: (K,) touched rows, duplicates allowed; ``>= n`` means "none".
        Or a tuple of such arrays (e.g. input rows and output rows), which
        saves concatenating their gradients.
      row_grads: (K, ...) gradient of each gathered row; a tuple if indices is.
      strategy: how to compute the same result. ``"rows"`` works on the K
        touched rows only (deduplicate, gather, scatter): O(K), independent
        of n but for one fill of n int32 unless a ``workspace`` is carried.
        ``"masked"`` scatters the gradient into a table-sized buffer and
        updates under a touched-row mask: O(n), but it replaces several slow
        scatters by one, so it is faster while n is within a few times K.
        ``"auto"`` picks by that rule. Both give the same values.
      workspace: optionally the carried workspace of :func:`sum_duplicate_rows`
        (used by the ``"rows"`` strategy, passed through by ``"masked"``).
    Returns the new ``(table, accumulator, velocity)``; only touched rows
    differ. With a ``workspace``, ``(table, accumulator, velocity, workspace)``.
    """
    n = table.shape[0]
    if not isinstance(indices, (tuple, list)):
        indices, row_grads = (indices,), (row_grads,)
    strategy = resolve_table_update(strategy, n, sum(i.shape[0] for i in indices))
    if strategy == "masked":
        grads = jnp.zeros_like(table)
        for index, row_grad in zip(indices, row_grads):
            grads = grads.at[index].add(row_grad, mode="drop")
        updated = masked_adagrad_momentum_update(
            table, accumulator, velocity, grads, indices,
            learning_rate=learning_rate, momentum=momentum, eps=eps)
        return updated if workspace is None else (*updated, workspace)
    rows, grads, new_workspace = sum_duplicate_rows(
        indices, row_grads, n,
        workspace=dedup_workspace(n) if workspace is None else workspace)
    # Each row gathered once, unfused: left to itself XLA fuses the gathers
    # into the elementwise passes below, where they run several times slower
    # (5% of a 1M-item training step on CPU). Gathering the table's rows here
    # also beats reusing the ones gathered for the forward pass, which would
    # have to be joined into one array first (a copy).
    old_rows, old_acc, old_vel = jax.lax.optimization_barrier(tuple(
        a.at[rows].get(mode="fill", fill_value=0) for a in (table, accumulator, velocity)))
    acc_rows = old_acc + jnp.square(grads)
    vel_rows = momentum * old_vel - learning_rate * grads / jnp.sqrt(acc_rows + eps)
    new_rows = old_rows + vel_rows
    updated = (
        table.at[rows].set(new_rows, mode="drop"),
        accumulator.at[rows].set(acc_rows, mode="drop"),
        velocity.at[rows].set(vel_rows, mode="drop"),
    )
    return updated if workspace is None else (*updated, new_workspace)


# "auto" uses the masked form up to this many table rows per touched index
# (measured crossover on CPU, see experiments/benchmark.py).
_MASKED_MAX_RATIO = 4


def resolve_table_update(strategy: str, num_rows: int, num_touched: int) -> str:
    """The strategy ("rows" or "masked") that ``strategy`` means for a table of
    ``num_rows`` rows of which a step touches up to ``num_touched`` (with
    duplicates); see :func:`sparse_adagrad_momentum_update`."""
    if strategy == "auto":
        return "masked" if num_rows <= _MASKED_MAX_RATIO * num_touched else "rows"
    if strategy not in ("rows", "masked"):
        raise ValueError(f"strategy must be auto, rows or masked, got {strategy!r}")
    return strategy


def masked_adagrad_momentum_update(
    table: jax.Array,
    accumulator: jax.Array,
    velocity: jax.Array,
    grads: jax.Array,
    touched,
    *,
    learning_rate: float,
    momentum: float = 0.0,
    eps: float = EPS,
):
    """The ``"masked"`` strategy of :func:`sparse_adagrad_momentum_update`, given
    the table-shaped gradient ``grads`` (zero outside the touched rows) and
    ``touched``, the row indices (an array or a tuple of arrays; ``>= n`` means
    none). A caller that can compute the table-shaped gradient directly (the
    training step's output layer, as one product) saves building it from rows.
    Returns the new ``(table, accumulator, velocity)``; only touched rows differ.
    """
    n = table.shape[0]
    mask = jnp.zeros((n,), bool)
    for index in touched if isinstance(touched, (tuple, list)) else (touched,):
        mask = mask.at[index].set(True, mode="drop")
    # The dense step under a touched-row mask.
    table, state = adagrad_momentum_step(
        table, AdagradMomentumState(accumulator, velocity), grads,
        learning_rate=learning_rate, momentum=momentum, eps=eps,
        apply=mask.reshape((n,) + (1,) * (table.ndim - 1)))
    return table, state.accumulator, state.velocity
