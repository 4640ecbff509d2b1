"""Raw public datasets to the split event tables that training reads (GRU4REC.md section 10).

A reader per raw format turns a file into the dataset's view (click) events, one
:class:`~gru4rec_jax.data.EventTable` with session ids; a protocol then filters
it and splits it by time into ``train_full`` / ``test`` and, by the same split
of ``train_full``, ``train_tr`` / ``train_valid``:

- the 2016 protocol (:func:`preprocess_2016`, RSC15): one pass of filters, no
  de-duplication; test = sessions whose *last* event is in the final day;
  validation = the same split of ``train_full`` (its own final day).
- the 2023 protocol (:func:`preprocess_2023`, Hidasi & Czapp 2023): consecutive
  repeats of an item dropped; filters repeated until nothing changes; test =
  sessions *starting* in the final ``test_days`` days, train = the sessions
  starting before, kept whole; validation = the sessions of ``train_full``
  starting in the ``test_days`` days before the test period.

Both keep in a test split only the items of its training split, then only the
sessions left with at least 2 events.

Times are unix seconds as floats for every dataset (milliseconds kept as the
fraction); raw times in milliseconds are divided by 1000 and ISO datetimes
without a zone are taken as UTC. Session and item ids stay strings. Bad input
raises :class:`~gru4rec_jax.data.DataError` with a one-line message
(``path:line: ...`` for a bad raw line).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
import os
from typing import Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from gru4rec_jax.data import DataError, EventTable, _session_sort_keys, write_events
from gru4rec_jax.user_data import sessions_by_idle_gap

__all__ = [
    "DATASETS",
    "Dataset",
    "SPLIT_NAMES",
    "Splits",
    "drop_consecutive_repeats",
    "filter_single_pass",
    "filter_until_stable",
    "prepare",
    "preprocess_2016",
    "preprocess_2023",
    "read_diginetica",
    "read_otto",
    "read_retailrocket",
    "read_rsc15",
    "read_user_csv",
    "sort_events",
    "split_by_session_end",
    "split_by_session_start",
    "table_stats",
    "write_splits",
]

DAY = 86400.0
MIN_ITEM_SUPPORT = 5
SPLIT_NAMES = ("train_full", "test", "train_tr", "train_valid")


# ---------------------------------------------------------------------------
# The shared core: sorting, filters, splits.


def table_stats(table: EventTable) -> dict[str, int]:
    """Number of events, distinct sessions and distinct items."""
    return {
        "events": len(table),
        "sessions": len(np.unique(table.session_ids)),
        "items": len(np.unique(table.item_ids)),
    }


def _take(table: EventTable, keep: np.ndarray) -> EventTable:
    return EventTable(
        session_ids=table.session_ids[keep],
        item_ids=table.item_ids[keep],
        times=table.times[keep],
        user_ids=None if table.user_ids is None else table.user_ids[keep],
    )


def _group_codes(values: np.ndarray) -> np.ndarray:
    """Dense codes ``0..k-1`` of the distinct values, one per event."""
    return np.unique(values, return_inverse=True)[1].reshape(-1)


def _group_sizes(values: np.ndarray) -> np.ndarray:
    """For each event, how many events share its value (its session's length, its item's support)."""
    codes = _group_codes(values)
    return np.bincount(codes)[codes]


def sort_events(table: EventTable) -> EventTable:
    """Events grouped by session (integer ids in numeric order), in time order inside a session.

    The sort is stable, so events with equal times keep their file order.
    """
    return _take(table, np.lexsort((table.times, _session_sort_keys(table.session_ids))))


def drop_consecutive_repeats(table: EventTable) -> EventTable:
    """Drops an event whose item repeats the previous event's item in the same session.

    ``table`` must be sorted with :func:`sort_events`.
    """
    repeat = np.r_[
        False,
        (table.session_ids[1:] == table.session_ids[:-1]) & (table.item_ids[1:] == table.item_ids[:-1]),
    ]
    return _take(table, ~repeat)


def _min_session_length(table: EventTable, length: int) -> EventTable:
    return _take(table, _group_sizes(table.session_ids) >= length)


def _min_item_support(table: EventTable, support: int) -> EventTable:
    return _take(table, _group_sizes(table.item_ids) >= support)


def filter_single_pass(table: EventTable, min_item_support: int = MIN_ITEM_SUPPORT) -> EventTable:
    """The 2016 filters, once: sessions longer than 1, items with enough events, sessions of >= 2 events.

    The last step can take events from items that passed the second, leaving
    some under the threshold; one pass is the protocol, so they stay.
    """
    table = _min_session_length(table, 2)
    table = _min_item_support(table, min_item_support)
    return _min_session_length(table, 2)


def filter_until_stable(table: EventTable, min_item_support: int = MIN_ITEM_SUPPORT) -> EventTable:
    """The 2023 filters: {drop sessions of 1 event, drop items with too few events} until nothing changes.

    At the end every session has >= 2 events and every item >= ``min_item_support``.
    """
    while True:
        before = len(table)
        table = _min_item_support(_min_session_length(table, 2), min_item_support)
        if len(table) == before:
            return table


def _session_bounds(table: EventTable) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) time of each event's session, one value per event."""
    codes = _group_codes(table.session_ids)
    n_sessions = codes.max() + 1 if len(codes) else 0
    first, last = np.full(n_sessions, np.inf), np.full(n_sessions, -np.inf)
    np.minimum.at(first, codes, table.times)
    np.maximum.at(last, codes, table.times)
    return first[codes], last[codes]


