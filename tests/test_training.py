"""The training step against an independent dense reference, masking, padding, resume, NaN."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru4rec_jax import batching, data, model, sampling, synthetic, training

EPS = 1e-6


def _one_step_chunk(inputs, targets, active, reset=None):
    b = len(inputs)
    return {
        "inputs": jnp.asarray([inputs], jnp.int32),
        "targets": jnp.asarray([targets], jnp.int32),
        "active": jnp.asarray([active], bool),
        "reset": jnp.asarray([reset if reset is not None else [True] * b], bool),
    }


def _run_one_step(model_config, config, state, chunk, support):
    train_chunk = training.make_train_chunk(model_config, config)
    hidden = model.zero_hidden(model_config, config.batch_size)
    sampler = sampling.alias_table(support, config.sample_alpha)
    log_support = jnp.log(jnp.asarray(support, jnp.float32))
    state, hidden, stats = train_chunk(state, hidden, chunk, jax.random.PRNGKey(9), sampler, log_support)
    return state, hidden, stats


def _dense_reference_step(params, inputs, targets, active, batch_size, lr, mu):
    """Dense formulation: cross-entropy over in-batch columns of active lanes, gradients
    w.r.t. the WHOLE tables, GRU4Rec Adagrad applied to the rows the step touched."""
    active = np.asarray(active)
    rows = np.flatnonzero(active)
    x_items, y_items = np.asarray(inputs)[rows], np.asarray(targets)[rows]

    def loss(params):
        wy, by = params["tables"]["Wy"], params["tables"]["By"]
        layer = params["layers"][0]
        h = jnp.zeros((len(rows), layer["Wh"].shape[0]))
        size = h.shape[1]
        v = wy[x_items] @ layer["Wx"] + layer["b"]
        r = jax.nn.sigmoid(v[:, size : 2 * size] + h @ layer["Wrz"][:, :size])
        z = jax.nn.sigmoid(v[:, 2 * size :] + h @ layer["Wrz"][:, size:])
        c = jnp.tanh((r * h) @ layer["Wh"] + v[:, :size])
        out = (1 - z) * h + z * c
        scores = out @ wy[y_items].T + by[y_items]
        logp = scores - jax.scipy.special.logsumexp(scores, axis=1, keepdims=True)
        return -jnp.sum(jnp.diagonal(logp)) / batch_size

    grads = jax.grad(loss)(params)
    touched = np.zeros(params["tables"]["Wy"].shape[0], bool)
    touched[x_items] = True
    touched[y_items] = True
    touched_by = np.zeros_like(touched)
    touched_by[y_items] = True

    def adagrad(p, g, mask=None):
        p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
        acc = g**2
        vel = -lr * g / np.sqrt(acc + EPS)  # mu * 0 + step
        new = p + vel
        if mask is not None:
            m = mask.reshape((-1,) + (1,) * (p.ndim - 1))
            new, acc, vel = np.where(m, new, p), np.where(m, acc, 0), np.where(m, vel, 0)
        return new, acc, vel

    out = {"Wy": adagrad(params["tables"]["Wy"], grads["tables"]["Wy"], touched),
           "By": adagrad(params["tables"]["By"], grads["tables"]["By"], touched_by)}
    out["layers"] = {k: adagrad(params["layers"][0][k], grads["layers"][0][k]) for k in params["layers"][0]}
    return out, touched


@pytest.mark.parametrize("candidates_first", [True, False])
@pytest.mark.parametrize("table_update", ["rows", "masked"])
@pytest.mark.parametrize("active", [[True] * 5, [True, False, True, True, False]])
def test_one_step_equals_dense_reference(active, table_update, candidates_first, monkeypatch):
    """Sparse row gradients + row-sparse Adagrad == dense gradients applied on touched rows.

    Inputs and targets repeat items (duplicate rows are summed before squaring),
    an item is both an input and a target, and inactive lanes touch nothing.
    Both score layouts (CPU's candidates-first, the accelerators' lanes-first).
    """
    monkeypatch.setattr(training, "_candidates_first", lambda mesh: candidates_first)
    n, b = 12, 5
    model_config = model.ModelConfig(n_items=n, layers=(6,))
    config = training.TrainConfig(batch_size=b, n_sample=0, learning_rate=0.1, momentum=0.3,
                                  dropout_p_hidden=0.0, loss="cross-entropy", table_update=table_update)
    state = training.init_train_state(jax.random.PRNGKey(1), model_config)
    params0 = jax.tree.map(np.asarray, state.params)
    inputs, targets = [3, 3, 7, 1, 9], [7, 2, 7, 3, 10]
    state, _, (loss_sum, n_steps, n_events) = _run_one_step(
        model_config, config, state, _one_step_chunk(inputs, targets, active), np.ones(n))
    assert int(n_steps) == 1 and int(n_events) == sum(active)
    want, touched = _dense_reference_step(params0, inputs, targets, active, b, 0.1, 0.3)
    got = state.params
    np.testing.assert_allclose(got["tables"]["Wy"], want["Wy"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.table_acc["Wy"], want["Wy"][1], rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(state.table_vel["Wy"], want["Wy"][2], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got["tables"]["By"], want["By"][0], rtol=1e-5, atol=1e-6)
    for k in ("Wx", "Wrz", "Wh", "b"):
        np.testing.assert_allclose(got["layers"][0][k], want["layers"][k][0], rtol=1e-4, atol=1e-6)
    # Rows nobody touched are bit-identical.
    np.testing.assert_array_equal(np.asarray(got["tables"]["Wy"])[~touched], params0["tables"]["Wy"][~touched])


def test_all_inactive_padding_step_changes_nothing():
    """Padding steps (no active lane) must not move parameters, momentum or the step counter."""
    model_config = model.ModelConfig(n_items=8, layers=(4,))
    config = training.TrainConfig(batch_size=3, n_sample=4, momentum=0.5)
    state = training.init_train_state(jax.random.PRNGKey(0), model_config)
    state, _, _ = _run_one_step(model_config, config, state, _one_step_chunk([1, 2, 3], [2, 3, 4], [True] * 3), np.ones(8))
    before = jax.tree.map(np.asarray, state)
    state, _, (loss, steps, events) = _run_one_step(
        model_config, config, state, _one_step_chunk([0, 0, 0], [0, 0, 0], [False] * 3), np.ones(8))
    assert int(steps) == 0 and int(events) == 0 and float(loss) == 0.0
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state), before)


def _toy_sessions(seed=0, n_sessions=300, n_items=60):
    train, _ = synthetic.generate_train_test(n_sessions, n_items, seed=seed)
    item_map = data.ItemMap.from_training(train.item_ids)
    return data.build_sessions(train, item_map), len(item_map)


def test_chunk_length_does_not_change_training():
    """One compiled chunk with padded tail == other chunkings: the same steps, keys, results."""
    sessions, n = _toy_sessions()
    model_config = model.ModelConfig(n_items=n, layers=(8,))
    results = []
    for chunk_steps in (7, 64, 100000):
        config = training.TrainConfig(batch_size=4, n_sample=5, n_epochs=1, dropout_p_hidden=0.3,
                                      chunk_steps=chunk_steps, momentum=0.2)
        state, history = training.fit(sessions, model_config, config, log=lambda s: None)
        results.append((state, history[0]))
    for state, stats in results[1:]:
        assert stats.n_steps == results[0][1].n_steps and stats.n_events == results[0][1].n_events
        assert stats.loss == pytest.approx(results[0][1].loss, rel=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                     state.params, results[0][0].params)


@pytest.mark.parametrize("loss,embedding", [("bpr-max", "shared"), ("cross-entropy", "separate"),
                                            ("bpr-max", "onehot")])
def test_table_update_strategies_train_alike(loss, embedding):
    """The "rows" update (deduplication workspace carried over the steps of a chunk, row
    gradients) and the "masked" one (the output layer's gradients table-shaped from its
    product) give the same epoch, with samples and momentum, for every input embedding."""
    sessions, n = _toy_sessions(seed=3)
    model_config = model.ModelConfig(n_items=n, layers=(8,), embedding=embedding,
                                     embedding_dim=5 if embedding == "separate" else 0)
    runs = {}
    for table_update in ("rows", "masked"):
        config = training.TrainConfig(batch_size=4, n_sample=6, n_epochs=1, momentum=0.4, chunk_steps=50,
                                      table_update=table_update, loss=loss, dropout_p_embed=0.2)
        runs[table_update] = training.fit(sessions, model_config, config, log=lambda s: None)
    (rows_state, rows_history), (masked_state, masked_history) = runs["rows"], runs["masked"]
    assert rows_history[0].n_steps > 50  # several chunks: the workspace is rebuilt per chunk
    assert rows_history[0].loss == pytest.approx(masked_history[0].loss, rel=1e-5)
    for name in ("params", "table_acc", "table_vel"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                     getattr(rows_state, name), getattr(masked_state, name))


@pytest.mark.parametrize("table_update", ["rows", "masked"])
@pytest.mark.parametrize("loss,extra", [("cross-entropy", {"logq": 1.0}), ("bpr-max", {"bpreg": 1.5}),
                                        ("top1-max", {}), ("top1", {}), ("bpr", {})])
def test_score_layouts_train_alike(loss, extra, table_update, monkeypatch):
    """The accelerators' (M, M+S) score matrix and CPU's (M+S, M) transpose give the same
    epoch for every loss (with samples, logQ, padded lanes), row and masked table updates."""
    sessions, n = _toy_sessions(seed=5)
    model_config = model.ModelConfig(n_items=n, layers=(8,))
    config = training.TrainConfig(batch_size=4, n_sample=6, n_epochs=1, momentum=0.3, chunk_steps=40,
                                  table_update=table_update, loss=loss, **extra)
    runs = []
    for candidates_first in (True, False):
        monkeypatch.setattr(training, "_candidates_first", lambda mesh: candidates_first)
        runs.append(training.fit(sessions, model_config, config, log=lambda s: None))
    (first_state, first_history), (last_state, last_history) = runs
    assert first_history[0].loss == pytest.approx(last_history[0].loss, rel=1e-5)
    for name in ("params", "table_acc", "table_vel"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                     getattr(first_state, name), getattr(last_state, name))


def test_candidate_scores_gives_table_shaped_gradients():
    """The output layer's scores, and their gradients summed per table row (duplicate candidates
    add up, rows no candidate names get 0), against numpy."""
    rng = np.random.default_rng(5)
    n, h, b = 9, 4, 3
    table, bias, output = (rng.normal(size=shape).astype(np.float32) for shape in ((n, h), (n,), (b, h)))
    columns = np.array([2, 5, 2, 0, 8, 5, 5])

    def objective(table, bias, output):
        return jnp.sum(jnp.sin(training._candidate_scores(n, table, bias, jnp.asarray(columns), output)))

    got = jax.grad(objective, argnums=(0, 1, 2))(table, bias, output)
    scores = table[columns] @ output.T + bias[columns][:, None]
    score_grads = np.cos(scores.astype(np.float64))
    want_table, want_bias = np.zeros((n, h)), np.zeros(n)
    for k, row in enumerate(columns):
        want_table[row] += score_grads[k] @ output
        want_bias[row] += score_grads[k].sum()
    np.testing.assert_allclose(float(objective(table, bias, output)), np.sin(scores).sum(), rtol=1e-5)
    np.testing.assert_allclose(got[0], want_table, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1], want_bias, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[2], score_grads.T @ table[columns], rtol=1e-4, atol=1e-5)
    untouched = np.setdiff1d(np.arange(n), columns)
    assert np.all(np.asarray(got[0])[untouched] == 0.0) and np.all(np.asarray(got[1])[untouched] == 0.0)


def _tiny_chunk_inputs(n_items, units, **train_args):
    """(model config, train config, state, the other arguments of a one-step chunk) of a tiny model."""
    model_config = model.ModelConfig(n_items=n_items, layers=(units,))
    config = training.TrainConfig(batch_size=3, n_sample=4, **train_args)
    state = training.init_train_state(jax.random.PRNGKey(0), model_config)
    args = (model.zero_hidden(model_config, 3), _one_step_chunk([1, 2, 3], [2, 3, 4], [True] * 3),
            jax.random.PRNGKey(9), sampling.alias_table(np.ones(n_items), 0.5), jnp.zeros((n_items,)))
    return model_config, config, state, args


def test_compile_falls_back_when_xla_lacks_the_cpu_options(monkeypatch):
    """The CPU compiler options are experimental XLA names: a build without them still compiles
    the chunk, which computes the same step."""
    model_config, config, state, args = _tiny_chunk_inputs(8, 4)
    chunk_fn = training.make_train_chunk(model_config, config)

    def loss_of(compiled):  # state and hidden are donated: pass copies
        return float(compiled(*jax.tree.map(jnp.copy, (state, args[0])), *args[1:])[2][0])

    expected = loss_of(training.compile_train_chunk(chunk_fn, state, *args))
    monkeypatch.setattr(training, "_cpu_compiler_options", lambda units: {"xla_cpu_no_such_option_in_any_build": "1"})
    assert loss_of(training.compile_train_chunk(chunk_fn, state, *args)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("units", [4, training._YNNPACK_PRODUCTS_ABOVE_UNITS + 8])
def test_this_xla_build_takes_every_cpu_option(units):
    """The fallback above would hide a misspelt or retired option name (and its speed): the
    installed XLA must accept each option as given."""
    lowered = jax.jit(lambda x: jnp.tanh(x) @ x.T).lower(jnp.ones((8, 8)))
    for name, value in training._cpu_compiler_options(units).items():
        lowered.compile({name: value})


@pytest.mark.parametrize("units, ynnpack", [(4, False), (training._YNNPACK_PRODUCTS_ABOVE_UNITS + 8, True)])
def test_cpu_chunk_hands_products_to_ynnpack_only_for_wide_layers(units, ynnpack):
    """The compiler options reach XLA: a narrow output layer's products stay XLA's own dots, a wide
    one's go to YNNPACK (faster there on CPU)."""
    model_config, config, state, args = _tiny_chunk_inputs(8, units)
    hlo = training.compile_train_chunk(training.make_train_chunk(model_config, config), state, *args).as_text()
    assert ("__ynn_fusion" in hlo) == ynnpack


