"""Tests of gru4rec_jax.losses, parametrized over every registered loss.

Expected values come from independent float64 numpy formulas written here (the
GRU4Rec reference formulas of spec/GRU4REC.md §4), never from the library.
Each "mistake" test fails if a known third-party error were in the library.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from gru4rec_jax import losses
from gru4rec_jax.losses import LOSSES, get_loss, gru4rec_labels

EPS = 1e-24
RTOL = 1e-5
ATOL = 1e-6

# The un-jitted module-level function behind each registry name.
PLAIN = {
    "cross-entropy": losses.cross_entropy_loss,
    "bpr-max": losses.bpr_max_loss,
    "top1-max": losses.top1_max_loss,
    "top1": losses.top1_loss,
    "bpr": losses.bpr_loss,
}

# ---------------------------------------------------------------------------
# Independent numpy references (float64): per-row losses of the (M, M+S)
# GRU4Rec score matrix r whose row i has its target in column i.
# ---------------------------------------------------------------------------


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(r):
    e = np.exp(r - r.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _negatives_softmax(r):
    """Softmax over the columns j != i of each row i."""
    neg = ~np.eye(*r.shape, dtype=bool)
    z = np.where(neg, r, -np.inf)
    e = np.where(neg, np.exp(z - z.max(axis=1, keepdims=True)), 0.0)
    return e / e.sum(axis=1, keepdims=True)


def _target(r):
    return np.diag(r)[:, None]  # r_ii as a column, length M


def ref_cross_entropy(r):
    m = r.shape[0]
    return -np.log(_softmax(r)[np.arange(m), np.arange(m)] + EPS)


def ref_bpr_max(r, bpreg=1.0):
    s = _negatives_softmax(r)
    ranking = np.sum(s * _sigmoid(_target(r) - r), axis=1)
    return -np.log(ranking + EPS) + bpreg * np.sum(s * r**2, axis=1)


def ref_top1_max(r):
    s = _negatives_softmax(r)
    return np.sum(s * (_sigmoid(r - _target(r)) + _sigmoid(r**2)), axis=1)


def ref_top1(r):
    n = r.shape[1]
    return np.mean(_sigmoid(r - _target(r)) + _sigmoid(r**2), axis=1) - _sigmoid(np.diag(r) ** 2) / n


def ref_bpr(r):
    return np.sum(-np.log(_sigmoid(_target(r) - r)), axis=1)


REFERENCES = {
    "cross-entropy": ref_cross_entropy,
    "bpr-max": ref_bpr_max,
    "top1-max": ref_top1_max,
    "top1": ref_top1,
    "bpr": ref_bpr,
}

# (name, loss_params); bpr-max twice to cover the regulariser on and off.
CASES = [
    ("cross-entropy", {}),
    ("bpr-max", {"bpreg": 0.0}),
    ("bpr-max", {"bpreg": 1.95}),
    ("top1-max", {}),
    ("top1", {}),
    ("bpr", {}),
]
CASE_IDS = [name + "".join(f"-{k}={v}" for k, v in p.items()) for name, p in CASES]
# One case per loss (bpr-max with its regulariser on) for the structural tests.
ONE_PER_LOSS = [("cross-entropy", {}), ("bpr-max", {"bpreg": 1.95}), ("top1-max", {}), ("top1", {}), ("bpr", {})]
ONE_IDS = [name for name, _ in ONE_PER_LOSS]

SHAPES = [(1, 3), (2, 0), (5, 0), (4, 7), (8, 16)]  # (M, S)


def _scores(m, s, seed=0, scale=1.5, batch=()):
    rng = np.random.default_rng(seed)
    return (scale * rng.normal(size=batch + (m, m + s))).astype(np.float32)


def _labels(m, s):
    return np.eye(m, m + s, dtype=np.float32)


def _as64(x):
    return np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------------------
# 1. Values against the reference formulas
# ---------------------------------------------------------------------------


def test_every_registered_loss_has_a_reference():
    """A loss added to the registry without a reference test must not slip through."""
    assert set(LOSSES) == set(REFERENCES) == set(PLAIN) == {n for n, _ in CASES}


@pytest.mark.parametrize("m,s", SHAPES, ids=[f"M{m}-S{s}" for m, s in SHAPES])
@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_matches_numpy_reference(name, params, m, s):
    """GRU4Rec layout, reduce_fn=sum: equals the spec's sum-over-rows formula."""
    r = _scores(m, s, seed=10 * m + s)
    got = LOSSES[name](r, _labels(m, s), reduce_fn=jnp.sum, **params)
    want = REFERENCES[name](_as64(r), **params).sum()
    np.testing.assert_allclose(float(got), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_candidates_on_axis_0_match_numpy_reference(name, params):
    """axis=0 (the training step's transposed layout): per-row values equal the reference on the
    un-transposed matrix, masked rows and columns included; gradients are the transposed ones."""
    m, s = 5, 9
    r = _scores(m, s, seed=31)
    where = np.ones(r.shape, bool)
    where[1, :] = False  # a whole row out
    where[:, m + 2] = False  # one sample column out
    loss = PLAIN[name]
    per_row = np.asarray(loss(r.T, _labels(m, s).T, where=where.T, reduce_fn=None, axis=0, **params))
    # Removing a sample column keeps every row's target at column i for the reference.
    want = REFERENCES[name](np.delete(_as64(r), m + 2, axis=1), **params)
    kept = [i for i in range(m) if i != 1]
    np.testing.assert_allclose(per_row[kept], want[kept], rtol=RTOL, atol=ATOL)
    assert per_row[1] == 0.0

    def total(x, axis):
        y, w = (_labels(m, s), where) if axis == -1 else (_labels(m, s).T, where.T)
        return loss(x, y, where=w, reduce_fn=jnp.sum, axis=axis, **params)

    g_rows = np.asarray(jax.grad(total)(jnp.asarray(r), -1))
    g_cols = np.asarray(jax.grad(total)(jnp.asarray(r.T), 0))
    np.testing.assert_allclose(g_cols.T, g_rows, rtol=RTOL, atol=1e-7)
    assert np.any(g_rows != 0.0)


@pytest.mark.parametrize("name,params", ONE_PER_LOSS, ids=ONE_IDS)
def test_gru4rec_labels_helper_is_the_eye_layout(name, params):
    """gru4rec_labels(M, M+S) is eye(M, M+S) and gives the same loss as float labels."""
    m, s = 4, 7
    np.testing.assert_array_equal(np.asarray(gru4rec_labels(m, m + s)), np.eye(m, m + s, dtype=bool))
    r = _scores(m, s, seed=3)
    a = LOSSES[name](r, gru4rec_labels(m, m + s), reduce_fn=None, **params)
    b = LOSSES[name](r, _labels(m, s), reduce_fn=None, **params)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def _pytorch_port_bpr_max(R, bpreg):
    """Literal numpy transcription of the official PyTorch port (softmax_neg + bpr-max)."""
    hm = 1.0 - np.eye(*R.shape)
    X = R * hm
    e_x = np.exp(X - X.max(axis=1, keepdims=True)) * hm
    softmax_scores = e_x / e_x.sum(axis=1, keepdims=True)
    return np.sum(
        -np.log(np.sum(_sigmoid(np.diag(R).reshape(-1, 1) - R) * softmax_scores, axis=1) + 1e-24)
        + bpreg * np.sum((R**2) * softmax_scores, axis=1)
    )


@pytest.mark.parametrize("bpreg", [0.0, 1.0, 1.95])
@pytest.mark.parametrize("m,s", [(2, 0), (5, 0), (4, 7), (8, 16)])
def test_bpr_max_matches_official_pytorch_port(m, s, bpreg):
    """Zeroed-diagonal/max/exp/re-zero/normalise of the PyTorch port gives the same value."""
    r = _scores(m, s, seed=100 + m + s)
    got = LOSSES["bpr-max"](r, _labels(m, s), reduce_fn=jnp.sum, bpreg=bpreg)
    np.testing.assert_allclose(float(got), _pytorch_port_bpr_max(_as64(r), bpreg), rtol=RTOL, atol=ATOL)


def test_bpr_max_default_bpreg_is_one():
    """The default regularisation weight is the reference's bpreg=1.0."""
    r = _scores(4, 7, seed=5)
    got = LOSSES["bpr-max"](r, _labels(4, 7), reduce_fn=jnp.sum)
    np.testing.assert_allclose(float(got), ref_bpr_max(_as64(r), 1.0).sum(), rtol=RTOL)


def test_cross_entropy_accepts_label_weights():
    """Cross-entropy with non-binary labels is -sum_j y_j log softmax_j (label weights honoured)."""
    rng = np.random.default_rng(7)
    r = rng.normal(size=(3, 6)).astype(np.float32)
    y = np.where(rng.random((3, 6)) < 0.4, rng.random((3, 6)), 0.0).astype(np.float32)
    y[:, 0] = 0.5  # every row has a positive
    want = -np.sum(y * np.log(_softmax(_as64(r)) + EPS), axis=1)
    got = LOSSES["cross-entropy"](r, y, reduce_fn=None)
    np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL)


