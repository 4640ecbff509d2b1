"""A built-in synthetic session dataset: the default data of the main job.

It is SYNTHETIC, not real clicks. It exists so that ``python -m
experiments.train`` runs anywhere with no download, and so that tests have
data with known structure:

- item popularity follows a power law (Zipf exponent ``zipf``), so a
  popularity baseline has something to find;
- sessions have real sequential structure: every item has a few preferred
  successors (drawn by popularity), and with probability ``follow_p`` a
  session moves to one of them instead of to a random popular item. A model
  that reads the session therefore clearly beats popularity.

Everything is a deterministic function of the seed.
"""

from __future__ import annotations

import numpy as np

from gru4rec_jax.data import EventTable, Sessions

__all__ = ["generate_events", "generate_sessions", "generate_train_test"]


def generate_events(n_sessions: int = 6000, n_items: int = 1000, *, seed: int = 0, **shape) -> EventTable:
    """Synthetic sessions as an event table; session ids ``0..n_sessions-1``, item ids ``"i<k>"``.

    ``shape`` passes on the keyword parameters of :func:`generate_sessions`.
    """
    sessions = generate_sessions(n_sessions, n_items, seed=seed, **shape)
    # Item ids are opaque strings; shuffle the labels so that the id order
    # carries no popularity information.
    labels = np.random.default_rng(seed + 1).permutation(n_items)
    return EventTable(
        session_ids=np.repeat(sessions.session_ids, sessions.lengths),
        item_ids=np.char.add("i", labels[sessions.items].astype(str)),
        times=sessions.times,
    )


def generate_sessions(
    n_sessions: int,
    n_items: int,
    *,
    seed: int = 0,
    zipf: float = 1.1,
    n_successors: int = 3,
    follow_p: float = 0.8,
    mean_length: float = 5.0,
    start_time: float = 1.6e9,
    span_seconds: float = 14 * 86400.0,
) -> Sessions:
    """Synthetic sessions over item indices ``0..n_items-1`` (index 0 the most popular).

    Session lengths are 2 + Poisson(mean_length - 2); sessions start uniformly
    over ``span_seconds`` and events are 10-120 s apart. Used directly by
    benchmarks that need a catalogue of an exact size.
    """
    if n_sessions < 1 or n_items < 2:
        raise ValueError("need n_sessions >= 1 and n_items >= 2")
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf
    popularity /= popularity.sum()
    successors = rng.choice(n_items, size=(n_items, n_successors), p=popularity)
    lengths = 2 + rng.poisson(max(mean_length - 2.0, 0.0), size=n_sessions)
    starts = np.sort(rng.uniform(start_time, start_time + span_seconds, size=n_sessions))

    total = int(lengths.sum())
    items = np.empty(total, np.int64)
    session_of = np.repeat(np.arange(n_sessions), lengths)
    first = np.r_[0, np.cumsum(lengths)[:-1]]
    items[first] = rng.choice(n_items, size=n_sessions, p=popularity)
    follow = rng.random(total) < follow_p
    pick = rng.integers(0, n_successors, size=total)
    random_items = rng.choice(n_items, size=total, p=popularity)
    is_first = np.zeros(total, bool)
    is_first[first] = True
    for k in range(1, int(lengths.max())):
        # Position k of every session at once: follow a successor or jump.
        idx = first[lengths > k] + k
        prev = items[idx - 1]
        items[idx] = np.where(follow[idx], successors[prev, pick[idx]], random_items[idx])
    gaps = rng.uniform(10.0, 120.0, size=total)
    gaps[is_first] = 0.0
    offsets_in_session = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first], lengths)
    times = starts[session_of] + offsets_in_session
    return Sessions(
        items=items.astype(np.int32),
        offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        times=np.round(times, 3),
        session_ids=np.arange(n_sessions).astype(str),
    )


def generate_train_test(
    n_sessions: int = 6000, n_items: int = 1000, *, seed: int = 0, test_fraction: float = 0.1
) -> tuple[EventTable, EventTable]:
    """Synthetic data split by time: the newest ``test_fraction`` of sessions is the test set."""
    table = generate_events(n_sessions, n_items, seed=seed)
    session = table.session_ids.astype(np.int64)
    n_test = max(1, int(round(n_sessions * test_fraction)))
    is_test = session >= n_sessions - n_test  # sessions are numbered by start time

    def subset(mask):
        return EventTable(table.session_ids[mask], table.item_ids[mask], table.times[mask])

    return subset(~is_test), subset(is_test)
