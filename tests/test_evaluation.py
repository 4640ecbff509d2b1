"""Evaluation against an independent per-session numpy evaluator (GRU4REC.md section 7, 11)."""

import jax
import numpy as np
import pytest

from gru4rec_jax import data, evaluation, model


def _np_cell(layer, x, h):
    size = h.shape[-1]
    v = (x @ layer["Wx"] if "Wx" in layer else x) + layer["b"]
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    r = sig(v[:, size : 2 * size] + h @ layer["Wrz"][:, :size])
    z = sig(v[:, 2 * size :] + h @ layer["Wrz"][:, size:])
    c = np.tanh((r * h) @ layer["Wh"] + v[:, :size])
    return (1 - z) * h + z * c


# Scores closer to the target's than this (relative to the event's largest score, at least 1) could
# let float32 rounding decide a rank: 60 times the float32 error of the fixture's scores (1.6e-7).
NEAR = 1e-5


def reference_events(params, sessions_items):
    """Each session alone from a zero state, in float64: per next-item event, (scores over all items, target)."""
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    tables = params["tables"]
    wy, by = tables["Wy"], tables["By"]
    inputs = tables.get("E", tables.get("Wx0", wy))
    events = []
    for items in sessions_items:
        hidden = [np.zeros((1, layer["Wh"].shape[0])) for layer in params["layers"]]
        for current, target in zip(items[:-1], items[1:]):
            x = inputs[[current]]
            for i, layer in enumerate(params["layers"]):
                hidden[i] = _np_cell(layer, x, hidden[i])
                x = hidden[i]
            events.append(((x @ wy.T + by)[0], target))
    return events


def assert_no_near_ties(scores, target, cutoffs=()):
    """The test's precondition: every other item scores exactly as the target (identical rows, built
    to tie exactly) or farther from it than NEAR, and so do the K-th and (K+1)-th best scores, so that
    any disagreement with the reference is a bug."""
    scale = NEAR * max(1.0, np.abs(scores).max())
    gaps = np.abs(np.delete(scores, target) - scores[target])
    assert not ((gaps > 0) & (gaps <= scale)).any(), \
        f"precondition: an item scores within {NEAR:g} of the target (gaps {np.sort(gaps)[:3]})"
    best = np.sort(scores)[::-1]
    for k in cutoffs:
        if k < len(scores):
            assert not 0 < best[k - 1] - best[k] <= scale, f"precondition: a near-tie at the top-{k} list's end"


def top_items(scores, k):
    """The k best items, equal scores in item order (the lower index first)."""
    return np.lexsort((np.arange(len(scores)), -scores))[:k]


def reference_metrics(params, sessions_items, cutoffs, mode):
    """Metrics over every next-item event, each session alone from a zero state, averaged over events."""
    ranks, recommended = [], {k: set() for k in cutoffs}
    events = reference_events(params, sessions_items)
    for scores, target in events:
        assert_no_near_ties(scores, target, cutoffs)
        t = scores[target]
        greater, equal = np.sum(scores > t), np.sum(scores == t)
        ranks.append({"standard": greater + 1, "conservative": greater + equal,
                      "median": greater + 0.5 * (equal - 1) + 1}[mode])
        for k in cutoffs:
            recommended[k].update(top_items(scores, k).tolist())
    ranks = np.asarray(ranks, np.float64)
    out = {}
    for k in cutoffs:
        out[f"recall@{k}"] = np.mean(ranks <= k)
        out[f"mrr@{k}"] = np.mean(np.where(ranks <= k, 1.0 / ranks, 0.0))
        out[f"ndcg@{k}"] = np.mean(np.where(ranks <= k, 1.0 / np.log2(ranks + 1), 0.0))
        out[f"coverage@{k}"] = len(recommended[k]) / len(events[0][0])
    return out, len(ranks)


def assert_matches_reference(got, params, sessions_items, cutoffs, mode):
    """``got`` has the reference's metrics: all of them, or all but coverage@K where it was not asked for."""
    want, n = reference_metrics(params, sessions_items, cutoffs, mode)
    assert got["n_eval_events"] == n
    if not any(key.startswith("coverage@") for key in got):
        want = {key: value for key, value in want.items() if not key.startswith("coverage@")}
    assert set(got) == set(want) | {"n_eval_events"}
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key