# ---------------------------------------------------------------------------
# 2. Known third-party mistakes (spec §11)
# ---------------------------------------------------------------------------


def _assert_differs(a, b, rtol=1e-3):
    assert not np.isclose(float(a), float(b), rtol=rtol, atol=0.0), (a, b)


@pytest.mark.parametrize("m,s", [(3, 0), (4, 7), (8, 16)])
def test_bpr_max_softmax_is_over_negatives_not_all_columns(m, s):
    """Guards against BPR-max weighting with a softmax over ALL columns (target included)."""
    r = _as64(_scores(m, s, seed=21 + m))
    got = float(LOSSES["bpr-max"](r.astype(np.float32), _labels(m, s), reduce_fn=jnp.sum, bpreg=1.95))
    sw = _softmax(r)  # the mistake
    wrong = np.sum(-np.log(np.sum(sw * _sigmoid(_target(r) - r), axis=1) + EPS) + 1.95 * np.sum(sw * r**2, axis=1))
    np.testing.assert_allclose(got, ref_bpr_max(r, 1.95).sum(), rtol=RTOL)
    _assert_differs(got, wrong)


@pytest.mark.parametrize("m,s", [(2, 0), (4, 7), (8, 16)])
def test_bpr_max_sums_rows_not_mean(m, s):
    """Guards against BPR-max averaging the rows where the reference sums them."""
    r = _scores(m, s, seed=31 + m)
    rows = ref_bpr_max(_as64(r), 1.95)
    got = float(LOSSES["bpr-max"](r, _labels(m, s), reduce_fn=jnp.sum, bpreg=1.95))
    np.testing.assert_allclose(got, m * rows.mean(), rtol=RTOL)
    _assert_differs(got, rows.mean())  # the mistake


