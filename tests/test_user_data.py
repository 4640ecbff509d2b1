"""User-aware data for HRNN: idle-gap sessions, the last-session split, the user-parallel schedule."""

import csv
import os

import numpy as np
import pytest

from gru4rec_jax import data, user_data


def _table(rows):
    """rows: (user, session, item, time)."""
    users, sessions, items, times = zip(*rows)
    return data.EventTable(session_ids=np.asarray(sessions, str), item_ids=np.asarray(items, str),
                           times=np.asarray(times, float), user_ids=np.asarray(users, str))


def test_idle_gap_sessions():
    """A user's next session starts after MORE than the gap; users never share a session."""
    users = np.asarray(["a", "a", "a", "b", "a", "b"])
    times = np.asarray([0.0, 10.0, 45.0, 11.0, 55.0, 100.0])
    labels = user_data.sessions_by_idle_gap(users, times, gap=30.0)
    assert labels.tolist() == ["a:0", "a:0", "a:1", "b:0", "a:1", "b:1"]
    # Exactly the gap is not a break.
    assert user_data.sessions_by_idle_gap(np.asarray(["u", "u"]), np.asarray([0.0, 30.0]), 30.0).tolist() == [
        "u:0", "u:0"]
    with pytest.raises(ValueError, match="gap"):
        user_data.sessions_by_idle_gap(users, times, gap=0)


def test_user_sessions_order_and_missing_user_column():
    table = _table([("u2", "s9", "x", 5), ("u1", "s1", "y", 1), ("u1", "s1", "z", 2), ("u2", "s3", "y", 0),
                    ("u2", "s3", "x", 1), ("u1", "s7", "x", 9), ("u1", "s7", "y", 10)])
    item_map = data.ItemMap.from_training(table.item_ids)
    us = user_data.build_user_sessions(table, item_map)
    assert us.user_ids.tolist() == ["u2", "u1"]  # u2's first event (t=0) comes first
    assert us.sessions.session_ids.tolist() == ["s3", "s9", "s1", "s7"]  # time order within each user
    assert us.user_offsets.tolist() == [0, 2, 4]
    no_users = data.EventTable(table.session_ids, table.item_ids, table.times)
    with pytest.raises(data.DataError, match="no user column"):
        user_data.build_user_sessions(no_users, item_map)


def test_split_last_session():
    """Each user's latest-starting session is the test session; single-session users stay in training."""
    table = _table([("a", "1", "x", 0), ("a", "1", "y", 1), ("a", "2", "x", 50), ("a", "2", "z", 51),
                    ("b", "3", "x", 5), ("b", "3", "y", 6), ("c", "4", "x", 1), ("c", "5", "z", 2),
                    ("c", "5", "y", 3)])
    train, test = user_data.split_last_session(table)
    assert sorted(set(test.session_ids.tolist())) == ["2", "5"]
    assert sorted(set(train.session_ids.tolist())) == ["1", "3", "4"]
    assert len(train) + len(test) == len(table)


def _simulate(users, batch_size):
    """Straightforward per-step simulation of user-parallel lanes.

    users: list of users, each a list of sessions (lists of items). Returns a list of
    steps, each a dict lane -> (input, target, user_start, session_start).
    """
    plans = []
    for sessions in users:
        steps, first = [], True
        for items in sessions:
            for k in range(len(items) - 1):
                steps.append((items[k], items[k + 1], first and k == 0, (not first) and k == 0))
            if len(items) > 1:
                first = False
        plans.append(steps)
    lanes = [None] * batch_size
    next_user, out = 0, []
    while True:
        for lane in range(batch_size):
            while (lanes[lane] is None or not lanes[lane]) and next_user < len(plans):
                lanes[lane] = list(plans[next_user])
                next_user += 1
        if all(not lane for lane in lanes):
            return out
        out.append({lane: steps.pop(0) for lane, steps in enumerate(lanes) if steps})


def _user_sessions(users):
    sessions = [items for user in users for items in user]
    flat = np.asarray([i for items in sessions for i in items], np.int32)
    offsets = np.r_[0, np.cumsum([len(s) for s in sessions])].astype(np.int64)
    return user_data.UserSessions(
        sessions=data.Sessions(items=flat, offsets=offsets, times=np.arange(len(flat), dtype=float),
                               session_ids=np.arange(len(sessions)).astype(str)),
        user_offsets=np.r_[0, np.cumsum([len(u) for u in users])].astype(np.int64),
        user_ids=np.arange(len(users)).astype(str),
    )