@pytest.mark.parametrize("table_update", ["rows", "masked"])
def test_compiled_chunk_updates_optimizer_state_in_place(table_update):
    """Guards the in-place updates of the scan-carried state: XLA copies a carried buffer each step
    when a value is read after its buffer is overwritten. No item table, its accumulator or
    velocity, nor the item-sized deduplication workspace (rows) may ever be copied, on either
    update path (masked: the output table's gradient comes table-shaped from one product); at
    most a few dense weights (read by the input rows' gradient) may be: not every accumulator
    and velocity, as before optimizer.adagrad_momentum_step."""
    n_items, units = 101, 6
    model_config, config, state, args = _tiny_chunk_inputs(n_items, units, momentum=0.5, table_update=table_update)
    hlo = training.compile_train_chunk(training.make_train_chunk(model_config, config), state, *args).as_text()
    copied = re.findall(r"= (\w+\[[\d,]*\])\{[^}]*\} copy\(", hlo)
    for item_sized in (f"s32[{n_items + 1}]", f"f32[{n_items},{units}]", f"f32[{n_items}]"):
        assert item_sized not in copied, copied
    layer_shapes = {f"f32[{','.join(map(str, leaf.shape))}]" for leaf in jax.tree.leaves(state.params["layers"])}
    n_layer_leaves = len(jax.tree.leaves(state.params["layers"]))
    assert sum(shape in layer_shapes for shape in copied) < n_layer_leaves, copied


