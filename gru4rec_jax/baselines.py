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

Scores follow the authors' baselines: popularity enters as ``s / (s + 1)``
(below 1, so that one earlier occurrence in the session outweighs any
popularity) and POP keeps only its ``top_n`` items. :func:`evaluate` ranks every
next event of the test sessions against all items with the tie rules and
metrics of :mod:`gru4rec_jax.evaluation`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gru4rec_jax.data import Sessions
from gru4rec_jax.evaluation import EVAL_MODES, rank_of_target
from gru4rec_jax.sampling import item_support

__all__ = ["Popularity", "SessionPopularity", "ItemKNN", "evaluate"]


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
