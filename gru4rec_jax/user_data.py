"""User-aware session data for HRNN (EXTENSIONS.md section 3): the foundation of issue 4.

Events carry a user column. A user's sessions come from the session column or,
when the data has none, from idle gaps in the user's events; each user's
sessions are in time order. The last session of every user is the test
session of the standard split (the same split of the training part gives the
validation split). The user-parallel schedule binds each lane to a user for
all of that user's sessions.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gru4rec_jax.batching import assign_lanes
from gru4rec_jax.data import (
    DataError, EventTable, IdColumn, ItemMap, Sessions, arrow_strings, gather_ranges, group_sessions, numpy_strings,
    session_sort_keys, session_time_order,
)

__all__ = [
    "UserSessions",
    "UserSchedule",
    "idle_gap_sessions",
    "sessions_by_idle_gap",
    "build_user_sessions",
    "split_last_session",
    "user_parallel_schedule",
]


def _require_users(table: EventTable, source: str) -> IdColumn:
    if table.users is None:
        raise DataError(f"{source}: no user column (HRNN needs one; set --user_key)")
    return table.users


def idle_gap_sessions(users: IdColumn, times: np.ndarray, gap: float) -> IdColumn:
    """Sessions ``"<user>:<k>"``, one per row: a user's next session starts after more than ``gap`` idle time."""
    if gap <= 0:
        raise ValueError(f"the session gap must be > 0, got {gap}")
    keys = session_sort_keys(users)
    order = session_time_order(keys, times)
    user_codes = users.codes
    if order is not None:
        keys, times, user_codes = keys[order], times[order], user_codes[order]
    new_user = np.r_[True, keys[1:] != keys[:-1]]
    new_session = new_user | np.r_[True, np.diff(times) > gap]
    # Number the sessions: overall, then within each user (0, 1, ...).
    session_no = np.cumsum(new_session) - 1
    starts = np.flatnonzero(new_session)
    first_of_user = np.maximum.accumulate(np.where(new_user[starts], np.arange(len(starts)), 0))
    labels = pc.binary_join_element_wise(
        arrow_strings(users.values[user_codes[starts]]),
        pc.cast(pa.array(np.arange(len(starts)) - first_of_user), pa.string()), ":")
    codes = session_no.astype(np.int32)
    if order is not None:
        codes = np.empty_like(codes)
        codes[order] = session_no
    return IdColumn(codes=codes, values=numpy_strings(labels))


def sessions_by_idle_gap(user_ids: np.ndarray, times: np.ndarray, gap: float) -> np.ndarray:
    """Session labels ``"<user>:<k>"`` as strings (see :func:`idle_gap_sessions`)."""
    return idle_gap_sessions(IdColumn.encode(user_ids), np.asarray(times, np.float64), gap).decode()


def _text_ranks(column: IdColumn) -> np.ndarray:
    """Rank of each value of ``column`` in text order."""
    ranks = np.empty(len(column.values), np.int64)
    ranks[np.argsort(column.values, kind="stable")] = np.arange(len(column.values))
    return ranks


def _user_session_keys(users: IdColumn, sessions: IdColumn) -> np.ndarray:
    """Key of each row's (user, session) pair, in the text order of ``user + "\\x1f" + session``.

    A session belongs to one user: the same session id under two users is two sessions.
    """
    return _text_ranks(users)[users.codes] * len(sessions.values) + _text_ranks(sessions)[sessions.codes]


@dataclasses.dataclass(frozen=True)
class UserSessions:
    """Sessions grouped by user: user u owns sessions ``user_offsets[u]:user_offsets[u + 1]``.

    Users are ordered by their first event; each user's sessions by start time.
    """

    sessions: Sessions
    user_offsets: np.ndarray  # int64 [n_users + 1], offsets into sessions
    user_ids: np.ndarray  # str [n_users]

    @property
    def n_users(self) -> int:
        return len(self.user_offsets) - 1


def build_user_sessions(
    table: EventTable, item_map: ItemMap, *, session_gap: Optional[float] = None, source: str = "data"
) -> UserSessions:
    """Groups ``table`` into users' sessions; unknown items are dropped first.

    With ``session_gap`` the session column is ignored and sessions are cut at
    idle gaps longer than it (in the data's time unit).
    """
    users = _require_users(table, source)
    sessions = table.sessions if session_gap is None else idle_gap_sessions(users, table.times, session_gap)
    grouped, first_rows = group_sessions(  # ordered by first timestamp
        item_map.lookup(table.items), table.times, _user_session_keys(users, sessions), source)
    owner = users.codes[first_rows]
    # Users by their first session (so by first event); a stable sort keeps each user's sessions in time order.
    first_session = np.full(len(users.values), grouped.n_sessions, np.int64)
    np.minimum.at(first_session, owner, np.arange(grouped.n_sessions))
    order = np.argsort(first_session[owner], kind="stable")
    lengths = grouped.lengths[order]
    event_order = gather_ranges(grouped.offsets[:-1][order], lengths)
    regrouped = Sessions(
        items=grouped.items[event_order],
        offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        times=grouped.times[event_order],
        session_ids=sessions.values[sessions.codes[first_rows[order]]],
    )
    owner = owner[order]
    user_starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    return UserSessions(
        sessions=regrouped,
        user_offsets=np.r_[user_starts, len(order)].astype(np.int64),
        user_ids=users.values[owner[user_starts]],
    )


