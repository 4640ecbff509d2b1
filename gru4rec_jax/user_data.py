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

from gru4rec_jax.batching import assign_lanes
from gru4rec_jax.data import DataError, EventTable, ItemMap, Sessions, _session_sort_keys, build_sessions, gather_ranges

__all__ = [
    "UserSessions",
    "UserSchedule",
    "sessions_by_idle_gap",
    "build_user_sessions",
    "split_last_session",
    "user_parallel_schedule",
]


def _require_users(table: EventTable, source: str) -> np.ndarray:
    if table.user_ids is None:
        raise DataError(f"{source}: no user column (HRNN needs one; set --user_key)")
    return table.user_ids


def sessions_by_idle_gap(user_ids: np.ndarray, times: np.ndarray, gap: float) -> np.ndarray:
    """Session labels ``"<user>:<k>"``: a user's next session starts after more than ``gap`` idle time."""
    if gap <= 0:
        raise ValueError(f"the session gap must be > 0, got {gap}")
    user_keys = _session_sort_keys(np.asarray(user_ids))
    order = np.lexsort((times, user_keys))
    new_user = np.r_[True, user_keys[order][1:] != user_keys[order][:-1]]
    new_session = new_user | np.r_[True, np.diff(times[order]) > gap]
    # Number the sessions within each user: 0, 1, ...
    session_no = np.cumsum(new_session) - 1
    first_of_user = np.maximum.accumulate(np.where(new_user, session_no, 0))
    labels = np.empty(len(times), dtype=object)
    labels[order] = [f"{u}:{k}" for u, k in zip(np.asarray(user_ids)[order], session_no - first_of_user)]
    return labels.astype(str)


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
    session_ids = table.session_ids if session_gap is None else sessions_by_idle_gap(users, table.times, session_gap)
    # A session belongs to one user: key sessions by (user, session).
    keyed = EventTable(
        session_ids=np.char.add(np.char.add(users.astype(str), "\x1f"), session_ids.astype(str)),
        item_ids=table.item_ids,
        times=table.times,
    )
    sessions = build_sessions(keyed, item_map, source=source)  # ordered by first timestamp
    owner = np.asarray([s.split("\x1f", 1)[0] for s in sessions.session_ids])
    owner_keys = _session_sort_keys(owner)
    # Stable sort by user keeps each user's sessions in time order; users by first event.
    first_start = {}
    for k, u in enumerate(owner_keys.tolist()):
        first_start.setdefault(u, k)
    user_rank = np.asarray([first_start[u] for u in owner_keys.tolist()])
    order = np.argsort(user_rank, kind="stable")
    lengths = sessions.lengths[order]
    starts = sessions.offsets[:-1][order]
    event_order = gather_ranges(starts, lengths)
    regrouped = Sessions(
        items=sessions.items[event_order],
        offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        times=sessions.times[event_order],
        session_ids=np.asarray([s.split("\x1f", 1)[1] for s in sessions.session_ids[order]]),
    )
    new_user = np.r_[True, owner_keys[order][1:] != owner_keys[order][:-1]]
    user_starts = np.flatnonzero(new_user)
    return UserSessions(
        sessions=regrouped,
        user_offsets=np.r_[user_starts, len(order)].astype(np.int64),
        user_ids=owner[order][user_starts],
    )


def split_last_session(
    table: EventTable, *, session_gap: Optional[float] = None, source: str = "data"
) -> tuple[EventTable, EventTable]:
    """(train, test): each user's last session (latest start) is the test session.

    Users with a single session stay entirely in training. Apply it again to
    the training part for the validation split.
    """
    users = _require_users(table, source)
    sessions = table.session_ids if session_gap is None else sessions_by_idle_gap(users, table.times, session_gap)
    key = np.char.add(np.char.add(users.astype(str), "\x1f"), sessions.astype(str))
    unique, inverse = np.unique(key, return_inverse=True)
    start = np.full(len(unique), np.inf)
    np.minimum.at(start, inverse, table.times)
    owner = np.asarray([k.split("\x1f", 1)[0] for k in unique])
    last = {}
    count = {}
    for s in np.lexsort((np.arange(len(unique)), start)):  # by start time, ties by key
        last[owner[s]] = s
        count[owner[s]] = count.get(owner[s], 0) + 1
    is_test_session = np.zeros(len(unique), bool)
    for user, s in last.items():
        is_test_session[s] = count[user] > 1
    is_test = is_test_session[inverse]

    def subset(mask):
        return EventTable(
            session_ids=sessions[mask], item_ids=table.item_ids[mask], times=table.times[mask], user_ids=users[mask]
        )

    return subset(~is_test), subset(is_test)


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
