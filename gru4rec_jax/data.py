"""Event tables, the item-id map, and sessions in the reference order.

An event table is a delimited text file with a header row (tab-separated; ``.csv``
files comma-separated; ``.gz`` / ``.bz2`` compressed ones too) or a Parquet file.
Item ids are opaque strings mapped to ``0..n-1`` in order of first appearance in
the training file; sessions are ordered by their first timestamp (oldest first)
and events by time inside a session (GRU4REC.md section 1).

Full public datasets have tens to hundreds of millions of events, so a table is
held by column: times as float64, and every id column dictionary-encoded
(:class:`IdColumn`: an int32 code per event, each distinct id string once).
Files are read with pyarrow's multi-threaded CSV reader, block by block.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import sys
import time
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

__all__ = [
    "DataError",
    "EventTable",
    "IdColumn",
    "ItemMap",
    "Progress",
    "Sessions",
    "build_sessions",
    "format_floats",
    "read_events",
    "session_sort_keys",
    "table_format",
    "write_events",
]


class DataError(ValueError):
    """Bad input data; the message is one line that names the problem."""


# ---------------------------------------------------------------------------
# Columns and tables.


def numpy_strings(array: Union[pa.Array, pa.ChunkedArray]) -> np.ndarray:
    """A pyarrow string array as a numpy str array.

    ASCII text (ids almost always are) is copied bytes to code points in a few
    vectorised steps; other text goes through Python strings.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if len(array) == 0:
        return np.zeros(0, dtype="<U1")
    array = array.cast(pa.string())
    if pc.all(pc.string_is_ascii(array)).as_py() and not pc.any(pc.match_substring(array, "\x00")).as_py():
        width = max(pc.max(pc.binary_length(array)).as_py(), 1)
        padded = pc.utf8_rpad(array, width=width, padding="\x00")  # every string now ``width`` bytes
        start = np.frombuffer(padded.buffers()[1], np.int32, 1, padded.offset * 4)[0]
        data = np.frombuffer(padded.buffers()[2], np.uint8, len(array) * width, start)
        # Code points are the bytes; the trailing NULs are numpy's own padding of shorter strings.
        return data.reshape(len(array), width).astype(np.uint32).view(f"<U{width}").reshape(-1)
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=str)


def arrow_strings(values: np.ndarray) -> pa.Array:
    """A numpy str array as a pyarrow string array."""
    values = np.asarray(values, dtype=str)
    if values.size and np.any(np.char.find(values, "\x00") >= 0):
        return pa.array(values.tolist(), pa.string())  # pyarrow's numpy conversion would cut at the NUL
    return pa.array(values, pa.string())


