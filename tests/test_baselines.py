"""POP, S-POP and Item-KNN against hand-computed values, and their evaluation."""

import math

import numpy as np
import pytest

from gru4rec_jax import baselines, data, synthetic


def _sessions(lists):
    items = np.concatenate([np.asarray(s, np.int32) for s in lists])
    return data.Sessions(items=items, offsets=np.r_[0, np.cumsum([len(s) for s in lists])].astype(np.int64),
                         times=np.arange(len(items), dtype=float), session_ids=np.arange(len(lists)).astype(str))


def test_item_knn_similarities_by_hand():
    """Sessions [a, b, a] and [b, c]: co(a,b) = 2 event pairs, co(b,c) = 1; supports a 2, b 2, c 1."""
    a, b, c = 0, 1, 2
    knn = baselines.ItemKNN(_sessions([[a, b, a], [b, c]]), 3, lmbd=0.0, alpha=0.5)
    want = np.array([[0, 2 / (math.sqrt(2) * math.sqrt(2)), 0],
                     [2 / 2, 0, 1 / (math.sqrt(2) * 1)],
                     [0, 1 / (1 * math.sqrt(2)), 0]])
    np.testing.assert_allclose(knn.sims, want)
    # lambda regularises: (2 + 20)^0.5 (2 + 20)^0.5 for a-b.
    np.testing.assert_allclose(baselines.ItemKNN(_sessions([[a, b, a], [b, c]]), 3).sims[a, b], 2 / 22)
    np.testing.assert_array_equal(knn.session_scores(np.array([c])), want[[c]])


def test_item_knn_keeps_only_the_nearest():
    knn = baselines.ItemKNN(_sessions([[0, 1, 2, 3], [0, 1], [0, 1], [0, 2]]), 4, lmbd=0.0, n_sims=1)
    assert np.count_nonzero(knn.sims[0]) == 1 and np.argmax(knn.sims[0]) == 1
    with pytest.raises(ValueError, match="dense similarity"):
        baselines.ItemKNN(_sessions([[0, 1]]), baselines.ItemKNN.MAX_ITEMS + 1)


def test_pop_and_session_pop():
    train = _sessions([[0, 0, 0, 1], [1, 2]])  # supports 3, 2, 1, 0
    pop = baselines.Popularity(train, 4, top_n=2)
    np.testing.assert_allclose(pop.session_scores(np.array([3, 2]))[1], [3 / 4, 2 / 3, 0, 0])
    spop = baselines.SessionPopularity(train, 4)
    scores = spop.session_scores(np.array([3, 2, 3]))
    np.testing.assert_allclose(scores[2], [3 / 4, 2 / 3, 1 + 1 / 2, 2])  # item 3 seen twice, item 2 once
    assert np.argmax(scores[0]) == 3  # one earlier occurrence beats any popularity


def test_evaluate_counts_ranks_with_the_tie_rules():
    class Fixed:
        def session_scores(self, items):
            return np.tile([1.0, 2.0, 2.0, 0.5], (len(items), 1))

    test = _sessions([[0, 1], [0, 3, 2]])  # targets 1, 3, 2: ranks (standard) 1, 4, 1; conservative 2, 4, 2
    standard = baselines.evaluate(Fixed(), test, cutoffs=(1, 2), mode="standard")
    conservative = baselines.evaluate(Fixed(), test, cutoffs=(1, 2), mode="conservative")
    assert standard["recall@1"] == pytest.approx(2 / 3) and standard["mrr@2"] == pytest.approx(2 / 3)
    assert conservative["recall@1"] == 0 and conservative["recall@2"] == pytest.approx(2 / 3)
    assert conservative["mrr@2"] == pytest.approx((0.5 + 0.5) / 3) and conservative["n_eval_events"] == 3


def test_item_knn_beats_popularity_on_structured_data():
    train_table, test_table = synthetic.generate_train_test(4000, 1000, seed=3)
    item_map = data.ItemMap.from_training(train_table.item_ids)
    train, test = data.build_sessions(train_table, item_map), data.build_sessions(test_table, item_map)
    n = len(item_map)
    knn = baselines.evaluate(baselines.ItemKNN(train, n), test)
    pop = baselines.evaluate(baselines.Popularity(train, n), test)
    # Measured: recall@5 .688 vs .463, MRR@20 .389 vs .312.
    assert knn["recall@5"] > 1.3 * pop["recall@5"] and knn["mrr@20"] > 1.15 * pop["mrr@20"]