def _sessions(lists):
    items = np.concatenate([np.asarray(s, np.int32) for s in lists])
    offsets = np.r_[0, np.cumsum([len(s) for s in lists])]
    return data.Sessions(items=items, offsets=offsets, times=np.arange(len(items), dtype=float),
                         session_ids=np.arange(len(lists)).astype(str))


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    config = model.ModelConfig(n_items=40, layers=(8, 6))
    params = model.init_params(jax.random.PRNGKey(3), config)
    # Larger output weights so that rankings are not all near-ties.
    params["tables"]["Wy"] = params["tables"]["Wy"] * 5
    params["tables"]["By"] = jax.numpy.asarray(rng.normal(size=40), jax.numpy.float32)
    lists = [rng.integers(0, 40, size=rng.integers(1, 9)).tolist() for _ in range(23)]
    return config, params, lists


@pytest.mark.parametrize("batch_size", [1, 3, 7, 512])
@pytest.mark.parametrize("mode", ["standard", "conservative", "median"])
def test_matches_per_session_reference(setup, batch_size, mode):
    """Guards: state not reset between test sessions; metrics averaged per batch; rank < K."""
    config, params, lists = setup
    cutoffs = (1, 2, 5, 10)
    got = evaluation.evaluate(params, config, _sessions(lists), cutoffs=cutoffs, mode=mode,
                              batch_size=batch_size, chunk_steps=4, item_coverage=True)
    assert got["n_eval_events"] == sum(max(len(s) - 1, 0) for s in lists)
    assert_matches_reference(got, params, lists, cutoffs, mode)


def test_tie_rules_and_cutoff_boundary():
    """A target tied with others: the three rules differ; rank == K counts as a hit."""
    scores = jax.numpy.asarray([[1.0, 2.0, 2.0, 2.0, 0.5]])
    target = jax.numpy.asarray([1])
    assert float(evaluation.rank_of_target(scores, target, "standard")[0]) == 1.0
    assert float(evaluation.rank_of_target(scores, target, "conservative")[0]) == 3.0
    assert float(evaluation.rank_of_target(scores, target, "median")[0]) == 2.0
    for mode in evaluation.EVAL_MODES:
        assert evaluation.rank_of_target(scores, target, mode, count_with_product=True) == \
            evaluation.rank_of_target(scores, target, mode)


@pytest.mark.parametrize("mode", evaluation.EVAL_MODES)
@pytest.mark.parametrize("with_product", [False, True])
def test_tie_counts_match_numpy(mode, with_product):
    """Both ways of counting (a reduction; 0/1 hits times ones, used on CPU) give numpy's counts,
    with many exact ties and a column mask, over more columns than a float32 mantissa's 8 bits."""
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, (7, 3000)).astype(np.float32)  # few distinct values: ties everywhere
    target_score = scores[np.arange(7), rng.integers(0, 3000, 7)]
    valid = rng.random((1, 3000)) < 0.9
    got = evaluation._tie_counts(jax.numpy.asarray(scores), jax.numpy.asarray(target_score), mode,
                                 jax.numpy.asarray(valid), with_product=with_product)
    greater = ((scores > target_score[:, None]) & valid).sum(1)
    equal = ((scores == target_score[:, None]) & valid).sum(1)
    want = {"standard": (greater,), "conservative": (greater + equal,), "median": (greater, equal)}[mode]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == jax.numpy.int32
        np.testing.assert_array_equal(np.asarray(g), w)


def test_product_counts_fall_back_to_a_reduction_past_exact_float32_sums(monkeypatch):
    """0/1 sums in float32 are exact only up to 2**24 columns: wider score matrices are reduced."""
    scores, target = jax.numpy.ones((2, 8)), jax.numpy.zeros((2,))

    def uses_product():
        jaxpr = jax.make_jaxpr(lambda s, t: evaluation._tie_counts(s, t, "standard", with_product=True))(scores, target)
        return "dot_general" in str(jaxpr)

    assert uses_product()
    monkeypatch.setattr(evaluation, "_MAX_PRODUCT_COUNT_COLUMNS", 7)
    assert not uses_product()


