"""Tests of gru4rec_jax.model against independent numpy references (GRU4REC.md sections 5 and 11)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru4rec_jax import model as model_lib
from gru4rec_jax.model import ModelConfig


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_cell(x, Wx, b, Wrz, Wh, H):
    """The original GRU4Rec cell in float64 numpy; ``Wx=None`` means x is already the (B, 3h) projection."""
    x, b, Wrz, Wh, H = (np.asarray(a, np.float64) for a in (x, b, Wrz, Wh, H))
    h = H.shape[1]
    v = (x if Wx is None else x @ np.asarray(Wx, np.float64)) + b
    rz = _sigmoid(v[:, h:3 * h] + H @ Wrz)
    r, z = rz[:, :h], rz[:, h:]
    c = np.tanh((r * H) @ Wh + v[:, :h])
    return (1.0 - z) * H + z * c


def _np_flax_style_cell(x_proj, Wrz, Wh, H):
    """flax/PyTorch GRU form: the reset gate multiplies the recurrent matmul's RESULT."""
    x_proj, Wrz, Wh, H = (np.asarray(a, np.float64) for a in (x_proj, Wrz, Wh, H))
    h = H.shape[1]
    rz = _sigmoid(x_proj[:, h:3 * h] + H @ Wrz)
    r, z = rz[:, :h], rz[:, h:]
    c = np.tanh(r * (H @ Wh) + x_proj[:, :h])
    return (1.0 - z) * H + z * c


def _random_layer(rng, d_in, h, with_wx=True, scale=0.5):
    layer = {
        "Wrz": rng.normal(0, scale, (h, 2 * h)).astype(np.float32),
        "Wh": rng.normal(0, scale, (h, h)).astype(np.float32),
        "b": rng.normal(0, scale, (3 * h,)).astype(np.float32),
    }
    if with_wx:
        layer["Wx"] = rng.normal(0, scale, (d_in, 3 * h)).astype(np.float32)
    return layer


def _to_jax(tree):
    return jax.tree.map(jnp.asarray, tree)


# --------------------------------------------------------------------------------------------
# gru_cell


def test_gru_cell_matches_original_gru4rec_cell():
    """Guards the cell equations: [candidate | r | z] block order, reset BEFORE the Wh matmul, one bias."""
    rng = np.random.default_rng(0)
    B, d, h = 5, 7, 6
    layer = _random_layer(rng, d, h)
    x = rng.normal(size=(B, d)).astype(np.float32)
    H = rng.normal(size=(B, h)).astype(np.float32)
    x_proj = x @ layer["Wx"] + layer["b"]
    got = model_lib.gru_cell(_to_jax(layer), jnp.asarray(x_proj), jnp.asarray(H))
    want = _np_cell(x, layer["Wx"], layer["b"], layer["Wrz"], layer["Wh"], H)
    assert got.shape == (B, h)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_gru_cell_is_not_flax_gru_cell():
    """A cell with the reset gate applied after the recurrent matmul (flax GRUCell) would fail here."""
    rng = np.random.default_rng(1)
    B, h = 8, 6
    layer = _random_layer(rng, h, h, with_wx=False, scale=1.0)
    x_proj = rng.normal(size=(B, 3 * h)).astype(np.float32)
    H = rng.normal(size=(B, h)).astype(np.float32)
    got = np.asarray(model_lib.gru_cell(_to_jax(layer), jnp.asarray(x_proj), jnp.asarray(H)))
    original = _np_cell(x_proj, None, np.zeros(3 * h), layer["Wrz"], layer["Wh"], H)
    flax_style = _np_flax_style_cell(x_proj, layer["Wrz"], layer["Wh"], H)
    # The two forms really are different on these inputs...
    assert np.max(np.abs(original - flax_style)) > 1e-2
    # ...and the library matches the original, not the flax form.
    np.testing.assert_allclose(got, original, rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(got - flax_style)) > 1e-2