@dataclasses.dataclass(frozen=True, eq=False)
class IdColumn:
    """A column of opaque string ids, dictionary-encoded: row ``r`` holds ``values[codes[r]]``.

    ``values`` are distinct; a column taken from another (:meth:`take`) shares its
    ``values``, so codes of the two compare directly.
    """

    codes: np.ndarray  # int32 [n_rows]
    values: np.ndarray  # str [n_values]

    @classmethod
    def encode(cls, ids: Union["IdColumn", Sequence[str], np.ndarray]) -> "IdColumn":
        """Codes in order of first appearance; ``ids`` may also be an IdColumn (returned as is)."""
        if isinstance(ids, IdColumn):
            return ids
        strings = np.asarray(ids)
        if strings.dtype.kind != "U":
            strings = strings.astype(str)
        return cls.from_arrow(arrow_strings(strings.reshape(-1)))

    @classmethod
    def from_arrow(cls, array: Union[pa.Array, pa.ChunkedArray]) -> "IdColumn":
        """From a pyarrow string or dictionary array, chunked or not.

        Codes are in order of first appearance where the chunks' dictionaries
        are (as the CSV reader and ``dictionary_encode`` make them).
        """
        chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
        chunks = [c if pa.types.is_dictionary(c.type) else c.dictionary_encode() for c in chunks if len(c)]
        if not chunks:
            return cls(codes=np.zeros(0, np.int32), values=np.zeros(0, "<U1"))
        # One encoding of all the chunks' dictionaries (each in first-appearance order, chunks in row
        # order, so the result is too); then every chunk's codes are written straight into one array.
        merged = pa.chunked_array([c.dictionary for c in chunks]).dictionary_encode().combine_chunks()
        global_codes = merged.indices.to_numpy(zero_copy_only=False)
        codes = np.empty(sum(len(c) for c in chunks), np.int32)
        row = start = 0
        for chunk in chunks:
            local = chunk.indices.to_numpy(zero_copy_only=False)
            np.take(global_codes[start:start + len(chunk.dictionary)], local, out=codes[row:row + len(chunk)])
            row, start = row + len(chunk), start + len(chunk.dictionary)
        return cls(codes=codes, values=numpy_strings(merged.dictionary))

    @classmethod
    def concatenate(cls, columns: Sequence["IdColumn"]) -> "IdColumn":
        """The rows of ``columns`` one after another, over the union of their values."""
        union = cls.encode(np.concatenate([c.values for c in columns]))
        starts = np.cumsum([0] + [len(c.values) for c in columns])
        return cls(codes=np.concatenate([union.codes[start:][c.codes] for start, c in zip(starts, columns)]),
                   values=union.values)

    def __len__(self) -> int:
        return len(self.codes)

    def decode(self) -> np.ndarray:
        """The ids, one str per row."""
        return self.values[self.codes]

    def take(self, index: np.ndarray) -> "IdColumn":
        """Rows ``index`` (indices or a boolean mask), sharing ``values``."""
        return IdColumn(codes=self.codes[index], values=self.values)

    def compact(self) -> "IdColumn":
        """The same rows over only the values that occur."""
        used = self.used()
        if used.all():
            return self
        new_code = (np.cumsum(used) - 1).astype(np.int32)
        return IdColumn(codes=new_code[self.codes], values=self.values[used])

    def used(self) -> np.ndarray:
        """Which values occur in the column, bool [n_values]."""
        return np.bincount(self.codes, minlength=len(self.values)) > 0

    def count_at_least(self, minimum: int) -> np.ndarray:
        """For each row, whether ``minimum`` or more rows have its value (a session's length, an item's support)."""
        return (np.bincount(self.codes, minlength=len(self.values)) >= minimum)[self.codes]

    def n_distinct(self) -> int:
        return int(np.count_nonzero(self.used()))

    def recode(self, values: np.ndarray) -> np.ndarray:
        """Codes of the rows in another vocabulary ``values``; -1 for ids it lacks."""
        if values is self.values:
            return self.codes
        return index_in(self.values, values)[self.codes]