def test_recall_counts_rank_equal_to_cutoff():
    """Guards 'recall counted as rank < K': a target at exactly rank K is a hit at K."""
    config = model.ModelConfig(n_items=5, layers=(2,))
    params = model.init_params(jax.random.PRNGKey(0), config)
    # Make scores independent of the state: only the bias matters.
    params["tables"]["Wy"] = params["tables"]["Wy"] * 0
    params["tables"]["By"] = jax.numpy.asarray([5.0, 4.0, 3.0, 2.0, 1.0])
    result = evaluation.evaluate(params, config, _sessions([[0, 2]]), cutoffs=(2, 3), mode="standard")
    assert result["recall@3"] == 1.0 and result["mrr@3"] == pytest.approx(1 / 3)
    assert result["recall@2"] == 0.0


@pytest.mark.parametrize("item_block", [1, 3, 5, 8, 37])
@pytest.mark.parametrize("k", [1, 5, 37])
def test_top_lists_match_numpy_with_ties(item_block, k):
    """Each lane's top-k list (of item coverage): numpy's order, equal scores in item order, also across
    the K-th place and across blocks (merged as they go, the last block overlapping the one before)."""
    rng = np.random.default_rng(3)
    n, h, lanes = 37, 4, 7
    # Small integers: every score is exact, whatever the product's order of summation, and ties are frequent.
    tables = {"Wy": rng.integers(-2, 3, size=(n, h)).astype(np.float32),
              "By": rng.integers(-1, 2, size=n).astype(np.float32)}
    output = rng.integers(-2, 3, size=(lanes, h)).astype(np.float32)
    targets = rng.integers(0, n, size=lanes).astype(np.int32)
    ranks, top = jax.jit(evaluation._ranks_by_blocks, static_argnums=(3, 4, 5, 6))(
        output, targets, tables, "median", item_block, True, k)
    scores = output.astype(np.float64) @ tables["Wy"].T.astype(np.float64) + tables["By"]
    np.testing.assert_array_equal(np.asarray(top), [top_items(row, k) for row in scores])
    t = scores[np.arange(lanes), targets][:, None]
    np.testing.assert_array_equal(ranks, (scores > t).sum(1) + 0.5 * ((scores == t).sum(1) - 1) + 1)


@pytest.mark.parametrize("item_block", [1, 2, 4, 6])
def test_coverage_of_exact_ties_and_of_cutoffs_beyond_the_catalogue(item_block):
    """Tied items across the K-th place count once per list (the lower index), in one product and in
    blocks; K beyond the catalogue covers all of it. NDCG@K as numpy computes it."""
    config = model.ModelConfig(n_items=6, layers=(2,))
    params = model.init_params(jax.random.PRNGKey(0), config)
    params["tables"]["Wy"] = params["tables"]["Wy"] * 0  # every score is its item's bias, exactly
    bias = np.asarray([1.0, 3.0, 2.0, 3.0, 3.0, 2.0], np.float32)
    params["tables"]["By"] = jax.numpy.asarray(bias)
    cutoffs = (1, 2, 4, 5, 9)
    got = evaluation.evaluate(params, config, _sessions([[0, 1, 2]]), cutoffs=cutoffs, mode="standard",
                              item_block=item_block, item_coverage=True)
    ranks = np.asarray([np.sum(bias > bias[t]) + 1 for t in (1, 2)], np.float64)
    for k in cutoffs:
        assert got[f"coverage@{k}"] == len(top_items(bias, k)) / 6, k
        assert got[f"ndcg@{k}"] == pytest.approx(np.mean(np.where(ranks <= k, 1 / np.log2(ranks + 1), 0)), abs=1e-7)
    assert got["coverage@9"] == 1.0


def test_state_is_reset_between_sessions(setup):
    """A session evaluated after another one in the same lane scores as if it were alone."""
    config, params, _ = setup
    lists = [[5, 6, 7], [1, 2, 3, 4]]
    after = evaluation.evaluate(params, config, _sessions(lists), cutoffs=(1, 5, 20), batch_size=1)
    assert_matches_reference(after, params, lists, (1, 5, 20), "conservative")


