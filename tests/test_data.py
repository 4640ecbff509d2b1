"""Tests of event reading, the item map, session building and the synthetic data (GRU4REC.md §1).

Expected values on the real sample are computed independently with the csv module and dicts.
"""

import collections
import csv
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gru4rec_jax import data as data_module
from gru4rec_jax.data import (
    DataError, EventTable, IdColumn, ItemMap, build_sessions, format_floats, read_events, session_time_order, write_events,
)
from gru4rec_jax.synthetic import generate_events, generate_train_test


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def _table(sessions, items, times):
    return EventTable(
        session_ids=np.asarray(sessions, dtype=str),
        item_ids=np.asarray(items, dtype=str),
        times=np.asarray(times, dtype=np.float64),
    )


def _session_lists(sessions, item_map):
    """Sessions as a list of (session id, [item ids]) in the library's order."""
    out = []
    for k in range(sessions.n_sessions):
        idx = sessions.items[sessions.offsets[k]:sessions.offsets[k + 1]]
        out.append((str(sessions.session_ids[k]), [str(item_map.ids[i]) for i in idx]))
    return out


# --------------------------------------------------------------------------- read_events


def test_read_events_basic(tmp_path):
    """A well-formed TSV is read column by column in file order, times as float64."""
    path = _write(tmp_path / "e.tsv", "SessionId\tItemId\tTime\n1\ta\t10.5\n1\tb\t11\n2\ta\t3\n")
    table = read_events(path)
    assert len(table) == 3
    assert list(table.session_ids) == ["1", "1", "2"]
    assert list(table.item_ids) == ["a", "b", "a"]
    assert table.times.dtype == np.float64
    np.testing.assert_array_equal(table.times, [10.5, 11.0, 3.0])
    assert table.user_ids is None


def test_read_events_custom_columns_and_order(tmp_path):
    """Custom key names are honoured, columns may be in any order, extra columns ignored, CRLF ok."""
    text = "Extra\tT\tItem\tSess\tUser\r\nx\t5\tp\ts1\tu1\r\ny\t6\tq\ts1\tu1\r\n"
    path = _write(tmp_path / "e.tsv", text)
    table = read_events(path, session_key="Sess", item_key="Item", time_key="T", user_key="User")
    assert list(table.session_ids) == ["s1", "s1"]
    assert list(table.item_ids) == ["p", "q"]
    np.testing.assert_array_equal(table.times, [5.0, 6.0])
    assert list(table.user_ids) == ["u1", "u1"]


def test_read_events_trailing_blank_line(tmp_path):
    """A blank line at the end of the file is not an event and not an error."""
    path = _write(tmp_path / "e.tsv", "SessionId\tItemId\tTime\n1\ta\t1\n\n")
    assert len(read_events(path)) == 1


