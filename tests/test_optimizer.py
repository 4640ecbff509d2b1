"""Tests of gru4rec_jax.optimizer against numpy references of GRU4Rec's Adagrad-momentum.

GRU4REC.md sections 6 and 11.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gru4rec_jax import optimizer as opt_lib

EPS = 1e-6


def _np_dense_step(theta, acc, vel, g, lr, mu):
    """One GRU4Rec dense step in float64: acc += g^2; step = -lr g / sqrt(acc + eps); v = mu v + step."""
    acc = acc + g * g
    step = -lr * g / np.sqrt(acc + EPS)
    vel = mu * vel + step
    return theta + vel, acc, vel


# --------------------------------------------------------------------------------------------
# dense: adagrad_momentum


@pytest.mark.parametrize("form", ["transformation", "step"])
@pytest.mark.parametrize("mu", [0.0, 0.6])
def test_adagrad_momentum_matches_reference_over_steps(mu, form):
    """Guards the update rule (eps inside sqrt, acc and v from 0, heavy-ball momentum) over several steps,
    as the optax transformation and as the one-call adagrad_momentum_step that training uses."""
    rng = np.random.default_rng(0)
    lr = 0.1
    params = {"W": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=(3,)).astype(np.float32)}
    tx = opt_lib.adagrad_momentum(lr, momentum=mu)
    jparams = jax.tree.map(jnp.asarray, params)
    state = tx.init(jparams)
    for a in jax.tree.leaves(state):
        np.testing.assert_array_equal(np.asarray(a), 0.0)
    ref = {k: (v.astype(np.float64), np.zeros(v.shape), np.zeros(v.shape)) for k, v in params.items()}

    @jax.jit
    def step(p, s, g):
        if form == "step":
            return opt_lib.adagrad_momentum_step(p, s, g, learning_rate=lr, momentum=mu)
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    for _ in range(5):
        # Mix of magnitudes incl. tiny gradients where eps placement matters, and exact zeros.
        # Large ones too (1e3): a clipped gradient would not match the reference.
        scale = {k: rng.choice([1e-4, 1e-2, 1.0, 1e3], size=v.shape) for k, v in params.items()}
        grads = {k: (rng.normal(size=v.shape) * scale[k]).astype(np.float32) for k, v in params.items()}
        grads["b"][0] = 0.0
        jparams, state = step(jparams, state, jax.tree.map(jnp.asarray, grads))
        ref = {k: _np_dense_step(*ref[k], grads[k].astype(np.float64), lr, mu) for k in ref}
        for k in ref:
            np.testing.assert_allclose(np.asarray(jparams[k]), ref[k][0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(np.asarray(state.accumulator[k]), ref[k][1], rtol=1e-5, atol=1e-12)
            np.testing.assert_allclose(np.asarray(state.velocity[k]), ref[k][2], rtol=1e-4, atol=1e-6)


def test_adagrad_momentum_step_not_applied_changes_nothing():
    """Guards the padding-step guard: with a traced apply=False, parameters, accumulator and a nonzero
    velocity come back bit-identical (a zero gradient alone would still move them by momentum)."""
    params = {"W": jnp.ones((3, 2)), "b": jnp.zeros((2,))}
    state = opt_lib.AdagradMomentumState(jax.tree.map(jnp.zeros_like, params), jax.tree.map(jnp.zeros_like, params))
    step = jax.jit(functools.partial(opt_lib.adagrad_momentum_step, learning_rate=0.1, momentum=0.9))
    grads = {"W": jnp.full((3, 2), 0.5), "b": jnp.array([1.0, -2.0])}
    params, state = step(params, state, grads, apply=jnp.array(True))
    zero = jax.tree.map(jnp.zeros_like, grads)
    for a, b in zip(jax.tree.leaves((params, state)), jax.tree.leaves(step(params, state, zero, apply=jnp.array(False)))):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    moved = step(params, state, zero, apply=jnp.array(True))[0]
    assert not np.array_equal(np.asarray(moved["W"]), np.asarray(params["W"]))


def test_learning_rate_is_constant_over_many_steps():
    """Guards LR decay: with gradients g, -g alternating, acc grows as t*g^2 and every step is
    exactly lr/sqrt(t) in size (no schedule shrinks it further), for 200 steps."""
    lr, g = 0.3, 2.0
    tx = opt_lib.adagrad_momentum(lr)
    p = {"w": jnp.zeros(())}
    state = tx.init(p)
    for t in range(1, 201):
        grad = {"w": jnp.asarray(g if t % 2 else -g)}
        updates, state = tx.update(grad, state, p)
        assert float(jnp.abs(updates["w"])) == pytest.approx(lr * g / np.sqrt(t * g * g + 1e-6), rel=1e-5)


def test_adagrad_momentum_first_step_size_is_lr():
    """Guards eps placement: with acc=0 the first step is -lr * g / sqrt(g^2 + 1e-6) ~ -lr * sign(g)."""
    tx = opt_lib.adagrad_momentum(0.05, momentum=0.9)
    g = jnp.array([2.0, -3.0, 1e-3])
    updates, _ = tx.update(g, tx.init(jnp.zeros(3)))
    want = -0.05 * np.array([2.0, -3.0, 1e-3]) / np.sqrt(np.array([4.0, 9.0, 1e-6]) + 1e-6)
    np.testing.assert_allclose(np.asarray(updates), want, rtol=1e-5)


def test_adagrad_momentum_differs_from_optax_adagrad():
    """Guards the third-party mistake of using optax.adagrad (acc starts at 0.1, eps outside the sqrt)."""
    lr = 0.1
    g = jnp.array([1e-2, -1e-3, 0.5, 1e-4])
    ours, theirs = opt_lib.adagrad_momentum(lr), optax.adagrad(lr)
    u1, _ = ours.update(g, ours.init(jnp.zeros(4)))
    u2, _ = theirs.update(g, theirs.init(jnp.zeros(4)))
    np.testing.assert_allclose(np.asarray(u1), -lr * np.asarray(g) / np.sqrt(np.square(np.asarray(g)) + EPS),
                               rtol=1e-5)
    # optax's first step for small g is ~ -lr * g / sqrt(0.1): orders of magnitude smaller.
    assert np.all(np.abs(np.asarray(u2)) < np.abs(np.asarray(u1)))
    assert np.max(np.abs(np.asarray(u1) - np.asarray(u2))) > 0.05


# --------------------------------------------------------------------------------------------
# sparse: sum_duplicate_rows


def test_sum_duplicate_rows_unique_indices_summed_gradients_and_filler():
    """Guards duplicate handling (sum first, each index once) and the "no row" filler = num_rows."""
    n = 6
    indices = jnp.array([4, 1, 4, 9, 0, 1, 4, 6], jnp.int32)  # 9 and 6 are "no row"
    grads = jnp.arange(8 * 2, dtype=jnp.float32).reshape(8, 2) + 1.0
    unique, summed = opt_lib.sum_duplicate_rows(indices, grads, n)
    unique, summed = np.asarray(unique), np.asarray(summed)
    assert unique.shape == (8,) and summed.shape == (8, 2)
    valid = unique < n
    assert sorted(unique[valid].tolist()) == [0, 1, 4]
    np.testing.assert_array_equal(unique[~valid], n)  # filler is exactly num_rows, also for input 9
    g = np.asarray(grads)
    want = {0: g[4], 1: g[1] + g[5], 4: g[0] + g[2] + g[6]}
    for u, s in zip(unique[valid], summed[valid]):
        np.testing.assert_allclose(s, want[int(u)], rtol=1e-6)
    # The same indices and gradients given as two parts (duplicates across the parts): same result.
    parts = opt_lib.sum_duplicate_rows((indices[:3], indices[3:]), (grads[:3], grads[3:]), n)
    np.testing.assert_array_equal(np.asarray(parts[0]), unique)
    np.testing.assert_array_equal(np.asarray(parts[1]), summed)


def test_sum_duplicate_rows_no_duplicates_and_all_invalid():
    """Guards the edge cases: all-distinct indices pass through; all "no row" gives only filler."""
    n = 5
    grads = jnp.ones((3,), jnp.float32) * jnp.array([1.0, 2.0, 3.0])
    unique, summed = opt_lib.sum_duplicate_rows(jnp.array([2, 0, 4]), grads, n)
    pairs = sorted(zip(np.asarray(unique).tolist(), np.asarray(summed).tolist()))
    assert pairs == [(0, 2.0), (2, 1.0), (4, 3.0)]
    unique, _ = opt_lib.sum_duplicate_rows(jnp.array([5, 7, 5]), grads, n)
    np.testing.assert_array_equal(np.asarray(unique), n)


# --------------------------------------------------------------------------------------------
# sparse: sparse_adagrad_momentum_update


def _np_sparse_step(table, acc, vel, indices, row_grads, lr, mu):
    """Dense numpy reference: sum duplicate-index gradients, then update only the touched rows."""
    table, acc, vel = table.copy(), acc.copy(), vel.copy()
    n = table.shape[0]
    g = np.zeros_like(table)
    touched = np.zeros(n, bool)
    for i, rg in zip(indices, row_grads):
        if i < n:
            g[i] += rg
            touched[i] = True
    t = touched
    acc[t] += g[t] ** 2
    vel[t] = mu * vel[t] - lr * g[t] / np.sqrt(acc[t] + EPS)
    table[t] += vel[t]
    return table, acc, vel


_update = jax.jit(opt_lib.sparse_adagrad_momentum_update,
                  static_argnames=("learning_rate", "momentum", "eps", "strategy"))


def _random_case(rng, n, row_shape, k):
    indices = rng.integers(0, n + 3, size=k).astype(np.int32)  # some >= n ("no row")
    indices[: k // 3] = indices[k // 3: 2 * (k // 3)]  # force duplicates
    grads = rng.normal(size=(k,) + row_shape).astype(np.float32)
    return indices, grads


@pytest.mark.parametrize("variant", ["plain", "parts", "workspace"])
@pytest.mark.parametrize("strategy", ["rows", "masked", "auto"])
@pytest.mark.parametrize("row_shape", [(3,), ()], ids=["2d", "1d"])
@pytest.mark.parametrize("n", [7, 40], ids=["n_small", "n_large"])  # auto: masked for 7 <= 4K, rows for 40
def test_sparse_update_matches_dense_reference_over_steps(strategy, row_shape, n, variant):
    """Guards the row-sparse rule over several steps: sum duplicates then square, only touched rows
    (parameter, acc, v) change, untouched rows keep stale velocity (no decay), indices >= n ignored.
    Also with the indices and gradients in two parts (as training passes input and output rows) and
    with a deduplication workspace carried from step to step (it must come back restored)."""
    rng = np.random.default_rng(n + len(row_shape))
    k, lr, mu = 6, 0.1, 0.7
    table = rng.normal(size=(n,) + row_shape).astype(np.float32)
    acc = np.zeros_like(table)
    vel = np.zeros_like(table)
    ref = tuple(a.astype(np.float64) for a in (table, acc, vel))
    state = tuple(jnp.asarray(a) for a in (table, acc, vel))
    workspace = opt_lib.dedup_workspace(n)
    for step in range(6):
        indices, grads = _random_case(rng, n, row_shape, k)
        if step == 0:
            indices[-1] = n + 100  # far out of range too
        before = tuple(np.asarray(a) for a in state)
        extra = {}
        if variant == "workspace":
            extra["workspace"] = workspace
        given = (jnp.asarray(indices), jnp.asarray(grads))
        if variant == "parts":
            given = tuple((a[:2], a[2:]) for a in given)
        out = _update(*state, *given, learning_rate=lr, momentum=mu, strategy=strategy, **extra)
        state, workspace = (out[:3], out[3]) if variant == "workspace" else (out, workspace)
        ref = _np_sparse_step(*ref, indices, grads.astype(np.float64), lr, mu)
        for name, got, want in zip(("table", "acc", "vel"), state, ref):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} step {step}")
        # Untouched rows are bit-identical to before (stale velocity kept, no decay, no drift).
        untouched = np.setdiff1d(np.arange(n), indices[indices < n])
        for name, got, prev in zip(("table", "acc", "vel"), state, before):
            np.testing.assert_array_equal(np.asarray(got)[untouched], prev[untouched],
                                          err_msg=f"{name} step {step}")
    # The test exercised stale momentum: some untouched row carries a nonzero velocity.
    assert np.any(np.asarray(state[2]) != 0)
    np.testing.assert_array_equal(np.asarray(workspace), np.asarray(opt_lib.dedup_workspace(n)))


def test_sparse_update_duplicates_summed_before_squaring():
    """Guards squaring each duplicate separately (acc += g1^2 + g2^2) instead of (g1 + g2)^2."""
    table = jnp.zeros((3, 1))
    for strategy in ("rows", "masked"):
        _, acc, vel = _update(table, jnp.zeros((3, 1)), jnp.zeros((3, 1)), jnp.array([1, 1]),
                              jnp.array([[1.0], [2.0]]), learning_rate=1.0, momentum=0.0, strategy=strategy)
        np.testing.assert_allclose(np.asarray(acc)[:, 0], [0.0, 9.0, 0.0], err_msg=strategy)
        np.testing.assert_allclose(np.asarray(vel)[1, 0], -3.0 / np.sqrt(9.0 + EPS), rtol=1e-6,
                                   err_msg=strategy)


def test_sparse_update_stale_velocity_is_not_decayed():
    """Guards a dense momentum step on tables: a row not touched now keeps its old velocity and value."""
    n = 4
    state = (jnp.zeros((n,)), jnp.zeros((n,)), jnp.zeros((n,)))
    for strategy in ("rows", "masked"):
        s = _update(*state, jnp.array([0, 2]), jnp.array([1.0, -1.0]),
                    learning_rate=0.5, momentum=0.9, strategy=strategy)
        v_after_first = np.asarray(s[2]).copy()
        table_after_first = np.asarray(s[0]).copy()
        s = _update(*s, jnp.array([2, 4]), jnp.array([1.0, 5.0]),  # 4 == n: "no row"
                    learning_rate=0.5, momentum=0.9, strategy=strategy)
        assert np.asarray(s[2])[0] == v_after_first[0] != 0.0, strategy
        assert np.asarray(s[0])[0] == table_after_first[0], strategy
        assert np.asarray(s[2])[2] != v_after_first[2], strategy


@pytest.mark.parametrize("row_shape", [(5,), ()], ids=["2d", "1d"])
def test_sparse_update_rows_and_masked_agree_on_random_cases(row_shape):
    """Guards that the two implementations ("rows" O(K log K), "masked" O(n)) compute the same step."""
    rng = np.random.default_rng(42)
    for trial, n in enumerate([1, 9, 25]):  # 1: a one-item table; 9, 25: fewer / more rows than K
        k = 12
        table = rng.normal(size=(n,) + row_shape).astype(np.float32)
        acc = rng.uniform(0, 2, size=table.shape).astype(np.float32)
        vel = rng.normal(size=table.shape).astype(np.float32)
        indices, grads = _random_case(rng, n, row_shape, k)
        args = [jnp.asarray(a) for a in (table, acc, vel, indices, grads)]
        kw = dict(learning_rate=0.05, momentum=0.5)
        rows = _update(*args, strategy="rows", **kw)
        masked = _update(*args, strategy="masked", **kw)
        for name, a, b in zip(("table", "acc", "vel"), rows, masked):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7,
                                       err_msg=f"{name} trial {trial}")


def test_sparse_update_rejects_unknown_strategy():
    """Guards silently accepting a misspelled strategy."""
    with pytest.raises(ValueError):
        opt_lib.sparse_adagrad_momentum_update(
            jnp.zeros((3,)), jnp.zeros((3,)), jnp.zeros((3,)), jnp.array([0]), jnp.array([1.0]),
            learning_rate=0.1, strategy="dense")


def test_sparse_update_cost_independent_of_table_size_under_rows():
    """Guards "rows" silently scattering into a table-sized gradient: its jaxpr has no (n,)-shaped
    intermediate besides the table, accumulator and velocity themselves."""
    n, k = 1000, 8
    fn = functools.partial(opt_lib.sparse_adagrad_momentum_update,
                           learning_rate=0.1, momentum=0.5, strategy="rows")
    jaxpr = jax.make_jaxpr(fn)(jnp.zeros((n, 4)), jnp.zeros((n, 4)), jnp.zeros((n, 4)),
                               jnp.zeros((k,), jnp.int32), jnp.zeros((k, 4)))
    # Only the three scatters produce (n, 4) values; nothing else computes a full-table array.
    big = [e for e in jaxpr.eqns for v in e.outvars if getattr(v.aval, "shape", ()) and v.aval.shape[0] == n]
    assert all(e.primitive.name == "scatter" for e in big), [e.primitive.name for e in big]


def test_sum_duplicate_rows_with_a_workspace_fills_nothing_item_sized():
    """Guards the carried workspace: same result as without, and no (n + 1)-sized fill is built
    (the one cost of "rows" that grows with the catalogue); the workspace comes back restored."""
    n, k = 1000, 8
    indices = jnp.array([3, 999, 3, 1000, 7, 7, 7, 0], jnp.int32)
    grads = jnp.arange(k * 2, dtype=jnp.float32).reshape(k, 2)
    plain = opt_lib.sum_duplicate_rows(indices, grads, n)
    unique, summed, workspace = opt_lib.sum_duplicate_rows(indices, grads, n, workspace=opt_lib.dedup_workspace(n))
    np.testing.assert_array_equal(np.asarray(unique), np.asarray(plain[0]))
    np.testing.assert_array_equal(np.asarray(summed), np.asarray(plain[1]))
    np.testing.assert_array_equal(np.asarray(workspace), np.asarray(opt_lib.dedup_workspace(n)))

    def item_sized_fills(jaxpr):
        return [e for e in jaxpr.eqns if e.primitive.name == "broadcast_in_dim" and e.outvars[0].aval.shape == (n + 1,)]

    with_workspace = jax.make_jaxpr(lambda i, g, w: opt_lib.sum_duplicate_rows(i, g, n, workspace=w))(
        indices, grads, opt_lib.dedup_workspace(n))
    without = jax.make_jaxpr(lambda i, g: opt_lib.sum_duplicate_rows(i, g, n))(indices, grads)
    assert not item_sized_fills(with_workspace)
    assert item_sized_fills(without)  # the detection works: the plain call does fill one