@pytest.mark.parametrize("bpreg", [1.0, 1.95])
def test_bpr_max_applies_bpreg(bpreg):
    """Guards against BPR-max dropping the score regulariser (bpreg ignored)."""
    r = _scores(5, 6, seed=41)
    got = float(LOSSES["bpr-max"](r, _labels(5, 6), reduce_fn=jnp.sum, bpreg=bpreg))
    np.testing.assert_allclose(got, ref_bpr_max(_as64(r), bpreg).sum(), rtol=RTOL)
    _assert_differs(got, ref_bpr_max(_as64(r), 0.0).sum())  # the mistake
    default = float(LOSSES["bpr-max"](r, _labels(5, 6), reduce_fn=jnp.sum))
    _assert_differs(default, ref_bpr_max(_as64(r), 0.0).sum())


def test_cross_entropy_softmax_over_sampled_columns_not_all_items():
    """Guards against scoring all n items, softmaxing over them, then slicing the sampled columns."""
    rng = np.random.default_rng(51)
    n, m = 60, 4
    full = rng.normal(scale=1.5, size=(m, n))  # scores of every item for each row
    targets = np.array([12, 3, 40, 27])
    samples = np.array([5, 18, 33, 51, 58])
    cols = np.concatenate([targets, samples])  # GRU4Rec's columns: targets, then samples
    sub = full[:, cols]
    got = float(LOSSES["cross-entropy"](sub.astype(np.float32), _labels(m, len(samples)), reduce_fn=jnp.sum))
    sampled = -np.sum(np.log(_softmax(sub)[np.arange(m), np.arange(m)] + EPS))
    wrong = -np.sum(np.log(_softmax(full)[np.arange(m), targets] + EPS))  # the mistake
    np.testing.assert_allclose(got, sampled, rtol=RTOL)
    _assert_differs(got, wrong)