def split_by_session_end(
    table: EventTable, days: float = 1.0, end: Optional[float] = None
) -> tuple[EventTable, EventTable]:
    """(train, test): test holds the sessions whose last event is in the final ``days`` before ``end``.

    The final period is ``[end - days * 86400, end]``; ``end`` defaults to the last event's time.
    """
    if len(table) == 0:
        return table, table
    end = table.times.max() if end is None else end
    in_test = _session_bounds(table)[1] >= end - days * DAY
    return _take(table, ~in_test), _take(table, in_test)


def split_by_session_start(
    table: EventTable, days: float = 1.0, end: Optional[float] = None
) -> tuple[EventTable, EventTable]:
    """(train, test): test holds the sessions that start in the final ``days`` before ``end``.

    The final period is ``[end - days * 86400, end]``; ``end`` defaults to the
    last event's time. A session that starts before the period and ends in it
    stays whole in train, so that no session is cut in two.
    """
    if len(table) == 0:
        return table, table
    end = table.times.max() if end is None else end
    in_test = _session_bounds(table)[0] >= end - days * DAY
    return _take(table, ~in_test), _take(table, in_test)


def _restrict_to_train_items(test: EventTable, train: EventTable) -> EventTable:
    """Test events of items seen in train, then sessions that still have >= 2 events (something to predict)."""
    return _min_session_length(_take(test, np.isin(test.item_ids, np.unique(train.item_ids))), 2)


@dataclasses.dataclass(frozen=True)
class Splits:
    """The filtered events and their splits; ``train_tr`` / ``train_valid`` split ``train_full``."""

    filtered: EventTable
    train_full: EventTable
    test: EventTable
    train_tr: EventTable
    train_valid: EventTable

    def tables(self) -> dict[str, EventTable]:
        """The four output tables by name, in :data:`SPLIT_NAMES` order."""
        return {name: getattr(self, name) for name in SPLIT_NAMES}

    def summary(self) -> dict[str, dict[str, int]]:
        """Events, sessions and items of the filtered data and of each split."""
        return {"filtered": table_stats(self.filtered), **{k: table_stats(v) for k, v in self.tables().items()}}


def _check_parameters(days: float, min_item_support: int) -> None:
    if not (days > 0 and math.isfinite(days)):
        raise DataError(f"the test period must be a positive number of days, got {days}")
    if min_item_support < 1:
        raise DataError(f"the minimum item support must be >= 1, got {min_item_support}")


def _checked(train: EventTable, test: EventTable, what: str, which: str, period: str) -> tuple[EventTable, EventTable]:
    """``test`` restricted to the items of ``train``; a DataError if either part is empty."""
    test = _restrict_to_train_items(test, train)
    if len(train) == 0:
        raise DataError(f"{what}: no training sessions, every session {which} in the {period}")
    if len(test) == 0:
        raise DataError(
            f"{what} is empty: no session that {which} in the {period} keeps >= 2 events of items seen in training"
        )
    return train, test


def _require_filtered(table: EventTable, min_item_support: int, source: str) -> None:
    if len(table) == 0:
        raise DataError(
            f"{source}: no events left after filtering (sessions of >= 2 events, items with >= {min_item_support} events)"
        )


