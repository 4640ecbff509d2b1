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
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from gru4rec_jax.data import (
    BLOCK_SIZE, COMPRESSED_SUFFIXES, DataError, EventTable, IdColumn, Progress, arrow_strings, csv_batches,
    numpy_strings, session_sort_keys, session_time_order, write_events,
)
from gru4rec_jax.user_data import idle_gap_sessions

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
# The shared core: sorting, filters, splits. Everything works on the id codes of
# the tables (one int per event); tables taken from one another share their
# vocabularies, so codes compare across them.


def table_stats(table: EventTable) -> dict[str, int]:
    """Number of events, distinct sessions and distinct items."""
    return {"events": len(table), "sessions": table.sessions.n_distinct(), "items": table.items.n_distinct()}


def _keep(table: EventTable, keep: np.ndarray) -> EventTable:
    """The rows of ``table`` where ``keep``; ``table`` itself when that is every row."""
    return table if keep.all() else table.take(keep)


def sort_events(table: EventTable) -> EventTable:
    """Events grouped by session (integer ids in numeric order), in time order inside a session.

    The sort is stable, so events with equal times keep their file order.
    """
    order = session_time_order(session_sort_keys(table.sessions), table.times)
    return table if order is None else table.take(order)


def drop_consecutive_repeats(table: EventTable) -> EventTable:
    """Drops an event whose item repeats the previous event's item in the same session.

    ``table`` must be sorted with :func:`sort_events`.
    """
    sessions, items = table.sessions.codes, table.items.codes
    repeat = np.r_[False, (sessions[1:] == sessions[:-1]) & (items[1:] == items[:-1])]
    return _keep(table, ~repeat)


def _min_session_length(table: EventTable, length: int) -> EventTable:
    return _keep(table, table.sessions.count_at_least(length))


def _min_item_support(table: EventTable, support: int) -> EventTable:
    return _keep(table, table.items.count_at_least(support))


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


def _sessions_at_or_after(table: EventTable, bound: str, when: float) -> np.ndarray:
    """For each event, whether its session's ``bound`` ("first" or "last") time is ``when`` or later."""
    codes = table.sessions.codes
    if bound == "first":
        times = np.full(len(table.sessions.values), np.inf)
        np.minimum.at(times, codes, table.times)
    else:
        times = np.full(len(table.sessions.values), -np.inf)
        np.maximum.at(times, codes, table.times)
    return (times >= when)[codes]


def split_by_session_end(
    table: EventTable, days: float = 1.0, end: Optional[float] = None
) -> tuple[EventTable, EventTable]:
    """(train, test): test holds the sessions whose last event is in the final ``days`` before ``end``.

    The final period is ``[end - days * 86400, end]``; ``end`` defaults to the last event's time.
    """
    if len(table) == 0:
        return table, table
    end = table.times.max() if end is None else end
    in_test = _sessions_at_or_after(table, "last", end - days * DAY)
    return table.take(~in_test), table.take(in_test)


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
    in_test = _sessions_at_or_after(table, "first", end - days * DAY)
    return table.take(~in_test), table.take(in_test)