@pytest.mark.parametrize("m,s", [(3, 0), (4, 7)])
def test_cross_entropy_single_softmax_not_double(m, s):
    """Guards against a softmax applied twice (e.g. a softmax output layer fed to a softmax loss)."""
    r = _as64(_scores(m, s, seed=61))
    got = float(LOSSES["cross-entropy"](r.astype(np.float32), _labels(m, s), reduce_fn=jnp.sum))
    wrong = ref_cross_entropy(_softmax(r)).sum()  # the mistake
    np.testing.assert_allclose(got, ref_cross_entropy(r).sum(), rtol=RTOL)
    _assert_differs(got, wrong)


# ---------------------------------------------------------------------------
# 3. Masking
# ---------------------------------------------------------------------------

M_MASK, S_MASK = 6, 5
DROP_ROWS = [1, 4]
DROP_COLS = [4, 7, 9]  # in-batch column of dropped row 4, and two sample columns
KEEP_ROWS = [i for i in range(M_MASK) if i not in DROP_ROWS]
KEEP_COLS = [j for j in range(M_MASK + S_MASK) if j not in DROP_COLS]


def _where_dropping(rows, cols=()):
    """The (M_MASK, M_MASK + S_MASK) mask that is False on the given rows and columns."""
    where = np.ones((M_MASK, M_MASK + S_MASK), bool)
    where[rows, :] = False
    where[:, list(cols)] = False
    return where