def test_bad_arguments():
    config = model.ModelConfig(n_items=5, layers=(2,))
    params = model.init_params(jax.random.PRNGKey(0), config)
    with pytest.raises(ValueError, match="eval mode"):
        evaluation.evaluate(params, config, _sessions([[0, 1]]), mode="optimistic")
    with pytest.raises(ValueError, match="cut-offs"):
        evaluation.evaluate(params, config, _sessions([[0, 1]]), cutoffs=(0,))
    with pytest.raises(ValueError, match="2 or more"):
        evaluation.evaluate(params, config, _sessions([[0], [1]]))
    with pytest.raises(ValueError, match="chunk_steps"):
        evaluation.evaluate(params, config, _sessions([[0, 1]]), chunk_steps=0)


@pytest.mark.parametrize("platform", ["cpu", "gpu"])
@pytest.mark.parametrize("chunk_steps", [1, 3, 5, 1000])
def test_chunking_does_not_change_results(setup, chunk_steps, platform, monkeypatch):
    """Equal chunks with padding steps at the end (run, never scored) give the reference's metrics,
    also with the accelerators' settings (reduction counts, a loop unrolled over 4 steps)."""
    monkeypatch.setattr(evaluation.sharding_lib, "platform", lambda mesh: platform)
    config, params, lists = setup
    got = evaluation.evaluate(params, config, _sessions(lists), cutoffs=(1, 5, 20), mode="median",
                              batch_size=3, chunk_steps=chunk_steps)
    assert_matches_reference(got, params, lists, (1, 5, 20), "median")


def test_default_item_block_is_one_product_within_the_score_budget(setup, monkeypatch):
    """item_block=None: the whole catalogue in one product while a step's scores fit
    ONE_PRODUCT_SCORE_BYTES, the platform's blocks beyond; both the reference's metrics."""
    config, params, lists = setup
    blocks = []
    original = evaluation._ranks_by_blocks
    monkeypatch.setattr(evaluation, "_ranks_by_blocks", lambda *a: blocks.append(a[4]) or original(*a))
    monkeypatch.setattr(evaluation, "CPU_ITEM_BLOCK", 7)
    monkeypatch.setattr(evaluation, "ACCELERATOR_ITEM_BLOCK", 7)
    kwargs = dict(cutoffs=(1, 5, 20), mode="median", batch_size=4)
    monkeypatch.setattr(evaluation, "ONE_PRODUCT_SCORE_BYTES", 4 * 40 * 4)  # 4 lanes x 40 items
    one = evaluation.evaluate(params, config, _sessions(lists), **kwargs)
    assert set(blocks) == {40}
    blocks.clear()
    monkeypatch.setattr(evaluation, "ONE_PRODUCT_SCORE_BYTES", 4 * 40 * 4 - 1)
    blocked = evaluation.evaluate(params, config, _sessions(lists), **kwargs)
    assert set(blocks) == {7}
    for got in (one, blocked):
        assert_matches_reference(got, params, lists, kwargs["cutoffs"], "median")


@pytest.mark.parametrize("item_block", [1, 7, 39, 40, 41, 100000])
@pytest.mark.parametrize("batch_size", [3, 4])
def test_item_blocks_do_not_change_results(setup, item_block, batch_size):
    """Scoring the catalogue in blocks (the last one overlapping the one before) gives the reference's metrics."""
    config, params, lists = setup
    cutoffs = (1, 5, 20)
    blocked = evaluation.evaluate(params, config, _sessions(lists), cutoffs=cutoffs, mode="median",
                                  batch_size=batch_size, item_block=item_block, item_coverage=True)
    assert_matches_reference(blocked, params, lists, cutoffs, "median")


@pytest.mark.parametrize("item_block", [7, 100000])
def test_ranks_compare_scores_of_one_product_only(setup, rounding_differs_per_product, item_block):
    """Every comparison takes both scores from one product: a target compared with another product's
    rounding of its own score (the former evaluator's two passes over the blocks) changes its rank."""
    config, params, lists = setup
    cutoffs = (1, 5, 20)
    for mode in evaluation.EVAL_MODES:
        got = evaluation.evaluate(params, config, _sessions(lists), cutoffs=cutoffs, mode=mode, batch_size=4,
                                  item_block=item_block, item_coverage=True)
        assert_matches_reference(got, params, lists, cutoffs, mode)
    assert len(rounding_differs_per_product) >= 3  # one for each mode at least: each rounded another way