def _data_error(path, **kwargs):
    with pytest.raises(DataError) as info:
        read_events(path, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message, f"message must be one line: {message!r}"
    return message


def test_missing_file(tmp_path):
    """A missing file is a DataError (not FileNotFoundError) naming the path."""
    path = str(tmp_path / "nope.tsv")
    message = _data_error(path)
    assert "nope.tsv" in message
    assert "no such file" in message.lower()


def test_empty_file(tmp_path):
    """An empty file is a one-line DataError saying it is empty."""
    message = _data_error(_write(tmp_path / "e.tsv", ""))
    assert "empty" in message.lower()


def test_header_only(tmp_path):
    """A header with no rows is a DataError (not an empty table that fails later)."""
    message = _data_error(_write(tmp_path / "e.tsv", "SessionId\tItemId\tTime\n"))
    assert "no events" in message.lower() or "no rows" in message.lower()


def test_missing_column_named(tmp_path):
    """A missing column is reported by name."""
    path = _write(tmp_path / "e.tsv", "SessionId\tItem\tTime\n1\ta\t1\n")
    message = _data_error(path)
    assert "ItemId" in message
    message = _data_error(path, item_key="Item", time_key="Timestamp")
    assert "Timestamp" in message


def test_non_numeric_time_names_line(tmp_path):
    """A non-numeric time gives a DataError naming the (1-based) line number and the value."""
    path = _write(tmp_path / "e.tsv", "SessionId\tItemId\tTime\n1\ta\t1\n1\tb\t2\n2\tc\tnoon\n")
    message = _data_error(path)
    assert "e.tsv:4" in message
    assert "noon" in message


def test_non_finite_time(tmp_path):
    """'nan' / 'inf' parse as floats but are rejected with the line number."""
    path = _write(tmp_path / "e.tsv", "SessionId\tItemId\tTime\n1\ta\t1\n1\tb\tnan\n")
    assert "e.tsv:3" in _data_error(path)


def test_wrong_field_count_names_line(tmp_path):
    """A row with too few or too many fields gives a DataError with its line number."""
    path = _write(tmp_path / "e.tsv", "SessionId\tItemId\tTime\n1\ta\t1\n1\tb\n")
    assert "e.tsv:3" in _data_error(path)
    path = _write(tmp_path / "f.tsv", "SessionId\tItemId\tTime\n1\ta\t1\t9\n")
    assert "f.tsv:2" in _data_error(path)


def test_non_numeric_time_line_after_blank_line(tmp_path):
    """Line numbers stay file line numbers when a blank line precedes the bad row."""
    path = _write(tmp_path / "e.tsv", "SessionId\tItemId\tTime\n1\ta\t1\n\n2\tb\tx\n")
    assert "e.tsv:4" in _data_error(path)


# --------------------------------------------------------------------------- ItemMap


def test_item_map_first_appearance_order():
    """Indices follow first appearance in the file, not sorted id order."""
    item_map = ItemMap.from_training(["b", "a", "b", "c"])
    assert list(item_map.ids) == ["b", "a", "c"]
    assert len(item_map) == 3
    assert list(item_map.lookup(["b", "a", "c"])) == [0, 1, 2]


def test_item_map_numeric_like_ids_are_strings():
    """Ids are opaque strings: '10' is first-seen before '9' and not sorted numerically."""
    item_map = ItemMap.from_training(["10", "9", "100", "9"])
    assert list(item_map.lookup(["10", "9", "100"])) == [0, 1, 2]


def test_item_map_lookup_unknown():
    """Unknown ids (including ids sorting before/after all known ones) map to -1."""
    item_map = ItemMap.from_training(["m", "c", "x"])
    result = item_map.lookup(["a", "c", "zz", "m", "n", "x", ""])
    assert result.dtype == np.int32
    assert list(result) == [-1, 1, -1, 0, -1, 2, -1]
    assert len(item_map.lookup([])) == 0


# --------------------------------------------------------------------------- build_sessions


def test_events_sorted_by_time_within_session():
    """Events of a session are ordered by time, whatever the file order."""
    table = _table(["1", "1", "1"], ["a", "b", "c"], [30, 10, 20])
    item_map = ItemMap.from_training(table.item_ids)
    sessions = build_sessions(table, item_map)
    assert _session_lists(sessions, item_map) == [("1", ["b", "c", "a"])]
    np.testing.assert_array_equal(sessions.times, [10, 20, 30])


def test_sessions_ordered_by_first_timestamp():
    """Sessions are ordered by first timestamp, not by id nor by file order.

    File order: 5, 1, 3; numeric id order: 1, 3, 5; first-timestamp order: 3, 5, 1.
    """
    table = _table(
        ["5", "5", "1", "1", "3", "3"],
        ["a", "b", "c", "d", "e", "f"],
        [200, 210, 300, 305, 100, 400],
    )
    item_map = ItemMap.from_training(table.item_ids)
    sessions = build_sessions(table, item_map)
    assert list(sessions.session_ids) == ["3", "5", "1"]
    assert _session_lists(sessions, item_map) == [
        ("3", ["e", "f"]), ("5", ["a", "b"]), ("1", ["c", "d"])
    ]
    np.testing.assert_array_equal(sessions.offsets, [0, 2, 4, 6])


def test_interleaved_session_rows_are_grouped():
    """Rows of one session need not be contiguous in the file."""
    table = _table(["a", "b", "a", "b"], ["1", "2", "3", "4"], [1, 2, 3, 4])
    item_map = ItemMap.from_training(table.item_ids)
    sessions = build_sessions(table, item_map)
    assert _session_lists(sessions, item_map) == [("a", ["1", "3"]), ("b", ["2", "4"])]


def test_integer_session_ids_tie_sort_numerically():
    """With equal first timestamps, integer ids order numerically ('9' before '10')."""
    table = _table(["10", "10", "9", "9", "100", "100"], list("abcdef"), [5, 6, 5, 7, 5, 8])
    item_map = ItemMap.from_training(table.item_ids)
    sessions = build_sessions(table, item_map)
    assert list(sessions.session_ids) == ["9", "10", "100"]


def test_unknown_items_dropped_before_sequences():
    """Unknown test items are dropped first: their neighbours become adjacent;
    a session left with one event predicts nothing; one left with none disappears."""
    item_map = ItemMap.from_training(["a", "b", "c"])
    test = _table(
        ["1", "1", "1", "2", "2", "3", "3"],
        ["a", "zz", "b", "c", "yy", "xx", "ww"],
        [1, 2, 3, 4, 5, 6, 7],
    )
    sessions = build_sessions(test, item_map)
    assert _session_lists(sessions, item_map) == [("1", ["a", "b"]), ("2", ["c"])]
    assert sessions.n_events == 3
    assert int(np.maximum(sessions.lengths - 1, 0).sum()) == 1  # only a -> b is predicted
    np.testing.assert_array_equal(sessions.items, item_map.lookup(["a", "b", "c"]))


def test_no_known_items_raises():
    """A test table with no item from training is a one-line DataError, not an empty result."""
    item_map = ItemMap.from_training(["a"])
    with pytest.raises(DataError) as info:
        build_sessions(_table(["1", "1"], ["x", "y"], [1, 2]), item_map, source="test.tsv")
    assert "\n" not in str(info.value)
    assert "test.tsv" in str(info.value)


def test_many_sessions_vectorised_path():
    """More than 2**16 sessions take the vectorised gather path; it must match plain Python."""
    rng = np.random.default_rng(3)
    n = 2**16 + 500
    lengths = rng.integers(1, 4, size=n)
    sess = np.repeat(np.arange(n), lengths)
    items = rng.integers(0, 300, size=len(sess)).astype(str)
    times = rng.uniform(0, 1e6, size=len(sess)).round(3)
    perm = rng.permutation(len(sess))
    table = _table(sess[perm].astype(str), items[perm], times[perm])
    item_map = ItemMap.from_training(table.item_ids)
    sessions = build_sessions(table, item_map)
    expected = _plain_sessions(
        zip(table.session_ids.tolist(), table.item_ids.tolist(), table.times.tolist())
    )
    assert sessions.n_sessions == len(expected)
    np.testing.assert_array_equal(sessions.lengths, [len(s) for _, s in expected])
    np.testing.assert_array_equal(
        sessions.items, item_map.lookup([i for _, s in expected for i in s])
    )
    assert list(sessions.session_ids) == [sid for sid, _ in expected]


# --------------------------------------------------------------------------- real sample


def _read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["SessionId"], r["ItemId"], float(r["Time"]))
                for r in csv.DictReader(f, delimiter="\t")]