def split_last_session(
    table: EventTable, *, session_gap: Optional[float] = None, source: str = "data"
) -> tuple[EventTable, EventTable]:
    """(train, test): each user's last session (latest start) is the test session.

    Users with a single session stay entirely in training. Apply it again to
    the training part for the validation split. With ``session_gap`` the parts
    carry the idle-gap sessions.
    """
    users = _require_users(table, source)
    if session_gap is not None:
        table = table.replace(session_ids=idle_gap_sessions(users, table.times, session_gap))
    pairs, inverse = np.unique(_user_session_keys(users, table.sessions), return_inverse=True)
    inverse = inverse.reshape(-1)
    start = np.full(len(pairs), np.inf)
    np.minimum.at(start, inverse, table.times)
    owner = np.empty(len(pairs), np.int64)
    owner[inverse] = users.codes
    # Per user, the session that starts last (ties: the later pair in text order) is the test session,
    # unless it is the user's only one.
    order = np.lexsort((np.arange(len(pairs)), start, owner))
    last = order[np.r_[owner[order][1:] != owner[order][:-1], True]]
    is_test_pair = np.zeros(len(pairs), bool)
    is_test_pair[last] = np.bincount(owner)[owner[last]] > 1
    is_test = is_test_pair[inverse]
    return table.take(~is_test), table.take(is_test)


@dataclasses.dataclass(frozen=True)
class UserSchedule:
    """``[n_steps, batch_size]`` arrays driving the user-parallel loop.

    - ``inputs`` / ``targets`` / ``active``: as in :class:`~gru4rec_jax.batching.Schedule`.
    - ``user_start``: first step of a lane's new user: zero the user and session states.
    - ``session_start``: first step of a later session of the same user: update
      the user state from the finished session, then initialise the session
      state from it. Each flag is True for exactly one step; never both.
    """

    inputs: np.ndarray
    targets: np.ndarray
    active: np.ndarray
    user_start: np.ndarray
    session_start: np.ndarray
    last_session: np.ndarray  # the step belongs to its user's last session (the test session on replay)

    @property
    def n_steps(self) -> int:
        return self.inputs.shape[0]

    @property
    def n_events(self) -> int:
        return int(self.active.sum())


def user_parallel_schedule(data: UserSessions, batch_size: int) -> UserSchedule:
    """Lanes take users in order (the lane that frees up first, lowest index on ties).

    Sessions with a single event produce no step and are skipped (they give the
    user GRU no session state to consume); a user without any longer session
    takes no lane time.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sessions = data.sessions
    steps_of_session = np.maximum(sessions.lengths - 1, 0)
    user_of_session = np.repeat(np.arange(data.n_users), np.diff(data.user_offsets))
    steps_of_user = np.bincount(user_of_session, weights=steps_of_session, minlength=data.n_users).astype(np.int64)

    user_lane, user_begin = assign_lanes(steps_of_user, batch_size)
    n_steps = int((user_begin + steps_of_user).max()) if data.n_users else 0

    # Each session's first step: the user's start plus the steps of its earlier sessions.
    before_in_user = np.cumsum(steps_of_session) - steps_of_session
    first_session_of_user = data.user_offsets[:-1]
    before_in_user = before_in_user - np.repeat(before_in_user[first_session_of_user], np.diff(data.user_offsets))
    session_begin = user_begin[user_of_session] + before_in_user
    # The user's first session that produces steps carries the user-start flag.
    has_steps = steps_of_session > 0
    earlier_with_steps = np.cumsum(has_steps) - has_steps
    first_with_steps = earlier_with_steps == np.repeat(earlier_with_steps[first_session_of_user], np.diff(data.user_offsets))

    event_session = np.repeat(np.arange(sessions.n_sessions), steps_of_session)
    position = np.arange(len(event_session)) - np.repeat(np.cumsum(steps_of_session) - steps_of_session, steps_of_session)
    step = session_begin[event_session] + position
    lane = user_lane[user_of_session[event_session]]
    source = sessions.offsets[:-1][event_session] + position

    shape = (n_steps if len(event_session) else 0, batch_size)
    out = {name: np.zeros(shape, np.int32) for name in ("inputs", "targets")}
    out.update({name: np.zeros(shape, bool) for name in ("active", "user_start", "session_start", "last_session")})
    out["inputs"][step, lane] = sessions.items[source]
    out["targets"][step, lane] = sessions.items[source + 1]
    out["active"][step, lane] = True
    first = position == 0
    starts_user = first & first_with_steps[event_session]
    out["user_start"][step[starts_user], lane[starts_user]] = True
    starts_session = first & ~first_with_steps[event_session]
    out["session_start"][step[starts_session], lane[starts_session]] = True
    is_last = np.zeros(sessions.n_sessions, bool)
    is_last[data.user_offsets[1:][np.diff(data.user_offsets) > 0] - 1] = True
    out["last_session"][step, lane] = is_last[event_session]
    return UserSchedule(**out)
