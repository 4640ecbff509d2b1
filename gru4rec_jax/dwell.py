"""Dwell-time item boosting of training sessions (Bogina & Kuflik, RecTemp@RecSys 2017).

The dwell time of an event is the time of the next event of the same session
minus its own time (0 for a session's last event). With threshold ``t``, every
training event is repeated ``floor(dwell / t) + 1`` times in a row; the boosted
sessions are then trained with unmodified GRU4Rec (EXTENSIONS.md section 2).

Only training data is boosted: boosting test sessions (as one public
re-implementation did) makes the repeated items trivially predictable and
inflates the metrics.
"""

from __future__ import annotations

import numpy as np

from gru4rec_jax.data import EventTable, session_sort_keys, session_time_order

__all__ = ["dwell_times", "boost_by_dwell_time"]


def dwell_times(table: EventTable) -> np.ndarray:
    """Dwell time of every event of ``table`` (in file order), in the data's time unit."""
    keys = session_sort_keys(table.sessions)
    order = session_time_order(keys, table.times)  # stable: equal times keep file order
    sorted_times, sorted_keys = (table.times, keys) if order is None else (table.times[order], keys[order])
    same_session_next = np.r_[sorted_keys[1:] == sorted_keys[:-1], False]
    dwell_sorted = np.where(same_session_next, np.r_[np.diff(sorted_times), 0.0], 0.0)
    if order is None:
        return dwell_sorted
    dwell = np.empty_like(dwell_sorted)
    dwell[order] = dwell_sorted
    return dwell


def boost_by_dwell_time(table: EventTable, threshold: float) -> EventTable:
    """Repeats each event ``floor(dwell / threshold) + 1`` times; ``threshold`` 0 returns ``table``.

    Copies keep the event's timestamp and follow it directly, so that the
    session order is unchanged apart from the repetitions.
    """
    if threshold < 0:
        raise ValueError(f"the dwell threshold must be >= 0, got {threshold}")
    if threshold == 0:
        return table
    repeats = np.floor(dwell_times(table) / threshold).astype(np.int64) + 1
    return table.take(np.repeat(np.arange(len(table)), repeats))
