"""Event tables, the item-id map, and sessions in the reference order.

An event table is a tab-separated file with a header row. Item ids are opaque
strings mapped to ``0..n-1`` in order of first appearance in the training file;
sessions are ordered by their first timestamp (oldest first) and events by time
inside a session (GRU4REC.md section 1).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "DataError",
    "EventTable",
    "ItemMap",
    "Sessions",
    "read_events",
    "write_events",
    "build_sessions",
]


class DataError(ValueError):
    """Bad input data; the message is one line that names the problem."""


@dataclasses.dataclass(frozen=True)
class EventTable:
    """Columns of an event table, one entry per event, in file order."""

    session_ids: np.ndarray  # str
    item_ids: np.ndarray  # str
    times: np.ndarray  # float64
    user_ids: Optional[np.ndarray] = None  # str, when the table has a user column

    def __len__(self) -> int:
        return len(self.item_ids)


def read_events(
    path: str,
    session_key: str = "SessionId",
    item_key: str = "ItemId",
    time_key: str = "Time",
    user_key: Optional[str] = None,
) -> EventTable:
    """Reads a TSV event table; raises :class:`DataError` on bad input."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    with open(path, "rt", encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        if header == [""]:
            raise DataError(f"{path}: empty file (expected a header row)")
        wanted = {"session": session_key, "item": item_key, "time": time_key}
        if user_key:
            wanted["user"] = user_key
        missing = [name for name in wanted.values() if name not in header]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(missing)} (header has: {', '.join(header)})"
            )
        columns = {role: header.index(name) for role, name in wanted.items()}
        width = len(header)
        values: dict[str, list[str]] = {role: [] for role in columns}
        line_numbers: list[int] = []
        for line_no, line in enumerate(f, start=2):
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != width:
                if fields == [""]:
                    continue  # blank line, e.g. at the end of the file
                raise DataError(
                    f"{path}:{line_no}: expected {width} tab-separated fields, got {len(fields)}"
                )
            line_numbers.append(line_no)
            for role, column in columns.items():
                values[role].append(fields[column])
    if not values["item"]:
        raise DataError(f"{path}: no events (the table has a header but no rows)")
    try:
        times = np.asarray(values["time"], dtype=np.float64)
    except ValueError:
        bad = next(i for i, v in enumerate(values["time"]) if not _is_number(v))
        raise DataError(
            f"{path}:{line_numbers[bad]}: non-numeric {time_key} value {values['time'][bad]!r}"
        ) from None
    if not np.all(np.isfinite(times)):
        bad = int(np.argmin(np.isfinite(times)))
        raise DataError(
            f"{path}:{line_numbers[bad]}: non-finite {time_key} value {values['time'][bad]!r}"
        )
    return EventTable(
        session_ids=np.asarray(values["session"]),
        item_ids=np.asarray(values["item"]),
        times=times,
        user_ids=np.asarray(values["user"]) if user_key else None,
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def write_events(
    path: str,
    table: EventTable,
    session_key: str = "SessionId",
    item_key: str = "ItemId",
    time_key: str = "Time",
    user_key: str = "UserId",
) -> None:
    """Writes ``table`` as a TSV that :func:`read_events` reads back (user column first, if any).

    Times are written with ``repr`` precision, so that they read back unchanged.
    """
    columns = [table.session_ids, table.item_ids, [repr(float(t)) for t in table.times]]
    header = [session_key, item_key, time_key]
    if table.user_ids is not None:
        columns.insert(0, table.user_ids)
        header.insert(0, user_key)
    with open(path, "wt", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        for row in zip(*columns):
            f.write("\t".join(map(str, row)) + "\n")


@dataclasses.dataclass(frozen=True)
class ItemMap:
    """Maps opaque item ids to dense indices ``0..n-1``; stored with the model."""

    ids: np.ndarray  # str, ids[k] is the item of index k

    @classmethod
    def from_training(cls, item_ids: Sequence[str]) -> "ItemMap":
        """Indices in order of first appearance, as the reference assigns them."""
        unique, first = np.unique(np.asarray(item_ids), return_index=True)
        return cls(ids=unique[np.argsort(first, kind="stable")])

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, item_ids: Sequence[str]) -> np.ndarray:
        """Indices of ``item_ids``; -1 for items not in the map."""
        item_ids = np.asarray(item_ids, dtype=self.ids.dtype if len(item_ids) == 0 else None)
        order = np.argsort(self.ids)
        sorted_ids = self.ids[order]
        pos = np.searchsorted(sorted_ids, item_ids)
        pos = np.minimum(pos, len(sorted_ids) - 1)
        found = sorted_ids[pos] == item_ids
        return np.where(found, order[pos], -1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Sessions:
    """Events grouped into sessions, in the order training consumes them.

    ``items[offsets[k]:offsets[k + 1]]`` are the item indices of the k-th
    session, in time order; sessions are sorted by first timestamp.
    """

    items: np.ndarray  # int32 [n_events]
    offsets: np.ndarray  # int64 [n_sessions + 1]
    times: np.ndarray  # float64 [n_events]
    session_ids: np.ndarray  # str [n_sessions]

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _session_sort_keys(session_ids: np.ndarray) -> np.ndarray:
    """Integer session ids sort numerically (as the reference's int column), others as text."""
    try:
        return session_ids.astype(np.int64)
    except (ValueError, OverflowError):
        return np.unique(session_ids, return_inverse=True)[1]


def build_sessions(table: EventTable, item_map: ItemMap, *, source: str = "data") -> Sessions:
    """Groups ``table`` into sessions; events of unknown items are dropped first.

    Dropping happens before sequences are formed, so an unknown item's
    neighbours become adjacent (GRU4REC.md section 1).
    """
    items = item_map.lookup(table.item_ids)
    known = items >= 0
    if not np.any(known):
        raise DataError(f"{source}: none of its {len(items)} events has an item seen in training")
    items, times, sessions = items[known], table.times[known], table.session_ids[known]
    session_keys = _session_sort_keys(sessions)
    # Events by (session, time); stable so that equal times keep file order.
    order = np.lexsort((times, session_keys))
    items, times, sessions, session_keys = (
        items[order], times[order], sessions[order], session_keys[order]
    )
    starts = np.flatnonzero(np.r_[True, session_keys[1:] != session_keys[:-1]])
    lengths = np.diff(np.r_[starts, len(items)])
    # Sessions by first timestamp; ties keep the session-id order.
    session_order = np.argsort(times[starts], kind="stable")
    event_order = gather_ranges(starts[session_order], lengths[session_order])
    offsets = np.r_[0, np.cumsum(lengths[session_order])].astype(np.int64)
    return Sessions(
        items=items[event_order].astype(np.int32),
        offsets=offsets,
        times=times[event_order],
        session_ids=sessions[starts[session_order]],
    )


def gather_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for every pair, vectorised."""
    total = int(lengths.sum())
    range_starts = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)  # also for no ranges
    return range_starts + np.arange(total)