def index_in(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position of each of ``ids`` in the distinct ``values``; -1 where absent. int32."""
    if len(ids) == 0:
        return np.zeros(0, np.int32)
    if len(values) == 0:
        return np.full(len(ids), -1, np.int32)
    found = pc.index_in(arrow_strings(ids), value_set=arrow_strings(values))
    return np.asarray(found.fill_null(-1).to_numpy(zero_copy_only=False), np.int32)


class EventTable:
    """Columns of an event table, one entry per event, in file order.

    ``sessions``, ``items`` and ``users`` (None without a user column) are
    :class:`IdColumn`; ``times`` is float64. The constructor also takes arrays of
    id strings, and ``session_ids`` / ``item_ids`` / ``user_ids`` decode the
    columns to str arrays (one string per event: for small tables and tests).
    """

    __slots__ = ("sessions", "items", "times", "users")

    def __init__(self, session_ids, item_ids, times, user_ids=None):
        self.sessions = IdColumn.encode(session_ids)
        self.items = IdColumn.encode(item_ids)
        self.times = np.asarray(times, dtype=np.float64)
        self.users = None if user_ids is None else IdColumn.encode(user_ids)
        lengths = {len(self.sessions), len(self.items), len(self.times)} | ({len(self.users)} if self.users else set())
        if len(lengths) != 1:
            raise ValueError(f"event table columns of different lengths: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.times)

    def __repr__(self) -> str:
        users = f", {self.users.n_distinct()} users" if self.users is not None else ""
        return f"EventTable({len(self)} events, {len(self.sessions.values)} session ids, " \
               f"{len(self.items.values)} item ids{users})"

    @property
    def session_ids(self) -> np.ndarray:
        return self.sessions.decode()

    @property
    def item_ids(self) -> np.ndarray:
        return self.items.decode()

    @property
    def user_ids(self) -> Optional[np.ndarray]:
        return None if self.users is None else self.users.decode()

    def take(self, index: np.ndarray) -> "EventTable":
        """Rows ``index`` (indices or a boolean mask) of every column."""
        return EventTable(
            self.sessions.take(index), self.items.take(index), self.times[index],
            None if self.users is None else self.users.take(index),
        )

    def replace(self, **columns) -> "EventTable":
        """A table with some of ``session_ids``, ``item_ids``, ``times``, ``user_ids`` replaced."""
        current = dict(session_ids=self.sessions, item_ids=self.items, times=self.times, user_ids=self.users)
        unknown = set(columns) - set(current)
        if unknown:
            raise TypeError(f"unknown event table column(s): {', '.join(sorted(unknown))}")
        return EventTable(**{**current, **columns})


# ---------------------------------------------------------------------------
# Progress of long stages.


class Progress:
    """Progress of a stage that may take long, on stderr, once it has run ``delay`` seconds.

    On a terminal a line redrawn in place; otherwise a plain line every
    ``interval`` seconds (logs of batch jobs), and nothing for a short stage.
    """

    def __init__(self, label: str, total: float = 0.0, unit: str = "MB", scale: float = 1e-6,
                 delay: float = 5.0, interval: float = 30.0, stream=None):
        self.label, self.total, self.unit, self.scale = label, total, unit, scale
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.delay, self.interval = delay, interval
        self.next_report = self.start + delay
        self.shown = False

    def update(self, done: float) -> None:
        now = time.perf_counter()
        if now < self.next_report:
            return
        self.next_report = now + (0.5 if self.terminal else self.interval)
        total = f" of {self.total * self.scale:,.0f}" if self.total else ""
        percent = f" ({100.0 * done / self.total:.0f}%)" if self.total else ""
        text = f"{self.label}: {done * self.scale:,.0f}{total} {self.unit}{percent}, {now - self.start:.0f} s"
        self.stream.write(f"\r{text:79s}" if self.terminal else text + "\n")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown and self.terminal:
            self.stream.write("\r" + " " * 79 + "\r")
            self.stream.flush()

    @staticmethod
    @contextlib.contextmanager
    def stage(label: str, delay: float = 5.0, stream=None) -> Iterator[None]:
        """Reports a stage without steps to count (one numpy pass after another) when it took ``delay`` s or more."""
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        if seconds >= delay:
            stream = stream if stream is not None else sys.stderr
            stream.write(f"{label}: {seconds:.0f} s\n")
            stream.flush()


# ---------------------------------------------------------------------------
# Reading.

TABLE_FORMATS = ("tsv", "csv", "parquet")
_DELIMITERS = {"tsv": "\t", "csv": ","}
_DELIMITER_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon"}
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")  # read and written through pyarrow's codecs
BLOCK_SIZE = 16 << 20  # bytes of text per block of the CSV reader
# What pyarrow parses as a float64 (decimal, optional sign, exponent, inf / nan).
_NUMBER = re.compile(r"\s*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan)\s*", re.IGNORECASE)


def table_format(path: str, format: Optional[str] = None) -> str:
    """``format`` if given, else by extension: .parquet / .pq, .csv (comma), anything else tab-separated."""
    if format:
        if format not in TABLE_FORMATS:
            raise DataError(f"unknown table format {format!r} (known: {', '.join(TABLE_FORMATS)})")
        return format
    name = path.lower()
    for suffix in COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "csv" if name.endswith(".csv") else "tsv"


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")


def text_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its end) of a text file, compressed or not; ends are \\n, \\r\\n or \\r."""
    with pa.input_stream(path, compression="detect") as raw, io.BufferedReader(raw, 1 << 20) as f:
        line_no = 0
        for chunk in f:
            for line in chunk.splitlines():
                line_no += 1
                yield line_no, line


def read_header(path: str, delimiter: str) -> list[str]:
    """The first line's column names (without a UTF-8 byte-order mark); DataError when empty or not UTF-8."""
    _check_file(path)
    first = next(text_lines(path), (1, b""))[1]
    first = first.removeprefix(b"\xef\xbb\xbf")
    try:
        header = first.decode("utf-8").split(delimiter)
    except UnicodeDecodeError:
        raise DataError(f"{path}:1: the header is not UTF-8 text") from None
    if header == [""]:
        raise DataError(f"{path}: empty file (expected a header row)")
    return header


def check_header(path: str, header: Sequence[str], wanted: Sequence[str]) -> None:
    """DataError naming duplicated or missing column names."""
    seen, duplicated = set(), []
    for name in header:
        if name in seen and name not in duplicated:
            duplicated.append(name)
        seen.add(name)
    if duplicated:
        raise DataError(f"{path}: duplicated column name(s) {', '.join(duplicated)} in the header")
    missing = [name for name in dict.fromkeys(wanted) if name not in seen]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (header has: {', '.join(header)})")


def read_events(
    path: str,
    session_key: str = "SessionId",
    item_key: str = "ItemId",
    time_key: str = "Time",
    user_key: Optional[str] = None,
    *,
    format: Optional[str] = None,
) -> EventTable:
    """Reads an event table (format from the extension, see :func:`table_format`); DataError on bad input.

    Delimited text: a header row, one event per row, no quoting; blank lines are
    skipped, a malformed row is reported as ``path:LINE: problem``. Ids are read
    as strings, times must be finite numbers.
    """
    keys = {"session": session_key, "item": item_key, "time": time_key}
    if user_key:
        keys["user"] = user_key
    format = table_format(path, format)
    if format == "parquet":
        columns = _read_parquet_columns(path, keys)
    else:
        columns = _read_delimited_columns(path, keys, _DELIMITERS[format])
    return EventTable(columns["session"], columns["item"], columns["time"], columns.get("user"))


def _read_delimited_columns(path: str, keys: dict[str, str], delimiter: str) -> dict[str, object]:
    header = read_header(path, delimiter)
    check_header(path, header, list(keys.values()))
    dictionary = pa.dictionary(pa.int32(), pa.string())
    types = {name: (pa.float64() if role == "time" else dictionary) for role, name in keys.items()}
    options = dict(
        read_options=pa_csv.ReadOptions(skip_rows=1, column_names=header, block_size=BLOCK_SIZE),
        parse_options=pa_csv.ParseOptions(delimiter=delimiter, quote_char=False, double_quote=False, escape_char=False),
        convert_options=pa_csv.ConvertOptions(include_columns=list(dict.fromkeys(keys.values())), column_types=types,
                                              null_values=[], strings_can_be_null=False),
    )
    id_chunks: dict[str, list[pa.Array]] = {role: [] for role in keys if role != "time"}
    time_chunks = []
    try:
        for batch in csv_batches(path, options, f"reading {os.path.basename(path)}"):
            for role in id_chunks:
                id_chunks[role].append(batch.column(keys[role]))
            time_chunks.append(batch.column(keys["time"]).to_numpy())
    except pa.ArrowInvalid as error:
        _raise_first_bad_line(path, delimiter, header, keys["time"], error)
    times = np.concatenate(time_chunks) if time_chunks else np.zeros(0)
    del time_chunks
    if len(times) == 0:
        raise DataError(f"{path}: no events (the table has a header but no rows)")
    if not np.all(np.isfinite(times)):
        _raise_first_bad_line(path, delimiter, header, keys["time"], None)
    columns: dict[str, object] = {"time": times}
    for role in list(id_chunks):
        columns[role] = IdColumn.from_arrow(pa.chunked_array(id_chunks.pop(role), type=dictionary))
        release_arrow_memory()
    return columns


def release_arrow_memory() -> None:
    """Returns the memory pyarrow freed to the system (its allocator keeps it otherwise, inflating the peak)."""
    pa.default_memory_pool().release_unused()


class _CountingReader(io.RawIOBase):
    """A binary stream that reports the bytes read so far to a :class:`Progress`."""

    def __init__(self, stream, progress: Progress):
        self.stream, self.progress, self.position = stream, progress, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        buffer[:len(data)] = data
        self.position += len(data)
        self.progress.update(self.position)
        return len(data)


def csv_batches(path: str, options: dict, label: str) -> Iterator[pa.RecordBatch]:
    """The record batches of a CSV file, compressed or not, read by pyarrow's multi-threaded reader.

    A :class:`Progress` line follows a long read (bytes of the file read).
    """
    compressed = path.lower().endswith(COMPRESSED_SUFFIXES)
    progress = Progress(label, total=0 if compressed else os.path.getsize(path))
    with pa.input_stream(path, compression="detect") as raw:
        try:
            table = pa_csv.read_csv(_CountingReader(raw, progress), **options)
        except pa.ArrowInvalid as error:
            if "Empty CSV file" in str(error):
                return  # nothing after the skipped rows
            raise
        finally:
            progress.close()
    release_arrow_memory()  # the parser's buffers
    batches = table.to_batches()
    del table
    while batches:
        yield batches.pop(0)  # each block freed once the caller is done with it


def _raise_first_bad_line(path: str, delimiter: str, header: list[str], time_key: str,
                          error: Optional[Exception]) -> None:
    """Finds the first malformed line with a plain scan (only on this error path) and raises its DataError."""
    width, time_index = len(header), header.index(time_key)
    name = _DELIMITER_NAMES.get(delimiter, repr(delimiter))
    for line_no, line in text_lines(path):
        if line_no == 1 or not line:
            continue
        try:
            fields = line.decode("utf-8").split(delimiter)
        except UnicodeDecodeError:
            raise DataError(f"{path}:{line_no}: not UTF-8 text") from None
        if len(fields) != width:
            raise DataError(f"{path}:{line_no}: expected {width} {name}-separated fields, got {len(fields)}")
        text = fields[time_index]
        if not _NUMBER.fullmatch(text):
            raise DataError(f"{path}:{line_no}: non-numeric {time_key} value {text!r}")
        if not np.isfinite(float(text)):
            raise DataError(f"{path}:{line_no}: non-finite {time_key} value {text!r}")
    reason = str(error).splitlines()[0] if error is not None else "unreadable"
    raise DataError(f"{path}: {reason}")


def _read_parquet_columns(path: str, keys: dict[str, str]) -> dict[str, object]:
    _check_file(path)
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({str(error).splitlines()[0]})") from None
    check_header(path, names, list(keys.values()))
    table = pq.read_table(path, columns=list(dict.fromkeys(keys.values())))
    if table.num_rows == 0:
        raise DataError(f"{path}: no events (the table has no rows)")
    for name in table.column_names:
        if table.column(name).null_count:
            row = int(np.flatnonzero(pc.is_null(table.column(name)).to_numpy(zero_copy_only=False))[0]) + 1
            raise DataError(f"{path}: row {row}: missing {name} value")
    try:
        times = np.asarray(table.column(keys["time"]).cast(pa.float64()).to_numpy(), np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"{path}: column {keys['time']} is not numeric ({table.schema.field(keys['time']).type})") from None
    if not np.all(np.isfinite(times)):
        row = int(np.flatnonzero(~np.isfinite(times))[0]) + 1
        raise DataError(f"{path}: row {row}: non-finite {keys['time']} value {times[row - 1]!r}")
    columns: dict[str, object] = {"time": times}
    for role, name in keys.items():
        if role != "time":
            column = table.column(name)
            if not (pa.types.is_dictionary(column.type) or pa.types.is_string(column.type)
                    or pa.types.is_large_string(column.type)):
                column = column.cast(pa.string())  # integer ids become their decimal text
            columns[role] = IdColumn.from_arrow(column)
    return columns


# ---------------------------------------------------------------------------
# Writing.


def format_floats(values: np.ndarray) -> pa.Array:
    """Each float as Python's ``repr`` writes it (shortest text that reads back to the same float).

    pyarrow writes the same shortest digits, but as an integer without ``.0`` and
    with an exponent where Python does not; those are fixed here, and Python
    formats the rare rest (exponent notation, non-integers of 1e12 and more).
    """
    values = np.asarray(values, np.float64)
    text = pc.cast(pa.array(values), pa.string())
    magnitude = np.abs(values)
    positional = (magnitude < 1e16) & ((magnitude >= 1e-4) | (magnitude == 0))  # where repr writes no exponent
    exponent = pc.match_substring(text, "e").to_numpy(zero_copy_only=False)
    negative_zero = (values == 0) & np.signbit(values)
    integer = positional & (values == np.floor(values)) & (magnitude < 2.0 ** 53) & ~negative_zero
    # Integers: digits, then ".0" (pyarrow writes "12" or "1.2e+12").
    as_integer = pc.binary_join_element_wise(pc.cast(pa.array(values[integer].astype(np.int64)), pa.string()), ".0", "")
    text = pc.replace_with_mask(text, pa.array(integer), as_integer)
    rest = ~integer & (exponent | ~positional | negative_zero)
    if rest.any():
        text = pc.replace_with_mask(text, pa.array(rest), pa.array([repr(float(v)) for v in values[rest]], pa.string()))
    return text


def _arrow_ids(column: IdColumn, values: Optional[pa.Array] = None, decode: bool = False) -> pa.Array:
    """``column`` as a pyarrow dictionary array, or ``decode``-d to strings (``values``: its values converted)."""
    values = arrow_strings(column.values) if values is None else values
    if decode:  # the CSV writer would convert the whole dictionary for each of its small batches
        return values.take(pa.array(column.codes, pa.int32()))
    return pa.DictionaryArray.from_arrays(pa.array(column.codes, pa.int32()), values)


WRITE_ROWS = 1 << 20  # rows formatted at a time when writing text (more is slower: caches)


def write_events(
    path: str,
    table: EventTable,
    session_key: str = "SessionId",
    item_key: str = "ItemId",
    time_key: str = "Time",
    user_key: str = "UserId",
    *,
    format: Optional[str] = None,
) -> None:
    """Writes ``table`` so that :func:`read_events` reads it back unchanged (user column first, if any).

    Text times are written as Python's ``repr`` (:func:`format_floats`); Parquet keeps
    the ids dictionary-encoded and the times as float64.
    """
    names = [session_key, item_key, time_key]
    columns: list[object] = [table.sessions, table.items, table.times]
    if table.users is not None:
        names.insert(0, user_key)
        columns.insert(0, table.users)
    format = table_format(path, format)
    if format == "parquet":
        arrays = [c if isinstance(c, np.ndarray) else _arrow_ids(c) for c in columns]
        pq.write_table(pa.table(arrays, names=names), path)
        return
    delimiter = _DELIMITERS[format]
    columns = [c.compact() if isinstance(c, IdColumn) else c for c in columns]  # a split uses part of the ids
    for name, column in zip(names, columns):
        if isinstance(column, IdColumn) and np.any(np.char.find(column.values, delimiter) >= 0):
            raise DataError(f"{path}: a {name} value contains the delimiter {delimiter!r}; cannot write it")
    options = pa_csv.WriteOptions(include_header=False, delimiter=delimiter, quoting_style="none")
    values = [None if isinstance(c, np.ndarray) else arrow_strings(c.values) for c in columns]
    progress = Progress(f"writing {os.path.basename(path)}", total=len(table), unit="M rows")
    with pa.output_stream(path, compression="detect") as f:
        f.write((delimiter.join(names) + "\n").encode("utf-8"))
        for start in range(0, len(table), WRITE_ROWS):
            rows = slice(start, start + WRITE_ROWS)
            arrays = [format_floats(c[rows]) if v is None else _arrow_ids(c.take(rows), v, decode=True)
                      for c, v in zip(columns, values)]
            pa_csv.write_csv(pa.table(arrays, names=names), f, options)
            progress.update(min(start + WRITE_ROWS, len(table)))
    progress.close()
    release_arrow_memory()


# ---------------------------------------------------------------------------
# The item map.


def first_appearance_order(column: IdColumn) -> np.ndarray:
    """Codes of the values that occur, in order of their first row."""
    codes = column.codes
    if len(codes) == 0:
        return np.zeros(0, np.int64)
    # Codes given in order of first appearance (as a fresh read assigns them) are checked in O(n).
    running_max = np.maximum.accumulate(codes)
    if codes[0] == 0 and np.all(np.diff(running_max) <= 1):
        return np.arange(int(running_max[-1]) + 1)
    values, first = np.unique(codes, return_index=True)
    return values[np.argsort(first)]


@dataclasses.dataclass(frozen=True)
class ItemMap:
    """Maps opaque item ids to dense indices ``0..n-1``; stored with the model."""

    ids: np.ndarray  # str, ids[k] is the item of index k

    @classmethod
    def from_training(cls, item_ids: Union[IdColumn, Sequence[str]]) -> "ItemMap":
        """Indices in order of first appearance, as the reference assigns them."""
        column = IdColumn.encode(item_ids)
        return cls(ids=column.values[first_appearance_order(column)])

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, item_ids: Union[IdColumn, Sequence[str]]) -> np.ndarray:
        """Indices of ``item_ids``; -1 for items not in the map. int32."""
        if isinstance(item_ids, IdColumn):
            return index_in(item_ids.values, self.ids)[item_ids.codes]
        return index_in(np.asarray(item_ids, dtype=str), self.ids)


