"""Ranking losses of the GRU4Rec family, reusable by any JAX project.

Every loss shares one keyword-only signature (the rax convention)::

    loss(scores, labels, *, where=None, weights=None, reduce_fn=jnp.mean, axis=-1, **loss_params)

- ``scores``: ``[..., num_candidates]`` real scores (after any final activation
  or logQ correction the caller wants; the losses apply none of their own).
- ``labels``: ``[..., num_candidates]``, nonzero where a candidate is a positive.
  Cross-entropy accepts any non-negative label weights; the pairwise losses
  (TOP1, BPR, TOP1-max, BPR-max) compare ONE positive per row against the other
  candidates (the next-item setting) and expect exactly one positive per row.
  Every candidate that is valid and not the positive is a negative.
- ``where``: optional boolean ``[..., num_candidates]``; False removes a candidate
  entirely (it is neither positive nor negative). A row with no valid positive, or
  (pairwise losses) no valid negative, contributes 0 loss and 0 gradient.
- ``weights``: optional per-row weights, broadcastable to the shape of ``scores``
  without its candidates' axis.
- ``reduce_fn``: ``jnp.sum``, ``jnp.mean`` (over valid rows) or ``None`` for the
  per-row losses ``[...]``; ``sum(loss(reduce_fn=None)) == loss(reduce_fn=jnp.sum)``.
- ``axis``: the candidates' axis, last by default. "Row" above means one slice
  along it: with ``axis=0`` a ``(num_candidates, M)`` matrix holds one row per
  column. (GRU4Rec's training step uses that layout: on CPU its score products
  are faster with the long candidate dimension outermost.)

GRU4Rec's own layout -- a ``(M, M + S)`` score matrix whose row ``i`` has its
target in column ``i`` -- is the special case ``labels = eye(M, M + S)``; see
:func:`gru4rec_labels`. With ``reduce_fn=jnp.sum`` the losses then equal the
reference formulas of Hidasi et al. (ICLR 2016, CIKM 2018).

The ``*_with_integer_labels`` forms of cross-entropy, BPR-max and TOP1-max take
each row's positive as an index instead (``labels`` of the shape of ``scores``
without ``axis``): the same values, less work.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Protocol

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = [
    "LossFn",
    "LOSSES",
    "get_loss",
    "gru4rec_labels",
    "cross_entropy_loss",
    "cross_entropy_loss_with_integer_labels",
    "bpr_max_loss",
    "bpr_max_loss_with_integer_labels",
    "top1_max_loss",
    "top1_max_loss_with_integer_labels",
    "top1_loss",
    "bpr_loss",
]

# Added inside the logarithms exactly as the reference implementations do, so
# that losses (not only rankings) match them.
_LOG_EPS = 1e-24

ReduceFn = Optional[Callable[..., jax.Array]]


class LossFn(Protocol):
    """The shared signature of every loss in this module."""

    def __call__(
        self,
        scores: ArrayLike,
        labels: ArrayLike,
        *,
        where: Optional[ArrayLike] = None,
        weights: Optional[ArrayLike] = None,
        reduce_fn: ReduceFn = jnp.mean,
        axis: int = -1,
        **loss_params,
    ) -> jax.Array: ...


def gru4rec_labels(num_rows: int, num_columns: int) -> jax.Array:
    """Labels of GRU4Rec's score matrix: row ``i``'s positive is column ``i``.

    >>> gru4rec_labels(2, 4).astype(int)
    Array([[1, 0, 0, 0],
           [0, 1, 0, 0]], dtype=int32)
    """
    return jnp.eye(num_rows, num_columns, dtype=jnp.bool_)


def _masked_scores(scores, where):
    """The scores with masked-out entries zeroed, and the mask (``where`` broadcast, all True if None)."""
    scores = jnp.asarray(scores)
    valid = jnp.ones(scores.shape, jnp.bool_) if where is None else jnp.broadcast_to(where, scores.shape)
    # Masked-out entries may hold anything (huge values, inf): zero them so that
    # no arithmetic on them can overflow into the loss or its gradient.
    return jnp.where(valid, scores, 0.0), valid


def _prepare(scores, labels, where):
    scores, valid = _masked_scores(scores, where)
    positive = (jnp.asarray(labels) > 0) & valid
    return scores, positive, valid & ~positive


def _prepare_integer_labels(scores, labels, where, axis):
    """For one positive per row given as its index (``labels``: the scores' shape without ``axis``):
    the masked scores, the valid mask, the index (0 where out of range) and whether the row has a
    valid positive, both with ``axis`` kept."""
    scores, valid = _masked_scores(scores, where)
    label_index = jnp.expand_dims(jnp.asarray(labels, jnp.int32), axis)
    in_range = (label_index >= 0) & (label_index < scores.shape[axis])
    label_index = jnp.where(in_range, label_index, 0)
    return scores, valid, label_index, in_range & jnp.take_along_axis(valid, label_index, axis=axis)


def _pairwise_integer_labels(scores, labels, where, axis):
    """:func:`_prepare_integer_labels` for the pairwise losses: the masked scores, the positive and
    negative masks (as :func:`_prepare` makes them of the one-hot labels), the index and the rows
    that count (a valid positive and at least one negative)."""
    scores, valid, label_index, has_positive = _prepare_integer_labels(scores, labels, where, axis)
    is_label = jax.lax.broadcasted_iota(jnp.int32, scores.shape, axis % scores.ndim) == label_index
    positive = is_label & has_positive
    negative = valid & ~positive
    return scores, positive, negative, label_index, jnp.squeeze(has_positive, axis) & jnp.any(negative, axis=axis)


def _reduce(per_row, row_valid, weights, reduce_fn):
    if weights is not None:
        per_row = per_row * jnp.asarray(weights, per_row.dtype)
    # Invalid rows may hold garbage from masked arithmetic: force exact zeros.
    per_row = jnp.where(row_valid, per_row, 0.0)
    if reduce_fn is None:
        return per_row
    if reduce_fn is jnp.mean:
        count = jnp.sum(row_valid)
        return jnp.sum(per_row) / jnp.maximum(count, 1)
    return reduce_fn(per_row)


def _positive_score(scores, positive, axis):
    # One positive per row (pairwise losses): its score, 0 where there is none.
    return jnp.sum(jnp.where(positive, scores, 0.0), axis=axis, keepdims=True)


def _masked_exp(scores, mask, row_max):
    """exp(r_j - shift) on the masked-in candidates, 0 elsewhere: a softmax before normalising."""
    return jnp.where(mask, jnp.exp(jnp.where(mask, scores, row_max) - row_max), 0.0)


def _softmax_basis(scores, mask, axis):
    """The shift (largest masked-in score, 0 where none) and the exp-sum (1 where none) of a masked softmax."""
    row_max = jnp.max(jnp.where(mask, scores, -jnp.inf), axis=axis, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    total = jnp.sum(_masked_exp(scores, mask, row_max), axis=axis, keepdims=True)
    return row_max, jnp.where(total > 0, total, 1.0)


def _softmax_over(scores, mask, axis):
    """Softmax over the masked-in candidates only; all zeros where none is."""
    row_max, total = _softmax_basis(scores, mask, axis)
    return _masked_exp(scores, mask, row_max) / total


# Fused per-row cores with hand-written gradients. They compute exactly the
# formulas in the docstrings below; writing the backward pass by hand lets XLA
# do one fused elementwise pass each way instead of the many small ones that
# autodiff of the masked formulas produces (about 3x faster on CPU for the
# (B, B + 2048) training score matrices). Tests check them against autodiff of
# plain formulas and with jax.test_util.check_grads.


# ``axis`` (the candidates' axis) is their first, static argument.
_custom_vjp_over_axis = functools.partial(jax.custom_vjp, nondiff_argnums=(0,))


@_custom_vjp_over_axis
def _cross_entropy_rows(axis, scores, label_weight, valid):
    return _cross_entropy_rows_fwd(axis, scores, label_weight, valid)[0]


def _cross_entropy_rows_fwd(axis, scores, label_weight, valid):
    probs = _softmax_over(scores, valid, axis)
    per_row = -jnp.sum(label_weight * jnp.log(probs + _LOG_EPS), axis=axis)
    return per_row, (probs, label_weight, valid)


def _cross_entropy_rows_bwd(axis, residuals, g):
    probs, label_weight, valid = residuals
    q = label_weight * probs / (probs + _LOG_EPS)
    d_scores = probs * jnp.sum(q, axis=axis, keepdims=True) - q
    return jnp.where(valid, d_scores * jnp.expand_dims(g, axis), 0.0), None, None


_cross_entropy_rows.defvjp(_cross_entropy_rows_fwd, _cross_entropy_rows_bwd)


# The same loss with each row's one positive given by its index: the positive's
# probability is read at that index instead of summed out of the whole row, so
# the forward pass reduces twice (max and sum) and the backward pass not at all.
# It returns exactly what _cross_entropy_rows returns for one-hot labels.


@_custom_vjp_over_axis
def _cross_entropy_index_rows(axis, scores, label_index, valid):
    return _cross_entropy_index_rows_fwd(axis, scores, label_index, valid)[0]


def _cross_entropy_index_rows_fwd(axis, scores, label_index, valid):
    row_max, total = _softmax_basis(scores, valid, axis)
    at_label = lambda x: jnp.take_along_axis(x, label_index, axis=axis)  # noqa: E731
    label_valid = at_label(valid)
    label_prob = _masked_exp(at_label(scores), label_valid, row_max) / total
    per_row = jnp.where(label_valid, -jnp.log(label_prob + _LOG_EPS), 0.0)
    # label_prob is already 0 where the label is masked out; the select stays because it sets how
    # XLA fuses and rounds the backward pass (without it training rounds, and so diverges, differently).
    residuals = (scores, label_index, valid, row_max, total, jnp.where(label_valid, label_prob, 0.0))
    return jnp.squeeze(per_row, axis), residuals


def _cross_entropy_index_rows_bwd(axis, residuals, g):
    scores, label_index, valid, row_max, total, label_prob = residuals
    probs = _masked_exp(scores, valid, row_max) / total
    q = label_prob / (label_prob + _LOG_EPS)
    is_label = jax.lax.broadcasted_iota(jnp.int32, scores.shape, axis % scores.ndim) == label_index
    d_scores = probs * q - jnp.where(is_label, q, 0.0)
    return jnp.where(valid, d_scores * jnp.expand_dims(g, axis), 0.0), None, None


_cross_entropy_index_rows.defvjp(_cross_entropy_index_rows_fwd, _cross_entropy_index_rows_bwd)


def _reduce_stacked(reduce, parts, axis):
    """``reduce`` over ``axis`` (kept) of every array in ``parts``, as one reduction of their stack.

    XLA:CPU rewrites each reduction over more than 32 elements into a tree of
    reduce-window operations that do not fuse with the operations producing
    their input: every reduction costs passes of its own over the (M + S, M)
    training scores. Reducing a stack makes those passes once (the BPR-max
    training step ran 5% faster on CPU with two such reductions instead of eight).
    """
    return list(reduce(jnp.stack(parts), axis=axis % parts[0].ndim + 1, keepdims=True))


def _negative_softmax_basis(scores, positive, negative, axis, label_index=None):
    """The softmax shift (largest negative score) and the positive's score, 0 where there is none.

    One max-reduction for both: the pairwise losses take exactly one positive per row. Given the
    positive's ``label_index`` (its mask is then ``positive``), its score is read there instead.
    """
    finite = lambda x: jnp.where(jnp.isfinite(x), x, 0.0)  # noqa: E731
    if label_index is not None:
        row_max = jnp.max(jnp.where(negative, scores, -jnp.inf), axis=axis, keepdims=True)
        return finite(row_max), jnp.take_along_axis(jnp.where(positive, scores, 0.0), label_index, axis=axis)
    row_max, target = _reduce_stacked(
        jnp.max, [jnp.where(negative, scores, -jnp.inf), jnp.where(positive, scores, -jnp.inf)], axis)
    return finite(row_max), finite(target)


# BPR-max and TOP1-max: the forward pass computes, besides the loss, the one sum
# the backward pass needs; the backward pass recomputes the elementwise terms
# (cheaper than keeping them) and has no reduction of its own.


@_custom_vjp_over_axis
def _bpr_max_rows(axis, scores, positive, negative, bpreg, label_index):
    return _bpr_max_rows_fwd(axis, scores, positive, negative, bpreg, label_index)[0]


def _bpr_max_rows_fwd(axis, scores, positive, negative, bpreg, label_index):
    row_max, target = _negative_softmax_basis(scores, positive, negative, axis, label_index)
    e, sig = _masked_exp(scores, negative, row_max), jax.nn.sigmoid(target - scores)
    # With w = e / total: ranking = sum w sig, regulariser = sum w r^2, slope = sum w sig (1 - sig).
    total, e_sig, e_square, e_slope = _reduce_stacked(
        jnp.sum, [e, e * sig, e * jnp.square(scores), e * sig * (1.0 - sig)], axis)
    total = jnp.where(total > 0, total, 1.0)
    ranking, regulariser, slope = e_sig / total, e_square / total, e_slope / total
    per_row = -jnp.log(ranking + _LOG_EPS) + bpreg * regulariser
    residuals = (scores, positive, negative, row_max, target, total, ranking, regulariser, slope, bpreg)
    return jnp.squeeze(per_row, axis), residuals


def _bpr_max_rows_bwd(axis, residuals, g):
    scores, positive, negative, row_max, target, total, ranking, regulariser, slope, bpreg = residuals
    w = _masked_exp(scores, negative, row_max) / total
    sig = jax.nn.sigmoid(target - scores)
    inv = 1.0 / (ranking + _LOG_EPS)
    # d ranking / d r_j = w_j (sig_j - ranking) - w_j sig_j (1 - sig_j); d reg / d r_j = w_j (r_j^2 - reg) + 2 w_j r_j;
    # d ranking / d r_+ = slope.
    d_neg = -inv * w * (sig - ranking - sig * (1.0 - sig)) + bpreg * w * (
        jnp.square(scores) - regulariser + 2.0 * scores)
    d_pos = -inv * slope
    d_scores = jnp.where(negative, d_neg, jnp.where(positive, d_pos, 0.0)) * jnp.expand_dims(g, axis)
    return d_scores, None, None, jnp.zeros_like(bpreg), None


_bpr_max_rows.defvjp(_bpr_max_rows_fwd, _bpr_max_rows_bwd)


@_custom_vjp_over_axis
def _top1_max_rows(axis, scores, positive, negative, label_index):
    return _top1_max_rows_fwd(axis, scores, positive, negative, label_index)[0]


def _top1_max_terms(scores, target):
    above, square = jax.nn.sigmoid(scores - target), jax.nn.sigmoid(jnp.square(scores))
    return above, square, above + square


def _top1_max_rows_fwd(axis, scores, positive, negative, label_index):
    row_max, target = _negative_softmax_basis(scores, positive, negative, axis, label_index)
    e = _masked_exp(scores, negative, row_max)
    above, _, terms = _top1_max_terms(scores, target)
    # With w = e / total: the loss sum w (above + square) and slope = sum w above (1 - above).
    total, e_terms, e_slope = _reduce_stacked(jnp.sum, [e, e * terms, e * above * (1.0 - above)], axis)
    total = jnp.where(total > 0, total, 1.0)
    per_row, slope = e_terms / total, e_slope / total
    return jnp.squeeze(per_row, axis), (scores, positive, negative, row_max, target, total, per_row, slope)


def _top1_max_rows_bwd(axis, residuals, g):
    scores, positive, negative, row_max, target, total, per_row, slope = residuals
    w = _masked_exp(scores, negative, row_max) / total
    above, square, terms = _top1_max_terms(scores, target)
    # d/dr_j of w_j * sigmoid(r_j - r_+) with w fixed is w_j above_j (1 - above_j); summed, minus that is d/dr_+.
    d_neg = w * (terms - per_row) + w * above * (1.0 - above) + 2.0 * scores * w * square * (1.0 - square)
    d_pos = -slope
    d_scores = jnp.where(negative, d_neg, jnp.where(positive, d_pos, 0.0)) * jnp.expand_dims(g, axis)
    return d_scores, None, None, None


_top1_max_rows.defvjp(_top1_max_rows_fwd, _top1_max_rows_bwd)


def cross_entropy_loss(scores, labels, *, where=None, weights=None, reduce_fn=jnp.mean, axis=-1):
    r"""Softmax cross-entropy over the candidates of each row.

    .. math:: \ell = -\sum_j y_j \log(\mathrm{softmax}(r)_j + 10^{-24})

    The softmax runs over the valid candidates (``where``) only. GRU4Rec
    (Hidasi & Czapp 2023, cross-entropy with sampled negatives) adds the logQ
    correction to ``scores`` before calling this.

    Shapes: ``scores, labels, where: [..., num_candidates]``; result ``[...]``
    with ``reduce_fn=None``, else a scalar.

    >>> import jax.numpy as jnp
    >>> round(float(cross_entropy_loss(jnp.array([[0.0, 0.0]]), jnp.array([[1, 0]]))), 4)
    0.6931
    """
    scores, positive, negative = _prepare(scores, labels, where)
    label_weight = jnp.where(positive, jnp.asarray(labels, scores.dtype), 0.0)
    per_row = _cross_entropy_rows(axis, scores, label_weight, positive | negative)
    return _reduce(per_row, jnp.any(positive, axis=axis), weights, reduce_fn)


def cross_entropy_loss_with_integer_labels(
    scores, labels, *, where=None, weights=None, reduce_fn=jnp.mean, axis=-1
):
    r""":func:`cross_entropy_loss` for rows with one positive, given as its index.

    The same values and gradients as :func:`cross_entropy_loss` with the
    one-hot labels of ``labels``, for less work: the positive's probability is
    read at its index (two reductions over the candidates instead of four).
    A label outside ``[0, num_candidates)`` or on a masked-out candidate means
    the row has no positive: it contributes 0, as an all-zero label row does.

    Shapes: ``scores, where: [..., num_candidates]`` (candidates on ``axis``),
    ``labels``: integer, the shape of ``scores`` without ``axis``.

    >>> import jax.numpy as jnp
    >>> round(float(cross_entropy_loss_with_integer_labels(jnp.array([[0.0, 0.0]]), jnp.array([0]))), 4)
    0.6931
    """
    scores, valid, label_index, has_positive = _prepare_integer_labels(scores, labels, where, axis)
    per_row = _cross_entropy_index_rows(axis, scores, label_index, valid)
    return _reduce(per_row, jnp.squeeze(has_positive, axis), weights, reduce_fn)


def bpr_max_loss(
    scores, labels, *, where=None, weights=None, reduce_fn=jnp.mean, axis=-1, bpreg: float = 1.0
):
    r"""BPR-max (Hidasi & Karatzoglou, CIKM 2018), with its score regularisation.

    With :math:`s_j` the softmax of the scores over the negatives only and
    :math:`r_+` the positive's score:

    .. math:: \ell = -\log\Big(\sum_j s_j\,\sigma(r_+ - r_j) + 10^{-24}\Big)
              + \lambda \sum_j s_j r_j^2, \qquad \lambda = \texttt{bpreg}

    The reference applies an ELU final activation to the scores first; pass the
    activated scores. Shapes as in :func:`cross_entropy_loss`.

    >>> import jax.numpy as jnp
    >>> round(float(bpr_max_loss(jnp.array([[1.0, 1.0]]), jnp.array([[1, 0]]), bpreg=0.0)), 4)
    0.6931
    """
    scores, positive, negative = _prepare(scores, labels, where)
    per_row = _bpr_max_rows(axis, scores, positive, negative, jnp.asarray(bpreg, scores.dtype), None)
    row_valid = jnp.any(positive, axis=axis) & jnp.any(negative, axis=axis)
    return _reduce(per_row, row_valid, weights, reduce_fn)


def bpr_max_loss_with_integer_labels(
    scores, labels, *, where=None, weights=None, reduce_fn=jnp.mean, axis=-1, bpreg: float = 1.0
):
    r""":func:`bpr_max_loss` for rows whose positive is given as its index.

    The same values and gradients as :func:`bpr_max_loss` with the one-hot
    labels of ``labels``, for less work: the positive's score is read at its
    index instead of reduced out of the row. Labels and shapes as in
    :func:`cross_entropy_loss_with_integer_labels`.

    >>> import jax.numpy as jnp
    >>> round(float(bpr_max_loss_with_integer_labels(jnp.array([[1.0, 1.0]]), jnp.array([0]), bpreg=0.0)), 4)
    0.6931
    """
    scores, positive, negative, label_index, row_valid = _pairwise_integer_labels(scores, labels, where, axis)
    per_row = _bpr_max_rows(axis, scores, positive, negative, jnp.asarray(bpreg, scores.dtype), label_index)
    return _reduce(per_row, row_valid, weights, reduce_fn)


def top1_max_loss(scores, labels, *, where=None, weights=None, reduce_fn=jnp.mean, axis=-1):
    r"""TOP1-max (Hidasi & Karatzoglou, CIKM 2018).

    .. math:: \ell = \sum_j s_j\,\big(\sigma(r_j - r_+) + \sigma(r_j^2)\big)

    with :math:`s_j` the softmax over the negatives only. Shapes as in
    :func:`cross_entropy_loss`.

    >>> import jax.numpy as jnp
    >>> round(float(top1_max_loss(jnp.array([[0.0, 0.0]]), jnp.array([[1, 0]]))), 4)
    1.0
    """
    scores, positive, negative = _prepare(scores, labels, where)
    per_row = _top1_max_rows(axis, scores, positive, negative, None)
    row_valid = jnp.any(positive, axis=axis) & jnp.any(negative, axis=axis)
    return _reduce(per_row, row_valid, weights, reduce_fn)


def top1_max_loss_with_integer_labels(scores, labels, *, where=None, weights=None, reduce_fn=jnp.mean, axis=-1):
    r""":func:`top1_max_loss` for rows whose positive is given as its index.

    The same values and gradients as :func:`top1_max_loss` with the one-hot
    labels of ``labels``, for less work (see
    :func:`bpr_max_loss_with_integer_labels`).

    >>> import jax.numpy as jnp
    >>> round(float(top1_max_loss_with_integer_labels(jnp.array([[0.0, 0.0]]), jnp.array([0]))), 4)
    1.0
    """
    scores, positive, negative, label_index, row_valid = _pairwise_integer_labels(scores, labels, where, axis)
    per_row = _top1_max_rows(axis, scores, positive, negative, label_index)
    return _reduce(per_row, row_valid, weights, reduce_fn)


def top1_loss(scores, labels, *, where=None, weights=None, reduce_fn=jnp.mean, axis=-1):
    r"""TOP1 of the original GRU4Rec (Hidasi et al., ICLR 2016), per row.

    .. math:: \ell = \frac{1}{N}\sum_{j}\big(\sigma(r_j - r_+) + \sigma(r_j^2)\big)
              - \frac{\sigma(r_+^2)}{N}

    over the :math:`N` valid candidates, the positive included (as in the
    reference). Shapes as in :func:`cross_entropy_loss`.

    >>> import jax.numpy as jnp
    >>> round(float(top1_loss(jnp.array([[0.0, 0.0]]), jnp.array([[1, 0]]))), 4)
    0.75
    """
    scores, positive, negative = _prepare(scores, labels, where)
    valid = positive | negative
    count = jnp.maximum(jnp.sum(valid, axis=axis), 1).astype(scores.dtype)
    target = _positive_score(scores, positive, axis)
    terms = jax.nn.sigmoid(scores - target) + jax.nn.sigmoid(jnp.square(scores))
    per_row = (
        jnp.sum(jnp.where(valid, terms, 0.0), axis=axis)
        - jax.nn.sigmoid(jnp.square(jnp.squeeze(target, axis)))
    ) / count
    row_valid = jnp.any(positive, axis=axis) & jnp.any(negative, axis=axis)
    return _reduce(per_row, row_valid, weights, reduce_fn)


def bpr_loss(scores, labels, *, where=None, weights=None, reduce_fn=jnp.mean, axis=-1):
    r"""BPR of the original GRU4Rec (Hidasi et al., ICLR 2016), per row.

    .. math:: \ell = -\sum_j \log \sigma(r_+ - r_j)

    summed over the valid candidates, the positive included (a constant
    :math:`\log 2`, as in the reference). Shapes as in :func:`cross_entropy_loss`.

    >>> import jax.numpy as jnp
    >>> round(float(bpr_loss(jnp.array([[0.0, 0.0]]), jnp.array([[1, 0]]))), 4)
    1.3863
    """
    scores, positive, negative = _prepare(scores, labels, where)
    valid = positive | negative
    target = _positive_score(scores, positive, axis)
    per_row = -jnp.sum(jnp.where(valid, jax.nn.log_sigmoid(target - scores), 0.0), axis=axis)
    row_valid = jnp.any(positive, axis=axis) & jnp.any(negative, axis=axis)
    return _reduce(per_row, row_valid, weights, reduce_fn)


# The CLI picks losses by these names (the reference implementation's names).
LOSSES: dict[str, LossFn] = {
    "cross-entropy": jax.jit(cross_entropy_loss, static_argnames=("reduce_fn", "axis")),
    "bpr-max": jax.jit(bpr_max_loss, static_argnames=("reduce_fn", "axis")),
    "top1-max": jax.jit(top1_max_loss, static_argnames=("reduce_fn", "axis")),
    "top1": jax.jit(top1_loss, static_argnames=("reduce_fn", "axis")),
    "bpr": jax.jit(bpr_loss, static_argnames=("reduce_fn", "axis")),
}


def get_loss(name: str) -> LossFn:
    """The jit-compiled loss registered under ``name``."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None