@pytest.mark.parametrize("name,params", ONE_PER_LOSS, ids=ONE_IDS)
def test_where_equals_physical_removal(name, params):
    """Masking rows/columns with `where` equals deleting them (guards against masks leaking)."""
    r = _scores(M_MASK, S_MASK, seed=71)
    y = _labels(M_MASK, S_MASK)
    where = _where_dropping(DROP_ROWS, DROP_COLS)
    loss = LOSSES[name]
    masked = np.asarray(loss(r, y, where=where, reduce_fn=None, **params))
    removed = np.asarray(loss(r[KEEP_ROWS][:, KEEP_COLS], y[KEEP_ROWS][:, KEEP_COLS], reduce_fn=None, **params))
    np.testing.assert_allclose(masked[KEEP_ROWS], removed, rtol=RTOL, atol=ATOL)
    assert np.all(masked[DROP_ROWS] == 0.0)
    for reduce_fn in (jnp.sum, jnp.mean):
        a = loss(r, y, where=where, reduce_fn=reduce_fn, **params)
        b = loss(r[KEEP_ROWS][:, KEEP_COLS], y[KEEP_ROWS][:, KEEP_COLS], reduce_fn=reduce_fn, **params)
        np.testing.assert_allclose(float(a), float(b), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name,params", ONE_PER_LOSS, ids=ONE_IDS)
def test_where_column_mask_broadcasts(name, params):
    """A [num_candidates] column mask broadcasts over rows and equals removing those columns."""
    r = _scores(M_MASK, S_MASK, seed=72)
    y = _labels(M_MASK, S_MASK)
    col_mask = np.ones(M_MASK + S_MASK, bool)
    col_mask[[7, 9]] = False
    masked = LOSSES[name](r, y, where=col_mask, reduce_fn=None, **params)
    removed = LOSSES[name](r[:, col_mask], y[:, col_mask], reduce_fn=None, **params)
    np.testing.assert_allclose(np.asarray(masked), np.asarray(removed), rtol=RTOL, atol=ATOL)


@functools.lru_cache(maxsize=None)
def _jitted_value_and_grad(name, param_items):
    def total(x, y, where):
        return LOSSES[name](x, y, where=where, reduce_fn=jnp.sum, **dict(param_items))

    return jax.jit(jax.value_and_grad(total))  # one compile per loss and shape, shared by tests


def _grad(name, params, r, y, where):
    return _jitted_value_and_grad(name, tuple(sorted(params.items())))(jnp.asarray(r), y, where)


@pytest.mark.parametrize("name,params", ONE_PER_LOSS, ids=ONE_IDS)
def test_degenerate_rows_give_zero_loss_and_zero_finite_gradient(name, params):
    """Fully masked rows (and rows without a valid positive / negative) give exactly 0 and 0 grads."""
    r = _scores(M_MASK, S_MASK, seed=81)
    y = _labels(M_MASK, S_MASK)
    where = np.ones(r.shape, bool)
    where[0, :] = False  # row 0: nothing valid
    where[1, :] = False
    where[1, 1] = True  # row 1: only its positive is valid (no negative)
    where[2, 2] = False  # row 2: positive masked, negatives valid
    per_row = np.asarray(LOSSES[name](r, y, where=where, reduce_fn=None, **params))
    assert np.all(per_row[:3] == 0.0), per_row
    assert np.all(per_row[3:] != 0.0), per_row
    value, grad = _grad(name, params, r, y, where)
    grad = np.asarray(grad)
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
    assert np.all(grad[:3] == 0.0), grad[:3]
    assert np.all(grad[~where] == 0.0)
    assert np.any(grad[3:] != 0.0)


@pytest.mark.parametrize("extreme", [1e4, -1e4])
@pytest.mark.parametrize("name,params", ONE_PER_LOSS, ids=ONE_IDS)
def test_extreme_masked_scores_change_nothing(name, params, extreme):
    """Huge scores under the mask leave loss and gradients finite and unchanged (no 0*inf NaNs)."""
    r = _scores(M_MASK, S_MASK, seed=91)
    y = _labels(M_MASK, S_MASK)
    where = _where_dropping(DROP_ROWS, DROP_COLS)
    wild = np.where(where, r, np.float32(extreme))
    tame = np.where(where, r, np.float32(0.0))
    v_wild, g_wild = _grad(name, params, wild, y, where)
    v_tame, g_tame = _grad(name, params, tame, y, where)
    assert np.isfinite(float(v_wild)) and np.all(np.isfinite(np.asarray(g_wild)))
    np.testing.assert_allclose(float(v_wild), float(v_tame), rtol=RTOL)
    np.testing.assert_allclose(np.asarray(g_wild), np.asarray(g_tame), rtol=RTOL, atol=1e-7)
    assert np.all(np.asarray(g_wild)[~where] == 0.0)


@pytest.mark.parametrize("name,params", ONE_PER_LOSS, ids=ONE_IDS)
@pytest.mark.parametrize("wild", [1e20, np.inf, -np.inf])
def test_masked_overflowing_or_infinite_scores_stay_finite(name, params, wild):
    """Masked entries whose square overflows, or that are infinite, leave loss and gradient finite."""
    r = _scores(3, 2, seed=95)
    y = _labels(3, 2)
    where = np.ones(r.shape, bool)
    where[:, 4] = False
    r[:, 4] = wild
    value, grad = _grad(name, params, r, y, where)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))