def test_gru_cell_block_order_matters():
    """Guards swapping the [candidate | r | z] column blocks (e.g. flax's [r | z | n] order)."""
    rng = np.random.default_rng(2)
    B, h = 4, 5
    layer = _random_layer(rng, h, h, with_wx=False, scale=1.0)
    x_proj = rng.normal(size=(B, 3 * h)).astype(np.float32)
    H = rng.normal(size=(B, h)).astype(np.float32)
    got = np.asarray(model_lib.gru_cell(_to_jax(layer), jnp.asarray(x_proj), jnp.asarray(H)))
    permuted = np.concatenate([x_proj[:, h:2 * h], x_proj[:, 2 * h:], x_proj[:, :h]], axis=1)  # [r|z|c]
    wrong = _np_cell(permuted, None, np.zeros(3 * h), layer["Wrz"], layer["Wh"], H)
    assert np.max(np.abs(got - wrong)) > 1e-2


# --------------------------------------------------------------------------------------------
# init_params


def _bound(fan_in, fan_out):
    return math.sqrt(6.0 / (fan_in + fan_out))


def _check_uniform_block(block, bound, name):
    block = np.asarray(block)
    m = np.max(np.abs(block))
    assert m <= bound * (1 + 1e-6), f"{name}: max |w| {m} exceeds its bound {bound}"
    # Large blocks fill their range: guards +-0.01 init and whole-matrix (instead of per-block) fans.
    assert m > 0.9 * bound, f"{name}: max |w| {m} far below its bound {bound}"


@pytest.mark.parametrize(
    "embedding,layers,emb_dim",
    [("shared", (24,), 0), ("separate", (16, 24), 10), ("onehot", (16, 24), 0)],
)
def test_init_params_shapes_bounds_and_zero_biases(embedding, layers, emb_dim):
    """Guards shapes per embedding mode, zero biases, and per-gate-block Glorot bounds.

    The "separate" case has d_in=10 << h, so a bound computed from the whole (d_in, 3h) Wx matrix
    (sqrt(6/58) = 0.32) is below 0.9x the per-block bound (sqrt(6/26) = 0.48) and would fail, as
    would a +-0.01 initialisation.
    """
    n = 300
    config = ModelConfig(n_items=n, layers=layers, embedding=embedding, embedding_dim=emb_dim)
    params = jax.device_get(model_lib.init_params(jax.random.PRNGKey(0), config))
    tables, layer_params = params["tables"], params["layers"]

    expected_tables = {"Wy", "By"} | {"separate": {"E"}, "onehot": {"Wx0"}, "shared": set()}[embedding]
    assert set(tables) == expected_tables
    h_last = layers[-1]
    assert tables["Wy"].shape == (n, h_last)
    assert tables["By"].shape == (n,)
    np.testing.assert_array_equal(np.asarray(tables["By"]), 0.0)
    _check_uniform_block(tables["Wy"], _bound(n, h_last), "Wy")
    if embedding == "separate":
        assert tables["E"].shape == (n, emb_dim)
        _check_uniform_block(tables["E"], _bound(n, emb_dim), "E")
    if embedding == "onehot":
        h0 = layers[0]
        assert tables["Wx0"].shape == (n, 3 * h0)
        for k in range(3):
            _check_uniform_block(tables["Wx0"][:, k * h0:(k + 1) * h0], _bound(n, h0), f"Wx0 block {k}")

    assert len(layer_params) == len(layers)
    d_in = {"shared": h_last, "separate": emb_dim, "onehot": n}[embedding]
    for i, (p, h) in enumerate(zip(layer_params, layers)):
        first_onehot = i == 0 and embedding == "onehot"
        assert set(p) == ({"Wrz", "Wh", "b"} if first_onehot else {"Wx", "Wrz", "Wh", "b"})
        assert p["Wrz"].shape == (h, 2 * h)
        assert p["Wh"].shape == (h, h)
        assert p["b"].shape == (3 * h,)
        np.testing.assert_array_equal(np.asarray(p["b"]), 0.0)
        if not first_onehot:
            assert p["Wx"].shape == (d_in, 3 * h)
            for k in range(3):
                block = p["Wx"][:, k * h:(k + 1) * h]
                _check_uniform_block(block, _bound(d_in, h), f"layer {i} Wx block {k}")
        for k in range(2):
            _check_uniform_block(p["Wrz"][:, k * h:(k + 1) * h], _bound(h, h), f"layer {i} Wrz block {k}")
        _check_uniform_block(p["Wh"], _bound(h, h), f"layer {i} Wh")
        d_in = h