def preprocess_2016(
    events: EventTable,
    *,
    test_days: float = 1.0,
    min_item_support: int = MIN_ITEM_SUPPORT,
    source: str = "data",
) -> Splits:
    """The RSC15 protocol of the GRU4Rec paper: no de-duplication, one pass of filters, split by session end."""
    _check_parameters(test_days, min_item_support)
    filtered = filter_single_pass(sort_events(events), min_item_support)
    _require_filtered(filtered, min_item_support, source)
    period = f"last {test_days:g} day(s)"
    train_full, test = _checked(*split_by_session_end(filtered, test_days), f"{source}: test split", "ends", period)
    # Validation: the same split of train_full, measured from its own last event (as the RSC15 reference does).
    train_tr, train_valid = _checked(
        *split_by_session_end(train_full, test_days), f"{source}: validation split", "ends", period + " of train_full"
    )
    return Splits(filtered=filtered, train_full=train_full, test=test, train_tr=train_tr, train_valid=train_valid)


def preprocess_2023(
    events: EventTable,
    *,
    test_days: float = 1.0,
    min_item_support: int = MIN_ITEM_SUPPORT,
    source: str = "data",
) -> Splits:
    """The protocol of Hidasi & Czapp (2023): repeats dropped, filters until stable, split by session start."""
    _check_parameters(test_days, min_item_support)
    filtered = filter_until_stable(drop_consecutive_repeats(sort_events(events)), min_item_support)
    _require_filtered(filtered, min_item_support, source)
    test_start = filtered.times.max() - test_days * DAY
    train_full, test = _checked(
        *split_by_session_start(filtered, test_days), f"{source}: test split", "starts", f"last {test_days:g} day(s)"
    )
    # Validation: the sessions of train_full that start in the test_days before the test period (as the 2023
    # reference scripts do). Not measured from train_full's last event: its sessions are kept whole, so that
    # event can lie deep in the test period (OTTO's month-long sessions), leaving no session to start after it.
    train_tr, train_valid = _checked(
        *split_by_session_start(train_full, test_days, end=test_start), f"{source}: validation split", "starts",
        f"{test_days:g} day(s) before the test period",
    )
    return Splits(filtered=filtered, train_full=train_full, test=test, train_tr=train_tr, train_valid=train_valid)


# ---------------------------------------------------------------------------
# Reading raw files.


class _Columns:
    """Parsed rows, moved into numpy arrays every ``chunk`` rows.

    Full datasets have tens of millions of events; one Python object per value
    would need several times the memory of the arrays.
    """

    def __init__(self, dtypes: Sequence[type], chunk: int = 1 << 20):
        self._dtypes = dtypes
        self._chunk = chunk
        self._rows: list[tuple] = []
        self._done: list[list[np.ndarray]] = [[] for _ in dtypes]

    def append(self, row: tuple) -> None:
        self._rows.append(row)
        if len(self._rows) >= self._chunk:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            for done, values, dtype in zip(self._done, zip(*self._rows), self._dtypes):
                done.append(np.asarray(values, dtype=dtype))
            self._rows = []

    def arrays(self) -> list[np.ndarray]:
        self._flush()
        return [np.concatenate(done) if done else np.zeros(0, dtype) for done, dtype in zip(self._done, self._dtypes)]


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file")