# ---------------------------------------------------------------------------
# 4. Reductions and weights
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,params", ONE_PER_LOSS, ids=ONE_IDS)
def test_reductions_and_weights(name, params):
    """sum(per-row) == reduce sum; mean is over VALID rows only; weights scale per-row losses."""
    r = _scores(M_MASK, S_MASK, seed=101)
    y = _labels(M_MASK, S_MASK)
    where = _where_dropping(DROP_ROWS)
    loss = functools.partial(LOSSES[name], r, y, where=where, **params)
    per_row = np.asarray(loss(reduce_fn=None))
    assert per_row.shape == (M_MASK,)
    np.testing.assert_allclose(float(loss(reduce_fn=jnp.sum)), per_row.sum(), rtol=RTOL)
    np.testing.assert_allclose(float(loss(reduce_fn=jnp.mean)), per_row[KEEP_ROWS].mean(), rtol=RTOL)
    # Without a mask, the mean is the plain mean over all rows.
    full = np.asarray(LOSSES[name](r, y, reduce_fn=None, **params))
    np.testing.assert_allclose(float(LOSSES[name](r, y, reduce_fn=jnp.mean, **params)), full.mean(), rtol=RTOL)

    w = np.random.default_rng(102).uniform(0.1, 3.0, size=M_MASK).astype(np.float32)
    weighted = np.asarray(loss(weights=w, reduce_fn=None))
    np.testing.assert_allclose(weighted, w * per_row, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(float(loss(weights=w, reduce_fn=jnp.sum)), np.sum(w * per_row), rtol=RTOL)


# ---------------------------------------------------------------------------
# 5. Extra leading batch dimensions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,params", ONE_PER_LOSS, ids=ONE_IDS)
def test_leading_batch_dims_equal_stacking(name, params):
    """A [2, M, M+S] input equals stacking two [M, M+S] results; every leading axis is a batch axis."""
    m, s = 4, 3
    r = _scores(m, s, seed=111, batch=(2,))
    y = np.broadcast_to(_labels(m, s), r.shape)
    where = np.ones(r.shape, bool)
    where[1, 2, :] = False
    where[1, :, 6] = False
    loss = LOSSES[name]
    batched = np.asarray(loss(r, y, where=where, reduce_fn=None, **params))
    assert batched.shape == (2, m)
    stacked = np.stack([np.asarray(loss(r[k], y[k], where=where[k], reduce_fn=None, **params)) for k in range(2)])
    np.testing.assert_allclose(batched, stacked, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(float(loss(r, y, where=where, reduce_fn=jnp.sum, **params)), stacked.sum(), rtol=RTOL)


# ---------------------------------------------------------------------------
# 6. jit, gradients, recompilation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,params", ONE_PER_LOSS, ids=ONE_IDS)
def test_jit_equals_no_jit(name, params):
    """The jitted registry function equals the plain module-level function."""
    r = _scores(M_MASK, S_MASK, seed=121)
    y = _labels(M_MASK, S_MASK)
    where = _where_dropping(DROP_ROWS, DROP_COLS)
    for reduce_fn in (None, jnp.mean):
        jitted = LOSSES[name](r, y, where=where, reduce_fn=reduce_fn, **params)
        plain = PLAIN[name](r, y, where=where, reduce_fn=reduce_fn, **params)
        np.testing.assert_allclose(np.asarray(jitted), np.asarray(plain), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name,params", ONE_PER_LOSS, ids=ONE_IDS)
def test_check_grads_float64(name, params):
    """Reverse-mode gradients agree with finite differences (float64), under a row/column mask.

    Uses the jitted registry function: the plain one is the same code (test_jit_equals_no_jit)
    and op-by-op execution would make this test several times slower.
    """
    rng = np.random.default_rng(131)
    m, s = 3, 2
    r_np = rng.normal(size=(m, m + s))
    where = np.ones((m, m + s), bool)
    where[0, 4] = False
    where[2, :] = False
    with jax.enable_x64(True):
        r = jnp.asarray(r_np, dtype=jnp.float64)
        y = jnp.asarray(_labels(m, s), dtype=jnp.float64)
        fn = lambda x: LOSSES[name](x, y, where=where, reduce_fn=jnp.sum, **params)  # noqa: E731
        assert fn(r).dtype == jnp.float64
        check_grads(fn, (r,), order=1, modes=["rev"])


@pytest.mark.parametrize("name,params", ONE_PER_LOSS, ids=ONE_IDS)
def test_no_recompilation_on_second_call(name, params):
    """Same shapes and new values must reuse the compiled registry function."""
    loss = LOSSES[name]
    if not hasattr(loss, "_cache_size"):
        pytest.skip("jax.jit(...)._cache_size is not available in this JAX version")
    m, s = 3, 10  # a shape no other test uses
    y = _labels(m, s)
    loss(_scores(m, s, seed=1), y, reduce_fn=jnp.sum, **params).block_until_ready()
    size = loss._cache_size()
    loss(_scores(m, s, seed=2), y, reduce_fn=jnp.sum, **params).block_until_ready()
    assert loss._cache_size() == size


@pytest.mark.parametrize("name,params", ONE_PER_LOSS, ids=ONE_IDS)
def test_plain_function_traces_once_under_jit(name, params):
    """The plain function is traceable and a second same-shape call does not retrace."""
    traces = []

    @jax.jit
    def f(x, y, where):
        traces.append(1)
        return PLAIN[name](x, y, where=where, reduce_fn=jnp.sum, **params)

    m, s = 3, 9
    where = np.ones((m, m + s), bool)
    a = f(_scores(m, s, seed=1), _labels(m, s), where)
    b = f(_scores(m, s, seed=2), _labels(m, s), where)
    assert len(traces) == 1
    assert float(a) != float(b)


# ---------------------------------------------------------------------------
# 7. Registry
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_get_loss_returns_registered_function(name):
    """get_loss(name) is the registry entry, and it wraps the documented module function."""
    assert get_loss(name) is LOSSES[name]
    assert getattr(get_loss(name), "__wrapped__", PLAIN[name]) is PLAIN[name]


@pytest.mark.parametrize("bad", ["bpr_max", "softmax", ""])
def test_get_loss_unknown_name_raises(bad):
    """An unknown loss name is a ValueError naming the bad loss (not a bare KeyError)."""
    with pytest.raises(ValueError) as info:
        get_loss(bad)
    assert repr(bad) in str(info.value)
    assert not isinstance(info.value, KeyError)


# ---------------------------------------------------------------------------
# 8. Losses with integer labels (the training step's form)
# ---------------------------------------------------------------------------

# name -> (integer-label loss, its one-hot form, loss parameters)
INTEGER = {
    "cross-entropy": (losses.cross_entropy_loss_with_integer_labels, losses.cross_entropy_loss, {}),
    "bpr-max": (losses.bpr_max_loss_with_integer_labels, losses.bpr_max_loss, {"bpreg": 1.95}),
    "top1-max": (losses.top1_max_loss_with_integer_labels, losses.top1_max_loss, {}),
}


def ref_loss_at(name, r, label, valid, **params):
    """Per-row loss of the spec's formula for one positive per row at column ``label`` among the
    ``valid`` candidates (the other valid candidates are the negatives); 0 for a row whose label
    is out of range or masked out, or (pairwise losses) that has no negative."""
    out = np.zeros(r.shape[0])
    for i, (row, j, ok) in enumerate(zip(_as64(r), label, valid)):
        if not (0 <= j < row.size and ok[j]):
            continue
        if name == "cross-entropy":
            e = np.exp(row[ok] - row[ok].max())
            out[i] = -np.log(np.exp(row[j] - row[ok].max()) / e.sum() + EPS)
            continue
        negative = ok.copy()
        negative[j] = False
        if not negative.any():
            continue
        rn = row[negative]
        s = np.exp(rn - rn.max())
        s /= s.sum()
        if name == "bpr-max":
            out[i] = -np.log(np.sum(s * _sigmoid(row[j] - rn)) + EPS) + params["bpreg"] * np.sum(s * rn**2)
        else:
            out[i] = np.sum(s * (_sigmoid(rn - row[j]) + _sigmoid(rn**2)))
    return out


@pytest.mark.parametrize("m,s", SHAPES, ids=[f"M{m}-S{s}" for m, s in SHAPES])
@pytest.mark.parametrize("name", INTEGER)
def test_integer_labels_match_numpy_reference(name, m, s):
    integer, _, params = INTEGER[name]
    r = _scores(m, s, seed=141)
    got = integer(r, np.arange(m), reduce_fn=None, **params)
    np.testing.assert_allclose(_as64(got), REFERENCES[name](_as64(r), **params), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", INTEGER)
def test_integer_labels_anywhere_masked_or_out_of_range(name):
    """Labels off the diagonal; a label on a masked-out candidate, below 0 or past the end means no
    positive; a row whose only valid candidate is its positive has no negative."""
    integer, _, params = INTEGER[name]
    rng = np.random.default_rng(142)
    r = _scores(M_MASK, S_MASK, seed=143)
    where = rng.random(r.shape) > 0.2
    label = rng.integers(0, M_MASK + S_MASK, M_MASK)
    where[0, label[0]] = False
    label[1], label[2] = -1, M_MASK + S_MASK
    where[3] = False
    where[3, label[3]] = True
    got = integer(r, label, where=where, reduce_fn=None, **params)
    want = ref_loss_at(name, r, label, where, **params)
    # Row 3: nothing to rank (cross-entropy: -log 1).
    assert want[0] == want[1] == want[2] == want[3] == 0.0 and np.all(want[4:] > 0)
    np.testing.assert_allclose(_as64(got), want, rtol=RTOL, atol=ATOL)
    grads = jax.grad(lambda x: integer(x, label, where=where, reduce_fn=jnp.sum, **params))(jnp.asarray(r))
    assert np.all(np.asarray(grads)[:4] == 0.0) and np.all(np.asarray(grads)[~where] == 0.0)


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("name", INTEGER)
def test_integer_labels_equal_one_hot_labels_values_and_gradients(name, axis):
    """The same loss and gradient as the one-hot form, under a mask, with weights, for every
    reduction; to the last bit without jit."""
    integer, one_hot_loss, params = INTEGER[name]
    r = _scores(M_MASK, S_MASK, seed=144)
    y = _labels(M_MASK, S_MASK)
    where = _where_dropping(DROP_ROWS, DROP_COLS)
    weights = np.linspace(0.5, 2.0, M_MASK).astype(np.float32)
    if axis == 0:  # candidates on axis 0, as the training step lays them out
        r, y, where = r.T, y.T, where.T
    label = np.arange(M_MASK)
    for reduce_fn in (None, jnp.sum, jnp.mean):
        def one_hot(x):
            return one_hot_loss(x, y, where=where, weights=weights, reduce_fn=reduce_fn, axis=axis, **params)

        def by_index(x):
            return integer(x, label, where=where, weights=weights, reduce_fn=reduce_fn, axis=axis, **params)

        np.testing.assert_array_equal(np.asarray(by_index(r)), np.asarray(one_hot(r)))
        if reduce_fn is not None:
            np.testing.assert_array_equal(np.asarray(jax.grad(by_index)(r)), np.asarray(jax.grad(one_hot)(r)))
            jitted = jax.jit(jax.value_and_grad(by_index))(r)
            np.testing.assert_allclose(float(jitted[0]), float(one_hot(r)), rtol=1e-6)
            np.testing.assert_allclose(np.asarray(jitted[1]), np.asarray(jax.grad(one_hot)(r)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", INTEGER)
def test_integer_labels_leading_batch_dims(name):
    integer, _, params = INTEGER[name]
    r = _scores(4, 3, seed=145, batch=(2,))
    label = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    batched = np.asarray(integer(r, label, reduce_fn=None, **params))
    stacked = np.stack([np.asarray(integer(r[k], label[k], reduce_fn=None, **params)) for k in range(2)])
    np.testing.assert_allclose(batched, stacked, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("wild", [1e20, np.inf, -np.inf])
@pytest.mark.parametrize("name", INTEGER)
def test_integer_labels_masked_wild_scores_stay_finite(name, wild):
    integer, _, params = INTEGER[name]
    r = _scores(M_MASK, S_MASK, seed=146)
    where = _where_dropping(DROP_ROWS, DROP_COLS)
    clean = integer(r, np.arange(M_MASK), where=where, reduce_fn=jnp.sum, **params)
    r[~where] = wild
    loss, grads = jax.value_and_grad(
        lambda x: integer(x, np.arange(M_MASK), where=where, reduce_fn=jnp.sum, **params))(jnp.asarray(r))
    assert float(loss) == float(clean) and np.all(np.isfinite(np.asarray(grads)))


@pytest.mark.parametrize("name", INTEGER)
def test_integer_labels_check_grads_float64(name):
    integer, _, params = INTEGER[name]
    rng = np.random.default_rng(147)
    where = np.ones((3, 5), bool)
    where[0, 4] = False
    where[2, :] = False
    with jax.enable_x64(True):
        r = jnp.asarray(rng.normal(size=(3, 5)), dtype=jnp.float64)
        fn = lambda x: integer(x, np.array([0, 3, 1]), where=where, reduce_fn=jnp.sum, **params)  # noqa: E731
        assert fn(r).dtype == jnp.float64
        check_grads(fn, (r,), order=1, modes=["rev"])
