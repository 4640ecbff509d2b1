"""Populations: every member trains as its single run would, members do not touch each other."""

import dataclasses

import jax
import numpy as np
import pytest

from gru4rec_jax import data, evaluation, hrnn, model, population, synthetic, training, user_data


def _quiet(message):
    pass


@pytest.fixture(scope="module")
def toy_data():
    train, test = synthetic.generate_train_test(200, 40, seed=0)
    item_map = data.ItemMap.from_training(train.item_ids)
    return data.build_sessions(train, item_map), data.build_sessions(test, item_map), len(item_map)


# Three members that differ in every scalar; rates and weights of 0 (no dropout, no momentum,
# no logQ, a linear final activation, no score regularisation) beside nonzero ones.
_MEMBERS = [
    dict(learning_rate=0.1, momentum=0.0, dropout_p_embed=0.0, dropout_p_hidden=0.0, sample_alpha=0.5, seed=0),
    dict(learning_rate=0.05, momentum=0.3, dropout_p_embed=0.2, dropout_p_hidden=0.3, sample_alpha=0.0, seed=1),
    dict(learning_rate=0.08, momentum=0.6, dropout_p_embed=0.0, dropout_p_hidden=0.1, sample_alpha=1.0, seed=2),
]
_LOSS_SCALARS = {
    "cross-entropy": [dict(logq=0.0), dict(logq=1.0), dict(logq=0.5)],
    "bpr-max": [dict(bpreg=0.0, elu_param=0.0), dict(bpreg=1.0, elu_param=0.5), dict(bpreg=0.5, elu_param=1.0)],
    "top1-max": [dict(elu_param=0.5), dict(elu_param=0.0), dict(elu_param=1.0)],
}


def _configs(loss, **shared):
    return [training.TrainConfig(loss=loss, batch_size=4, n_sample=6, n_epochs=2, chunk_steps=40,
                                 **member, **scalars, **shared)
            for member, scalars in zip(_MEMBERS, _LOSS_SCALARS[loss])]


def _assert_close_states(got, want):
    # The vmapped program may round differently (e.g. which product of the momentum step XLA
    # fuses into a multiply-add): a few ulps per step, grown over two epochs of training.
    for name in ("params", "table_acc", "table_vel"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=5e-3, atol=5e-5),
                     getattr(got, name), getattr(want, name))
    assert int(got.step) == int(want.step)


@pytest.mark.parametrize("loss,table_update,embedding", [
    ("cross-entropy", "masked", "shared"),
    ("cross-entropy", "rows", "separate"),
    ("bpr-max", "masked", "shared"),
    ("bpr-max", "rows", "onehot"),
    ("top1-max", "masked", "separate"),
])
def test_members_train_as_their_single_runs(toy_data, loss, table_update, embedding):
    """Each member's epoch losses, parameters, optimizer state and metrics equal those of
    training.fit with its config: the same draws (seeds, samples of its own alpha, dropout
    masks only where its rate is above 0), its own scalars."""
    sessions, test, n_items = toy_data
    model_config = model.ModelConfig(n_items=n_items, layers=(8,), embedding=embedding,
                                     embedding_dim=5 if embedding == "separate" else 0)
    configs = _configs(loss, table_update=table_update)
    state, histories = population.fit_population(sessions, model_config, configs, log=_quiet)
    assert jax.tree.leaves(state)[0].shape[0] == len(configs)
    for i, config in enumerate(configs):
        single_state, single_history = training.fit(sessions, model_config, config, log=_quiet)
        assert [h.epoch for h in histories[i]] == [1, 2]
        assert [h.n_events for h in histories[i]] == [h.n_events for h in single_history]
        np.testing.assert_allclose([h.loss for h in histories[i]], [h.loss for h in single_history], rtol=1e-5)
        member = population.member_state(state, i)
        _assert_close_states(member, single_state)
        got = evaluation.evaluate(member.params, model_config, test, cutoffs=(5,))
        want = evaluation.evaluate(single_state.params, model_config, test, cutoffs=(5,))
        assert got["n_eval_events"] == want["n_eval_events"]
        assert got["recall@5"] == pytest.approx(want["recall@5"], abs=0.01)
        assert got["mrr@5"] == pytest.approx(want["mrr@5"], abs=0.01)