def _plain_sessions(rows, known=None):
    """(session id, [item ids]) by first time then numeric id; events by time then file order."""
    events = collections.defaultdict(list)
    for k, (sid, item, t) in enumerate(rows):
        if known is None or item in known:
            events[sid].append((t, k, item))
    for evs in events.values():
        evs.sort()
    order = sorted(events, key=lambda sid: (events[sid][0][0], int(sid)))
    return [(sid, [item for _, _, item in events[sid]]) for sid in order]


@pytest.fixture(scope="module")
def rsc15(shared_data):
    folder = os.path.join(shared_data, "rsc15_100k")
    return {name: os.path.join(folder, name + ".tsv") for name in ("train_full", "train_tr", "test")}


def test_real_train_counts_match_readme(rsc15):
    """train_full has 70,278 events, 17,794 sessions and 2,933 items (data README)."""
    rows = _read_rows(rsc15["train_full"])
    assert (len(rows), len({r[0] for r in rows}), len({r[1] for r in rows})) == (70278, 17794, 2933)
    table = read_events(rsc15["train_full"])
    item_map = ItemMap.from_training(table.item_ids)
    sessions = build_sessions(table, item_map)
    assert (len(table), sessions.n_sessions, len(item_map)) == (70278, 17794, 2933)
    first_seen = list(dict.fromkeys(r[1] for r in rows))
    assert list(item_map.ids) == first_seen