@pytest.mark.parametrize("item_block", [1, 2, 4, 16384])
def test_exact_ties_follow_the_tie_rules(item_block):
    """Items with identical output rows tie exactly with the target in every mode."""
    config = model.ModelConfig(n_items=6, layers=(3,))
    params = model.init_params(jax.random.PRNGKey(1), config)
    wy = np.asarray(params["tables"]["Wy"]).copy()
    # Items 3, 4, 5 score exactly the same in any product: their one nonzero weight is a power of two
    # (an exact multiple of the output) and the other terms add exact zeros, in whatever order.
    wy[3:] = [0.0, 0.5, 0.0]
    params["tables"]["Wy"] = jax.numpy.asarray(wy)
    sessions = _sessions([[0, 4]])
    results = {m: evaluation.evaluate(params, config, sessions, cutoffs=(6,), mode=m, item_block=item_block)
               for m in evaluation.EVAL_MODES}
    want = {m: reference_metrics(params, [[0, 4]], (6,), m)[0] for m in evaluation.EVAL_MODES}
    for m in evaluation.EVAL_MODES:
        assert results[m]["mrr@6"] == pytest.approx(want[m]["mrr@6"], abs=1e-6), m
    assert results["conservative"]["mrr@6"] < results["median"]["mrr@6"] < results["standard"]["mrr@6"]


@pytest.mark.parametrize("embedding", ["shared", "separate", "onehot"])
def test_folded_input_product_runs_the_same_network(embedding):
    """The one-hot form with every item's first-layer input product precomputed (evaluation's
    shortcut for small catalogues) gives the original network's outputs and states."""
    config = model.ModelConfig(n_items=30, layers=(8, 6), embedding=embedding,
                               embedding_dim=5 if embedding == "separate" else 0)
    params = model.init_params(jax.random.PRNGKey(4), config)
    folded, folded_config = evaluation.fold_input_product(params, config)
    assert folded_config.embedding == "onehot" and folded_config.layers == config.layers
    if embedding == "onehot":
        assert folded is params
    else:
        assert "Wx" not in folded["layers"][0] and "E" not in folded["tables"]
        assert folded["tables"]["Wx0"].shape == (30, 24)
    items = jax.numpy.asarray([0, 7, 29, 7])
    hidden = [jax.random.normal(jax.random.PRNGKey(h), (4, h)) for h in config.layers]
    want = model.forward_step(params["layers"], model.embed_inputs(params["tables"], items, config), hidden, config)
    got = model.forward_step(folded["layers"], model.embed_inputs(folded["tables"], items, folded_config), hidden,
                             folded_config)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("embedding", ["shared", "separate"])
def test_evaluation_folds_small_catalogues_without_changing_metrics(setup, embedding, monkeypatch):
    """evaluate() folds the input product when the catalogue fits one item block and has fewer
    items than the evaluation has input rows, and not otherwise; the metrics stay the same."""
    _, _, lists = setup
    config = model.ModelConfig(n_items=40, layers=(8,), embedding=embedding,
                               embedding_dim=6 if embedding == "separate" else 0)
    params = model.init_params(jax.random.PRNGKey(5), config)
    params["tables"]["Wy"] = params["tables"]["Wy"] * 5
    params["tables"]["By"] = jax.numpy.asarray(np.random.default_rng(1).normal(size=40), jax.numpy.float32)
    folds = []
    original = evaluation.fold_input_product
    monkeypatch.setattr(evaluation, "fold_input_product", lambda p, c: folds.append(c) or original(p, c))
    kwargs = dict(cutoffs=(1, 5, 20), mode="median")
    folded = evaluation.evaluate(params, config, _sessions(lists), batch_size=4, **kwargs)
    assert len(folds) == 1
    blocked = evaluation.evaluate(params, config, _sessions(lists), batch_size=4, item_block=39, **kwargs)
    assert len(folds) == 1  # 39-item blocks
    evaluation.evaluate(params, config, _sessions([[1, 2, 3], [4, 5]]), batch_size=2, **kwargs)
    assert len(folds) == 1  # 2 lanes x 2 steps: 4 input rows for 40 items
    for got in (folded, blocked):
        assert_matches_reference(got, params, lists, kwargs["cutoffs"], "median")