def _csv_rows(path: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank row."""
    _check_file(path)
    # utf-8-sig: a byte-order mark would otherwise become part of the first column's name.
    with open(path, "rt", encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            for fields in reader:
                if fields and any(field.strip() for field in fields):
                    yield reader.line_num, fields
        except csv.Error as error:
            raise DataError(f"{path}:{reader.line_num}: {error}") from None
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text (after line {reader.line_num})") from None


def _header_columns(path: str, header: list[str], names: Mapping[str, str]) -> dict[str, int]:
    """Index of each wanted column, by role; a DataError names the missing ones."""
    header = [name.strip() for name in header]
    missing = [name for name in names.values() if name not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (header has: {', '.join(header)})")
    return {role: header.index(name) for role, name in names.items()}


def _integer_id(text: str, what: str, path: str, line_no: int) -> str:
    """``text`` stripped, after checking it is an integer (a misaligned or corrupt line usually is not)."""
    text = text.strip()
    try:
        int(text)
    except ValueError:
        raise DataError(f"{path}:{line_no}: {what} {text!r} is not an integer") from None
    return text


def _opaque_id(text: str, what: str, path: str, line_no: int) -> str:
    text = text.strip()
    if not text:
        raise DataError(f"{path}:{line_no}: empty {what}")
    return text


def _number(text: str, what: str, path: str, line_no: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}:{line_no}: {what} {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{path}:{line_no}: {what} {text.strip()!r} is not finite")
    return value


def _iso_seconds(text: str, path: str, line_no: int, fmt: Optional[str] = None) -> float:
    """Unix seconds of an ISO 8601 datetime (or of ``fmt``, a strptime format); no zone means UTC."""
    try:
        if fmt is None:
            when = datetime.datetime.fromisoformat(text.strip())
        else:
            when = datetime.datetime.strptime(text.strip(), fmt)
    except ValueError:
        expected = "an ISO 8601 datetime" if fmt is None else f"a datetime of format {fmt!r}"
        raise DataError(f"{path}:{line_no}: time {text.strip()!r} is not {expected}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def _header(rows: Iterator[tuple[int, list[str]]], path: str) -> list[str]:
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path}: empty file (expected a header row)")
    return first[1]


def _require_rows(columns: list[np.ndarray], path: str) -> list[np.ndarray]:
    if len(columns[0]) == 0:
        raise DataError(f"{path}: no events (only a header or blank lines)")
    return columns


def read_rsc15(path: str) -> EventTable:
    """YooChoose clicks (``yoochoose-clicks.dat``): ``session,time,item,category`` lines, no header.

    Times are ISO datetimes in UTC (``2014-04-07T10:51:09.277Z``); every click is a view.
    """
    columns = _Columns((str, str, np.float64))
    for line_no, fields in _csv_rows(path, ","):
        if len(fields) != 4:
            raise DataError(
                f"{path}:{line_no}: expected 4 comma-separated fields (session,time,item,category), got {len(fields)}"
            )
        columns.append((
            _integer_id(fields[0], "session id", path, line_no),
            _integer_id(fields[2], "item id", path, line_no),
            _iso_seconds(fields[1], path, line_no),
        ))
    sessions, items, times = _require_rows(columns.arrays(), path)
    return EventTable(session_ids=sessions, item_ids=items, times=times)


_DIGINETICA_COLUMNS = {"session": "sessionId", "item": "itemId", "timeframe": "timeframe", "date": "eventdate"}


def read_diginetica(path: str) -> EventTable:
    """Diginetica ``train-item-views.csv``: ``sessionId;userId;itemId;timeframe;eventdate`` with a header.

    ``timeframe`` is the time since the session began (ms) and ``eventdate`` a day
    (YYYY-MM-DD). An event's time in seconds is the unix time of midnight (UTC)
    of the session's earliest ``eventdate`` plus ``timeframe / 1000``; the
    session's earliest date rather than the event's own, because the offset
    counts from the session's beginning (as the 2023 protocol's authors do).
    The file holds views only.
    """
    rows = _csv_rows(path, ";")
    header = _header(rows, path)
    col = _header_columns(path, header, _DIGINETICA_COLUMNS)
    midnights: dict[str, float] = {}  # few distinct dates: parse each once
    columns = _Columns((str, str, np.float64, np.float64))
    for line_no, fields in rows:
        if len(fields) != len(header):
            raise DataError(f"{path}:{line_no}: expected {len(header)} ';'-separated fields, got {len(fields)}")
        date = fields[col["date"]].strip()
        if date not in midnights:
            try:
                day = datetime.date.fromisoformat(date)
            except ValueError:
                raise DataError(f"{path}:{line_no}: eventdate {date!r} is not a YYYY-MM-DD date") from None
            midnights[date] = float((day - datetime.date(1970, 1, 1)).days) * DAY
        offset = _number(fields[col["timeframe"]], "timeframe", path, line_no)
        if offset < 0:
            raise DataError(f"{path}:{line_no}: negative timeframe {offset:g}")
        columns.append((
            _integer_id(fields[col["session"]], "sessionId", path, line_no),
            _integer_id(fields[col["item"]], "itemId", path, line_no),
            offset / 1000.0,
            midnights[date],
        ))
    sessions, items, offsets, midnight = _require_rows(columns.arrays(), path)
    codes = _group_codes(sessions)
    first_day = np.full(codes.max() + 1, np.inf)
    np.minimum.at(first_day, codes, midnight)
    return EventTable(session_ids=sessions, item_ids=items, times=first_day[codes] + offsets)


def _sessions_and_views(
    users: np.ndarray,
    items: np.ndarray,
    times: np.ndarray,
    kinds: Optional[np.ndarray],
    keep: Optional[Sequence[str]],
    session_gap: float,
    path: str,
) -> EventTable:
    """Cuts each user's events into sessions at idle gaps > ``session_gap`` (0: one per user), then keeps views.

    The gaps are measured over events of every kind, as the 2023 protocol's
    authors do: a cart or purchase between two views keeps the session alive.
    """
    sessions = users if session_gap == 0 else sessions_by_idle_gap(users, times, session_gap)
    if kinds is not None:
        is_view = np.isin(kinds, np.asarray(list(keep)))
        if not is_view.any():
            raise DataError(f"{path}: no events of kind {', '.join(keep)} (kinds present: {', '.join(np.unique(kinds))})")
        sessions, items, times = sessions[is_view], items[is_view], times[is_view]
    return EventTable(session_ids=sessions, item_ids=items, times=times)


def _check_gap(session_gap: float) -> None:
    if not (session_gap >= 0 and math.isfinite(session_gap)):
        raise DataError(f"the session gap must be >= 0 seconds, got {session_gap}")


def read_otto(path: str, *, event_types: Sequence[str] = ("clicks",), session_gap: float = 0.0) -> EventTable:
    """OTTO ``train.jsonl``: one session per line, ``{"session": .., "events": [{"aid", "ts", "type"}]}``.

    ``ts`` is in ms; ``aid`` is the item. Keeps events of ``event_types`` (the
    views are ``clicks``). OTTO sessions are a user's month of activity; with
    ``session_gap`` > 0 (seconds) each line is cut at idle gaps longer than it.
    """
    _check_gap(session_gap)
    _check_file(path)
    columns = _Columns((str, str, np.float64, str))
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_no}: bad JSON ({error.msg} at column {error.colno})") from None
            except UnicodeDecodeError:
                raise DataError(f"{path}:{line_no}: not UTF-8 text") from None
            if not (isinstance(record, dict) and _is_int(record.get("session")) and isinstance(record.get("events"), list)):
                raise DataError(f"{path}:{line_no}: expected an object with an integer 'session' and a list 'events'")
            session = str(record["session"])
            for k, event in enumerate(record["events"]):
                if not (isinstance(event, dict) and _is_int(event.get("aid")) and _is_int(event.get("ts"))
                        and isinstance(event.get("type"), str)):
                    raise DataError(
                        f"{path}:{line_no}: event {k} of session {session}: expected integer 'aid' and 'ts' and a "
                        "string 'type'"
                    )
                columns.append((session, str(event["aid"]), event["ts"] / 1000.0, event["type"]))
    sessions, items, times, kinds = _require_rows(columns.arrays(), path)
    return _sessions_and_views(sessions, items, times, kinds, event_types, session_gap, path)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_user_csv(
    path: str,
    *,
    item_col: str,
    time_col: str,
    user_col: Optional[str] = None,
    session_col: Optional[str] = None,
    event_col: Optional[str] = None,
    keep_events: Sequence[str] = (),
    delimiter: str = ",",
    time_format: str = "number",
    time_unit: float = 1.0,
    session_gap: float = 3600.0,
    integer_ids: bool = False,
) -> EventTable:
    """A delimited file with a header and one event per row, columns chosen by name.

    Sessions come from ``session_col`` if given, else from ``user_col`` cut at
    idle gaps longer than ``session_gap`` seconds. With ``event_col``, only rows
    whose value is in ``keep_events`` are kept (after sessions are cut).
    ``time_format`` is ``"number"`` (seconds = value * ``time_unit``, e.g.
    0.001 for ms), ``"iso"`` (ISO 8601; UTC if no zone) or a strptime format.
    ``integer_ids`` rejects rows whose user/session/item id is not an integer.
    """
    if len(delimiter) != 1:
        raise DataError(f"the delimiter must be one character, got {delimiter!r}")
    if not (time_unit > 0 and math.isfinite(time_unit)):
        raise DataError(f"the time unit must be a positive number of seconds, got {time_unit}")
    if time_format not in ("number", "iso") and "%" not in time_format:
        raise DataError(f"the time format must be 'number', 'iso' or a strptime format with %-codes, got {time_format!r}")
    if not (session_col or user_col):
        raise DataError("give a session column, or a user column to cut sessions at idle gaps")
    _check_gap(session_gap)
    if not session_col and session_gap == 0:
        raise DataError("the session gap must be > 0 seconds to cut sessions from a user column")
    if event_col and not keep_events:
        raise DataError(f"give the values of column {event_col} to keep (the view events)")
    names = {"group": session_col or user_col, "item": item_col, "time": time_col}
    if event_col:
        names["kind"] = event_col
    parse_id = _integer_id if integer_ids else _opaque_id
    rows = _csv_rows(path, delimiter)
    header = _header(rows, path)
    col = _header_columns(path, header, names)
    columns = _Columns((str, str, np.float64, str))
    for line_no, fields in rows:
        if len(fields) != len(header):
            raise DataError(f"{path}:{line_no}: expected {len(header)} {delimiter!r}-separated fields, got {len(fields)}")
        text = fields[col["time"]]
        if time_format == "number":
            time = _number(text, names["time"], path, line_no) * time_unit
        else:
            time = _iso_seconds(text, path, line_no, None if time_format == "iso" else time_format)
        columns.append((
            parse_id(fields[col["group"]], names["group"], path, line_no),
            parse_id(fields[col["item"]], names["item"], path, line_no),
            time,
            fields[col["kind"]].strip() if event_col else "",
        ))
    groups, items, times, kinds = _require_rows(columns.arrays(), path)
    gap = 0.0 if session_col else session_gap
    return _sessions_and_views(groups, items, times, kinds if event_col else None, keep_events, gap, path)


def read_retailrocket(path: str, *, session_gap: float = 3600.0) -> EventTable:
    """RetailRocket ``events.csv``: ``timestamp,visitorid,event,itemid,transactionid``, timestamp in ms.

    There is no session id: a visitor's events are cut at idle gaps longer than
    ``session_gap`` seconds; the ``view`` events are kept.
    """
    return read_user_csv(
        path, user_col="visitorid", item_col="itemid", time_col="timestamp", event_col="event",
        keep_events=("view",), time_unit=0.001, session_gap=session_gap, integer_ids=True,
    )


# ---------------------------------------------------------------------------
# Datasets by name, and writing.


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A raw format, its protocol and its default test period."""

    reader: Callable[..., EventTable]
    protocol: Callable[..., Splits]
    test_days: float
    session_gap: Optional[float] = None  # default idle gap (s) where the reader cuts sessions; None: it does not