def test_init_params_deterministic_and_gate_blocks_independent():
    """Guards reuse of one key for every gate block (identical blocks) and non-reproducible init."""
    config = ModelConfig(n_items=40, layers=(8, 8))
    p1 = jax.device_get(model_lib.init_params(jax.random.PRNGKey(7), config))
    p2 = jax.device_get(model_lib.init_params(jax.random.PRNGKey(7), config))
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    wx = np.asarray(p1["layers"][0]["Wx"])
    assert not np.allclose(wx[:, :8], wx[:, 8:16])
    assert not np.allclose(np.asarray(p1["layers"][0]["Wx"]), np.asarray(p1["layers"][1]["Wx"]))


# --------------------------------------------------------------------------------------------
# forward_step


def _np_stack(layers, x, hidden):
    """Stacked original cells without dropout; returns the per-layer outputs."""
    outs = []
    for layer, H in zip(layers, hidden):
        Wx = layer.get("Wx")
        x = _np_cell(x, Wx, layer["b"], layer["Wrz"], layer["Wh"], H)
        outs.append(x)
    return outs


def _random_model(seed, layers, d_in, B, onehot=False):
    rng = np.random.default_rng(seed)
    params, d = [], d_in
    for i, h in enumerate(layers):
        params.append(_random_layer(rng, d, h, with_wx=not (onehot and i == 0)))
        d = h
    x = rng.normal(size=(B, 3 * layers[0] if onehot else d_in)).astype(np.float32)
    hidden = [rng.normal(size=(B, h)).astype(np.float32) for h in layers]
    return params, x, hidden


@pytest.mark.parametrize("embedding,layers", [("shared", (6,)), ("separate", (5, 7)), ("onehot", (5, 6, 4))])
def test_forward_step_without_dropout_key_matches_numpy_stack(embedding, layers):
    """Guards layer stacking (each layer's output feeds the next) and that inference applies no dropout."""
    B = 4
    d_in = {"shared": layers[-1], "separate": 3, "onehot": 0}[embedding]
    params, x, hidden = _random_model(10, layers, d_in, B, onehot=embedding == "onehot")
    config = ModelConfig(n_items=20, layers=layers, embedding=embedding, embedding_dim=max(d_in, 1))
    out, new_hidden = model_lib.forward_step(
        _to_jax(params), jnp.asarray(x), _to_jax(hidden), config,
        dropout_key=None, dropout_p_embed=0.5, dropout_p_hidden=0.5,
    )
    want = _np_stack(params, x, hidden)
    assert len(new_hidden) == len(layers)
    for got, w in zip(new_hidden, want):
        np.testing.assert_allclose(np.asarray(got), w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out), want[-1], rtol=1e-5, atol=1e-5)


def _check_dropped(got, clean, p, name):
    """``got`` must be inverted dropout of ``clean``: zeros, and survivors == clean / (1 - p)."""
    got, clean = np.asarray(got, np.float64), np.asarray(clean, np.float64)
    dropped = got == 0.0
    assert not np.any(clean[dropped] == 0.0), "ambiguous test data"
    np.testing.assert_allclose(got[~dropped], clean[~dropped] / (1.0 - p), rtol=1e-4, atol=1e-5,
                               err_msg=f"{name}: survivors not scaled by 1/(1-p)")
    return dropped.mean()


@pytest.mark.parametrize("p", [0.2, 0.6])
def test_forward_step_hidden_dropout_one_layer(p):
    """Guards "no hidden dropout on a 1-layer net" and "dropout used as keep probability": rate p zeros ~p."""
    B, h = 64, 64
    params, x, hidden = _random_model(11, (h,), h, B)
    config = ModelConfig(n_items=20, layers=(h,))
    out, new_hidden = model_lib.forward_step(
        _to_jax(params), jnp.asarray(x), _to_jax(hidden), config,
        dropout_key=jax.random.PRNGKey(0), dropout_p_embed=0.0, dropout_p_hidden=p,
    )
    # The carried state is the output AFTER dropout.
    np.testing.assert_array_equal(np.asarray(new_hidden[0]), np.asarray(out))
    clean = _np_stack(params, x, hidden)[0]
    frac = _check_dropped(out, clean, p, "layer 0")
    assert abs(frac - p) < 0.05, f"dropped fraction {frac} for rate {p}"