def test_epoch_consumes_every_event():
    sessions, n = _toy_sessions()
    config = training.TrainConfig(batch_size=8, n_sample=3, n_epochs=1)
    _, history = training.fit(sessions, model.ModelConfig(n_items=n, layers=(4,)), config, log=lambda s: None)
    assert history[0].n_events == int(np.sum(sessions.lengths - 1))
    schedule = batching.session_parallel_schedule(sessions, 8)
    assert history[0].n_steps == schedule.n_steps


def test_resume_continues_exactly():
    """Two epochs in one go == one epoch, then resuming from its state for the second."""
    sessions, n = _toy_sessions(seed=1)
    model_config = model.ModelConfig(n_items=n, layers=(8,))
    config = training.TrainConfig(batch_size=4, n_sample=6, n_epochs=2, dropout_p_hidden=0.2,
                                  dropout_p_embed=0.1, momentum=0.3, chunk_steps=50)
    full, full_history = training.fit(sessions, model_config, config, log=lambda s: None)
    half, _ = training.fit(sessions, model_config, training.TrainConfig(**{**config.__dict__, "n_epochs": 1}),
                           log=lambda s: None)
    resumed, resumed_history = training.fit(sessions, model_config, config, state=half, start_epoch=1,
                                            log=lambda s: None)
    assert resumed_history[0].epoch == 2
    assert resumed_history[0].loss == full_history[1].loss
    jax.tree.map(np.testing.assert_array_equal, resumed, full)