@pytest.mark.parametrize("train_name", ["train_full", "train_tr"])
def test_real_test_sessions_match_plain_python(rsc15, train_name):
    """Test sessions (unknown items dropped, ordered per §1) equal a plain-Python construction.

    With train_tr as training data some test items are unknown, so dropping is exercised.
    """
    train_rows = _read_rows(rsc15[train_name])
    test_rows = _read_rows(rsc15["test"])
    known = {r[1] for r in train_rows}
    expected = _plain_sessions(test_rows, known)
    n_kept = sum(1 for r in test_rows if r[1] in known)
    n_predicted = sum(len(s) - 1 for _, s in expected)

    item_map = ItemMap.from_training(read_events(rsc15[train_name]).item_ids)
    sessions = build_sessions(read_events(rsc15["test"]), item_map)
    assert sessions.n_events == n_kept
    assert int(np.maximum(sessions.lengths - 1, 0).sum()) == n_predicted
    assert _session_lists(sessions, item_map) == expected
    if train_name == "train_full":
        assert (n_kept, len(expected), n_predicted) == (13568, 3416, 10152)
    else:
        assert n_kept < len(test_rows)


def test_real_train_sessions_match_plain_python(rsc15):
    """train_full sessions, in training order, equal a plain-Python construction."""
    rows = _read_rows(rsc15["train_full"])
    item_map = ItemMap.from_training(read_events(rsc15["train_full"]).item_ids)
    sessions = build_sessions(read_events(rsc15["train_full"]), item_map)
    assert _session_lists(sessions, item_map) == _plain_sessions(rows)
    assert int((sessions.lengths - 1).sum()) == 70278 - 17794


# --------------------------------------------------------------------------- synthetic


def _tables_equal(a, b):
    return (np.array_equal(a.session_ids, b.session_ids) and np.array_equal(a.item_ids, b.item_ids)
            and np.array_equal(a.times, b.times))


def test_synthetic_deterministic_by_seed():
    """Same seed gives the same table; a different seed a different one."""
    a = generate_events(500, 100, seed=7)
    assert _tables_equal(a, generate_events(500, 100, seed=7))
    assert not _tables_equal(a, generate_events(500, 100, seed=8))
    tr1, te1 = generate_train_test(500, 100, seed=7)
    tr2, te2 = generate_train_test(500, 100, seed=7)
    assert _tables_equal(tr1, tr2) and _tables_equal(te1, te2)