def test_forward_step_hidden_dropout_two_layers_carries_dropped_output():
    """Guards that each layer's dropped-out output is both its carried state and the next layer's input."""
    B, layers, p = 48, (32, 40), 0.3
    params, x, hidden = _random_model(12, layers, 8, B)
    config = ModelConfig(n_items=20, layers=layers, embedding="separate", embedding_dim=8)
    out, new_hidden = model_lib.forward_step(
        _to_jax(params), jnp.asarray(x), _to_jax(hidden), config,
        dropout_key=jax.random.PRNGKey(5), dropout_p_embed=0.0, dropout_p_hidden=p,
    )
    np.testing.assert_array_equal(np.asarray(new_hidden[-1]), np.asarray(out))
    # Layer 0: dropout of the clean output.
    l0 = params[0]
    clean0 = _np_cell(x, l0["Wx"], l0["b"], l0["Wrz"], l0["Wh"], hidden[0])
    frac0 = _check_dropped(new_hidden[0], clean0, p, "layer 0")
    # Layer 1 consumes layer 0's DROPPED output.
    l1 = params[1]
    clean1 = _np_cell(np.asarray(new_hidden[0]), l1["Wx"], l1["b"], l1["Wrz"], l1["Wh"], hidden[1])
    frac1 = _check_dropped(new_hidden[1], clean1, p, "layer 1")
    assert abs(frac0 - p) < 0.06 and abs(frac1 - p) < 0.06
    # Independent masks per layer.
    assert not np.array_equal(np.asarray(new_hidden[0])[:, :32] == 0, np.asarray(new_hidden[1])[:, :32] == 0)


def test_forward_step_dropout_is_deterministic_per_key():
    """Guards hidden randomness (e.g. a global seed): same key, same output; another key, another mask."""
    B, h = 16, 16
    params, x, hidden = _random_model(13, (h,), h, B)
    config = ModelConfig(n_items=20, layers=(h,))
    run = lambda k: np.asarray(model_lib.forward_step(  # noqa: E731
        _to_jax(params), jnp.asarray(x), _to_jax(hidden), config,
        dropout_key=jax.random.PRNGKey(k), dropout_p_embed=0.25, dropout_p_hidden=0.25)[0])
    np.testing.assert_array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))


def test_forward_step_embedding_dropout_elementwise_shared_mode():
    """Guards embedding dropout in dense modes: an elementwise inverted dropout of the input at rate p."""
    B, h, p = 64, 32, 0.25
    params, _, hidden = _random_model(14, (h,), h, B)
    # Wx = [I | 0 | 0], Wrz = Wh = 0 and a large update bias (z = 1) make the output tanh(x_dropped).
    layer = dict(params[0])
    layer["Wx"] = np.concatenate([np.eye(h), np.zeros((h, 2 * h))], axis=1).astype(np.float32)
    layer["Wrz"] = np.zeros((h, 2 * h), np.float32)
    layer["Wh"] = np.zeros((h, h), np.float32)
    layer["b"] = np.concatenate([np.zeros(2 * h), np.full(h, 30.0)]).astype(np.float32)  # z = 1
    rng = np.random.default_rng(15)
    x = rng.uniform(0.1, 0.5, size=(B, h)).astype(np.float32)  # tanh invertible, nonzero
    config = ModelConfig(n_items=20, layers=(h,))
    out, _ = model_lib.forward_step(
        _to_jax([layer]), jnp.asarray(x), _to_jax(hidden), config,
        dropout_key=jax.random.PRNGKey(3), dropout_p_embed=p, dropout_p_hidden=0.0,
    )
    x_seen = np.arctanh(np.asarray(out, np.float64))
    dropped = np.abs(x_seen) < 1e-6
    np.testing.assert_allclose(x_seen[~dropped], x[~dropped] / (1 - p), rtol=1e-4)
    assert abs(dropped.mean() - p) < 0.05
    # Elementwise: some rows are partially dropped.
    per_row = dropped.mean(axis=1)
    assert np.any((per_row > 0) & (per_row < 1))


