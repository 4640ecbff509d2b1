"""Raw-data converters and the two preprocessing protocols (GRU4REC.md section 10).

Expected values are worked out by hand for the small tables written here, and
counted with plain loops (written apart from the library) for the raw heads in
../shared/data/raw_heads.
"""

import calendar
import collections
import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from gru4rec_jax import preprocess
from gru4rec_jax.data import DataError, EventTable, read_events

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAY = 86400.0
RSC15_HEAD = "yoochoose-clicks-head500.dat"
DIGINETICA_HEAD = "diginetica-train-item-views-head500.csv"
OTTO_HEAD = "otto_train_20sessions.jsonl"


def _table(rows):
    """EventTable from (session, item, time) rows."""
    sessions, items, times = zip(*rows)
    return EventTable(session_ids=np.asarray(sessions, dtype=str), item_ids=np.asarray(items, dtype=str),
                      times=np.asarray(times, dtype=np.float64))


def _stats(table):
    return len(table), len(set(table.session_ids.tolist())), len(set(table.item_ids.tolist()))


def _sessions(table):
    """{session: [items in time order]}."""
    out = collections.defaultdict(list)
    for session, item, _ in sorted(zip(table.session_ids, table.item_ids, table.times), key=lambda r: (r[0], r[2])):
        out[str(session)].append(str(item))
    return dict(out)


def _write(path, text):
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------------
# The shared core on hand-made tables.

# Support threshold 2. One pass: s4 (1 event) goes; b and d (1 event each) go; s1 = [a] and s3 = [c]
# go. That leaves s2 = [a, c], s5, s6, where a and c now have 1 event each: the 2016 protocol stops
# there, the 2023 one drops a and c, then s2 (now empty).
CHAIN = [("s1", "a", 1), ("s1", "b", 2), ("s2", "a", 3), ("s2", "c", 4), ("s3", "c", 5), ("s3", "d", 6),
         ("s4", "d", 7), ("s5", "e", 8), ("s5", "f", 9), ("s6", "e", 10), ("s6", "f", 11)]


def test_one_pass_of_filters_versus_until_stable():
    once = preprocess.filter_single_pass(_table(CHAIN), min_item_support=2)
    assert _sessions(once) == {"s2": ["a", "c"], "s5": ["e", "f"], "s6": ["e", "f"]}
    stable = preprocess.filter_until_stable(_table(CHAIN), min_item_support=2)
    assert _sessions(stable) == {"s5": ["e", "f"], "s6": ["e", "f"]}


def test_default_item_support_is_five():
    # x and w have 5 events each, y and v 4: sessions 5-8 lose both items and go.
    rows = [(str(k), item, k + t) for k in range(5) for item, t in (("x", 0.1), ("w", 0.2))]
    rows += [(str(k), item, k + t) for k in range(5, 9) for item, t in (("y", 0.1), ("v", 0.2))]
    for filtered in (preprocess.filter_single_pass(_table(rows)), preprocess.filter_until_stable(_table(rows))):
        assert _sessions(filtered) == {str(k): ["x", "w"] for k in range(5)}


def test_consecutive_repeats_are_dropped_after_sorting_by_time():
    rows = [("1", "a", 1), ("1", "a", 2), ("1", "b", 3), ("1", "a", 4), ("1", "b", 5), ("1", "b", 6),
            ("2", "b", 7),  # same item as session 1's last event: another session, kept
            ("3", "a", 12), ("3", "a", 10), ("3", "b", 11)]  # in time order a, b, a: no repeat
    deduped = preprocess.drop_consecutive_repeats(preprocess.sort_events(_table(rows)))
    assert _sessions(deduped) == {"1": ["a", "b", "a", "b"], "2": ["b"], "3": ["a", "b", "a"]}
    assert deduped.times.tolist() == [1, 3, 4, 5, 7, 10, 11, 12]


def test_split_by_session_end_and_by_session_start():
    # Data ends at 10 days. A: days 8.0-8.5; B: 8.5-9.5 (starts before the last day, ends in it); C: 9.5-10.
    rows = [("A", "i", 8.0 * DAY), ("A", "j", 8.5 * DAY), ("B", "i", 8.5 * DAY), ("B", "j", 9.5 * DAY),
            ("C", "i", 9.5 * DAY), ("C", "j", 10.0 * DAY)]
    train, test = preprocess.split_by_session_end(_table(rows), days=1.0)
    assert set(_sessions(train)) == {"A"} and set(_sessions(test)) == {"B", "C"}
    train, test = preprocess.split_by_session_start(_table(rows), days=1.0)
    assert set(_sessions(train)) == {"A", "B"} and set(_sessions(test)) == {"C"}
    train, test = preprocess.split_by_session_start(_table(rows), days=1.5)  # boundary 8.5 days is in test
    assert set(_sessions(train)) == {"A"} and set(_sessions(test)) == {"B", "C"}


