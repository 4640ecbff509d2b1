"""Tests of the session-parallel schedule (GRU4REC.md §2, §11).

The schedule is compared with an independent, deliberately naive step-by-step simulation of the
reference iterator written here.
"""

import os

import numpy as np
import pytest

from gru4rec_jax import batching
from gru4rec_jax.batching import session_parallel_schedule
from gru4rec_jax.data import ItemMap, Sessions, build_sessions, read_events


def make_sessions(session_items):
    """A :class:`Sessions` from a list of item lists (already in training order)."""
    lengths = [len(s) for s in session_items]
    assert min(lengths) >= 1
    items = np.array([i for s in session_items for i in s], np.int32)
    return Sessions(
        items=items,
        offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        times=np.arange(len(items), dtype=np.float64),
        session_ids=np.arange(len(session_items)).astype(str),
    )


def event_id_sessions(lengths):
    """Sessions whose items are their global event indices, so every cell names one event."""
    out, k = [], 0
    for n in lengths:
        out.append(list(range(k, k + n)))
        k += n
    return out


def simulate(session_items, batch_size):
    """Naive reference iterator: a list of steps, each a list of (lane, input, target, reset).

    Lane b starts with session b; each step every lane holding a session feeds its current item
    and predicts the next; a lane whose session is exhausted takes the next unused session (lanes
    scanned in index order, so the lowest lane wins among lanes finishing together), skipping
    sessions of length 1, and its first step there is flagged reset. Runs until every session
    is consumed and every lane is empty.
    """
    next_session = 0
    lane_items = [None] * batch_size
    lane_pos = [0] * batch_size
    lane_fresh = [False] * batch_size

    def refill(lane):
        nonlocal next_session
        lane_items[lane] = None
        while next_session < len(session_items):
            items = session_items[next_session]
            next_session += 1
            if len(items) >= 2:
                lane_items[lane], lane_pos[lane], lane_fresh[lane] = items, 0, True
                return

    for lane in range(batch_size):
        refill(lane)
    steps = []
    while any(items is not None for items in lane_items):
        step = []
        for lane in range(batch_size):
            items = lane_items[lane]
            if items is None:
                continue
            pos = lane_pos[lane]
            step.append((lane, items[pos], items[pos + 1], lane_fresh[lane]))
            lane_fresh[lane] = False
            lane_pos[lane] = pos + 1
        steps.append(step)
        for lane in range(batch_size):
            items = lane_items[lane]
            if items is not None and lane_pos[lane] == len(items) - 1:
                refill(lane)
    return steps


def schedule_steps(schedule):
    """The schedule in the simulation's format; also checks inactive cells are all zero/False."""
    inactive = ~schedule.active
    assert not schedule.inputs[inactive].any()
    assert not schedule.targets[inactive].any()
    assert not schedule.reset[inactive].any(), "reset on an inactive lane"
    steps = []
    for t in range(schedule.n_steps):
        steps.append([
            (b, int(schedule.inputs[t, b]), int(schedule.targets[t, b]), bool(schedule.reset[t, b]))
            for b in range(schedule.batch_size) if schedule.active[t, b]
        ])
    return steps


def check_against_simulation(session_items, batch_size):
    schedule = session_parallel_schedule(make_sessions(session_items), batch_size)
    assert schedule.inputs.shape == (schedule.n_steps, batch_size)
    for name in ("targets", "active", "reset"):
        assert getattr(schedule, name).shape == schedule.inputs.shape
    assert schedule.active.dtype == bool and schedule.reset.dtype == bool
    assert schedule_steps(schedule) == simulate(session_items, batch_size)
    return schedule


# --------------------------------------------------------------------------- the simulation itself


def test_simulation_hand_example():
    """Pins the simulation on a worked example, so the comparison checks a known schedule.

    Sessions (event ids): s0=[0,1,2], s1=[3,4], s2=[5] (length 1), s3=[6,7,8], B=2.
    Step 0: lane0 0->1 (reset), lane1 3->4 (reset). Lane 1 finishes; s2 is skipped, it takes s3.
    Step 1: lane0 1->2, lane1 6->7 (reset). Lane 0 finishes with no session left.
    Step 2: lane1 7->8.
    """
    sessions = event_id_sessions([3, 2, 1, 3])
    assert simulate(sessions, 2) == [
        [(0, 0, 1, True), (1, 3, 4, True)],
        [(0, 1, 2, False), (1, 6, 7, True)],
        [(1, 7, 8, False)],
    ]


# --------------------------------------------------------------------------- hand-made cases


@pytest.mark.parametrize(
    "lengths, batch_size",
    [
        ([3, 2, 1, 3], 2),
        ([2, 2, 2], 1),  # B = 1: sessions back to back, each first step a reset
        ([4, 1, 1, 3], 1),
        ([3, 2], 5),  # more lanes than sessions
        ([1, 1, 2], 3),  # leading length-1 sessions: lane 0 skips to the first usable one
        ([1, 1, 1], 2),  # nothing to predict at all
        ([2], 1),
        ([5, 2, 2, 2, 2, 2, 2], 3),  # several lanes finishing at once: lowest lane first
        ([2, 3, 2, 1, 2, 4, 1, 1, 2], 3),
    ],
)
def test_matches_simulation_hand_made(lengths, batch_size):
    """Exact equality with the naive iterator on small hand-made cases."""
    check_against_simulation(event_id_sessions(lengths), batch_size)