def test_synthetic_heavy_tailed_popularity():
    """The top 10% of items get more than 40% of the events."""
    table = generate_events(seed=0)
    counts = np.array(sorted(collections.Counter(table.item_ids.tolist()).values(), reverse=True))
    top = max(1, len(counts) // 10)
    assert counts[:top].sum() > 0.4 * counts.sum()


def test_synthetic_train_test_split_by_time():
    """The test split holds the newest sessions, all starting after every training session."""
    train, test = generate_train_test(seed=1)
    assert len(train) and len(test)
    assert not set(train.session_ids.tolist()) & set(test.session_ids.tolist())
    first = collections.defaultdict(lambda: np.inf)
    for s, t in zip(test.session_ids.tolist(), test.times.tolist()):
        first[s] = min(first[s], t)
    train_first = collections.defaultdict(lambda: np.inf)
    for s, t in zip(train.session_ids.tolist(), train.times.tolist()):
        train_first[s] = min(train_first[s], t)
    assert min(first.values()) >= max(train_first.values())


def _pairs(table):
    """Consecutive (item, next item) pairs of every session, events in time order."""
    events = collections.defaultdict(list)
    for s, i, t in zip(table.session_ids.tolist(), table.item_ids.tolist(), table.times.tolist()):
        events[s].append((t, i))
    pairs = []
    for evs in events.values():
        evs.sort()
        pairs += [(evs[k][1], evs[k + 1][1]) for k in range(len(evs) - 1)]
    return pairs


def _top_k_hit_rates(train, test, k):
    """Hit rates of a most-frequent-successors predictor and of most-popular, both top-k."""
    popular = [i for i, _ in collections.Counter(train.item_ids.tolist()).most_common()]
    successors = collections.defaultdict(collections.Counter)
    for a, b in _pairs(train):
        successors[a][b] += 1

    def recommend(item):
        out = [i for i, _ in successors[item].most_common(k)] if item in successors else []
        out += [i for i in popular[:2 * k] if i not in out]
        return out[:k]

    test_pairs = _pairs(test)
    hit_succ = np.mean([b in recommend(a) for a, b in test_pairs])
    hit_pop = np.mean([b in popular[:k] for a, b in test_pairs])
    return hit_succ, hit_pop


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_has_sequential_structure(seed):
    """Reading the current item clearly beats popularity on the (time-split) test sessions.

    Top-3: most-frequent successors hit > 70% of test events and > 1.8x most-popular;
    top-1: > 1.3x. (Top-1 cannot reach 2x with the defaults: the most popular item alone
    is ~19% of next events, and successors are themselves drawn by popularity.)
    """
    train, test = generate_train_test(seed=seed)
    hit_succ, hit_pop = _top_k_hit_rates(train, test, 3)
    assert hit_succ > 0.7 and hit_succ > 1.8 * hit_pop, (hit_succ, hit_pop)
    hit_succ, hit_pop = _top_k_hit_rates(train, test, 1)
    assert hit_succ > 1.3 * hit_pop, (hit_succ, hit_pop)


def test_huge_integer_session_ids_sort_as_text():
    """Ids beyond int64 do not crash the numeric sort: they fall back to text order."""
    table = EventTable(
        session_ids=np.asarray(["99999999999999999999", "1", "99999999999999999999", "1"]),
        item_ids=np.asarray(["a", "b", "c", "d"]),
        times=np.asarray([1.0, 2.0, 3.0, 4.0]),
    )
    sessions = build_sessions(table, ItemMap.from_training(table.item_ids))
    assert sessions.n_sessions == 2 and list(sessions.lengths) == [2, 2]


# --------------------------------------------------------------------------- input-file faults, formats, blocks


def _write_bytes(path, data):
    path.write_bytes(data)
    return str(path)


def test_utf8_bom_is_not_part_of_the_first_column_name(tmp_path):
    """A byte-order mark (as some editors write) does not hide the first column."""
    path = _write_bytes(tmp_path / "e.tsv", b"\xef\xbb\xbfSessionId\tItemId\tTime\n1\ta\t1\n")
    table = read_events(path)
    assert list(table.session_ids) == ["1"] and list(table.item_ids) == ["a"]


def test_crlf_line_endings_throughout(tmp_path):
    """CRLF files: no carriage return glued to the last column, line numbers still count file lines."""
    path = _write_bytes(tmp_path / "e.tsv", b"SessionId\tTime\tItemId\r\n1\t1\ta\r\n\r\n2\t2.5\tb\r\n")
    table = read_events(path)
    assert list(table.item_ids) == ["a", "b"] and list(table.session_ids) == ["1", "2"]
    np.testing.assert_array_equal(table.times, [1.0, 2.5])
    path = _write_bytes(tmp_path / "f.tsv", b"SessionId\tItemId\tTime\r\n1\ta\t1\r\n\r\n2\tb\tx\r\n")
    assert "f.tsv:4" in _data_error(path)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e400"])
def test_non_finite_times_are_refused_with_their_line(tmp_path, value):
    path = _write(tmp_path / "e.tsv", f"SessionId\tItemId\tTime\n1\ta\t1\n\n1\tb\t{value}\n2\tc\t3\n")
    message = _data_error(path)
    assert "e.tsv:4" in message and value in message


def test_duplicated_header_name(tmp_path):
    """Two columns of one name are ambiguous: refused, whether the name is used or not."""
    message = _data_error(_write(tmp_path / "e.tsv", "SessionId\tItemId\tTime\tItemId\n1\ta\t1\tb\n"))
    assert "duplicated" in message and "ItemId" in message
    assert "duplicated" in _data_error(_write(tmp_path / "f.tsv", "x\tSessionId\tItemId\tTime\tx\n0\t1\ta\t1\t0\n"))


def test_non_utf8_line_names_line(tmp_path):
    path = _write_bytes(tmp_path / "e.tsv", b"SessionId\tItemId\tTime\n1\ta\t1\n1\t\xff\t2\n")
    message = _data_error(path)
    assert "e.tsv:3" in message and "UTF-8" in message


def _random_rows(rng, n):
    sessions = rng.integers(0, n // 3, n)
    items = rng.integers(0, 50, n)
    return [(f"{s}", f"i{i}", float(t)) for s, i, t in zip(sessions, items, rng.integers(0, 10**6, n))]


def test_many_blocks_read_like_one(tmp_path, monkeypatch):
    """Blocks of a few hundred bytes: ids, first-appearance order and a late bad line as with one block."""
    rows = _random_rows(np.random.default_rng(5), 600)
    text = "SessionId\tItemId\tTime\n" + "".join(f"{s}\t{i}\t{t!r}\n" for s, i, t in rows)
    path = _write(tmp_path / "e.tsv", text)
    monkeypatch.setattr(data_module, "BLOCK_SIZE", 300)
    table = read_events(path)
    assert table.session_ids.tolist() == [r[0] for r in rows]
    assert table.item_ids.tolist() == [r[1] for r in rows]
    assert table.times.tolist() == [r[2] for r in rows]
    assert list(ItemMap.from_training(table.items).ids) == list(dict.fromkeys(r[1] for r in rows))
    bad = _write(tmp_path / "f.tsv", text + "7\tx\n")
    assert f"f.tsv:{len(rows) + 2}: expected 3 tab-separated fields, got 2" in _data_error(bad)


@pytest.mark.parametrize("name", ["e.csv", "e.tsv.gz", "e.parquet"])
def test_other_formats_round_trip(tmp_path, name):
    """CSV, compressed TSV and Parquet (chosen by extension) read back what was written."""
    rows = _random_rows(np.random.default_rng(6), 200)
    table = EventTable(*(np.asarray(column) for column in zip(*rows)), user_ids=[f"u{k % 7}" for k in range(200)])
    path = str(tmp_path / name)
    write_events(path, table)
    back = read_events(path, user_key="UserId")
    for column in ("session_ids", "item_ids", "times", "user_ids"):
        np.testing.assert_array_equal(getattr(back, column), getattr(table, column))


def test_parquet_with_integer_ids_and_faults(tmp_path):
    """Integer id columns read as their decimal text; a null or a missing column is a one-line error."""
    path = str(tmp_path / "e.parquet")
    pq.write_table(pa.table({"SessionId": [10, 10, 9], "ItemId": [7, 8, 7], "Time": [1, 2, 3]}), path)
    table = read_events(path)
    assert table.session_ids.tolist() == ["10", "10", "9"] and table.item_ids.tolist() == ["7", "8", "7"]
    assert table.times.dtype == np.float64
    pq.write_table(pa.table({"SessionId": ["1", None], "ItemId": ["a", "b"], "Time": [1.0, 2.0]}), path)
    assert "row 2: missing SessionId" in _data_error(path)
    pq.write_table(pa.table({"SessionId": ["1"], "Time": [1.0]}), path)
    assert "missing column(s) ItemId" in _data_error(path)


def test_written_times_are_repr(tmp_path):
    """Text times are exactly Python's repr (so that files compare with earlier outputs and read back)."""
    times = _awkward_floats()
    path = str(tmp_path / "e.tsv")
    write_events(path, EventTable(np.zeros(len(times), int).astype(str), np.zeros(len(times), int).astype(str), times))
    with open(path) as f:
        written = [line.rstrip("\n").split("\t")[2] for line in f][1:]
    assert written == [repr(float(t)) for t in times]
    np.testing.assert_array_equal(read_events(path).times, times)


def _awkward_floats():
    rng = np.random.default_rng(7)
    return np.concatenate([
        [0.0, -0.0, 1.0, 3.0, 1e16, 1e15, 9.9e15, 123456789012345678.0, 1e-4, 1e-5, 0.0001234, 5e-324, 1e22, -7.5],
        rng.uniform(1.3e9, 1.7e9, 300).round(3), rng.integers(1.3e12, 1.7e12, 100).astype(float),
        rng.uniform(1.3e12, 1.7e12, 100), 10 ** rng.uniform(-8, 20, 300), rng.integers(1, 10**6, 100) * 0.001,
    ])


def test_format_floats_is_repr():
    values = _awkward_floats()
    assert format_floats(values).to_pylist() == [repr(float(v)) for v in values]


def test_write_refuses_ids_with_the_delimiter(tmp_path):
    table = EventTable(["a\tb"], ["x"], [1.0])
    with pytest.raises(DataError, match="contains the delimiter"):
        write_events(str(tmp_path / "e.tsv"), table)


# --------------------------------------------------------------------------- id columns


def test_id_column_codes_values_take_and_concatenate():
    column = IdColumn.encode(["b", "a", "b", "c"])
    assert column.values.tolist() == ["b", "a", "c"] and column.codes.tolist() == [0, 1, 0, 2]
    part = column.take(np.array([2, 3]))
    assert part.values is column.values and part.decode().tolist() == ["b", "c"]
    assert part.used().tolist() == [True, False, True] and part.n_distinct() == 2
    assert part.compact().values.tolist() == ["b", "c"] and part.compact().decode().tolist() == ["b", "c"]
    joined = IdColumn.concatenate([part, IdColumn.encode(["z", "b"])])
    assert joined.decode().tolist() == ["b", "c", "z", "b"] and len(set(joined.values.tolist())) == len(joined.values)
    assert column.count_at_least(2).tolist() == [True, False, True, False]
    # Vocabularies of any text: empty, non-ASCII, a NUL inside (not numpy's padding).
    odd = ["", "é", "a\x00b", "日本", "a", ""]
    assert IdColumn.encode(odd).decode().tolist() == odd


def test_item_map_of_a_column_equals_that_of_its_strings():
    """First appearance among the rows, whether the codes follow it (a fresh read) or not (after a take)."""
    rng = np.random.default_rng(8)
    ids = np.char.add("i", rng.integers(0, 40, 300).astype(str))
    column = IdColumn.encode(ids)
    shuffled = column.take(rng.permutation(300))
    for col in (column, shuffled):
        expected = list(dict.fromkeys(col.decode().tolist()))
        assert ItemMap.from_training(col).ids.tolist() == expected
        item_map = ItemMap.from_training(col)
        np.testing.assert_array_equal(item_map.lookup(col), item_map.lookup(col.decode().tolist()))


def test_session_time_order():
    """None for rows already by (key, time); else the stable lexsort."""
    keys, times = np.array([1, 1, 2, 5, 5]), np.array([3.0, 4.0, 0.0, 1.0, 1.0])
    assert session_time_order(keys, times) is None
    keys, times = np.array([2, 1, 1, 2]), np.array([1.0, 5.0, 5.0, 0.0])
    assert session_time_order(keys, times).tolist() == [1, 2, 3, 0]