# Times in days. s5 starts before the last day (cut at 3.2 - 1 = 2.2) and ends in it.
PROTOCOL_ROWS = [
    ("s1", "a", 0.0), ("s1", "b", 0.1),
    ("s2", "a", 1.0), ("s2", "b", 1.1), ("s2", "c", 1.2),
    ("s3", "b", 2.5), ("s3", "a", 2.6), ("s3", "d", 2.7),  # d is in no training session
    ("s4", "a", 3.0), ("s4", "b", 3.2),
    ("s5", "a", 2.0), ("s5", "b", 2.3),
]


def test_protocols_split_and_validation_split():
    table = _table([(s, i, t * DAY) for s, i, t in PROTOCOL_ROWS])
    # 2016: test = s3, s4, s5 (they end after 2.2); d is dropped from s3. train_full = s1, s2 ends at 1.2,
    # so its last day starts at 0.2: s2 is the validation session, without c (not in train_tr = s1).
    old = preprocess.preprocess_2016(table, min_item_support=1)
    assert _sessions(old.train_full) == {"s1": ["a", "b"], "s2": ["a", "b", "c"]}
    assert _sessions(old.test) == {"s3": ["b", "a"], "s4": ["a", "b"], "s5": ["a", "b"]}
    assert _sessions(old.train_tr) == {"s1": ["a", "b"]}
    assert _sessions(old.train_valid) == {"s2": ["a", "b"]}
    # 2023: test = s3, s4 (they start after 2.2); s5 stays in train_full. Validation period: the day before
    # the test period, from 1.2 to 2.2: s5 is the validation session.
    new = preprocess.preprocess_2023(table, min_item_support=1)
    assert _sessions(new.train_full) == {"s1": ["a", "b"], "s2": ["a", "b", "c"], "s5": ["a", "b"]}
    assert _sessions(new.test) == {"s3": ["b", "a"], "s4": ["a", "b"]}
    assert _sessions(new.train_tr) == {"s1": ["a", "b"], "s2": ["a", "b", "c"]}
    assert _sessions(new.train_valid) == {"s5": ["a", "b"]}
    assert new.summary()["train_full"] == {"events": 7, "sessions": 3, "items": 3}


def test_2023_validation_period_is_the_one_before_the_test_period():
    # L spans almost the whole data, so train_full's last event (2.95) lies in the test period (from 2.0).
    # The validation period is 1.0-2.0, where v starts; from 2.95 back it would hold no session start.
    rows = [("L", "a", 0.0), ("L", "b", 2.95), ("w", "a", 0.2), ("w", "b", 0.3), ("v", "a", 1.5), ("v", "b", 1.6),
            ("t", "a", 2.5), ("t", "b", 3.0)]
    splits = preprocess.preprocess_2023(_table([(s, i, t * DAY) for s, i, t in rows]), min_item_support=1)
    assert set(_sessions(splits.test)) == {"t"} and set(_sessions(splits.train_full)) == {"L", "w", "v"}
    assert set(_sessions(splits.train_tr)) == {"L", "w"} and set(_sessions(splits.train_valid)) == {"v"}


def test_test_sessions_left_with_one_known_item_are_dropped():
    rows = [("t1", "a", 0.0), ("t1", "b", 0.1), ("t2", "a", 0.5), ("t2", "b", 0.6),
            ("t3", "a", 1.5), ("t3", "b", 1.6), ("t4", "a", 2.5), ("t4", "b", 2.6),
            ("t5", "a", 2.7), ("t5", "z", 2.8)]  # z unseen in training: t5 keeps a only and goes
    splits = preprocess.preprocess_2023(_table([(s, i, t * DAY) for s, i, t in rows]), min_item_support=1)
    assert set(_sessions(splits.test)) == {"t4"}


def test_empty_results_give_one_line_errors():
    table = _table([(s, i, t * DAY) for s, i, t in PROTOCOL_ROWS])
    with pytest.raises(DataError, match=r"^src: no events left after filtering .*items with >= 5 events\)$"):
        preprocess.preprocess_2023(_table(CHAIN), source="src")  # no item has 5 events
    # Test period longer than the data: every session starts in it.
    with pytest.raises(DataError, match="^src: test split: no training sessions, every session starts in the last 9"):
        preprocess.preprocess_2023(table, min_item_support=1, test_days=9, source="src")
    with pytest.raises(DataError, match="test period must be a positive number of days, got -1"):
        preprocess.preprocess_2016(table, test_days=-1)
    with pytest.raises(DataError, match="minimum item support must be >= 1, got 0"):
        preprocess.preprocess_2016(table, min_item_support=0)


# ---------------------------------------------------------------------------
# Readers on small files.