def _user_tables(seed=0, n_users=40):
    rng = np.random.default_rng(seed)
    rows, t = [], 0.0
    for u in range(n_users):
        for s in range(int(rng.integers(2, 5))):
            for _ in range(int(rng.integers(2, 5))):
                t += 1.0
                rows.append((f"u{u}", f"u{u}s{s}", f"i{int(rng.integers(0, 25))}", t))
    users, sessions, items, times = (np.asarray(c) for c in zip(*rows))
    return data.EventTable(session_ids=sessions, item_ids=items, times=times.astype(float), user_ids=users)


@pytest.mark.parametrize("mode", ["init", "all"])
def test_hrnn_members_train_as_their_single_runs(mode):
    """HRNN on the user-parallel schedule, with its own dropouts (user GRU, initialisation)
    per member; momentum shared by all (a constant of the program, as in a single run)."""
    table = _user_tables()
    item_map = data.ItemMap.from_training(table.item_ids)
    users = user_data.build_user_sessions(table, item_map)
    model_config = hrnn.HRNNConfig(session=model.ModelConfig(n_items=len(item_map), layers=(8,)),
                                   user_layers=(6,), mode=mode)
    configs = [training.TrainConfig(batch_size=4, n_sample=5, n_epochs=2, momentum=0.2, **member)
               for member in (dict(learning_rate=0.1, dropout_p_hidden_usr=0.0, dropout_p_init=0.3, seed=3),
                              dict(learning_rate=0.05, dropout_p_hidden_usr=0.2, dropout_p_init=0.0, seed=4),
                              dict(learning_rate=0.05, dropout_p_hidden_usr=0.4, dropout_p_init=0.1, seed=5))]
    state, histories = population.fit_population(users, model_config, configs, log=_quiet)
    for i, config in enumerate(configs):
        single_state, single_history = training.fit(users, model_config, config, log=_quiet)
        np.testing.assert_allclose([h.loss for h in histories[i]], [h.loss for h in single_history], rtol=1e-5)
        _assert_close_states(population.member_state(state, i), single_state)


def test_groups_train_as_one_vmapped_population(toy_data):
    """Members run in groups one after the other (the CPU default for large states: vmapped
    pairs, or each member's own step) or all at once: the same training."""
    sessions, _, n_items = toy_data
    model_config = model.ModelConfig(n_items=n_items, layers=(8,))
    configs = _configs("cross-entropy")
    configs.append(dataclasses.replace(configs[1], seed=7, learning_rate=0.07))
    runs = [population.fit_population(sessions, model_config, configs, group_size=size, log=_quiet)
            for size in (4, 2, 1)]
    (whole_state, whole_histories), others = runs[0], runs[1:]
    for state, histories in others:
        for got, want in zip(histories, whole_histories):
            np.testing.assert_allclose([h.loss for h in got], [h.loss for h in want], rtol=1e-5)
        for i in range(len(configs)):
            _assert_close_states(population.member_state(state, i), population.member_state(whole_state, i))
    with pytest.raises(ValueError, match="does not divide"):
        population.make_population_chunk(model_config, configs, group_size=3)


