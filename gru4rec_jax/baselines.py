"""Non-neural baselines of the GRU4Rec papers, ranked with the same protocol.

- ``Popularity`` (POP): the training popularity of every item, whatever the session.
- ``SessionPopularity`` (S-POP): how often the item occurred earlier in the current
  session, ties broken by training popularity.
- ``ItemKNN``: similarity of every item to the session's current item, from
  co-occurrence in training sessions: ``co(i, j) / ((s_i + lambda)^alpha (s_j + lambda)^(1-alpha))``
  (``alpha`` 0.5 is the cosine with the usual regularisation ``lambda``), where
  ``co`` counts pairs of events of the same session and ``s`` the item's events;
  an item is not similar to itself, and only the ``n_sims`` most similar items
  of each item (all of those tied at the cut) score above zero.
- ``BPRMF``: matrix factorisation trained with BPR (Rendle et al. 2009), every
  training session playing the user; a test session is the average of the item
  factors of its items so far, and items score by their dot product with it.

Scores follow the authors' baselines: popularity enters as ``s / (s + 1)``
(below 1, so that one earlier occurrence in the session outweighs any
popularity) and POP keeps only its ``top_n`` items. :func:`evaluate` ranks every
next event of the test sessions against all items with the tie rules and
metrics of :mod:`gru4rec_jax.evaluation`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gru4rec_jax.data import Sessions
from gru4rec_jax.evaluation import EVAL_MODES, rank_of_target
from gru4rec_jax.sampling import item_support

__all__ = ["Popularity", "SessionPopularity", "ItemKNN", "BPRMF", "bpr_sgd_step", "evaluate"]


class Popularity:
    """POP: every session gets the training popularity ranking."""

    def __init__(self, train: Sessions, n_items: int, top_n: int = 100):
        support = item_support(train.items, n_items)
        self.scores = np.zeros(n_items)
        top = np.argsort(-support, kind="stable")[:top_n]
        self.scores[top] = support[top] / (support[top] + 1.0)

    def session_scores(self, items: np.ndarray) -> np.ndarray:
        """Scores (len(items), n) for the prefixes ending at each of ``items``."""
        return np.broadcast_to(self.scores, (len(items), len(self.scores)))


class SessionPopularity:
    """S-POP: occurrences in the session so far, then training popularity."""

    def __init__(self, train: Sessions, n_items: int):
        support = item_support(train.items, n_items)
        self.popularity = support / (support + 1.0)

    def session_scores(self, items: np.ndarray) -> np.ndarray:
        counts = np.zeros((len(items), len(self.popularity)))
        counts[np.arange(len(items)), items] = 1.0
        return np.cumsum(counts, axis=0) + self.popularity


class ItemKNN:
    """Item-to-item similarity from session co-occurrence, scored for the current item."""

    MAX_ITEMS = 30000  # the similarity matrix is dense: n x n floats

    def __init__(self, train: Sessions, n_items: int, *, lmbd: float = 20.0, alpha: float = 0.5,
                 n_sims: int = 100):
        if n_items > self.MAX_ITEMS:
            raise ValueError(f"ItemKNN keeps a dense similarity matrix; {n_items} items is more than "
                             f"its limit of {self.MAX_ITEMS}")
        co = np.zeros((n_items, n_items))
        for start, end in zip(train.offsets[:-1], train.offsets[1:]):
            items = train.items[start:end]
            # Every event of i and every event of j in the session make one pair.
            counts = np.bincount(items, minlength=n_items).astype(float)
            present = np.flatnonzero(counts)
            co[np.ix_(present, present)] += np.outer(counts[present], counts[present])
        np.fill_diagonal(co, 0.0)
        support = item_support(train.items, n_items)
        norm = np.power(support[:, None] + lmbd, alpha) * np.power(support[None, :] + lmbd, 1.0 - alpha)
        sims = co / np.where(norm > 0, norm, 1.0)
        if n_sims < n_items:
            # Keep each row's n_sims largest similarities.
            threshold = -np.partition(-sims, n_sims - 1, axis=1)[:, n_sims - 1: n_sims]
            sims = np.where(sims >= threshold, sims, 0.0)
        self.sims = sims

    def session_scores(self, items: np.ndarray) -> np.ndarray:
        return self.sims[items]


def bpr_sgd_step(factors: jax.Array, rows: jax.Array, *, learning_rate: float, lambda_session: float = 0.0,
                 lambda_item: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """One SGD step on the BPR loss of a (session, positive item, negative item) triple.

    ``factors`` [n_sessions + n_items, k] is one table: the session factors, then the
    item factors; ``rows`` [3] are the table rows of the session ``s``, the positive ``p``
    and the negative ``n``. With ``x = u_s . (i_p - i_n)`` and ``c = 1 - sigmoid(x)``
    (minus the derivative of ``-log sigmoid(x)``), the step is
    ``u_s += lr (c (i_p - i_n) - lambda_session u_s)``,
    ``i_p += lr (c u_s - lambda_item i_p)``, ``i_n += lr (-c u_s - lambda_item i_n)``,
    every right-hand side with the values from before the step (when ``p == n`` both
    item changes add up). Returns the new table and the loss ``-log sigmoid(x)`` before
    the step.
    """
    # One gather and one scatter-add on a single table: XLA then updates it in place
    # under lax.scan, where separate tables were copied whole at every step.
    u, i_pos, i_neg = factors[rows]
    x = jnp.dot(u, i_pos - i_neg)
    c = jax.nn.sigmoid(-x)
    changes = jnp.stack([c * (i_pos - i_neg) - lambda_session * u, c * u - lambda_item * i_pos,
                         -c * u - lambda_item * i_neg])
    return factors.at[rows].add(learning_rate * changes), jax.nn.softplus(-x)


@jax.jit
def _bpr_epoch(factors: jax.Array, event_rows: jax.Array, n_sessions: jax.Array, key: jax.Array,
               learning_rate, lambda_session, lambda_item) -> tuple[jax.Array, jax.Array]:
    """One pass over the events in a random order, one uniform negative each; (factors, mean loss).

    ``event_rows`` [n_events, 2] are the table rows of each event's session and item.
    """
    order_key, negative_key = jax.random.split(key)
    positives = jax.random.permutation(order_key, event_rows)
    negatives = jax.random.randint(negative_key, (len(event_rows), 1), n_sessions, factors.shape[0],
                                   dtype=event_rows.dtype)
    step = functools.partial(bpr_sgd_step, learning_rate=learning_rate, lambda_session=lambda_session,
                             lambda_item=lambda_item)
    factors, losses = jax.lax.scan(step, factors, jnp.concatenate([positives, negatives], axis=1))
    return factors, jnp.mean(losses)


class BPRMF:
    """BPR-MF of the ICLR 2016 paper: each training session is a user of matrix factorisation.

    Training (Rendle et al. 2009, "BPR: Bayesian personalized ranking from implicit
    feedback"): every epoch visits all training events in a fresh random order; the
    event (session s, item p) is paired with one negative item n drawn uniformly from
    all items (it may equal p), and one sequential SGD step of :func:`bpr_sgd_step`
    is taken on ``-log sigmoid(u_s . i_p - u_s . i_n)`` with L2 regularisation
    ``lambda_session`` / ``lambda_item``. The whole epoch is one jitted ``lax.scan`` of
    these steps (10 epochs of 70k events: about 3 s on two CPU cores, plus compilation).

    Prediction: the session vector is the mean of the item factors of the items of the
    session so far, the current one included; an item scores by its dot product with it.
    The factors of the training sessions are not used for prediction.

    Defaults follow the authors' ``BPR`` class in the public GRU4Rec ``baselines.py``:
    80 factors, 10 epochs, learning rate 0.01, no regularisation, factors drawn
    uniformly from ``[-sigma, sigma]`` with sigma 0.05 (``init_normal`` draws
    ``N(0, sigma^2)``). That class keeps item biases but never trains them (they stay 0),
    so this model has none. Its negative is the item of a random one of the first
    ``n_items`` rows of its event table, evidently meant as a uniform item draw, which
    is what is done here. ``seed`` makes training repeatable (JAX PRNG).
    """

    def __init__(self, train: Sessions, n_items: int, *, n_factors: int = 80, n_epochs: int = 10,
                 learning_rate: float = 0.01, lambda_session: float = 0.0, lambda_item: float = 0.0,
                 sigma: float = 0.05, init_normal: bool = False, seed: int = 0):
        for name, value in (("n_factors", n_factors), ("n_epochs", n_epochs)):
            if not (isinstance(value, (int, np.integer)) and value >= 1):
                raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")
        if not (np.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive number, got {learning_rate}")
        for name, value in (("lambda_session", lambda_session), ("lambda_item", lambda_item)):
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value}")
        if not (np.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive number, got {sigma}")
        if train.n_events == 0:
            raise ValueError("BPRMF needs at least one training event")
        if n_items < 1 or train.items.min() < 0 or train.items.max() >= n_items:
            raise ValueError(f"training items must lie in [0, n_items), with n_items = {n_items}")
        init_key, epochs_key = jax.random.split(jax.random.key(seed))
        session_key, item_key = jax.random.split(init_key)
        factors = jnp.concatenate([self._init(session_key, (train.n_sessions, n_factors), sigma, init_normal),
                                   self._init(item_key, (n_items, n_factors), sigma, init_normal)])
        event_rows = jnp.asarray(np.stack([np.repeat(np.arange(train.n_sessions), train.lengths),
                                           train.n_sessions + train.items], axis=1), jnp.int32)
        self.epoch_losses = []  # mean BPR loss of each epoch, each event's before its step
        for epoch in range(n_epochs):
            factors, loss = _bpr_epoch(factors, event_rows, train.n_sessions, jax.random.fold_in(epochs_key, epoch),
                                       learning_rate, lambda_session, lambda_item)
            self.epoch_losses.append(float(loss))
        factors = np.asarray(factors)
        self.session_factors = factors[: train.n_sessions]  # of the training sessions; unused by predictions
        self.item_factors = factors[train.n_sessions:]

    @staticmethod
    def _init(key: jax.Array, shape: tuple[int, int], sigma: float, init_normal: bool) -> jax.Array:
        if init_normal:
            return sigma * jax.random.normal(key, shape)
        return jax.random.uniform(key, shape, minval=-sigma, maxval=sigma)

    def session_scores(self, items: np.ndarray) -> np.ndarray:
        prefix_sums = np.cumsum(self.item_factors[items], axis=0)
        session_vectors = prefix_sums / np.arange(1, len(items) + 1)[:, None]
        return session_vectors @ self.item_factors.T


_ranks = jax.jit(rank_of_target, static_argnames="mode")


def evaluate(model, sessions: Sessions, *, cutoffs: Sequence[int] = (1, 5, 10, 20),
             mode: str = "conservative") -> dict:
    """Recall@K and MRR@K of a baseline over every next event of ``sessions``."""
    if mode not in EVAL_MODES:
        raise ValueError(f"eval mode must be one of {EVAL_MODES}, got {mode!r}")
    ranks = []
    for start, end in zip(sessions.offsets[:-1], sessions.offsets[1:]):
        items = sessions.items[start:end]
        if len(items) < 2:
            continue
        scores = np.asarray(model.session_scores(items[:-1]), np.float32)
        # Pad the rows to a power of two: few distinct shapes, few compilations.
        rows = 1 << (len(items) - 2).bit_length()
        padded = np.zeros((rows, scores.shape[1]), np.float32)
        padded[: len(scores)] = scores
        targets = np.zeros(rows, np.int32)
        targets[: len(scores)] = items[1:]
        ranks.append(np.asarray(_ranks(jnp.asarray(padded), jnp.asarray(targets), mode))[: len(scores)])
    if not ranks:
        raise ValueError("the test data has no session with 2 or more known events")
    ranks = np.concatenate(ranks).astype(np.float64)
    result = {}
    for k in cutoffs:
        hit = ranks <= k
        result[f"recall@{k}"] = float(np.mean(hit))
        result[f"mrr@{k}"] = float(np.mean(np.where(hit, 1.0 / ranks, 0.0)))
    result["n_eval_events"] = len(ranks)
    return result