def _population(config, seeds):
    """Members of one shape with other weights (output weights scaled, random biases: few near-ties)."""
    members = []
    for seed in seeds:
        params = model.init_params(jax.random.PRNGKey(seed), config)
        params["tables"]["Wy"] = params["tables"]["Wy"] * 5
        params["tables"]["By"] = jax.numpy.asarray(np.random.default_rng(seed).normal(size=config.n_items),
                                                   jax.numpy.float32)
        members.append(params)
    return members, jax.tree.map(lambda *leaves: jax.numpy.stack(leaves), *members)


@pytest.mark.parametrize("item_block", [None, 7])
@pytest.mark.parametrize("embedding", ["shared", "separate"])
@pytest.mark.parametrize("platform", ["cpu", "gpu"])
def test_population_matches_each_member(setup, item_block, embedding, platform, monkeypatch):
    """All members in one compiled program (side by side with the accelerators' settings, one after
    another on CPU): each member's evaluate() metrics (and the reference's), in one product and in
    blocks, with the folded input product (the default here) of any embedding."""
    monkeypatch.setattr(evaluation.sharding_lib, "platform", lambda mesh: platform)
    _, _, lists = setup
    config = model.ModelConfig(n_items=40, layers=(8,), embedding=embedding,
                               embedding_dim=5 if embedding == "separate" else 0)
    members, stacked = _population(config, (1, 2, 3))
    kwargs = dict(cutoffs=(1, 5, 20), mode="median", batch_size=4, item_block=item_block, item_coverage=True)
    got = evaluation.evaluate_population(stacked, config, _sessions(lists), **kwargs)
    assert len(got) == len(members)
    for result, params in zip(got, members):
        alone = evaluation.evaluate(params, config, _sessions(lists), **kwargs)
        assert result["n_eval_events"] == alone["n_eval_events"]
        assert result == pytest.approx(alone, abs=1e-6)
        assert_matches_reference(result, params, lists, kwargs["cutoffs"], "median")
    assert got[0]["mrr@20"] != got[1]["mrr@20"]  # the members differ


@pytest.mark.parametrize("platform, at_once", [("gpu", 3), ("cpu", 1), ("cpu", 2)])
def test_population_item_block_counts_the_members_side_by_side(setup, monkeypatch, platform, at_once):
    """(members side by side) x lanes x items scores against ONE_PRODUCT_SCORE_BYTES: one product while
    they fit, else blocks whose scores fit. Accelerators run all members side by side."""
    monkeypatch.setattr(evaluation.sharding_lib, "platform", lambda mesh: platform)
    monkeypatch.setattr(evaluation, "POPULATION_MEMBERS_AT_ONCE", 2 if at_once == 2 else 1)
    _, _, lists = setup
    config = model.ModelConfig(n_items=40, layers=(8,))
    _, stacked = _population(config, (1, 2, 3))
    blocks = []
    original = evaluation._ranks_by_blocks
    monkeypatch.setattr(evaluation, "_ranks_by_blocks", lambda *a: blocks.append(a[4]) or original(*a))
    fits = at_once * 4 * 40 * 4  # members x 4 lanes x 40 items of float32
    for budget, block in ((fits, 40), (fits - 1, 39), (at_once * 4 * 10 * 4, 10)):
        monkeypatch.setattr(evaluation, "ONE_PRODUCT_SCORE_BYTES", budget)
        jax.clear_caches()  # traced anew (a member's chunk may have been traced for another grouping)
        evaluation.evaluate_population(stacked, config, _sessions(lists), cutoffs=(5,), batch_size=4)
        assert blocks.pop() == block and not blocks


def test_population_bad_arguments():
    config = model.ModelConfig(n_items=5, layers=(2,))
    _, stacked = _population(config, (1, 2))
    sessions = _sessions([[0, 1]])
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("items",))
    with pytest.raises(ValueError, match="^evaluate_population runs on one device"):
        evaluation.evaluate_population(stacked, config, sessions, mesh=mesh)
    stacked["tables"]["By"] = stacked["tables"]["By"][:1]
    with pytest.raises(ValueError, match=r"^every leaf of stacked_params needs a leading member axis of one size"):
        evaluation.evaluate_population(stacked, config, sessions)
