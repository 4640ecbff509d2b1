"""HRNN: the one-step flags, zero state for a user's first session, the all mode's user input, replay,
no leaks, checkpoints (old ones included)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru4rec_jax import checkpoint, data, evaluation, experiment, hrnn, model, sampling, training, user_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def _np_gru(layer, x, h):
    size = h.shape[1]
    v = x @ layer["Wx"] + layer["b"]
    r = _sig(v[:, size:2 * size] + h @ layer["Wrz"][:, :size])
    z = _sig(v[:, 2 * size:] + h @ layer["Wrz"][:, size:])
    c = np.tanh((r * h) @ layer["Wh"] + v[:, :size])
    return (1 - z) * h + z * c


def test_flags_zero_update_and_initialise():
    """user_start zeroes both states; session_start runs the user GRU on the finished session's
    state and starts the session from tanh(W_init c + b_init); other lanes keep their states."""
    config = hrnn.HRNNConfig(session=model.ModelConfig(n_items=7, layers=(5,)), user_layers=(4,))
    params = jax.tree.map(np.asarray, hrnn.init_params(jax.random.PRNGKey(0), config))
    params["layers"]["init"][0]["b"] = np.full(5, 0.3, np.float32)
    rng = np.random.default_rng(0)
    carry = {"session": [rng.normal(size=(3, 5)).astype(np.float32)],
             "user": [rng.normal(size=(3, 4)).astype(np.float32)]}
    user_start, session_start = np.array([True, False, False]), np.array([False, True, False])
    out = hrnn.begin_step(jax.tree.map(jnp.asarray, params["layers"]), jax.tree.map(jnp.asarray, carry),
                          jnp.asarray(user_start), jnp.asarray(session_start))
    # Lane 0: new user -> zeros.
    assert np.all(np.asarray(out["session"][0][0]) == 0) and np.all(np.asarray(out["user"][0][0]) == 0)
    # Lane 1: user GRU update, then the session initialisation.
    c = _np_gru(params["layers"]["user"][0], carry["session"][0][1:2], carry["user"][0][1:2])
    s = np.tanh(c @ params["layers"]["init"][0]["W"] + params["layers"]["init"][0]["b"])
    np.testing.assert_allclose(np.asarray(out["user"][0][1:2]), c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["session"][0][1:2]), s, rtol=1e-5, atol=1e-6)
    # Lane 2: untouched.
    np.testing.assert_array_equal(np.asarray(out["session"][0][2]), carry["session"][0][2])
    np.testing.assert_array_equal(np.asarray(out["user"][0][2]), carry["user"][0][2])


def _np_session_step(layer, x_proj, h, user, wc_candidate, wc_reset, wc_update):
    """The GRU4Rec cell with the user state added to the pre-activations of the blocks given a matrix."""
    size = h.shape[1]

    def term(wc):
        return 0.0 if wc is None else user @ wc

    r = _sig(x_proj[:, size:2 * size] + term(wc_reset) + h @ layer["Wrz"][:, :size])
    z = _sig(x_proj[:, 2 * size:] + term(wc_update) + h @ layer["Wrz"][:, size:])
    c = np.tanh((r * h) @ layer["Wh"] + x_proj[:, :size] + term(wc_candidate))
    return (1 - z) * h + z * c


@pytest.mark.parametrize("embedding", ["onehot", "shared"])
def test_all_mode_user_input_gates_or_all_blocks(embedding):
    """HRNN-all: by default (the authors' code) the user state enters the reset and update gates
    only, through a (u, 2h) Wc; with user_input=all_blocks (the paper) also the candidate, (u, 3h)."""
    session = model.ModelConfig(n_items=7, layers=(5,), embedding=embedding)
    gates = hrnn.HRNNConfig(session=session, user_layers=(4,), mode="all")
    blocks = hrnn.HRNNConfig(session=session, user_layers=(4,), mode="all", user_input="all_blocks")
    assert gates.user_input == "gates"
    assert hrnn.init_params(jax.random.PRNGKey(1), gates)["layers"]["session"][0]["Wc"].shape == (4, 10)
    params = jax.tree.map(np.asarray, hrnn.init_params(jax.random.PRNGKey(1), blocks))
    layer, wc = params["layers"]["session"][0], params["layers"]["session"][0]["Wc"]
    assert wc.shape == (4, 15)
    gate_params = jax.tree.map(lambda x: x, params)
    gate_params["layers"]["session"][0] = {**layer, "Wc": wc[:, 5:]}  # the same gate blocks, no candidate block

    rng = np.random.default_rng(2)
    items = np.array([1, 2, 6])
    carry = {"session": [rng.normal(size=(3, 5)).astype(np.float32)],
             "user": [rng.normal(size=(3, 4)).astype(np.float32)]}
    rows = np.asarray(model.embed_inputs(params["tables"], jnp.asarray(items), session))
    x_proj = (rows if embedding == "onehot" else rows @ layer["Wx"]) + layer["b"]
    h, user = carry["session"][0], carry["user"][0]
    want_gates = _np_session_step(layer, x_proj, h, user, None, wc[:, 5:10], wc[:, 10:])
    want_blocks = _np_session_step(layer, x_proj, h, user, wc[:, :5], wc[:, 5:10], wc[:, 10:])
    want_none = _np_session_step(layer, x_proj, h, user, None, None, None)
    # Preconditions: each block's user term moves the output well beyond the tolerance.
    assert np.abs(want_gates - want_blocks).max() > 1e-2 and np.abs(want_gates - want_none).max() > 1e-2

    def run(p, config):
        out, new = hrnn.forward(jax.tree.map(jnp.asarray, p["layers"]), jnp.asarray(rows),
                                jax.tree.map(jnp.asarray, carry), config)
        np.testing.assert_array_equal(np.asarray(new["user"][0]), user)  # the user state only changes at starts
        return np.asarray(out)

    np.testing.assert_allclose(run(gate_params, gates), want_gates, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run(params, blocks), want_blocks, rtol=1e-5, atol=1e-5)
    init_config = hrnn.HRNNConfig(session=session, user_layers=(4,), mode="init")
    assert "Wc" not in hrnn.init_params(jax.random.PRNGKey(1), init_config)["layers"]["session"][0]
    with pytest.raises(ValueError, match="hrnn_user_input"):
        hrnn.HRNNConfig(session=session, mode="all", user_input="candidate")


def _user_tables(seed=0, n_users=40):
    rng = np.random.default_rng(seed)
    rows, t = [], 0.0
    for u in range(n_users):
        for s in range(int(rng.integers(2, 5))):
            for _ in range(int(rng.integers(2, 5))):
                t += 1.0
                rows.append((f"u{u}", f"u{u}s{s}", f"i{int(rng.integers(0, 25))}", t))
    users, sessions, items, times = (np.asarray(c) for c in zip(*rows))
    table = data.EventTable(session_ids=sessions, item_ids=items, times=times.astype(float), user_ids=users)
    return user_data.split_last_session(table)


@pytest.fixture(scope="module")
def trained():
    train, test = _user_tables()
    item_map = data.ItemMap.from_training(train.item_ids)
    config = hrnn.HRNNConfig(session=model.ModelConfig(n_items=len(item_map), layers=(8,)), user_layers=(6,))
    state, _ = training.fit(user_data.build_user_sessions(train, item_map), config,
                            training.TrainConfig(batch_size=4, n_sample=5, n_epochs=2, dropout_p_init=0.1,
                                                 dropout_p_hidden_usr=0.1), log=lambda m: None)
    return train, test, item_map, config, state


def test_replay_with_a_zero_initialisation_equals_session_only_evaluation(trained):
    """With W_init = 0 and b_init = 0 every session starts from zero: HRNN's replay evaluation
    must then equal GRU4Rec's session-only evaluation of its session network."""
    train, test, item_map, config, state = trained
    params = jax.tree.map(lambda x: x, state.params)
    params["layers"]["init"] = [{"W": p["W"] * 0, "b": p["b"] * 0} for p in params["layers"]["init"]]
    replay = experiment._replay_data(train, test, item_map, "test")
    got = evaluation.evaluate(params, config, replay, cutoffs=(1, 5))
    session_only = evaluation.evaluate({"tables": params["tables"], "layers": params["layers"]["session"]},
                                       config.session, data.build_sessions(test, item_map), cutoffs=(1, 5))
    assert got == pytest.approx(session_only, abs=1e-6)  # float32 sums of 1 / log2(rank + 1) in other chunks


def test_users_do_not_leak_into_each_other(trained):
    """Evaluating users one lane at a time or many in parallel gives the same metrics."""
    train, test, item_map, config, state = trained
    replay = experiment._replay_data(train, test, item_map, "test")
    together = evaluation.evaluate(state.params, config, replay, cutoffs=(5,), batch_size=16)
    alone = evaluation.evaluate(state.params, config, replay, cutoffs=(5,), batch_size=1)
    assert together == pytest.approx(alone, abs=1e-6)  # float32 sums in another order
    assert together["n_eval_events"] == int(np.sum(data.build_sessions(test, item_map).lengths - 1))


def _write(path, table):
    data.write_events(str(path), table, time_key="Time")
    return str(path)


@pytest.mark.parametrize("user_input", ["gates", "all_blocks"])
def test_cli_trains_saves_and_restores_hrnn(tmp_path, user_input):
    train, test = _user_tables(seed=1)
    train_path, test_path = _write(tmp_path / "train.tsv", train), _write(tmp_path / "test.tsv", test)
    common = [sys.executable, "-m", "experiments.train", f"--train_path={train_path}", f"--test_path={test_path}",
              "--model=hrnn", "--hrnn_mode=all", f"--hrnn_user_input={user_input}", "--layers=8", "--user_layers=6",
              "--batch_size=4", "--n_sample=5", "--cutoffs=5"]
    first = subprocess.run(common + ["--n_epochs=2", f"--save_path={tmp_path / 'ck'}",
                                     f"--metrics_out={tmp_path / 'a.json'}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run([sys.executable, "-m", "experiments.train", f"--load_path={tmp_path / 'ck'}",
                            f"--test_path={test_path}", "--cutoffs=5", f"--metrics_out={tmp_path / 'b.json'}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["recall@5"] == b["recall@5"] and a["mrr@5"] == b["mrr@5"]
    assert checkpoint.load(str(tmp_path / "ck")).model_config.user_input == user_input


def test_checkpoint_from_before_user_input_restores_as_all_blocks(tmp_path):
    """A checkpoint written before ``user_input`` existed (its HRNN config has no such field and its
    Wc is (u, 3h)) restores as all_blocks and evaluates exactly as the state it was saved from."""
    train, test = _user_tables(seed=2)
    item_map = data.ItemMap.from_training(train.item_ids)
    config = hrnn.HRNNConfig(session=model.ModelConfig(n_items=len(item_map), layers=(8,)), user_layers=(6,),
                             mode="all", user_input="all_blocks")
    train_config = training.TrainConfig(batch_size=4, n_sample=5, n_epochs=1)
    state, history = training.fit(user_data.build_user_sessions(train, item_map), config, train_config,
                                  log=lambda m: None)
    writer = checkpoint.CheckpointWriter(str(tmp_path / "ck"))
    writer.save(state, model_config=config, train_config=train_config, item_map=item_map, epoch=1,
                epoch_losses=[history[0].loss])
    writer.close()
    # Rewrite the saved meta to what the earlier code wrote: the HRNN config without user_input.
    metas = []
    for path in (tmp_path / "ck").rglob("*"):
        try:
            meta = json.loads(path.read_text())
        except (UnicodeDecodeError, ValueError, IsADirectoryError):
            continue
        if isinstance(meta, dict) and "model_config" in meta:
            metas.append((path, meta))
    assert len(metas) == 1 and metas[0][1]["model_config"].pop("user_input") == "all_blocks"
    assert set(metas[0][1]["model_config"]) == {"session", "user_layers", "mode"}
    metas[0][0].write_text(json.dumps(metas[0][1]))

    restored = checkpoint.load(str(tmp_path / "ck"))
    assert restored.model_config == config
    jax.tree.map(np.testing.assert_array_equal, restored.state.params, state.params)
    replay = experiment._replay_data(train, test, item_map, "test")
    got = evaluation.evaluate(restored.state.params, restored.model_config, replay, cutoffs=(1, 5))
    assert got == evaluation.evaluate(state.params, config, replay, cutoffs=(1, 5))


def test_missing_user_column_is_a_one_line_error(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("SessionId\tItemId\tTime\n1\ta\t1\n1\tb\t2\n")
    result = subprocess.run([sys.executable, "-m", "experiments.train", "--model=hrnn", f"--train_path={path}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "UserId" in result.stderr


@pytest.mark.parametrize("session_start", [False, True])
def test_user_gru_learns_only_through_session_starts(session_start):
    """One training step: the user GRU and the init layer get gradients exactly when a session
    starts from the user state (truncated backprop: states are constants, weights are not)."""
    config = hrnn.HRNNConfig(session=model.ModelConfig(n_items=9, layers=(5,)), user_layers=(4,))
    train_config = training.TrainConfig(batch_size=3, n_sample=4, loss="cross-entropy", momentum=0.0)
    state = training.init_train_state(jax.random.PRNGKey(0), config)
    before = jax.tree.map(np.asarray, state.params["layers"])
    flags = np.array([[False, session_start, session_start]])
    chunk = {"inputs": jnp.array([[1, 2, 3]]), "targets": jnp.array([[4, 5, 6]]), "active": jnp.ones((1, 3), bool),
             "user_start": jnp.asarray(~flags), "session_start": jnp.asarray(flags)}
    carry = {"session": [jnp.full((3, 5), 0.5)], "user": [jnp.full((3, 4), -0.3)]}  # a session just ended
    support = np.ones(9)
    state, _, _ = training.make_train_chunk(config, train_config)(
        state, carry, chunk, jax.random.PRNGKey(1), sampling.alias_table(support, 0.5), jnp.zeros(9))
    after = jax.tree.map(np.asarray, state.params["layers"])
    for part in ("user", "init"):
        moved = any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after[part]), jax.tree.leaves(before[part])))
        assert moved == session_start, part
    session_pairs = zip(jax.tree.leaves(after["session"]), jax.tree.leaves(before["session"]))
    assert any(not np.array_equal(a, b) for a, b in session_pairs)