def test_rsc15_reader_times_and_ids(tmp_path):
    path = _write(tmp_path / "clicks.dat", "1,2014-04-07T10:51:09.277Z,214536502,0\n"
                                           "1,2014-04-07T10:54:09.868Z,214536500,S\n\n")
    events = preprocess.read_rsc15(path)
    assert events.session_ids.tolist() == ["1", "1"] and events.item_ids.tolist() == ["214536502", "214536500"]
    midnight = calendar.timegm((2014, 4, 7, 0, 0, 0))  # 1396828800
    expected = [midnight + 10 * 3600 + 51 * 60 + 9.277, midnight + 10 * 3600 + 54 * 60 + 9.868]
    assert events.times.tolist() == pytest.approx(expected, rel=0, abs=1e-6)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,2014-04-07T10:51:09.277Z,5,0\n1,2014-04-07T10:52:09.277Z,6\n", r":2: expected 4 comma-separated fields"),
        ("1,2014-04-07T10:51:09.277Z,5,0\n\nx,2014-04-07T10:52:09.277Z,6,0\n", r":3: session id 'x' is not an integer"),
        ("1,2014-04-07T10:51:09.277Z,item5,0\n", r":1: item id 'item5' is not an integer"),
        ("1,2014-04-07T10:51:09.277Z,5,0\n1,07/04/2014 10:52,6,0\n", r":2: time '07/04/2014 10:52' is not an ISO"),
        ("", r": empty file$"),
        ("\n\n", r": no events \(only a header or blank lines\)$"),
    ],
)
def test_rsc15_reader_rejects_bad_lines(tmp_path, text, expected):
    path = _write(tmp_path / "clicks.dat", text)
    with pytest.raises(DataError, match=f"^{re.escape(path)}{expected}") as error:
        preprocess.read_rsc15(path)
    assert "\n" not in str(error.value)


def test_missing_file():
    with pytest.raises(DataError, match="^/nonexistent/x.dat: no such file$"):
        preprocess.read_rsc15("/nonexistent/x.dat")


DIGINETICA_HEADER = "sessionId;userId;itemId;timeframe;eventdate\n"


def test_diginetica_times_count_from_the_session_start_date(tmp_path):
    rows = "7;NA;11;1500;2016-05-09\n7;NA;12;90000000;2016-05-10\n"
    path = _write(tmp_path / "views.csv", DIGINETICA_HEADER + rows)
    events = preprocess.read_diginetica(path)
    midnight = calendar.timegm((2016, 5, 9, 0, 0, 0))  # 1462752000
    # Both offsets count from the session's first day (the 9th), although the second row says the 10th.
    assert events.times.tolist() == [midnight + 1.5, midnight + 90000.0]
    assert events.session_ids.tolist() == ["7", "7"] and events.item_ids.tolist() == ["11", "12"]


@pytest.mark.parametrize(
    "text, expected",
    [
        (DIGINETICA_HEADER + "1;NA;5;10;2016-05-09\n1;NA;6;20\n", r":3: expected 5 ';'-separated fields, got 4"),
        (DIGINETICA_HEADER + "1;NA;5;10;2016-05-09\n1;NA;6;20;09/05/2016\n", r":3: eventdate '09/05/2016' is not a"),
        (DIGINETICA_HEADER + "1;NA;5;ten;2016-05-09\n", r":2: timeframe 'ten' is not a number"),
        ("sessionId;userId;itemId;eventdate\n1;NA;5;2016-05-09\n", r": missing column\(s\) timeframe \(header has: "),
        (DIGINETICA_HEADER, r": no events"),
        ("", r": empty file"),
    ],
)
def test_diginetica_reader_rejects_bad_input(tmp_path, text, expected):
    path = _write(tmp_path / "views.csv", text)
    with pytest.raises(DataError, match=f"^{re.escape(path)}{expected}"):
        preprocess.read_diginetica(path)


def test_otto_reader_keeps_clicks_and_can_cut_idle_gaps(tmp_path):
    lines = [
        {"session": 3, "events": [{"aid": 10, "ts": 1000, "type": "clicks"}, {"aid": 11, "ts": 2000, "type": "carts"},
                                  {"aid": 12, "ts": 7202000, "type": "clicks"}]},
        {"session": 4, "events": [{"aid": 10, "ts": 5000, "type": "clicks"}]},
    ]
    path = _write(tmp_path / "otto.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    events = preprocess.read_otto(path)
    assert _sessions(events) == {"3": ["10", "12"], "4": ["10"]}
    assert sorted(events.times.tolist()) == [1.0, 5.0, 7202.0]
    # The cart at 2 s and the click at 7202 s are 2 hours apart: a new session with a 1-hour gap.
    cut = preprocess.read_otto(path, session_gap=3600)
    assert sorted(_sessions(cut).values()) == [["10"], ["10"], ["12"]]


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"session": 1, "events": [}', r":2: bad JSON"),
        ('{"session": "a", "events": []}', r":2: expected an object with an integer 'session'"),
        ('{"session": 1, "events": [{"aid": 1, "type": "clicks"}]}', r":2: event 0 of session 1: expected"),
    ],
)
def test_otto_reader_rejects_bad_lines(tmp_path, line, expected):
    good = '{"session": 0, "events": [{"aid": 1, "ts": 1, "type": "clicks"}]}'
    path = _write(tmp_path / "otto.jsonl", good + "\n" + line + "\n")
    with pytest.raises(DataError, match=f"^{re.escape(path)}{expected}"):
        preprocess.read_otto(path)


