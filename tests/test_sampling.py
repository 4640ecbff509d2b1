"""Tests of gru4rec_jax.sampling: alias-method negatives ~ support**alpha, logQ correction.

GRU4REC.md sections 3 and 11.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru4rec_jax import sampling

SUPPORT = np.array([1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 1, 1, 4, 7, 100, 250, 2, 9, 30, 60], np.float64)
N_DRAWS = 200_000

_draw = jax.jit(sampling.draw_negatives, static_argnums=2)


def _target(support, alpha):
    w = np.power(support, alpha)
    return w / w.sum()


def _alias_probabilities(table):
    """Exact distribution of the alias method: P(i) = (keep[i] + sum_{j: alias[j]=i} (1 - keep[j])) / n."""
    keep = np.asarray(table.keep, np.float64)
    alias = np.asarray(table.alias)
    n = len(keep)
    p = keep.copy()
    np.add.at(p, alias, 1.0 - keep)
    return p / n


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.75, 1.0])
def test_alias_table_reproduces_support_power_alpha_exactly(alpha):
    """Guards the alias construction: its exact probabilities equal support**alpha normalised."""
    table = sampling.alias_table(SUPPORT, alpha)
    n = len(SUPPORT)
    assert table.keep.shape == (n,) and table.alias.shape == (n,)
    keep, alias = np.asarray(table.keep), np.asarray(table.alias)
    assert np.all((keep >= 0) & (keep <= 1))
    assert np.all((alias >= 0) & (alias < n))
    np.testing.assert_allclose(_alias_probabilities(table), _target(SUPPORT, alpha), rtol=1e-5, atol=1e-7)


def test_alias_table_item_with_zero_support_is_never_drawn_for_positive_alpha():
    """Guards items without training events: probability 0 when alpha > 0 (uniform when alpha = 0)."""
    support = np.array([0.0, 3.0, 1.0, 0.0, 6.0])
    p1 = _alias_probabilities(sampling.alias_table(support, 1.0))
    np.testing.assert_allclose(p1, support / support.sum(), atol=1e-7)
    p0 = _alias_probabilities(sampling.alias_table(support, 0.0))
    np.testing.assert_allclose(p0, np.full(5, 0.2), atol=1e-7)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_draw_negatives_empirical_frequencies(alpha):
    """Guards the on-device draw (bucket + coin): 200k draws match support**alpha; alpha=0 is uniform."""
    table = sampling.alias_table(SUPPORT, alpha)
    draws = np.asarray(_draw(jax.random.PRNGKey(int(alpha * 10)), table, N_DRAWS))
    assert draws.shape == (N_DRAWS,)
    assert draws.min() >= 0 and draws.max() < len(SUPPORT)
    freq = np.bincount(draws, minlength=len(SUPPORT)) / N_DRAWS
    target = _target(SUPPORT, alpha)
    assert np.max(np.abs(freq - target)) < 0.01
    # Chi-square with 19 degrees of freedom: the 99.99% quantile is about 50.
    chi2 = N_DRAWS * np.sum((freq - target) ** 2 / target)
    assert chi2 < 50, chi2
    if alpha == 0.0:
        np.testing.assert_allclose(freq, 1.0 / len(SUPPORT), atol=0.005)


def test_draw_negatives_popularity_differs_from_uniform():
    """Guards alpha being ignored: alpha=1 must favour popular items over alpha=0."""
    popular, rare = int(np.argmax(SUPPORT)), int(np.argmin(SUPPORT))
    key = jax.random.PRNGKey(9)

    def freq(alpha):
        draws = np.asarray(_draw(key, sampling.alias_table(SUPPORT, alpha), 20_000))
        return np.bincount(draws, minlength=len(SUPPORT)) / 20_000

    f1, f0 = freq(1.0), freq(0.0)
    assert f1[popular] > 3 * f0[popular]
    assert f1[rare] < f0[rare] / 3


def test_draw_negatives_deterministic_per_key_and_dtype():
    """Guards hidden randomness: the same key gives the same samples, a different key different ones."""
    table = sampling.alias_table(SUPPORT, 0.5)
    a = np.asarray(_draw(jax.random.PRNGKey(1), table, 64))
    b = np.asarray(_draw(jax.random.PRNGKey(1), table, 64))
    c = np.asarray(_draw(jax.random.PRNGKey(2), table, 64))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.issubdtype(a.dtype, np.integer)


def test_single_item_catalogue():
    """Guards the degenerate catalogue of one item: the table is valid and every draw is item 0."""
    for alpha in (0.0, 1.0):
        table = sampling.alias_table(np.array([7.0]), alpha)
        np.testing.assert_allclose(_alias_probabilities(table), [1.0])
        draws = np.asarray(_draw(jax.random.PRNGKey(0), table, 100))
        np.testing.assert_array_equal(draws, 0)


def test_item_support_counts_events():
    """Guards support = training event count per item index, zeros for unseen items."""
    np.testing.assert_array_equal(sampling.item_support(np.array([2, 0, 2, 2]), 4), [1.0, 0.0, 3.0, 0.0])


# --------------------------------------------------------------------------------------------
# logq_correction


def _np_logq(log_support, columns, n_in_batch, logq, alpha):
    scale = np.where(np.arange(len(columns)) < n_in_batch, 1.0, alpha)
    return logq * scale * log_support[columns]


@pytest.mark.parametrize("n_in_batch", [5, 3, 0])
def test_logq_correction_splits_at_actual_in_batch_count(n_in_batch):
    """Guards the PyTorch-port bug of splitting at the nominal batch size: with M=3 active of B=5,
    columns 3 and 4 are samples and get logq*alpha*log(support)."""
    rng = np.random.default_rng(0)
    support = rng.integers(1, 100, size=30).astype(np.float64)
    log_support = np.log(support)
    S = 4
    columns = rng.integers(0, 30, size=n_in_batch + S)
    logq, alpha = 0.8, 0.4
    got = np.asarray(sampling.logq_correction(jnp.asarray(log_support, jnp.float32), jnp.asarray(columns),
                                              n_in_batch, logq, alpha))
    want = np.concatenate([logq * log_support[columns[:n_in_batch]],
                           logq * alpha * log_support[columns[n_in_batch:]]])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    want_vectorised = _np_logq(log_support, columns, n_in_batch, logq, alpha)
    np.testing.assert_allclose(got, want_vectorised, rtol=1e-5, atol=1e-6)


def test_logq_correction_nominal_split_would_differ():
    """Shows the nominal-B split gives different offsets, so the test above discriminates the bug."""
    log_support = np.log(np.arange(1, 11, dtype=np.float64))
    columns = np.array([9, 8, 7, 6, 5, 4])  # M = 2 in-batch, 4 samples; nominal B = 4
    got = np.asarray(sampling.logq_correction(jnp.asarray(log_support), jnp.asarray(columns), 2, 1.0, 0.5))
    nominal = _np_logq(log_support, columns, 4, 1.0, 0.5)
    np.testing.assert_allclose(got, _np_logq(log_support, columns, 2, 1.0, 0.5), rtol=1e-6)
    assert not np.allclose(got, nominal)


def test_logq_correction_traced_n_in_batch_under_jit():
    """Guards a Python-only split: the active count may be a traced value inside the jitted train step."""
    log_support = jnp.log(jnp.arange(1.0, 9.0))
    columns = jnp.array([0, 1, 2, 3, 4, 5, 6, 7])
    f = jax.jit(lambda m: sampling.logq_correction(log_support, columns, m, 0.5, 0.0))
    for m in (2, 6):
        want = _np_logq(np.log(np.arange(1.0, 9.0)), np.arange(8), m, 0.5, 0.0)
        np.testing.assert_allclose(np.asarray(f(m)), want, rtol=1e-6)