def test_forward_step_onehot_embedding_dropout_drops_whole_rows():
    """Guards one-hot input dropout: a gathered Wx0 row is zeroed or scaled by 1/(1-p) as a whole."""
    B, h, p = 200, 6, 0.4
    params, x, hidden = _random_model(16, (h,), 0, B, onehot=True)
    config = ModelConfig(n_items=20, layers=(h,), embedding="onehot")
    out, new_hidden = model_lib.forward_step(
        _to_jax(params), jnp.asarray(x), _to_jax(hidden), config,
        dropout_key=jax.random.PRNGKey(4), dropout_p_embed=p, dropout_p_hidden=0.0,
    )
    out = np.asarray(out, np.float64)
    np.testing.assert_array_equal(np.asarray(new_hidden[0]), out)
    l0 = params[0]
    kept = _np_cell(x / (1 - p), None, l0["b"], l0["Wrz"], l0["Wh"], hidden[0])
    zeroed = _np_cell(np.zeros_like(x), None, l0["b"], l0["Wrz"], l0["Wh"], hidden[0])
    is_kept = np.all(np.abs(out - kept) < 1e-4, axis=1)
    is_zeroed = np.all(np.abs(out - zeroed) < 1e-4, axis=1)
    assert np.all(is_kept ^ is_zeroed), "every row must be wholly kept (scaled) or wholly zeroed"
    assert abs(is_zeroed.mean() - p) < 0.1


# --------------------------------------------------------------------------------------------
# score_all, embed_inputs