# ---------------------------------------------------------------------------
# Sessions.


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


def _integer_values(values: np.ndarray) -> Optional[np.ndarray]:
    """``values`` as int64 if every one is an integer's text, else None."""
    try:
        return pc.cast(arrow_strings(values), pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    try:  # what pyarrow refuses but Python's int() takes (" 7", "1_000")
        return values.astype(np.int64)
    except (ValueError, OverflowError):
        return None


def session_sort_keys(column: IdColumn) -> np.ndarray:
    """A key per row: integer ids sort numerically (as the reference's int column), others as text.

    Where the codes already follow that order (a converted file, read back) the
    codes themselves are the keys: no int64 array per row.
    """
    values = column.values
    keys = _integer_values(values)
    if keys is None:
        used = column.used()
        if not used.all() and (used_keys := _integer_values(values[used])) is not None:
            keys = np.zeros(len(values), np.int64)
            keys[used] = used_keys
        else:
            keys = np.empty(len(values), np.int64)
            keys[np.argsort(values, kind="stable")] = np.arange(len(values))
    if np.all(keys[1:] > keys[:-1]):
        return column.codes
    return keys[column.codes]


CHECK_ROWS = 1 << 22  # rows per step of the checks and gathers below: their temporaries stay small


def session_time_order(keys: np.ndarray, times: np.ndarray) -> Optional[np.ndarray]:
    """Stable order of the rows by (key, time); None when they are in that order already.

    Converted files are written in that order, so the check (one pass) usually
    saves the sort.
    """
    for start in range(0, max(len(keys) - 1, 0), CHECK_ROWS):
        rows = slice(start, start + CHECK_ROWS + 1)
        key_step, time_step = np.diff(keys[rows]), np.diff(times[rows])
        if not np.all((key_step > 0) | ((key_step == 0) & (time_step >= 0))):
            return np.lexsort((times, keys))
    return None


def group_sessions(items: np.ndarray, times: np.ndarray, keys: np.ndarray, source: str) -> tuple[Sessions, np.ndarray]:
    """Sessions from per-event item indices (-1: unknown, dropped), times and session keys.

    Returns the sessions (``session_ids`` left empty) and the row of each
    session's first event, from which callers name the sessions.
    """
    known = items >= 0
    if not np.any(known):
        raise DataError(f"{source}: none of its {len(items)} events has an item seen in training")
    rows = None
    if not np.all(known):
        rows = np.flatnonzero(known)
        items, times, keys = items[rows], times[rows], keys[rows]
    # Events by (session, time); stable so that equal times keep file order.
    order = session_time_order(keys, times)
    if order is not None:
        items, times, keys = items[order], times[order], keys[order]
        rows = order if rows is None else rows[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    del keys
    lengths = np.diff(np.r_[starts, len(items)])
    # Sessions by first timestamp; ties keep the session-key order.
    first_times = times[starts]
    if np.all(first_times[1:] >= first_times[:-1]):
        session_order = None
    else:
        session_order = np.argsort(first_times, kind="stable")
        starts, lengths = starts[session_order], lengths[session_order]
        items, times = gather_sessions((items, times), starts, lengths)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    first_rows = starts if rows is None else rows[starts]
    sessions = Sessions(items=items.astype(np.int32, copy=False), offsets=offsets, times=times,
                        session_ids=np.zeros(0, str))
    return sessions, first_rows


def build_sessions(table: EventTable, item_map: ItemMap, *, source: str = "data") -> Sessions:
    """Groups ``table`` into sessions; events of unknown items are dropped first.

    Dropping happens before sequences are formed, so an unknown item's
    neighbours become adjacent (GRU4REC.md section 1).
    """
    sessions, first_rows = group_sessions(item_map.lookup(table.items), table.times,
                                          session_sort_keys(table.sessions), source)
    return dataclasses.replace(sessions, session_ids=table.sessions.values[table.sessions.codes[first_rows]])


def gather_sessions(arrays: Sequence[np.ndarray], starts: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """``arrays`` with the ranges ``start:start + length`` one after another, a few million rows at a time."""
    out = [np.empty(int(lengths.sum()), a.dtype) for a in arrays]
    ends = np.cumsum(lengths)
    first = 0
    while first < len(lengths):
        last = max(int(np.searchsorted(ends, ends[first] - lengths[first] + CHECK_ROWS, "right")), first + 1)
        rows = gather_ranges(starts[first:last], lengths[first:last])
        done = int(ends[first] - lengths[first])
        for target, source in zip(out, arrays):
            np.take(source, rows, out=target[done:done + len(rows)])
        first = last
    return out


def gather_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for every pair, vectorised."""
    total = int(lengths.sum())
    range_starts = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)  # also for no ranges
    range_starts += np.arange(total)
    return range_starts