D_MS, M_MS = 86_400_000, 60_000
# RetailRocket events.csv rows: timestamp (ms), visitorid, event, itemid, transactionid.
RETAILROCKET_ROWS = [
    (0, 1, "view", 1, ""), (M_MS, 1, "view", 2, ""),  # visitor 1, session 0
    (D_MS, 1, "view", 2, ""), (D_MS + M_MS, 1, "view", 3, ""),  # a day later: session 1
    # Visitor 2: views 100 min apart, bridged by a cart after 50 min: one session.
    (9 * D_MS, 2, "view", 1, ""), (9 * D_MS + 50 * M_MS, 2, "addtocart", 1, ""), (9 * D_MS + 100 * M_MS, 2, "view", 3, ""),
    (17 * D_MS, 3, "view", 1, ""), (17 * D_MS + M_MS, 3, "view", 1, ""), (17 * D_MS + 2 * M_MS, 3, "view", 2, ""),
    (17 * D_MS + 3 * M_MS, 3, "transaction", 2, "77"),
    (19 * D_MS, 4, "view", 2, ""), (19 * D_MS + M_MS, 4, "view", 9, ""), (19 * D_MS + 2 * M_MS, 4, "view", 3, ""),
]


def _retailrocket_file(tmp_path, rows=RETAILROCKET_ROWS, name="events.csv"):
    text = "timestamp,visitorid,event,itemid,transactionid\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    return _write(tmp_path / name, text)


def test_retailrocket_sessions_views_and_splits(tmp_path):
    path = _retailrocket_file(tmp_path)
    events = preprocess.read_retailrocket(path)
    assert _sessions(events) == {"1:0": ["1", "2"], "1:1": ["2", "3"], "2:0": ["1", "3"], "3:0": ["1", "1", "2"],
                                 "4:0": ["2", "9", "3"]}
    assert sorted(events.times.tolist())[:2] == [0.0, 60.0]
    # Without the cart, visitor 2's views are 100 minutes apart: two sessions.
    no_cart = _retailrocket_file(tmp_path, [r for r in RETAILROCKET_ROWS if r[2] != "addtocart"], "no_cart.csv")
    assert {"2:0": ["1"], "2:1": ["3"]}.items() <= _sessions(preprocess.read_retailrocket(no_cart)).items()

    # Data ends at 19 d + 2 min; the 7-day test period starts at 12 d + 2 min: visitors 3 and 4.
    # 3's repeated view of 1 is dropped; item 9 is not in train_full. train_full = 1:0, 1:1, 2:0
    # ends at 9 d + 100 min; its last 7 days hold 2:0 (the validation session).
    splits, summary = preprocess.prepare("retailrocket", path, min_item_support=1)
    assert _sessions(splits.test) == {"3:0": ["1", "2"], "4:0": ["2", "3"]}
    assert _sessions(splits.train_full) == {"1:0": ["1", "2"], "1:1": ["2", "3"], "2:0": ["1", "3"]}
    assert _sessions(splits.train_tr) == {"1:0": ["1", "2"], "1:1": ["2", "3"]}
    assert _sessions(splits.train_valid) == {"2:0": ["1", "3"]}
    assert summary["raw"] == {"events": 12, "sessions": 5, "items": 4}
    assert summary["filtered"] == {"events": 11, "sessions": 5, "items": 4}


def test_user_csv_gap_sessions_iso_times_and_kept_events(tmp_path):
    # Gaps of user u: 100 s, 3700 s (> 3600: new session), 3600 s (not more: same session).
    text = ("who;what;when;kind\n"
            "u;a;1970-01-01T00:00:00;view\n"
            "u;b;1970-01-01T00:01:40;view\n"
            "u;c;1970-01-01T01:03:20;view\n"
            "v;a;1970-01-01T00:00:50+00:00;buy\n"
            "u;d;1970-01-01T02:03:20;view\n")
    path = _write(tmp_path / "e.csv", text)
    events = preprocess.read_user_csv(path, user_col="who", item_col="what", time_col="when", event_col="kind",
                                      keep_events=["view"], delimiter=";", time_format="iso")
    assert _sessions(events) == {"u:0": ["a", "b"], "u:1": ["c", "d"]}
    assert sorted(events.times.tolist()) == [0.0, 100.0, 3800.0, 7400.0]
    shorter = preprocess.read_user_csv(path, user_col="who", item_col="what", time_col="when", delimiter=";",
                                       time_format="iso", session_gap=3000)
    assert _sessions(shorter) == {"u:0": ["a", "b"], "u:1": ["c"], "u:2": ["d"], "v:0": ["a"]}


def test_user_csv_numeric_times_and_session_column(tmp_path):
    path = _write(tmp_path / "e.csv", "s,i,t\n5,x,1500\n5,y,500\n")
    events = preprocess.read_user_csv(path, session_col="s", item_col="i", time_col="t", time_unit=0.001)
    assert _sessions(events) == {"5": ["y", "x"]} and sorted(events.times.tolist()) == [0.5, 1.5]