def test_lowest_lane_takes_next_session_first():
    """When lanes 0 and 2 finish together, lane 0 gets the next session, lane 2 the one after."""
    sessions = event_id_sessions([2, 3, 2, 2, 2])  # s0 in lane0, s1 in lane1, s2 in lane2
    schedule = check_against_simulation(sessions, 3)
    # Step 1: s3 = [7, 8] in lane 0, s4 = [9, 10] in lane 2, lane 1 continues s1 = [2, 3, 4].
    assert schedule_steps(schedule)[1] == [(0, 7, 8, True), (1, 3, 4, False), (2, 9, 10, True)]


def test_all_length_one_sessions_give_empty_schedule():
    """Sessions of length 1 produce no step; an all-length-1 table gives zero steps, B wide."""
    schedule = session_parallel_schedule(make_sessions([[1], [2], [3]]), 4)
    assert schedule.inputs.shape == (0, 4)
    assert schedule.n_events == 0


def test_batch_size_must_be_positive():
    """B < 1 is rejected up front."""
    with pytest.raises(ValueError):
        session_parallel_schedule(make_sessions([[1, 2]]), 0)


# --------------------------------------------------------------------------- random cases


@pytest.mark.parametrize("by", ["unit", "step"])
@pytest.mark.parametrize("seed", range(60))
def test_matches_simulation_random(seed, by, monkeypatch):
    """Exact equality with the naive iterator on random lengths 1..8 and widths 1..7, lanes
    assigned unit by unit (a heap) and step by step (numpy rounds)."""
    monkeypatch.setattr(batching, "STEP_ROUNDS_FROM_UNITS_PER_STEP", 0 if by == "step" else float("inf"))
    rng = np.random.default_rng(seed)
    n_sessions = int(rng.integers(1, 40))
    lengths = rng.integers(1, 9, size=n_sessions).tolist()
    batch_size = int(rng.integers(1, 8))
    check_against_simulation(event_id_sessions(lengths), batch_size)
    # Also with repeated item values (as in real data), to catch index mix-ups that happen
    # to be invisible with event ids.
    items = [rng.integers(0, 5, size=n).tolist() for n in lengths]
    check_against_simulation(items, batch_size)


@pytest.mark.parametrize("by", ["unit", "step"])
def test_assign_lanes_gives_each_unit_the_first_free_lane(by, monkeypatch):
    """Each unit's (lane, first step), zero-step units included (the schedules never show
    where those go), against a naive scan of the lanes' free times."""
    monkeypatch.setattr(batching, "STEP_ROUNDS_FROM_UNITS_PER_STEP", 0 if by == "step" else float("inf"))
    rng = np.random.default_rng(7)
    for _ in range(300):
        durations = rng.integers(0, int(rng.integers(1, 5)), size=int(rng.integers(0, 40)))
        batch_size = int(rng.integers(1, 9))
        free_at, want = [0] * batch_size, []
        for steps in durations.tolist():
            lane = min(range(batch_size), key=lambda b: (free_at[b], b))
            want.append((lane, free_at[lane]))
            free_at[lane] += steps
        lane_of, start_of = batching.assign_lanes(durations, batch_size)
        assert list(zip(lane_of.tolist(), start_of.tolist())) == want