def _restrict_to_train_items(test: EventTable, train: EventTable) -> EventTable:
    """Test events of items seen in train, then sessions that still have >= 2 events (something to predict)."""
    codes = test.items.recode(train.items.values)
    in_train = np.r_[train.items.used(), False][codes]  # code -1 (not in train's vocabulary) reads the False
    return _min_session_length(_keep(test, in_train), 2)


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
    with Progress.stage("sorting and filtering"):
        events = sort_events(events)
        filtered = filter_single_pass(events, min_item_support)
        del events  # (the caller may have let go of it: at full size it is gigabytes)
    _require_filtered(filtered, min_item_support, source)
    period = f"last {test_days:g} day(s)"
    with Progress.stage("splitting"):
        train_full, test = _checked(*split_by_session_end(filtered, test_days), f"{source}: test split", "ends", period)
        # Validation: the same split of train_full, measured from its own last event (as the RSC15 reference does).
        train_tr, train_valid = _checked(
            *split_by_session_end(train_full, test_days), f"{source}: validation split", "ends",
            period + " of train_full",
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
    with Progress.stage("sorting and filtering"):
        events = drop_consecutive_repeats(sort_events(events))
        filtered = filter_until_stable(events, min_item_support)
        del events  # (the caller may have let go of it: at full size it is gigabytes)
    _require_filtered(filtered, min_item_support, source)
    test_start = filtered.times.max() - test_days * DAY
    with Progress.stage("splitting"):
        train_full, test = _checked(
            *split_by_session_start(filtered, test_days), f"{source}: test split", "starts",
            f"last {test_days:g} day(s)",
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
#
# Each format has a fast reader (pyarrow, block by block, column by column) for
# well-formed files, and the row-by-row reader that it replaced. The row-by-row
# reader takes over where the fast one meets anything it does not decide itself
# (a malformed line, an id with surrounding white space, a row of blank fields):
# it reports a bad line as ``path:LINE: problem`` and reads the oddities of a good
# file as before, so both give the same table for every file.


class _Unusual(Exception):
    """The fast reader met input it leaves to the row-by-row reader."""


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file")


def _fast_or_by_rows(fast: Callable[[], EventTable], by_rows: Callable[[], EventTable]) -> EventTable:
    try:
        return fast()
    except _Unusual:
        return by_rows()


_DICTIONARY = pa.dictionary(pa.int32(), pa.string())
_INTEGER = "^[+-]?[0-9]+$"
SAMPLE_ROWS = 1000  # rows of each block whose times are also parsed by Python, as the row-by-row reader does


def _csv_blocks(path: str, delimiter: str, names: list[str], types: dict[str, pa.DataType],
                header: bool) -> Iterator[pa.RecordBatch]:
    """Blocks of a delimited file with ``csv``-module quoting; only the columns of ``types``, typed so."""
    if len(set(names)) != len(names):
        raise _Unusual  # which of two equal names? the row-by-row reader takes the first

    def on_invalid_row(row) -> str:
        # A row of blank fields is skipped (as by the row-by-row reader); a wrong field count is reported by it.
        return "error" if any(field.strip() for field in row.text.split(delimiter)) else "skip"

    options = dict(
        read_options=pa_csv.ReadOptions(column_names=names, skip_rows=int(header), block_size=BLOCK_SIZE),
        parse_options=pa_csv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid_row),
        convert_options=pa_csv.ConvertOptions(include_columns=list(types), column_types=types, null_values=[],
                                              strings_can_be_null=False, quoted_strings_can_be_null=False),
    )
    try:
        yield from csv_batches(path, options, f"reading {os.path.basename(path)}")
    except pa.ArrowInvalid:
        raise _Unusual from None


def _raw_header(path: str, delimiter: str) -> list[str]:
    """The column names of the first row (stripped)."""
    line_no, header = next(_csv_rows(path, delimiter), (1, None))
    if header is None:
        raise DataError(f"{path}: empty file (expected a header row)")
    if line_no != 1:
        raise _Unusual  # blank lines before the header
    return [name.strip() for name in header]


def _clean_ids(chunks: list[pa.Array], integer: bool) -> IdColumn:
    """Ids stripped of surrounding white space (as the row-by-row reader stores them).

    _Unusual for an empty id or, with ``integer``, one that is not plainly an
    integer: the row-by-row reader reports it (or, for a row of blank fields, skips it).
    """
    column = IdColumn.from_arrow(pa.chunked_array(chunks, type=_DICTIONARY))
    stripped = np.char.strip(column.values)
    if np.any(stripped == ""):
        raise _Unusual
    if integer and not np.all(pc.match_substring_regex(arrow_strings(stripped), _INTEGER)
                              .to_numpy(zero_copy_only=False)):
        raise _Unusual
    if np.array_equal(stripped, column.values):
        return column
    merged = IdColumn.encode(stripped)  # " 7" and "7" are one id
    return IdColumn(codes=merged.codes[column.codes], values=merged.values)


def _seconds_of_datetimes(strings: pa.Array, fmt: Optional[str]) -> np.ndarray:
    """Unix seconds of ISO 8601 datetimes (``fmt`` None) or of a strptime format; no zone means UTC.

    _Unusual for a value pyarrow does not parse, or where pyarrow and Python
    (:func:`_iso_seconds`) differ on the sample of rows both parse.
    """
    stamps = None
    if fmt is None:
        for target in (pa.timestamp("us", "UTC"), pa.timestamp("us")):  # with a zone, else without (UTC)
            try:
                stamps = strings.cast(target)
                break
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
    else:
        stamps = pc.strptime(strings, format=fmt, unit="us", error_is_null=True)
    if stamps is None or stamps.null_count:
        raise _Unusual
    seconds = stamps.cast(pa.int64()).to_numpy(zero_copy_only=False) / 1e6
    for text, value in zip(strings[:SAMPLE_ROWS].to_pylist(), seconds[:SAMPLE_ROWS]):
        try:
            if _iso_seconds(text, "", 0, fmt) != value:
                raise _Unusual
        except DataError:
            raise _Unusual from None
    return seconds


def _numbers(chunks: list[np.ndarray]) -> np.ndarray:
    """Concatenated float64 values; _Unusual if one is not finite (the row-by-row reader names its line)."""
    values = np.concatenate(chunks) if chunks else np.zeros(0)
    if not np.all(np.isfinite(values)):
        raise _Unusual
    return values


def _int_ids(values: np.ndarray) -> IdColumn:
    """Integer ids as an IdColumn of their decimal text (values in numeric order). ``values`` is consumed."""
    if len(values) == 0:
        return IdColumn.encode(np.zeros(0, str))
    low, high = int(values.min()), int(values.max())
    if high - low < 2 * len(values) + (1 << 20):  # a presence table over the range: no sort
        values -= values.dtype.type(low)
        present = np.zeros(high - low + 1, bool)
        present[values] = True
        code_of = (np.cumsum(present) - 1).astype(np.int32)
        distinct = np.flatnonzero(present) + low
        codes = code_of[values]
    else:
        distinct, codes = np.unique(values, return_inverse=True)
    return IdColumn(codes=codes.astype(np.int32, copy=False),
                    values=numpy_strings(pc.cast(pa.array(distinct), pa.string())))


def _sessions_and_views(
    users: IdColumn,
    items: IdColumn,
    times: np.ndarray,
    kinds: Optional[IdColumn],
    keep: Optional[Sequence[str]],
    session_gap: float,
    path: str,
) -> EventTable:
    """Cuts each user's events into sessions at idle gaps > ``session_gap`` (0: one per user), then keeps views.

    The gaps are measured over events of every kind, as the 2023 protocol's
    authors do: a cart or purchase between two views keeps the session alive.
    """
    sessions = users if session_gap == 0 else idle_gap_sessions(users, times, session_gap)
    table = EventTable(sessions, items, times)
    if kinds is not None:
        is_view = np.isin(kinds.values, np.asarray(list(keep), dtype=str))[kinds.codes]
        if not is_view.any():
            present = ", ".join(np.unique(kinds.values[kinds.used()]))
            raise DataError(f"{path}: no events of kind {', '.join(keep)} (kinds present: {present})")
        table = table.take(is_view)
    return table


def _require_events(n_events: int, path: str) -> None:
    if n_events == 0:
        raise DataError(f"{path}: no events (only a header or blank lines)")


def read_rsc15(path: str) -> EventTable:
    """YooChoose clicks (``yoochoose-clicks.dat``): ``session,time,item,category`` lines, no header.

    Times are ISO datetimes in UTC (``2014-04-07T10:51:09.277Z``); every click is a view.
    """
    _check_file(path)
    return _fast_or_by_rows(lambda: _read_rsc15_fast(path), lambda: _read_rsc15_by_rows(path))


def _read_rsc15_fast(path: str) -> EventTable:
    types = {"session": _DICTIONARY, "time": pa.string(), "item": _DICTIONARY}
    sessions, items, times = [], [], []
    for block in _csv_blocks(path, ",", ["session", "time", "item", "category"], types, header=False):
        sessions.append(block.column("session"))
        items.append(block.column("item"))
        times.append(_seconds_of_datetimes(block.column("time"), None))
    times = np.concatenate(times) if times else np.zeros(0)
    _require_events(len(times), path)
    return EventTable(_clean_ids(sessions, integer=True), _clean_ids(items, integer=True), times)


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
    _check_file(path)
    return _fast_or_by_rows(lambda: _read_diginetica_fast(path), lambda: _read_diginetica_by_rows(path))


def _read_diginetica_fast(path: str) -> EventTable:
    header = _raw_header(path, ";")
    _header_columns(path, header, _DIGINETICA_COLUMNS)
    names = _DIGINETICA_COLUMNS
    types = {names["session"]: _DICTIONARY, names["item"]: _DICTIONARY, names["timeframe"]: pa.float64(),
             names["date"]: _DICTIONARY}
    chunks: dict[str, list] = {name: [] for name in types}
    for block in _csv_blocks(path, ";", header, types, header=True):
        for name in types:
            column = block.column(name)
            chunks[name].append(column.to_numpy() if name == names["timeframe"] else column)
    offsets = _numbers(chunks[names["timeframe"]])
    _require_events(len(offsets), path)
    if np.any(offsets < 0):
        raise _Unusual
    dates = IdColumn.from_arrow(pa.chunked_array(chunks[names["date"]], type=_DICTIONARY))
    midnights = np.empty(len(dates.values))
    for k, date in enumerate(dates.values.tolist()):  # few distinct dates: Python parses each once
        try:
            midnights[k] = float((datetime.date.fromisoformat(date.strip()) - datetime.date(1970, 1, 1)).days) * DAY
        except ValueError:
            raise _Unusual from None
    sessions = _clean_ids(chunks[names["session"]], integer=True)
    first_day = np.full(len(sessions.values), np.inf)
    np.minimum.at(first_day, sessions.codes, midnights[dates.codes])
    items = _clean_ids(chunks[names["item"]], integer=True)
    return EventTable(sessions, items, first_day[sessions.codes] + offsets / 1000.0)


def _check_gap(session_gap: float) -> None:
    if not (session_gap >= 0 and math.isfinite(session_gap)):
        raise DataError(f"the session gap must be >= 0 seconds, got {session_gap}")


_OTTO_SCHEMA = pa.schema([
    ("session", pa.int64()),
    ("events", pa.list_(pa.struct([("aid", pa.int64()), ("ts", pa.int64()), ("type", pa.string())]))),
])


def read_otto(path: str, *, event_types: Sequence[str] = ("clicks",), session_gap: float = 0.0) -> EventTable:
    """OTTO ``train.jsonl``: one session per line, ``{"session": .., "events": [{"aid", "ts", "type"}]}``.

    ``ts`` is in ms; ``aid`` is the item. Keeps events of ``event_types`` (the
    views are ``clicks``). OTTO sessions are a user's month of activity; with
    ``session_gap`` > 0 (seconds) each line is cut at idle gaps longer than it.
    The file is read in blocks, keeping only the integer and time columns (of
    the kept events only, without ``session_gap``).
    """
    _check_gap(session_gap)
    _check_file(path)
    return _fast_or_by_rows(lambda: _read_otto_fast(path, event_types, session_gap),
                            lambda: _read_otto_by_rows(path, event_types, session_gap))


def _narrow(values: np.ndarray) -> np.ndarray:
    """int64 values as int32 where they fit (half the memory while blocks accumulate)."""
    if len(values) and np.iinfo(np.int32).min <= values.min() and values.max() <= np.iinfo(np.int32).max:
        return values.astype(np.int32)
    return values


def _join_blocks(blocks: list[np.ndarray]) -> np.ndarray:
    """The blocks one after another; each is freed once copied (memory stays near the result's)."""
    out = np.empty(sum(len(b) for b in blocks), np.result_type(*blocks))
    done = 0
    while blocks:
        block = blocks.pop(0)
        out[done:done + len(block)] = block
        done += len(block)
    return out


def _read_otto_fast(path: str, event_types: Sequence[str], session_gap: float) -> EventTable:
    keep_all = session_gap > 0  # idle gaps are measured over events of every kind
    columns: dict[str, list[np.ndarray]] = {"session": [], "aid": [], "time": [], "view": []}
    kinds_seen: set[str] = set()
    n_events = n_views = 0
    progress = Progress(f"reading {os.path.basename(path)}",
                        total=0 if path.lower().endswith(COMPRESSED_SUFFIXES) else os.path.getsize(path))
    options = dict(read_options=pa_json.ReadOptions(block_size=BLOCK_SIZE),
                   parse_options=pa_json.ParseOptions(explicit_schema=_OTTO_SCHEMA, unexpected_field_behavior="ignore"))
    with pa.input_stream(path, compression="detect") as raw:
        try:
            for block in pa_json.open_json(raw, **options):
                sessions, events = block.column("session"), block.column("events")
                flat = pc.list_flatten(events)
                if sessions.null_count or events.null_count or any(flat.field(k).null_count for k in range(3)):
                    raise _Unusual  # a missing field: the row-by-row reader names the line
                kinds = flat.field("type").dictionary_encode()
                kind_values = numpy_strings(kinds.dictionary)
                kinds_seen.update(kind_values.tolist())
                view = np.isin(kind_values, np.asarray(list(event_types), dtype=str))[kinds.indices.to_numpy()]
                session = np.repeat(sessions.to_numpy(), pc.list_value_length(events).to_numpy())
                pick = slice(None) if keep_all else view
                columns["session"].append(_narrow(session[pick]))
                columns["aid"].append(_narrow(flat.field("aid").to_numpy()[pick]))
                columns["time"].append(flat.field("ts").to_numpy()[pick] / 1000.0)
                if keep_all:
                    columns["view"].append(view)
                n_events += len(view)
                n_views += int(np.count_nonzero(view))
                progress.update(raw.tell())
        except pa.ArrowInvalid:
            raise _Unusual from None
    progress.close()
    _require_events(n_events, path)
    if n_views == 0:
        raise DataError(f"{path}: no events of kind {', '.join(event_types)} (kinds present: "
                        f"{', '.join(sorted(kinds_seen))})")
    times = _join_blocks(columns["time"])
    sessions = _int_ids(_join_blocks(columns["session"]))
    items = _int_ids(_join_blocks(columns["aid"]))
    if not keep_all:
        return EventTable(sessions, items, times)
    view = _join_blocks(columns["view"])
    kinds = IdColumn(codes=view.astype(np.int32), values=np.asarray(["other", "view"]))
    return _sessions_and_views(sessions, items, times, kinds, ["view"], session_gap, path)


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
    _check_file(path)
    options = dict(names=names, keep_events=keep_events, delimiter=delimiter, time_format=time_format,
                   time_unit=time_unit, session_gap=0.0 if session_col else session_gap, integer_ids=integer_ids)
    return _fast_or_by_rows(lambda: _read_user_csv_fast(path, **options), lambda: _read_user_csv_by_rows(path, **options))


def _read_user_csv_fast(path: str, *, names: dict[str, str], keep_events: Sequence[str], delimiter: str,
                        time_format: str, time_unit: float, session_gap: float, integer_ids: bool) -> EventTable:
    header = _raw_header(path, delimiter)
    _header_columns(path, header, names)
    if len(set(names.values())) != len(names):
        raise _Unusual  # one column in two roles
    time_type = pa.float64() if time_format == "number" else pa.string()
    types = {name: (time_type if role == "time" else _DICTIONARY) for role, name in names.items()}
    chunks: dict[str, list] = {role: [] for role in names}
    for block in _csv_blocks(path, delimiter, header, types, header=True):
        for role, name in names.items():
            column = block.column(name)
            if role == "time":
                column = column.to_numpy() if time_format == "number" else _seconds_of_datetimes(
                    column, None if time_format == "iso" else time_format)
            chunks[role].append(column)
    times = _numbers(chunks["time"])
    _require_events(len(times), path)
    if time_format == "number":
        times = times * time_unit
    kinds = None
    if "kind" in names:
        kinds = IdColumn.from_arrow(pa.chunked_array(chunks["kind"], type=_DICTIONARY))
        stripped = IdColumn.encode(np.char.strip(kinds.values))
        kinds = IdColumn(codes=stripped.codes[kinds.codes], values=stripped.values)
    return _sessions_and_views(_clean_ids(chunks["group"], integer_ids), _clean_ids(chunks["item"], integer_ids),
                               times, kinds, keep_events, session_gap, path)


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
# The row-by-row readers (Python, per line): bad lines and the oddities of good files.


class _Columns:
    """Parsed rows, moved into numpy arrays every ``chunk`` rows."""

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


def _csv_rows(path: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank row."""
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
    _require_events(len(columns[0]), path)
    return columns


def _read_rsc15_by_rows(path: str) -> EventTable:
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


def _read_diginetica_by_rows(path: str) -> EventTable:
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
    codes = np.unique(sessions, return_inverse=True)[1].reshape(-1)
    first_day = np.full(codes.max() + 1, np.inf)
    np.minimum.at(first_day, codes, midnight)
    return EventTable(session_ids=sessions, item_ids=items, times=first_day[codes] + offsets)


def _read_otto_by_rows(path: str, event_types: Sequence[str], session_gap: float) -> EventTable:
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
    return _sessions_and_views(IdColumn.encode(sessions), IdColumn.encode(items), times, IdColumn.encode(kinds),
                               event_types, session_gap, path)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_user_csv_by_rows(path: str, *, names: dict[str, str], keep_events: Sequence[str], delimiter: str,
                           time_format: str, time_unit: float, session_gap: float, integer_ids: bool) -> EventTable:
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
            fields[col["kind"]].strip() if "kind" in names else "",
        ))
    groups, items, times, kinds = _require_rows(columns.arrays(), path)
    return _sessions_and_views(IdColumn.encode(groups), IdColumn.encode(items), times,
                               IdColumn.encode(kinds) if "kind" in names else None, keep_events, session_gap, path)


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
    events = [spec.reader(raw_path, **(reader_options or {}))]
    raw = table_stats(events[0])
    days = spec.test_days if test_days is None else test_days
    # Handed over (popped), so that the protocol can free the raw events once it has filtered them.
    splits = spec.protocol(events.pop(), test_days=days, min_item_support=min_item_support, source=raw_path)
    return splits, {"raw": raw, **splits.summary()}


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
