"""Dwell-time boosting: repetition counts, identity cases, and test data left untouched."""

import numpy as np
import pytest

from gru4rec_jax import data, dwell, experiment, training


def _table():
    # File order interleaves the sessions; session "1" events at 0, 10, 25; "2" at 5, 6.
    return data.EventTable(
        session_ids=np.asarray(["1", "2", "1", "2", "1"]),
        item_ids=np.asarray(["a", "x", "b", "y", "c"]),
        times=np.asarray([0.0, 5.0, 10.0, 6.0, 25.0]),
    )


def test_dwell_times_are_gaps_to_the_next_event_of_the_session():
    np.testing.assert_array_equal(dwell.dwell_times(_table()), [10.0, 1.0, 15.0, 0.0, 0.0])


def test_repetition_counts():
    """floor(dwell / t) + 1 consecutive copies; session order otherwise unchanged."""
    boosted = dwell.boost_by_dwell_time(_table(), 5.0)
    item_map = data.ItemMap.from_training(boosted.item_ids)
    sessions = data.build_sessions(boosted, item_map)
    by_id = {sid: item_map.ids[sessions.items[a:b]].tolist()
             for sid, a, b in zip(sessions.session_ids, sessions.offsets[:-1], sessions.offsets[1:])}
    assert by_id["1"] == ["a"] * 3 + ["b"] * 4 + ["c"]  # dwell 10 -> 3, 15 -> 4, last -> 1
    assert by_id["2"] == ["x", "y"]  # dwell 1 -> 1
    assert len(boosted) == 10


def test_identity_cases():
    table = _table()
    assert dwell.boost_by_dwell_time(table, 0.0) is table
    huge = dwell.boost_by_dwell_time(table, 1000.0)  # larger than every dwell time
    for column in ("session_ids", "item_ids", "times"):
        np.testing.assert_array_equal(getattr(huge, column), getattr(table, column))
    with pytest.raises(ValueError, match="dwell threshold"):
        dwell.boost_by_dwell_time(table, -1.0)


def _write(path, rows):
    path.write_text("SessionId\tItemId\tTime\n" + "".join(f"{s}\t{i}\t{t}\n" for s, i, t in rows))
    return str(path)


def test_only_training_data_is_boosted(tmp_path):
    """The same test set is evaluated (same events) with and without boosting; training grows."""
    rng = np.random.default_rng(0)
    rows, t = [], 0.0
    for s in range(60):
        for _ in range(int(rng.integers(2, 6))):
            t += float(rng.integers(1, 40))
            rows.append((s, f"i{int(rng.integers(0, 15))}", t))
    train = _write(tmp_path / "train.tsv", rows[: len(rows) * 4 // 5])
    test = _write(tmp_path / "test.tsv", [(s + 1000, i, t) for s, i, t in rows[len(rows) * 4 // 5:]])
    logs, results = {}, {}
    for threshold in (0.0, 10.0):
        messages = []
        config = experiment.ExperimentConfig(
            data=experiment.DataConfig(train_path=train, test_path=test, dwell_threshold=threshold),
            train=training.TrainConfig(batch_size=4, n_sample=4, n_epochs=1),
            layers=(8,),
        )
        results[threshold] = experiment.run(config, log=messages.append)
        logs[threshold] = " ".join(messages)
    assert results[10.0]["n_eval_events"] == results[0.0]["n_eval_events"]
    assert "dwell-time boosting" in logs[10.0] and "dwell-time boosting" not in logs[0.0]
    n_train = [int(log.split("training data: ")[1].split(" events")[0]) for log in (logs[0.0], logs[10.0])]
    assert n_train[1] > n_train[0] == len(rows) * 4 // 5