def _compare(users, batch_size):
    schedule = user_data.user_parallel_schedule(_user_sessions(users), batch_size)
    want = _simulate(users, batch_size)
    assert schedule.n_steps == len(want)
    for t, lanes in enumerate(want):
        for lane in range(batch_size):
            if lane in lanes:
                x, y, us, ss = lanes[lane]
                got = (schedule.inputs[t, lane], schedule.targets[t, lane], schedule.user_start[t, lane],
                       schedule.session_start[t, lane])
                assert schedule.active[t, lane] and got == (x, y, us, ss), (t, lane)
            else:
                assert not (schedule.active[t, lane] or schedule.user_start[t, lane]
                            or schedule.session_start[t, lane]), (t, lane)


def test_schedule_hand_made():
    """Users with one-event sessions, a user with none that yields steps, more lanes than users."""
    users = [[[1, 2, 3], [4], [5, 6]], [[7]], [[8, 9], [10, 11, 12]], [[13, 14]]]
    for b in (1, 2, 3, 7):
        _compare(users, b)


@pytest.mark.parametrize("seed", range(25))
def test_schedule_random(seed):
    rng = np.random.default_rng(seed)
    users = [[rng.integers(0, 50, size=rng.integers(1, 6)).tolist() for _ in range(rng.integers(1, 5))]
             for _ in range(rng.integers(1, 15))]
    _compare(users, int(rng.integers(1, 6)))


def test_flags_on_the_real_sample(shared_data):
    """retailrocket_hier: counts of the data README; each flag once per session, never both."""
    path = os.path.join(shared_data, "retailrocket_hier", "train.tsv")
    table = data.read_events(path, time_key="TimeMs", user_key="UserId")
    us = user_data.build_user_sessions(table, data.ItemMap.from_training(table.item_ids))
    assert (us.n_users, us.sessions.n_sessions, us.sessions.n_events) == (779, 3170, 7303)
    schedule = user_data.user_parallel_schedule(us, 50)
    assert schedule.n_events == int(np.sum(us.sessions.lengths - 1))
    assert not np.any(schedule.user_start & schedule.session_start)
    with_steps = us.sessions.lengths > 1
    users_with_steps = len(set(np.repeat(np.arange(us.n_users), np.diff(us.user_offsets))[with_steps]))
    assert schedule.user_start.sum() == users_with_steps
    assert schedule.session_start.sum() == with_steps.sum() - users_with_steps


def test_given_test_sessions_are_each_users_last(shared_data):
    """The sample's test.tsv holds last sessions: splitting train + test again finds them all."""
    folder = os.path.join(shared_data, "retailrocket_hier")
    rows = []
    for name in ("train.tsv", "test.tsv"):
        with open(os.path.join(folder, name)) as f:
            rows += [(r["UserId"], r["SessionId"], r["ItemId"], float(r["TimeMs"]))
                     for r in csv.DictReader(f, delimiter="\t")]
    with open(os.path.join(folder, "test.tsv")) as f:
        given_test = {r["SessionId"] for r in csv.DictReader(f, delimiter="\t")}
    sessions_of = {}
    for user, session, _, _ in rows:
        sessions_of.setdefault(user, set()).add(session)
    # Users whose only session in the sample is the test one cannot be split here.
    splittable = {s for sessions in sessions_of.values() if len(sessions) > 1 for s in sessions}
    _, test = user_data.split_last_session(_table(rows))
    assert len(given_test & splittable) > 100
    # (Our split also finds last sessions that the sample's preparation then dropped, e.g. for
    # having fewer than two known items; so inclusion, not equality.)
    assert given_test & splittable <= set(test.session_ids.tolist())


def test_split_cli_writes_the_four_files(tmp_path, shared_data):
    """experiments.split_users: train/test and the validation split of train; files read back."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = os.path.join(shared_data, "retailrocket_hier", "train.tsv")
    result = subprocess.run(
        [sys.executable, "-m", "experiments.split_users", f"--input={source}", f"--output_dir={tmp_path}",
         "--time_key=TimeMs"], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    original = data.read_events(source, time_key="TimeMs", user_key="UserId")
    parts = {name: data.read_events(str(tmp_path / f"{name}.tsv"), time_key="TimeMs", user_key="UserId")
             for name in ("train", "test", "valid_train", "valid_test")}
    assert len(parts["train"]) + len(parts["test"]) == len(original)
    assert len(parts["valid_train"]) + len(parts["valid_test"]) == len(parts["train"])
    want_train, want_test = user_data.split_last_session(original)
    np.testing.assert_array_equal(parts["test"].times, want_test.times)  # times survive the round trip
    assert sorted(parts["test"].session_ids.tolist()) == sorted(want_test.session_ids.tolist())
    assert "test" in result.stdout and "users" in result.stdout