@pytest.mark.parametrize(
    "text, options, expected",
    [
        ("u,i\n1,2\n", {}, r"^{path}: missing column\(s\) t \(header has: u, i\)$"),
        ("u,i,t\n1,2,3\n1,2\n", {}, r"^{path}:3: expected 3 ','-separated fields, got 2$"),
        ("u,i,t\n1,2,noon\n", {}, r"^{path}:2: t 'noon' is not a number$"),
        ("u,i,t\n1,2,nan\n", {}, r"^{path}:2: t 'nan' is not finite$"),
        ("u,i,t\n1,,3\n", {}, r"^{path}:2: empty i$"),
        ("u,i,t\n1,2,3\n", {"time_unit": 0}, r"^the time unit must be a positive number of seconds, got 0$"),
        ("u,i,t\n1,2,3\n", {"session_gap": 0}, r"^the session gap must be > 0 seconds"),
        ("u,i,t\n1,2,3\n", {"delimiter": ";;"}, r"^the delimiter must be one character"),
        ("u,i,t\n1,2,3\n", {"time_format": "yyyy"}, r"^the time format must be"),
        ("u,i,t\n1,2,3\n", {"user_col": None}, r"^give a session column, or a user column"),
        ("u,i,t\n", {}, r"^{path}: no events"),
        ("", {}, r"^{path}: empty file"),
    ],
)
def test_user_csv_rejects_bad_input(tmp_path, text, options, expected):
    path = _write(tmp_path / "e.csv", text)
    kwargs = {"user_col": "u", "item_col": "i", "time_col": "t", **options}
    with pytest.raises(DataError, match=expected.format(path=re.escape(path))):
        preprocess.read_user_csv(path, **kwargs)


def test_retailrocket_rejects_non_integer_ids(tmp_path):
    path = _retailrocket_file(tmp_path, RETAILROCKET_ROWS[:3] + [(5, "v9", "view", 1, "")])
    with pytest.raises(DataError, match=rf"^{re.escape(path)}:5: visitorid 'v9' is not an integer$"):
        preprocess.read_retailrocket(path)


# ---------------------------------------------------------------------------
# Writing.


def test_written_splits_read_back_unchanged(tmp_path):
    splits = preprocess.preprocess_2023(_table([(s, i, t * DAY + 0.001) for s, i, t in PROTOCOL_ROWS]),
                                        min_item_support=1)
    paths = preprocess.write_splits(splits, str(tmp_path / "out"))
    assert [os.path.basename(p) for p in paths] == ["train_full.tsv", "test.tsv", "train_tr.tsv", "train_valid.tsv"]
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.path.basename(p) for p in paths)  # no temporaries left
    for path, table in zip(paths, splits.tables().values()):
        with open(path) as f:
            assert f.readline() == "SessionId\tItemId\tTime\n"
        back = read_events(path)
        assert back.session_ids.tolist() == table.session_ids.tolist()
        assert back.item_ids.tolist() == table.item_ids.tolist()
        assert back.times.tolist() == table.times.tolist()


def test_failed_write_leaves_earlier_outputs_untouched(tmp_path, monkeypatch):
    splits = preprocess.preprocess_2023(_table([(s, i, t * DAY) for s, i, t in PROTOCOL_ROWS]), min_item_support=1)
    out = tmp_path / "out"
    out.mkdir()
    for name in preprocess.SPLIT_NAMES:
        (out / f"{name}.tsv").write_text("old\n")
    calls = []

    def failing_write(path, table):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        preprocess_write(path, table)

    preprocess_write = preprocess.write_events
    monkeypatch.setattr(preprocess, "write_events", failing_write)
    with pytest.raises(OSError, match="disk full"):
        preprocess.write_splits(splits, str(out))
    assert sorted(os.listdir(out)) == sorted(f"{name}.tsv" for name in preprocess.SPLIT_NAMES)
    assert all((out / f"{name}.tsv").read_text() == "old\n" for name in preprocess.SPLIT_NAMES)


# ---------------------------------------------------------------------------
# The raw heads of the real datasets, against counts made here with plain loops.


def _count_protocol(sessions, *, one_pass, min_support, days, split_on_start):
    """The protocols written out with dicts and loops: {session: [(time, item)]} -> four splits' stats."""
    def support(sess):
        return collections.Counter(item for events in sess.values() for _, item in events)

    if one_pass:
        sessions = {s: e for s, e in sessions.items() if len(e) > 1}
        counts = support(sessions)
        sessions = {s: [x for x in e if counts[x[1]] >= min_support] for s, e in sessions.items()}
        sessions = {s: e for s, e in sessions.items() if len(e) >= 2}
    else:
        while True:
            before = sum(len(e) for e in sessions.values())
            sessions = {s: e for s, e in sessions.items() if len(e) > 1}
            counts = support(sessions)
            sessions = {s: [x for x in e if counts[x[1]] >= min_support] for s, e in sessions.items()}
            sessions = {s: e for s, e in sessions.items() if e}
            if sum(len(e) for e in sessions.values()) == before:
                break

    if not sessions:
        return [(0, 0, 0)]

    def split(sess, end):
        anchor = (lambda e: min(t for t, _ in e)) if split_on_start else (lambda e: max(t for t, _ in e))
        train = {s: e for s, e in sess.items() if anchor(e) < end - days * DAY}
        known = {item for e in train.values() for _, item in e}
        test = {s: [x for x in e if x[1] in known] for s, e in sess.items() if s not in train}
        return train, {s: e for s, e in test.items() if len(e) >= 2}

    def stats(sess):
        return (sum(len(e) for e in sess.values()), len(sess), len({i for e in sess.values() for _, i in e}))

    end = max(t for e in sessions.values() for t, _ in e)
    train_full, test = split(sessions, end)
    # Validation period: 2016, the last days of train_full; 2023, the days before the test period.
    valid_end = end - days * DAY if split_on_start else max(t for e in train_full.values() for t, _ in e)
    train_tr, valid = split(train_full, valid_end)
    return [stats(part) for part in (sessions, train_full, test, train_tr, valid)]


