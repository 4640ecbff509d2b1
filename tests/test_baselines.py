"""POP, S-POP, Item-KNN and BPR-MF against hand-computed values, and their evaluation."""

import math

import jax.numpy as jnp
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


def test_bpr_sgd_step_against_the_gradient_by_hand():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(2 + 3, 4)).astype(np.float32)  # 2 sessions, then 3 items
    lr, l_s, l_i = 0.1, 0.01, 0.02
    new, loss = baselines.bpr_sgd_step(jnp.asarray(table), jnp.array([1, 2 + 2, 2 + 0]), learning_rate=lr,
                                       lambda_session=l_s, lambda_item=l_i)
    u, p, n = table[1].astype(float), table[4].astype(float), table[2].astype(float)
    x = u @ p - u @ n
    c = 1.0 / (1.0 + math.exp(x))  # -d/dx log sigmoid(x)
    want = table.astype(float)
    want[1] = u + lr * (c * (p - n) - l_s * u)
    want[4] = p + lr * (c * u - l_i * p)
    want[2] = n + lr * (-c * u - l_i * n)
    np.testing.assert_allclose(np.asarray(new), want, rtol=1e-5, atol=1e-6)
    assert float(loss) == pytest.approx(math.log1p(math.exp(-x)), rel=1e-5)
    # Negative = positive: x = 0 and both changes apply, leaving only the decay.
    new, loss = baselines.bpr_sgd_step(jnp.asarray(table), jnp.array([0, 3, 3]), learning_rate=lr, lambda_item=l_i)
    np.testing.assert_allclose(np.asarray(new)[3], table[3] * (1 - 2 * lr * l_i), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new)[0], table[0], rtol=1e-6)
    assert float(loss) == pytest.approx(math.log(2.0))


def test_bpr_mf_scores_with_the_mean_of_the_prefix_factors():
    model = baselines.BPRMF(_sessions([[0, 1, 2], [2, 3]]), 5, n_factors=3, n_epochs=2, learning_rate=0.1)
    factors = model.item_factors
    assert factors.shape == (5, 3) and model.session_factors.shape == (2, 3) and len(model.epoch_losses) == 2
    items = np.array([3, 0, 3, 4])
    want = np.stack([factors @ np.mean(factors[items[: t + 1]], axis=0) for t in range(len(items))])
    np.testing.assert_allclose(model.session_scores(items), want, rtol=1e-5, atol=1e-7)


def _two_groups(n_sessions=200, seed=0):
    """Sessions of 4 items, all from group 0..4 or all from group 5..9."""
    rng = np.random.default_rng(seed)
    return _sessions([rng.choice(5, 4) + 5 * (k % 2) for k in range(n_sessions)])


def test_bpr_mf_learns_which_items_go_together():
    train = _two_groups()
    # An untrained model (random factors) does not separate the groups; a trained one must.
    for epochs, lr, should_separate in [(1, 1e-9, False), (30, 0.1, True)]:
        model = baselines.BPRMF(train, 10, n_factors=8, n_epochs=epochs, learning_rate=lr, seed=1)
        separated = []
        for item in range(10):
            scores = model.session_scores(np.array([item]))[0]
            same = np.arange(10) // 5 == item // 5
            separated.append(np.delete(scores, item)[np.delete(same, item)].min() > scores[~same].max())
        assert all(separated) == should_separate
    assert model.epoch_losses[-1] < 0.5 * model.epoch_losses[0]


def test_bpr_mf_is_reproducible_from_its_seed():
    train = _two_groups(40)
    a, b, c = (baselines.BPRMF(train, 10, n_factors=4, n_epochs=2, seed=seed) for seed in (7, 7, 8))
    np.testing.assert_array_equal(a.item_factors, b.item_factors)
    np.testing.assert_array_equal(a.session_factors, b.session_factors)
    assert not np.allclose(a.item_factors, c.item_factors)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_factors=0), "n_factors"), (dict(n_factors=2.5), "n_factors"), (dict(n_epochs=0), "n_epochs"),
    (dict(learning_rate=0.0), "learning_rate"), (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(lambda_item=-0.1), "lambda_item"), (dict(lambda_session=-1.0), "lambda_session"),
    (dict(sigma=0.0), "sigma"), (dict(n_items=3), r"\[0, n_items\)"),
])
def test_bpr_mf_rejects_bad_arguments(kwargs, message):
    n_items = kwargs.pop("n_items", 10)
    with pytest.raises(ValueError, match=message):
        baselines.BPRMF(_two_groups(4), n_items, **kwargs)