def test_seed_changes_and_fixes_the_run():
    sessions, n = _toy_sessions(seed=2)
    model_config = model.ModelConfig(n_items=n, layers=(4,))
    losses = [training.fit(sessions, model_config, training.TrainConfig(batch_size=4, n_sample=4, n_epochs=1, seed=s),
                           log=lambda m: None)[1][0].loss for s in (0, 0, 1)]
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_non_finite_loss_stops_before_the_epoch_callback():
    """A diverging run raises TrainingError and never reports (e.g. checkpoints) the bad epoch."""
    sessions, n = _toy_sessions(seed=3)
    config = training.TrainConfig(batch_size=4, n_sample=4, n_epochs=2, learning_rate=1e38, momentum=0.9)
    seen = []
    with pytest.raises(training.TrainingError, match="non-finite training loss in epoch 1"):
        training.fit(sessions, model.ModelConfig(n_items=n, layers=(4,)), config,
                     on_epoch_end=lambda s, e: seen.append(e), log=lambda m: None)
    assert seen == []


@pytest.mark.parametrize("loss", sorted(training.losses_lib.LOSSES))
@pytest.mark.parametrize("embedding", ["shared", "separate", "onehot"])
def test_every_loss_and_embedding_learns(loss, embedding):
    """Two layers, each loss and embedding mode: the epoch loss falls on structured data."""
    sessions, n = _toy_sessions(seed=4, n_sessions=400, n_items=40)
    model_config = model.ModelConfig(n_items=n, layers=(16, 12), embedding=embedding,
                                     embedding_dim=8 if embedding == "separate" else 0)
    config = training.TrainConfig(loss=loss, batch_size=8, n_sample=16, n_epochs=3, learning_rate=0.1,
                                  dropout_p_hidden=0.1, dropout_p_embed=0.1, momentum=0.1, bpreg=0.5)
    _, history = training.fit(sessions, model_config, config, log=lambda m: None)
    assert all(np.isfinite(h.loss) for h in history)
    assert history[-1].loss < history[0].loss


def test_config_rejects_impossible_values():
    for bad in ({"batch_size": 0}, {"dropout_p_hidden": 1.0}, {"learning_rate": 0.0}, {"loss": "hinge"},
                {"n_sample": -1}, {"momentum": 1.0}, {"logq": 1.0, "loss": "bpr-max"}, {"final_act": "gelu"}):
        with pytest.raises(ValueError):
            training.TrainConfig(**bad)


def test_final_activation_defaults_follow_the_reference():
    x = jnp.asarray([-2.0, 0.5])
    elu = training.final_activation(training.TrainConfig(loss="bpr-max", elu_param=0.5))
    np.testing.assert_allclose(elu(x), [0.5 * (np.exp(-2.0) - 1), 0.5], rtol=1e-6)
    linear = training.final_activation(training.TrainConfig(loss="bpr-max", elu_param=0.0))
    np.testing.assert_allclose(linear(x), x)
    np.testing.assert_allclose(training.final_activation(training.TrainConfig(loss="top1"))(x), np.tanh(x), rtol=1e-6)
    np.testing.assert_allclose(training.final_activation(training.TrainConfig())(x), x)