def test_diverging_member_leaves_the_others_alone(toy_data):
    """A member with a huge learning rate is reported as diverged (nan losses, a log line, nan in
    on_epoch_end); the others train as beside a sane member."""
    sessions, _, n_items = toy_data
    model_config = model.ModelConfig(n_items=n_items, layers=(8,))
    sane = _configs("cross-entropy")
    diverging = list(sane)
    diverging[1] = dataclasses.replace(sane[1], learning_rate=1e38, momentum=0.9)
    messages, reported = [], []
    state, histories = population.fit_population(
        sessions, model_config, diverging, log=messages.append,
        on_epoch_end=lambda state, epoch, losses: reported.append((epoch, losses)))
    reference_state, reference_histories = population.fit_population(sessions, model_config, sane, log=_quiet)
    assert all(np.isnan(h.loss) for h in histories[1])
    assert any("member 1 diverged in epoch 1" in m for m in messages)
    assert [epoch for epoch, _ in reported] == [1, 2]
    assert all(np.isnan(losses[1]) and np.isfinite(losses[0]) and np.isfinite(losses[2]) for _, losses in reported)
    for i in (0, 2):
        # Two compilations of one program (an accelerator may autotune them apart): float tolerance.
        assert [h.loss for h in histories[i]] == pytest.approx([h.loss for h in reference_histories[i]], rel=1e-5)
        _assert_close_states(population.member_state(state, i), population.member_state(reference_state, i))


def test_training_stops_once_every_member_diverged(toy_data):
    sessions, _, n_items = toy_data
    configs = [dataclasses.replace(c, learning_rate=1e38, momentum=0.9) for c in _configs("cross-entropy")]
    messages = []
    _, histories = population.fit_population(sessions, model.ModelConfig(n_items=n_items, layers=(8,)), configs,
                                             log=messages.append)
    assert [len(h) for h in histories] == [1, 1, 1]
    assert any("every member has diverged" in m for m in messages)


def test_fields_are_either_shapes_or_member_scalars():
    fields = {f.name for f in dataclasses.fields(training.TrainConfig)}
    assert set(population.SHAPE_FIELDS) | set(population.MEMBER_FIELDS) == fields
    assert not set(population.SHAPE_FIELDS) & set(population.MEMBER_FIELDS)


@pytest.mark.parametrize("field,value", [("batch_size", 8), ("loss", "bpr-max"), ("n_sample", 3), ("n_epochs", 3),
                                         ("chunk_steps", 7), ("table_update", "rows"), ("final_act", "tanh")])
def test_check_population_names_the_differing_shape(field, value):
    configs = _configs("cross-entropy")
    configs[2] = dataclasses.replace(configs[2], **{field: value, "logq": 0.0})
    with pytest.raises(ValueError, match=f"must share {field}") as error:
        population.check_population(configs)
    assert "\n" not in str(error.value)


def test_check_population_accepts_differing_scalars_and_rejects_nothing_or_a_mesh(toy_data):
    population.check_population(_configs("bpr-max"))
    with pytest.raises(ValueError, match="at least one member"):
        population.check_population([])
    sessions, _, n_items = toy_data
    with pytest.raises(ValueError, match="one device"):
        population.fit_population(sessions, model.ModelConfig(n_items=n_items, layers=(4,)), _configs("bpr-max"),
                                  mesh=object(), log=_quiet)


def test_keep_probability_draws_all_kept_for_rate_zero():
    """A member without dropout beside members with it: its mask (a keep probability of 1)
    keeps every unit and scales by exactly 1; the float rate 0 draws no mask at all."""
    key = jax.random.PRNGKey(0)
    assert model.keep_mask(key, 0.0, (4, 3)) is None
    keep = model.keep_mask(key, model.KeepProbability(jax.numpy.float32(1.0)), (64, 32))
    assert keep.dtype == bool and bool(keep.all())
    x = jax.numpy.asarray(np.random.default_rng(0).normal(size=(64, 32)), jax.numpy.float32)
    np.testing.assert_array_equal(model._apply_dropout(x, keep, model.KeepProbability(jax.numpy.float32(1.0))), x)
    # A rate given as its keep probability draws and scales exactly as the float rate.
    rate = 0.3
    traced = model.KeepProbability(jax.numpy.float32(1.0 - rate))
    np.testing.assert_array_equal(model.keep_mask(key, traced, (64, 32)), model.keep_mask(key, rate, (64, 32)))
    mask = model.keep_mask(key, rate, (64, 32))
    np.testing.assert_array_equal(model._apply_dropout(x, mask, traced), model._apply_dropout(x, mask, rate))