def test_equal_chunk_steps_pads_least_with_fewest_chunks():
    """The chunk length: at most the limit, the fewest chunks, and among those the least padding."""
    for n_steps in range(1, 60):
        for limit in range(1, 25):
            fewest = -(-n_steps // limit)
            least = min(c for c in range(1, limit + 1) if -(-n_steps // c) == fewest)
            assert batching.equal_chunk_steps(n_steps, limit) == least, (n_steps, limit)


# --------------------------------------------------------------------------- real sample


@pytest.fixture(scope="module")
def rsc15_train(shared_data):
    table = read_events(os.path.join(shared_data, "rsc15_100k", "train_full.tsv"))
    return build_sessions(table, ItemMap.from_training(table.item_ids))


def _as_lists(sessions):
    return [sessions.items[sessions.offsets[k]:sessions.offsets[k + 1]].tolist()
            for k in range(sessions.n_sessions)]


def test_matches_simulation_real_sample(rsc15_train):
    """On rsc15_100k train_full with B = 32 the schedule equals the naive iterator, both with
    the real item indices and with event ids (exact event placement)."""
    items = _as_lists(rsc15_train)
    schedule = check_against_simulation(items, 32)
    assert schedule.n_events == 70278 - 17794
    # Steps per epoch ~ (events - sessions) / B plus the tail.
    assert (70278 - 17794) / 32 <= schedule.n_steps < (70278 - 17794) / 32 + 100
    check_against_simulation(event_id_sessions([len(s) for s in items]), 32)
    # An evaluation's width: lanes assigned step by step (see batching.assign_lanes).
    check_against_simulation(items, 512)


# --------------------------------------------------------------------------- properties


def _property_cases():
    rng = np.random.default_rng(1234)
    cases = [([3, 2, 1, 3], 2), ([1, 1, 1], 2), ([2], 4), ([9, 1, 2, 2, 2, 1, 2], 3)]
    for _ in range(30):
        cases.append((rng.integers(1, 9, size=int(rng.integers(1, 50))).tolist(),
                      int(rng.integers(1, 10))))
    return cases


@pytest.mark.parametrize("lengths, batch_size", _property_cases())
def test_every_event_used_once_and_resets_once(lengths, batch_size):
    """Every event but each session's last is an input exactly once (its successor the target);
    n_events = sum(len - 1); reset is True exactly once per session of length >= 2, at its first
    event only (guards against re-applying a reset mask on every step of the next round)."""
    sessions = event_id_sessions(lengths)
    schedule = session_parallel_schedule(make_sessions(sessions), batch_size)
    active = schedule.active
    inputs = schedule.inputs[active]
    targets = schedule.targets[active]
    expected_inputs = sorted(i for s in sessions for i in s[:-1])
    assert sorted(inputs.tolist()) == expected_inputs
    assert np.array_equal(targets, inputs + 1)
    assert schedule.n_events == sum(n - 1 for n in lengths) == len(expected_inputs)

    first_events = {s[0] for s in sessions if len(s) >= 2}
    reset_inputs = schedule.inputs[schedule.reset]
    assert sorted(reset_inputs.tolist()) == sorted(first_events)
    assert int(schedule.reset.sum()) == sum(1 for n in lengths if n >= 2)
    assert not (schedule.reset & ~active).any()
    # Within a lane, consecutive active steps continue the same session unless reset.
    for lane in range(batch_size):
        prev_target = None
        for t in range(schedule.n_steps):
            if not active[t, lane]:
                prev_target = None
                continue
            if schedule.reset[t, lane]:
                assert schedule.inputs[t, lane] in first_events
            else:
                assert schedule.inputs[t, lane] == prev_target
            prev_target = schedule.targets[t, lane]


@pytest.mark.parametrize("long_position", [0, 2, 4, 9])
def test_epoch_runs_until_all_sessions_consumed(long_position):
    """The epoch does not end when the first lane cannot be refilled (a known third-party bug).

    One 60-event session among nine short ones, B = 3. The short ones run out long before
    the long one ends, and lanes run empty; the schedule must still cover the whole long
    session, so its length is the simulation's and at least the long session's tail.
    """
    lengths = [2] * 10
    lengths[long_position] = 60
    sessions = event_id_sessions(lengths)
    schedule = check_against_simulation(sessions, 3)
    assert schedule.n_events == sum(n - 1 for n in lengths)
    assert schedule.n_steps >= 59
    # The last step has exactly one active lane: the long session's final prediction.
    assert schedule.active[-1].sum() == 1
    long_session = sessions[long_position]
    assert int(schedule.targets[-1][schedule.active[-1]][0]) == long_session[-1]
    # The long session's lane keeps running while the other lanes are empty.
    assert (schedule.active.sum(axis=1) == 1).sum() >= 40


@pytest.mark.parametrize("chunk", [1, 3, 7, 16, 1000])
def test_padded_chunks(chunk):
    """padded_chunks(L) reshapes to [n_chunks, L, B], keeps content, pads all-inactive steps."""
    rng = np.random.default_rng(chunk)
    lengths = rng.integers(1, 9, size=40).tolist()
    schedule = session_parallel_schedule(make_sessions(event_id_sessions(lengths)), 5)
    n_steps = schedule.n_steps
    chunks = schedule.padded_chunks(chunk)
    n_chunks = -(-n_steps // chunk)
    for name in ("inputs", "targets", "active", "reset"):
        array = chunks[name]
        original = getattr(schedule, name)
        assert array.shape == (n_chunks, chunk, 5)
        assert array.dtype == original.dtype
        flat = array.reshape(n_chunks * chunk, 5)
        assert np.array_equal(flat[:n_steps], original)
        assert not flat[n_steps:].any()
    # Chunk c, row r is step c * L + r.
    c, r = divmod(n_steps - 1, chunk)
    assert np.array_equal(chunks["inputs"][c, r], schedule.inputs[-1])


def test_padded_chunks_exact_multiple_has_no_padding():
    """When L divides n_steps there is no padding chunk."""
    schedule = session_parallel_schedule(make_sessions(event_id_sessions([5, 5])), 2)
    assert schedule.n_steps == 4
    chunks = schedule.padded_chunks(2)
    assert chunks["active"].shape == (2, 2, 2)
    assert chunks["active"].all()