def _summary_tuples(summary):
    return [tuple(summary[k].values()) for k in ("filtered", "train_full", "test", "train_tr", "train_valid")]


def test_rsc15_head_2016_protocol(shared_data):
    path = os.path.join(shared_data, "raw_heads", RSC15_HEAD)
    sessions = collections.defaultdict(list)
    with open(path, newline="") as f:
        for session, when, item, _ in csv.reader(f):
            # ISO time by hand: date and clock fields, then UTC seconds.
            date, clock = when.rstrip("Z").split("T")
            h, m, s = clock.split(":")
            seconds = calendar.timegm(tuple(map(int, date.split("-"))) + (int(h), int(m), 0)) + float(s)
            sessions[session].append((seconds, item))
    assert sum(map(len, sessions.values())) == 500 and len(sessions) == 125
    # The full-size threshold (5) leaves 41 events, 8 sessions and 7 items; no session ending in the last day
    # keeps two of them, so the test split is empty.
    assert _count_protocol(dict(sessions), one_pass=True, min_support=5, days=1, split_on_start=False)[:3] == [
        (41, 8, 7), (28, 6, 5), (0, 0, 0)]
    events = preprocess.read_rsc15(path)
    assert _stats(preprocess.filter_single_pass(preprocess.sort_events(events))) == (41, 8, 7)
    with pytest.raises(DataError, match="test split is empty: no session that ends in the last 1 day"):
        preprocess.prepare("rsc15", path)
    # Threshold 2 on this small sample: filtered, train_full, test, train_tr, train_valid.
    expected = [(270, 72, 107), (222, 59, 90), (13, 4, 9), (135, 42, 58), (6, 2, 3)]
    assert _count_protocol(dict(sessions), one_pass=True, min_support=2, days=1, split_on_start=False) == expected
    splits, summary = preprocess.prepare("rsc15", path, min_item_support=2)
    assert summary["raw"] == {"events": 500, "sessions": 125, "items": 314}
    assert _summary_tuples(summary) == expected
    # The 2023 protocol removes repeats and filters to a fixed point: nothing of support 5 is left.
    with pytest.raises(DataError, match="no events left after filtering"):
        preprocess.prepare("rsc15_2023", path)


def test_diginetica_head_2023_protocol(shared_data):
    path = os.path.join(shared_data, "raw_heads", DIGINETICA_HEAD)
    rows = collections.defaultdict(list)
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter=";")
        for row in reader:
            rows[row["sessionId"]].append(row)
    sessions = {}
    for session, events in rows.items():
        first_day = min(calendar.timegm(tuple(map(int, r["eventdate"].split("-"))) + (0, 0, 0)) for r in events)
        timed = sorted((first_day + int(r["timeframe"]) / 1000, r["itemId"]) for r in events)  # no time ties here
        sessions[session] = [x for k, x in enumerate(timed) if k == 0 or timed[k - 1][1] != x[1]]
    assert sum(map(len, rows.values())) == 500 and len(rows) == 94
    assert sum(map(len, sessions.values())) == 466  # 34 consecutive repeats
    # The full-size threshold (5) leaves nothing: 3 items have 5 views, but repeats removed, none does.
    assert _count_protocol(dict(sessions), one_pass=False, min_support=5, days=7, split_on_start=True)[0] == (0, 0, 0)
    with pytest.raises(DataError, match="no events left after filtering"):
        preprocess.prepare("diginetica", path)
    # Threshold 1 (no item filter) keeps the sessions of >= 2 views once repeats are removed. The sample's
    # dates (March 21-22, April 3-10, May 7-10) leave the 7 days before the last 7 empty: no validation split.
    with pytest.raises(DataError, match="validation split is empty: no session that starts in the 7 day"):
        preprocess.prepare("diginetica", path, min_item_support=1)
    # With 20-day periods: test = the May sessions, validation = April, train_tr = March.
    expected = [(434, 62, 369), (355, 49, 304), (3, 1, 2), (121, 13, 110), (2, 1, 2)]
    assert _count_protocol(dict(sessions), one_pass=False, min_support=1, days=20, split_on_start=True) == expected
    splits, summary = preprocess.prepare("diginetica", path, min_item_support=1, test_days=20)
    assert summary["raw"] == {"events": 500, "sessions": 94, "items": 398}
    assert _summary_tuples(summary) == expected
    first = preprocess.read_diginetica(path)
    assert first.times[0] == pytest.approx(calendar.timegm((2016, 5, 9, 0, 0, 0)) + 526.309, rel=0, abs=1e-6)


