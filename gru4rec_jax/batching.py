"""The session-parallel mini-batch schedule, as static-shape arrays.

B lanes each hold one session; every step each active lane feeds its current
item and is trained to predict the next one. A lane whose session is exhausted
takes the next unused session (lowest lane index first when several finish
together) and has its hidden state zeroed before that session's first step
(GRU4REC.md section 2). At the end of the data lanes run empty: the batch width
stays B and an ``active`` mask says which lanes hold a session. Every session
is consumed; sessions of length 1 produce no step.

The schedule depends only on the data and B, so it is built once (on the host,
vectorised but for one heap walk over sessions) and reused every epoch.
"""

from __future__ import annotations

import dataclasses
import heapq

import numpy as np

from gru4rec_jax.data import Sessions

__all__ = ["Schedule", "assign_lanes", "equal_chunk_steps", "pad_into_chunks", "session_parallel_schedule"]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Arrays of shape ``[n_steps, batch_size]`` driving the session-parallel loop.

    - ``inputs``: item fed at the step (0 where inactive).
    - ``targets``: next item, to be predicted (0 where inactive).
    - ``active``: the lane holds a session at this step.
    - ``reset``: zero the lane's hidden state before this step (first step of a
      session); True for exactly one step per session.
    """

    inputs: np.ndarray
    targets: np.ndarray
    active: np.ndarray
    reset: np.ndarray

    @property
    def n_steps(self) -> int:
        return self.inputs.shape[0]

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[1]

    @property
    def n_events(self) -> int:
        """Number of predicted events (training examples)."""
        return int(self.active.sum())

    def padded_chunks(self, chunk_steps: int) -> dict[str, np.ndarray]:
        """The schedule as ``[n_chunks, chunk_steps, batch_size]`` arrays.

        The tail is padded with all-inactive steps, which change nothing in the
        training and evaluation loops, so one compiled chunk serves the whole epoch.
        """
        return pad_into_chunks({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, chunk_steps)


def equal_chunk_steps(n_steps: int, max_chunk_steps: int) -> int:
    """Steps per chunk that split ``n_steps >= 1`` into equal chunks of at most
    ``max_chunk_steps``: the fewest padding steps in the last one."""
    n_chunks = -(-n_steps // max_chunk_steps)
    return -(-n_steps // n_chunks)


def pad_into_chunks(arrays: dict[str, np.ndarray], chunk_steps: int) -> dict[str, np.ndarray]:
    """``[n_steps, B]`` arrays as ``[n_chunks, chunk_steps, B]``, zero-padded at the end."""
    n_steps = next(iter(arrays.values())).shape[0]
    n_chunks = max(1, -(-n_steps // chunk_steps))
    pad = n_chunks * chunk_steps - n_steps
    out = {}
    for name, array in arrays.items():
        array = np.concatenate([array, np.zeros((pad,) + array.shape[1:], array.dtype)])
        out[name] = array.reshape(n_chunks, chunk_steps, -1)
    return out


# assign_lanes goes step by step (one round of numpy over the lanes per step at
# which lanes free up) where a step hands out at least this many units on
# average, else unit by unit (a heap operation per unit). On the 2-core CPU the
# two cross near 25-40 units per step: 5,000 sessions of 4 steps on 512 lanes
# (an evaluation's) took 0.5 against 3.6 ms, 25,000 on 32 lanes 34 against 15 ms.
STEP_ROUNDS_FROM_UNITS_PER_STEP = 32


def assign_lanes(durations: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(lane, first step) of each unit of work (a session, or a user's sessions).

    Units are taken in order, each by the lane that frees up first, the lowest
    lane index on ties: exactly the reference iterator's rule. A unit of zero
    steps takes no time, so its lane takes the next unit at the same step.
    """
    durations = np.asarray(durations, np.int64)
    if len(durations) * batch_size >= STEP_ROUNDS_FROM_UNITS_PER_STEP * max(int(durations.sum()), 1):
        return _assign_lanes_by_step(durations, batch_size)
    return _assign_lanes_by_unit(durations, batch_size)


def _assign_lanes_by_unit(durations: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    # A heap of lane free times, each encoded with its lane as one int ``time * batch_size + lane``: the
    # smallest is the earliest time, lowest lane on ties. One peek and one replace per unit, on plain ints
    # (twice as fast as (time, lane) tuples: millions of sessions).
    free = list(range(batch_size))
    taken = []
    take = taken.append
    replace = heapq.heapreplace
    for step_keys in (durations * batch_size).tolist():
        key = free[0]
        take(key)
        replace(free, key + step_keys)
    keys = np.array(taken, np.int64)
    return keys % batch_size, keys // batch_size


def _assign_lanes_by_step(durations: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The same assignment, one round per step at which lanes free up: those lanes,
    in index order, take the next units with steps, each with the zero-step units
    just before its own (a lane that takes one at step t is free again at t)."""
    n = len(durations)
    lane_of = np.empty(n, np.int64)
    start_of = np.empty(n, np.int64)
    with_steps = np.flatnonzero(durations > 0)
    free_at = np.zeros(batch_size, np.int64)
    taken = next_with_steps = 0  # units assigned; units with steps among them
    while next_with_steps < len(with_steps):
        t = free_at.min()
        lanes = np.flatnonzero(free_at == t)
        k = min(len(lanes), len(with_steps) - next_with_steps)
        units = with_steps[next_with_steps:next_with_steps + k]
        end = units[-1] + 1
        lane_of[taken:end] = np.repeat(lanes[:k], np.diff(units, prepend=taken - 1))
        start_of[taken:end] = t
        free_at[lanes[:k]] = t + durations[units]
        taken, next_with_steps = end, next_with_steps + k
    if taken < n:  # zero-step units after the last with steps: the first lane to free up takes them all
        lane = np.argmin(free_at)
        lane_of[taken:], start_of[taken:] = lane, free_at[lane]
    return lane_of, start_of


def session_parallel_schedule(sessions: Sessions, batch_size: int) -> Schedule:
    """Builds the reference's session-parallel schedule with a fixed width."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = sessions.lengths
    n_steps_of = np.maximum(lengths - 1, 0)
    lane_of, start_of = assign_lanes(n_steps_of, batch_size)
    n_steps = int((start_of + n_steps_of).max()) if sessions.n_sessions else 0

    # Every event but a session's last is an input; place them all at once.
    first_event = sessions.offsets[:-1]
    event_session = np.repeat(np.arange(sessions.n_sessions), n_steps_of)
    position = np.arange(len(event_session)) - np.repeat(
        np.r_[0, np.cumsum(n_steps_of)[:-1]], n_steps_of
    )
    step = start_of[event_session] + position
    lane = lane_of[event_session]
    source = first_event[event_session] + position

    if len(event_session) == 0:
        n_steps = 0
    inputs = np.zeros((n_steps, batch_size), np.int32)
    targets = np.zeros((n_steps, batch_size), np.int32)
    active = np.zeros((n_steps, batch_size), bool)
    reset = np.zeros((n_steps, batch_size), bool)
    inputs[step, lane] = sessions.items[source]
    targets[step, lane] = sessions.items[source + 1]
    active[step, lane] = True
    reset[step[position == 0], lane[position == 0]] = True
    return Schedule(inputs=inputs, targets=targets, active=active, reset=reset)