def test_score_all_equals_output_times_wy_plus_by():
    """Guards the prediction scores: every item, h @ Wy.T + By."""
    rng = np.random.default_rng(20)
    n, h, B = 30, 5, 3
    tables = {"Wy": rng.normal(size=(n, h)).astype(np.float32),
              "By": rng.normal(size=(n,)).astype(np.float32)}
    out = rng.normal(size=(B, h)).astype(np.float32)
    got = np.asarray(model_lib.score_all(_to_jax(tables), jnp.asarray(out)))
    assert got.shape == (B, n)
    want = out.astype(np.float64) @ tables["Wy"].T + tables["By"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("embedding,name", [("shared", "Wy"), ("separate", "E"), ("onehot", "Wx0")])
def test_embed_inputs_uses_mode_table(embedding, name):
    """Guards the shared ("constrained") embedding reading Wy rows, and the per-mode input table."""
    config = ModelConfig(n_items=12, layers=(4,), embedding=embedding, embedding_dim=3)
    rng = np.random.default_rng(21)
    tables = {k: rng.normal(size=(12, 5)).astype(np.float32) for k in ("Wy", "E", "Wx0")}
    items = np.array([3, 0, 11, 3])
    got = np.asarray(model_lib.embed_inputs(_to_jax(tables), jnp.asarray(items), config))
    np.testing.assert_array_equal(got, tables[name][items])


def _np_torch_gru_cell(x, h, w_ih, w_hh, b_ih, b_hh):
    """torch.nn.GRUCell, written from its documented equations (gate order r, z, n)."""
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    size = h.shape[1]
    gi, gh = x @ w_ih.T + b_ih, h @ w_hh.T + b_hh
    r = sig(gi[:, :size] + gh[:, :size])
    z = sig(gi[:, size:2 * size] + gh[:, size:2 * size])
    n = np.tanh(gi[:, 2 * size:] + r * gh[:, 2 * size:])
    return (1 - z) * n + z * h


def test_pytorch_cell_equals_torch_gru_cell_equations():
    """cell='pytorch' is torch.nn.GRUCell up to naming: its update gate u plays torch's 1 - z."""
    rng = np.random.default_rng(3)
    d, size, b = 5, 4, 3
    x, h = rng.normal(size=(b, d)), rng.normal(size=(b, size))
    layer = {"Wx": rng.normal(size=(d, 3 * size)), "b": rng.normal(size=3 * size),
             "Wrz": rng.normal(size=(size, 2 * size)), "Wh": rng.normal(size=(size, size)),
             "bh": rng.normal(size=3 * size)}
    got = model_lib.gru_cell({k: jnp.asarray(v, jnp.float32) for k, v in layer.items()},
                             jnp.asarray(x @ layer["Wx"] + layer["b"], jnp.float32), jnp.asarray(h, jnp.float32))
    # Map our blocks [candidate | reset | update] onto torch's [r | z | n], with z = 1 - update:
    # negate the update-gate weights and biases (sigmoid(-a) = 1 - sigmoid(a)).
    s = size
    w_ih = np.concatenate([layer["Wx"][:, s:2 * s], -layer["Wx"][:, 2 * s:], layer["Wx"][:, :s]], 1).T
    b_ih = np.concatenate([layer["b"][s:2 * s], -layer["b"][2 * s:], layer["b"][:s]])
    w_hh = np.concatenate([layer["Wrz"][:, :s], -layer["Wrz"][:, s:], layer["Wh"]], 1).T
    b_hh = np.concatenate([layer["bh"][s:2 * s], -layer["bh"][2 * s:], layer["bh"][:s]])
    want = _np_torch_gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_pytorch_cell_parameters_follow_the_port():
    """Recurrent biases (zero) on every layer with an input matrix; one-hot layer 0 keeps the original form."""
    params = model_lib.init_params(jax.random.PRNGKey(0), ModelConfig(n_items=9, layers=(4, 3), cell="pytorch"))
    assert all(np.all(np.asarray(layer["bh"]) == 0) for layer in params["layers"])
    onehot = model_lib.init_params(jax.random.PRNGKey(0), ModelConfig(
        n_items=9, layers=(4, 3), embedding="onehot", cell="pytorch"))
    assert "bh" not in onehot["layers"][0] and "bh" in onehot["layers"][1]
    with pytest.raises(ValueError, match="cell must be one of"):
        ModelConfig(n_items=9, cell="lstm")


@pytest.mark.parametrize("embedding", ["shared", "separate", "onehot"])
def test_large_item_tables_are_drawn_blockwise_with_the_same_law(monkeypatch, embedding):
    """Tables above the block size are filled block by block: every row drawn, per-block bounds kept."""
    monkeypatch.setattr(model_lib, "_INIT_BLOCK_ROWS", 16)
    n, h = 50, 4  # 4 blocks, the last one overlapping the third
    config = ModelConfig(n_items=n, layers=(h,), embedding=embedding, embedding_dim=3 if embedding == "separate" else 0)
    tables = model_lib.init_params(jax.random.PRNGKey(0), config)["tables"]
    name, width = {"shared": ("Wy", h), "separate": ("E", 3), "onehot": ("Wx0", 3 * h)}[embedding]
    table = np.asarray(tables[name])
    assert table.shape == (n, width)
    fan = h if embedding != "separate" else 3
    assert np.all(np.abs(table) <= math.sqrt(6.0 / (n + fan)))
    assert np.all(np.any(table != 0, axis=1))  # no row left at zero
    assert len({tuple(np.round(r, 6)) for r in table}) == n  # blocks are not copies of each other


@pytest.mark.parametrize("blocks", [1, 3])
def test_item_table_rows_are_rows_of_the_block_drawn_table(blocks):
    n, h = model_lib._INIT_BLOCK_ROWS + 1000, 1
    key = jax.random.PRNGKey(4)
    table = np.asarray(model_lib._item_table(key, n, h, blocks))
    for start, count in [(0, 10), (5, model_lib._INIT_BLOCK_ROWS), (n - 1500, 1500), (n - 10, 30), (n + 3, 4)]:
        rows = np.asarray(jax.jit(lambda s: model_lib.item_table_rows(key, n, h, s, count, blocks))(start))
        expected = np.zeros((count, blocks * h), np.float32)
        inside = table[start:start + count]
        expected[:len(inside)] = inside
        np.testing.assert_allclose(rows, expected, rtol=1e-6, atol=1e-9)