def test_otto_head_keeps_only_clicks(shared_data):
    path = os.path.join(shared_data, "raw_heads", OTTO_HEAD)
    clicks = 0
    with open(path) as f:
        for line in f:
            clicks += sum(event["type"] == "clicks" for event in json.loads(line)["events"])
    events = preprocess.read_otto(path)
    assert len(events) == clicks == 800 and len(set(events.session_ids.tolist())) == 20


# ---------------------------------------------------------------------------
# The command line.


def run_prepare(*args):
    return subprocess.run([sys.executable, "-m", "experiments.prepare", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_the_four_splits(shared_data, tmp_path):
    out = tmp_path / "rsc15"
    result = run_prepare("--dataset=rsc15", f"--raw_path={os.path.join(shared_data, 'raw_heads', RSC15_HEAD)}",
                         f"--out_dir={out}", "--min_item_support=2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[2].split() == ["train_full", "222", "events", "59", "sessions", "90", "items"]
    assert lines[3].split() == ["test", "13", "events", "4", "sessions", "9", "items"]
    assert sorted(os.listdir(out)) == ["test.tsv", "train_full.tsv", "train_tr.tsv", "train_valid.tsv"]
    assert _stats(read_events(str(out / "train_valid.tsv"))) == (6, 2, 3)


def test_cli_generic_csv(tmp_path):
    path = _retailrocket_file(tmp_path)
    out = tmp_path / "out"
    result = run_prepare("--dataset=csv", f"--raw_path={path}", f"--out_dir={out}", "--csv_user_col=visitorid",
                         "--csv_item_col=itemid", "--csv_time_col=timestamp", "--csv_event_col=event",
                         "--csv_keep_events=view", "--csv_time_unit=0.001", "--test_days=7", "--min_item_support=1")
    assert result.returncode == 0, result.stderr
    assert _sessions(read_events(str(out / "train_valid.tsv"))) == {"2:0": ["1", "3"]}


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_file", "nope.dat: no such file"),
        ("malformed", "clicks.dat:2: expected 4 comma-separated fields"),
        ("empty", "clicks.dat: empty file"),
        ("bad_test_days", "test period must be a positive number of days, got -1"),
        ("csv_missing_column", "missing column(s) when"),
        ("csv_without_columns", "--csv_item_col is required with --dataset=csv"),
        ("csv_flag_elsewhere", "--dataset=rsc15 takes no --csv_* flags (given: --csv_delimiter)"),
        ("gap_elsewhere", "--session_gap does not apply to --dataset=diginetica"),
        ("bad_dataset", "value should be one of"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, case, expected):
    clicks = _write(tmp_path / "clicks.dat", "1,2014-04-07T10:51:09.277Z,5,0\n1,2014-04-07T10:52:09.277Z,6\n")
    good = _write(tmp_path / "good.dat", "1,2014-04-07T10:51:09.277Z,5,0\n1,2014-04-07T10:52:09.277Z,6,0\n")
    (tmp_path / "empty").mkdir()
    empty = _write(tmp_path / "empty" / "clicks.dat", "")
    table = _write(tmp_path / "t.csv", "who,what\n1,2\n")
    args = {
        "missing_file": ["--dataset=rsc15", f"--raw_path={tmp_path / 'nope.dat'}"],
        "malformed": ["--dataset=rsc15", f"--raw_path={clicks}"],
        "empty": ["--dataset=rsc15", f"--raw_path={empty}"],
        "bad_test_days": ["--dataset=rsc15", f"--raw_path={good}", "--test_days=-1"],
        "csv_missing_column": ["--dataset=csv", f"--raw_path={table}", "--csv_user_col=who", "--csv_item_col=what",
                               "--csv_time_col=when"],
        "csv_without_columns": ["--dataset=csv", f"--raw_path={table}"],
        "csv_flag_elsewhere": ["--dataset=rsc15", f"--raw_path={clicks}", "--csv_delimiter=;"],
        "gap_elsewhere": ["--dataset=diginetica", f"--raw_path={clicks}", "--session_gap=60"],
        "bad_dataset": ["--dataset=movielens", f"--raw_path={clicks}"],
    }[case]
    out = tmp_path / "out"
    out.mkdir()
    (out / "test.tsv").write_text("old\n")
    result = run_prepare(*args, f"--out_dir={out}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if case == "bad_dataset":  # absl's own flag check: its message, then a hint to --help
        assert expected in lines[0]
    else:
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert sorted(os.listdir(out)) == ["test.tsv"] and (out / "test.tsv").read_text() == "old\n"


# ---------------------------------------------------------------------------
# The fast (pyarrow) readers against the row-by-row ones they fall back to.


def _same_table(a, b):
    return (a.session_ids.tolist() == b.session_ids.tolist() and a.item_ids.tolist() == b.item_ids.tolist()
            and a.times.tolist() == b.times.tolist())


def _no_row_by_row(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the fast reader handed a clean file to the row-by-row reader")

    for name in ("_read_rsc15_by_rows", "_read_diginetica_by_rows", "_read_otto_by_rows", "_read_user_csv_by_rows"):
        monkeypatch.setattr(preprocess, name, refuse)


def test_fast_readers_read_the_raw_heads_as_the_row_by_row_readers(shared_data, monkeypatch):
    """Same tables, and the fast path alone reads these clean files (also in blocks of a few hundred bytes)."""
    BLOCK_SIZE = preprocess.BLOCK_SIZE
    heads = os.path.join(shared_data, "raw_heads")
    cases = [
        (preprocess.read_rsc15, preprocess._read_rsc15_by_rows, RSC15_HEAD, {}),
        (preprocess.read_diginetica, preprocess._read_diginetica_by_rows, DIGINETICA_HEAD, {}),
        (preprocess.read_otto, preprocess._read_otto_by_rows, OTTO_HEAD, {"event_types": ("clicks",), "session_gap": 0.0}),
        (preprocess.read_otto, preprocess._read_otto_by_rows, OTTO_HEAD, {"event_types": ("clicks",), "session_gap": 3600.0}),
    ]
    expected = [by_rows(os.path.join(heads, name), **options) for _, by_rows, name, options in cases]
    _no_row_by_row(monkeypatch)
    for small in (False, True):
        for (fast, _, name, options), want in zip(cases, expected):
            # Small blocks: several per file; a JSON block must hold a whole line (up to 14 kB here).
            block_size = (14_000 if name == OTTO_HEAD else 300) if small else BLOCK_SIZE
            monkeypatch.setattr(preprocess, "BLOCK_SIZE", block_size)
            got = fast(os.path.join(heads, name), **{k: v for k, v in options.items() if k != "event_types"})
            assert _same_table(got, want), (name, block_size)


def test_retailrocket_fast_reader_in_blocks(tmp_path, monkeypatch):
    path = _retailrocket_file(tmp_path)
    want = preprocess.read_retailrocket(path)
    _no_row_by_row(monkeypatch)
    monkeypatch.setattr(preprocess, "BLOCK_SIZE", 64)
    assert _same_table(preprocess.read_retailrocket(path), want)


@pytest.mark.parametrize(
    "text",
    [
        "1, 2014-04-07T10:51:09.277Z,5,0\n1,2014-04-07T10:52:09.277Z, 6 ,0\n",  # white space around fields
        "1,2014-04-07T10:51:09.277Z,5,0\n,,,\n  \n1,2014-04-07T10:52:09.277Z,6,0\n",  # rows of blank fields
        '"1","2014-04-07T10:51:09.277Z","5","0"\n1,2014-04-07T10:52:09.277Z,6,0\n',  # quoted fields
        "\ufeff1,2014-04-07T10:51:09.277Z,5,0\r\n1,2014-04-07T10:52:09Z,+6,0\r\n",  # BOM, CRLF, '+6'
        "1,2014-04-07T10:51:09.277,5,0\n1,2014-04-07 10:52:09,6,0\n",  # no zone (UTC)
        "1,2014-04-07T10:51:09.277+02:00,5,0\n1,2014-04-07T10:52:09Z,6,0\n",  # zones
    ],
)
def test_unusual_but_valid_rsc15_lines_read_as_row_by_row(tmp_path, text):
    path = _write(tmp_path / "clicks.dat", text)
    assert _same_table(preprocess.read_rsc15(path), preprocess._read_rsc15_by_rows(path))


def test_unusual_but_valid_user_csv_rows_read_as_row_by_row(tmp_path):
    text = ("who;what;when;kind\n"
            "u; a ;1970-01-01T00:00:00;view\n"
            "u;a;1970-01-01T00:01:40; view\n"
            ";;;\n"
            "v;b;1970-01-01T00:00:50+00:00;buy\n")
    path = _write(tmp_path / "e.csv", text)
    options = dict(names={"group": "who", "item": "what", "time": "when", "kind": "kind"}, keep_events=["view"],
                   delimiter=";", time_format="iso", time_unit=1.0, session_gap=3600.0, integer_ids=False)
    got = preprocess.read_user_csv(path, user_col="who", item_col="what", time_col="when", event_col="kind",
                                   keep_events=["view"], delimiter=";", time_format="iso")
    assert _same_table(got, preprocess._read_user_csv_by_rows(path, **options))
    assert got.item_ids.tolist() == ["a", "a"]
    fmt = "%d/%m/%Y %H:%M"
    path = _write(tmp_path / "f.csv", "s,i,t\n1,x,07/04/2014 10:51\n1,y,07/04/2014 11:02\n")
    got = preprocess.read_user_csv(path, session_col="s", item_col="i", time_col="t", time_format=fmt)
    assert got.times.tolist() == [calendar.timegm((2014, 4, 7, 10, 51, 0)), calendar.timegm((2014, 4, 7, 11, 2, 0))]