DATASETS: dict[str, Dataset] = {
    "rsc15": Dataset(read_rsc15, preprocess_2016, 1.0),
    "rsc15_2023": Dataset(read_rsc15, preprocess_2023, 1.0),
    "diginetica": Dataset(read_diginetica, preprocess_2023, 7.0),
    "retailrocket": Dataset(read_retailrocket, preprocess_2023, 7.0, session_gap=3600.0),
    "otto": Dataset(read_otto, preprocess_2023, 1.0, session_gap=0.0),
    "csv": Dataset(read_user_csv, preprocess_2023, 1.0, session_gap=3600.0),
}


def prepare(
    dataset: str,
    raw_path: str,
    *,
    test_days: Optional[float] = None,
    min_item_support: int = MIN_ITEM_SUPPORT,
    reader_options: Optional[Mapping[str, object]] = None,
) -> tuple[Splits, dict[str, dict[str, int]]]:
    """Reads ``raw_path`` as ``dataset`` (a key of :data:`DATASETS`) and applies its protocol.

    Returns the splits and a summary: events, sessions and items of the raw view
    events (``"raw"``), of the filtered data and of each split.
    ``reader_options`` go to the reader (the columns of ``"csv"``, ``session_gap``).
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    spec = DATASETS[dataset]
    events = spec.reader(raw_path, **(reader_options or {}))
    days = spec.test_days if test_days is None else test_days
    splits = spec.protocol(events, test_days=days, min_item_support=min_item_support, source=raw_path)
    return splits, {"raw": table_stats(events), **splits.summary()}


def write_splits(splits: Splits, out_dir: str) -> list[str]:
    """Writes ``<name>.tsv`` for each of :data:`SPLIT_NAMES` into ``out_dir``; returns their paths.

    All four are first written to temporary files beside them and renamed only
    when every one is complete, so a failure leaves earlier outputs untouched.
    """
    os.makedirs(out_dir, exist_ok=True)
    written: list[tuple[str, str]] = []
    try:
        for name, table in splits.tables().items():
            final = os.path.join(out_dir, f"{name}.tsv")
            temporary = os.path.join(out_dir, f".{name}.tsv.tmp{os.getpid()}")
            written.append((temporary, final))
            write_events(temporary, table)
    except BaseException:
        for temporary, _ in written:
            if os.path.exists(temporary):
                os.remove(temporary)
        raise
    for temporary, final in written:
        os.replace(temporary, final)
    return [final for _, final in written]
