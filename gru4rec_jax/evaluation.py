"""Next-item evaluation with full ranking over all items (GRU4REC.md section 7).

The test sessions run through the same session-parallel schedule (dropout off,
state zeroed at each new session); every event but a session's first is a
target, ranked against ALL training items (items seen earlier in the session
are not excluded). The rank is counted, not sorted for:

- ``standard``:     #(score > target) + 1
- ``conservative``: #(score >= target)           (the reference examples report this)
- ``median``:       #(>) + 0.5 * (#(=) - 1) + 1

Recall@K = mean over events of [rank <= K]; MRR@K = mean of [rank <= K] / rank;
NDCG@K = mean of [rank <= K] / log2(rank + 1) (one relevant item per event, so
the ideal DCG is 1; a median rank can be fractional). All three are averaged
over events, never over batches.

Item coverage@K (opt-in, ``item_coverage=True``) = the fraction of the
catalogue's items that are in at least one evaluated event's top-K list. A
top-K list orders items by score, and equal scores by item index (the lower
first), so a tie at the K-th place goes to the lower index. The lists are
those of the scores, independent of the tie rule of the ranks.

A step scores the whole catalogue in one product, then counts the items
scoring above (and equal to) the target in one pass, as long as its (lanes x
items) float32 scores take at most :data:`ONE_PRODUCT_SCORE_BYTES`. Larger
catalogues are scored block by block (``item_block`` items at a time) inside
the compiled loop, so memory stays at (lanes x block) floats whatever the
catalogue size, still in one pass (see :func:`_counts_by_blocks`).

The ranks are exact by construction, whatever the platform: every comparison
takes both of its scores from one product (two products of the same values
need not round alike), and the target is never compared with another
rounding of its own score. Each block is scored with the lanes' target rows
appended, so the target's score comes from the product it is compared in;
the block's own column of the target is left out and counted as the tie it is.

With item tables sharded over a mesh's ``items`` axis (:mod:`gru4rec_jax.sharding`),
each device scores its own rows (block by block as above, the lanes' target
rows gathered from the devices that own them), and the per-device counts are
summed over ``items``: no device holds the scores of all items. Padding rows
of the sharded tables are masked out.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from gru4rec_jax import model as model_lib
from gru4rec_jax import networks
from gru4rec_jax import sharding as sharding_lib
from gru4rec_jax.batching import equal_chunk_steps, pad_into_chunks, session_parallel_schedule
from gru4rec_jax.data import Sessions
from gru4rec_jax.user_data import UserSessions, user_parallel_schedule

__all__ = ["EVAL_MODES", "rank_of_target", "fold_input_product", "evaluate", "evaluate_population"]

EVAL_MODES = ("standard", "conservative", "median")


def rank_of_target(scores: jax.Array, targets: jax.Array, mode: str, *, count_with_product: bool = False) -> jax.Array:
    """Rank (1 = best) of each row's target among all columns of ``scores`` (B, n).

    ``count_with_product``: count the columns above the target with a
    matrix-vector product instead of a reduction (see :func:`_tie_counts`;
    the same ranks, faster on CPU).
    """
    target_score = jnp.take_along_axis(scores, targets[:, None], axis=1)[:, 0]
    return _ranks_of_counts(_tie_counts(scores, target_score, mode, with_product=count_with_product), mode)


# Counts of 0/1 summed in float32 are exact up to 2**24 columns.
_MAX_PRODUCT_COUNT_COLUMNS = 1 << 24


def _tie_counts(scores, target_score, mode: str, valid=None, *, with_product: bool = False) -> tuple:
    """Per row of ``scores``, the counts that the rank under ``mode`` needs:
    ``(#greater,)`` (standard), ``(#greater or equal,)`` (conservative) or
    ``(#greater, #equal)`` (median). One pass over the scores but for median:
    on CPU that pass costs about as much as the product of the scores, and
    counting both for every mode made evaluation a third slower.
    Counts add up over blocks of items. ``valid`` masks columns out.

    ``with_product``: count as (hits as 0/1 floats) @ ones, exact up to 2**24
    columns (wider score matrices are reduced). XLA:CPU splits a reduction
    over more than 32 elements into reduce-window passes that do not fuse
    with the comparison; the product evaluated 11-14% faster on CPU at 40k and
    1M items (h 100, 512 lanes; as fast at 3,000).
    """
    with_product = with_product and scores.shape[1] <= _MAX_PRODUCT_COUNT_COLUMNS

    def count(hit):
        hit = hit if valid is None else hit & valid
        if with_product:
            return (hit.astype(jnp.float32) @ jnp.ones((hit.shape[1],), jnp.float32)).astype(jnp.int32)
        return jnp.sum(hit, axis=1, dtype=jnp.int32)

    target_score = target_score[:, None]
    if mode == "standard":
        return (count(scores > target_score),)
    if mode == "conservative":
        return (count(scores >= target_score),)
    if mode == "median":
        return count(scores > target_score), count(scores == target_score)
    raise ValueError(f"eval mode must be one of {EVAL_MODES}, got {mode!r}")


def _zero_counts(n_rows: int, mode: str) -> tuple:
    """Zeros shaped like the :func:`_tie_counts` of ``mode``, to sum block counts into."""
    return tuple(jnp.zeros((n_rows,), jnp.int32) for _ in range(2 if mode == "median" else 1))


def _ranks_of_counts(counts: tuple, mode: str) -> jax.Array:
    """The rank under tie rule ``mode`` from its :func:`_tie_counts`."""
    if mode == "standard":
        return counts[0] + 1.0
    if mode == "conservative":
        return counts[0].astype(jnp.float32)
    if mode == "median":
        greater, equal = counts
        return greater + 0.5 * (equal - 1) + 1.0
    raise ValueError(f"eval mode must be one of {EVAL_MODES}, got {mode!r}")


def _scores(output: jax.Array, rows: jax.Array, bias: jax.Array) -> jax.Array:
    """Scores (B, n) of ``n`` items (their ``rows`` (n, h) and ``bias`` (n,)) for ``output`` (B, h).

    Every score that is compared with another comes from one call of this
    function (one product): two products of the same values need not round
    alike (another compiled kernel, another summation order).
    """
    return output @ rows.T + bias


def _with_the_target_itself(counts: tuple, mode: str) -> tuple:
    """The :func:`_tie_counts` of ``mode`` with the target's own column added, which the
    block products leave out: it ties with itself (standard: nothing; conservative: one
    more >=; median: one more equal)."""
    if mode == "standard":
        return counts
    return counts[:-1] + (counts[-1] + 1,)


def _merge_top(top: tuple, scores: jax.Array, items: jax.Array) -> tuple:
    """The running top-k list ``(scores, item ids)`` (B, k) merged with the
    columns of ``scores`` (B, m), whose item ids are ``items`` (m,).

    Sorted by score, equal scores by item id (the lower first), as long as the
    running list's ids are lower than ``items`` and ``items`` ascend:
    :func:`jax.lax.top_k` puts the earlier of equal elements first."""
    values, ids = top
    k = values.shape[1]
    block_values, at = jax.lax.top_k(scores, min(k, scores.shape[1]))
    values, order = jax.lax.top_k(jnp.concatenate([values, block_values], axis=1), k)
    return values, jnp.take_along_axis(jnp.concatenate([ids, items[at]], axis=1), order, axis=1)


def _no_top(lanes: int, k: int, no_item: int) -> tuple:
    """An empty top-k list to merge into: -inf scores of the out-of-range id ``no_item``."""
    return jnp.full((lanes, k), -jnp.inf, jnp.float32), jnp.full((lanes, k), no_item, jnp.int32)


def _counts_by_blocks(output, targets, rows, bias, target_rows, target_bias, mode, item_block, count_with_product,
                      first_item=0, n_items=None, top_k=0) -> tuple:
    """The :func:`_tie_counts` of ``mode`` of the targets (B,) for ``output`` (B, h) among
    the items of ``rows`` (n, h) and ``bias`` (n,), whose item ids start at
    ``first_item``, WITHOUT the target's own column (see :func:`_with_the_target_itself`);
    ids from ``n_items`` on are padding and not counted.

    One scan over the fewest blocks of at most ``item_block`` rows, all of one
    size (one compiled product) and as equal as can be: the last block overlaps
    the one before it by fewer rows than there are blocks, and counts only the
    rows it alone covers. Each block is scored together with the B lanes' own
    target rows (``target_rows`` (B, h), ``target_bias`` (B,)) appended, in one
    product of (B, size + B): lane i's target score is column size + i of the
    very product whose scores it is compared with, so ties stay exact whatever
    the kernel's rounding; and the target's own column in the block is masked
    out, so the target is never compared with another rounding of its own score.

    ``top_k`` > 0: also each lane's top-``top_k`` list over these items,
    ``(scores, item ids)`` (B, top_k), merged block by block (:func:`_merge_top`);
    ids ``n_items`` (or n) where fewer items than ``top_k`` are counted here.
    Returns ``(counts, top or None)``.
    """
    n, h = rows.shape
    no_item = n if n_items is None else n_items
    n_blocks = -(-n // item_block)
    size = -(-n // n_blocks)
    first_new = jnp.arange(n_blocks) * size
    starts = jnp.minimum(first_new, n - size)
    n_lanes = targets.shape[0]
    lanes = jnp.arange(n_lanes)

    def count(carry, block):
        totals, top = carry
        start, new_from = block
        block_rows = jax.lax.dynamic_slice(rows, (start, 0), (size, h))
        block_bias = jax.lax.dynamic_slice(bias, (start,), (size,))
        scores = _scores(output, jnp.concatenate([block_rows, target_rows]),
                         jnp.concatenate([block_bias, target_bias]))
        target_score = scores[lanes, size + lanes]
        local = start + jnp.arange(size)
        items = first_item + local
        counted = local >= new_from
        if n_items is not None:
            counted = counted & (items < n_items)
        valid = counted[None, :] & (items[None, :] != targets[:, None])
        counts = _tie_counts(scores[:, :size], target_score, mode, valid, with_product=count_with_product)
        if top is not None:
            top = _merge_top(top, jnp.where(counted, scores[:, :size], -jnp.inf), jnp.where(counted, items, no_item))
        return (jax.tree.map(jnp.add, totals, counts), top), None

    top = _no_top(n_lanes, top_k, no_item) if top_k else None
    (totals, top), _ = jax.lax.scan(count, (_zero_counts(n_lanes, mode), top), (starts, first_new))
    return totals, top


def _ranks_by_blocks(output, targets, tables, mode, item_block, count_with_product, top_k=0):
    """Ranks of ``targets`` (B,) among all items for ``output`` (B, h), and with
    ``top_k`` > 0 each lane's top-``top_k`` item ids (B, top_k) (else None).

    Catalogues of up to ``item_block`` items are scored in one product, the
    target's score picked from it (compared with itself it ties exactly, as
    the tie rules count it). Larger ones go ``item_block`` items at a time
    (:func:`_counts_by_blocks`). The one product skips the block path's
    appended target columns and mask, which took 17% (40,000 items) and 30%
    (3,000 items) more time on the 2-core CPU (h 100, 512 lanes).
    """
    wy, by = tables["Wy"], tables["By"]
    if wy.shape[0] <= item_block:
        scores = _scores(output, wy, by)
        ranks = rank_of_target(scores, targets, mode, count_with_product=count_with_product)
        return ranks, (jax.lax.top_k(scores, top_k)[1] if top_k else None)
    counts, top = _counts_by_blocks(output, targets, wy, by, wy[targets], by[targets], mode, item_block,
                                    count_with_product, top_k=top_k)
    return _ranks_of_counts(_with_the_target_itself(counts, mode), mode), (None if top is None else top[1])


def target_counts_sharded(output, targets, tables, n_items, item_block, mesh, mode, count_with_product=False,
                          top_k=0):
    """The :func:`_tie_counts` of ``mode`` over the first ``n_items`` rows of
    item tables sharded by rows over ``mesh``'s ``items`` axis; lanes over ``data``.

    Each device gathers its lanes' target rows (from the device that owns
    each, a psum of one row and zeros: exact), then counts over its own rows
    as :func:`_counts_by_blocks` does, every block scored with the target rows
    appended; the counts are summed over ``items``. Returns a tuple of int32
    (B,) arrays; with ``top_k`` > 0, ``(counts, top item ids (B, top_k))``:
    each device's own top-k lists, gathered over ``items`` (in device order,
    hence item order) and merged.
    """

    def local(output, targets, wy, by):
        n_local = wy.shape[0]
        first_item = jax.lax.axis_index("items") * n_local
        offset = targets - first_item
        owned = jnp.where((offset >= 0) & (offset < n_local), offset, n_local)
        target_rows = jax.lax.psum(wy.at[owned].get(mode="fill", fill_value=0), "items")
        target_bias = jax.lax.psum(by.at[owned].get(mode="fill", fill_value=0), "items")
        counts, top = _counts_by_blocks(output, targets, wy, by, target_rows, target_bias, mode, item_block,
                                        count_with_product, first_item, n_items, min(top_k, n_local))
        counts = _with_the_target_itself(jax.lax.psum(counts, "items"), mode)
        if not top_k:
            return counts
        values, ids = (jnp.concatenate(jax.lax.all_gather(part, "items"), axis=1) for part in top)
        return counts, jnp.take_along_axis(ids, jax.lax.top_k(values, top_k)[1], axis=1)

    return jax.shard_map(
        local, mesh=mesh,
        in_specs=(P("data", None), P("data"), P("items", None), P("items")),
        out_specs=(P("data"), P("data", None)) if top_k else P("data"),
        check_vma=False,  # the scans' carries start replicated and become per-device
    )(output, targets, tables["Wy"], tables["By"])


_matmul = jax.jit(jnp.matmul)


def fold_input_product(params: dict, model_config: model_lib.ModelConfig) -> tuple[dict, model_lib.ModelConfig]:
    """The same GRU4Rec network in its one-hot form, for inference: every item's
    first-layer input product ``embedding @ Wx`` computed once, as the table ``Wx0``.

    A step then looks up its inputs' products instead of multiplying its (B, d)
    input rows by the (d, 3h) ``Wx``: worth it once the steps have run more
    input rows than there are items. Its outputs are the same up to the products'
    rounding. The new table has 3h columns per item (the shared embedding ``Wy``
    stays for scoring; a separate ``E`` goes). A one-hot model comes back as it is.
    """
    if model_config.embedding == "onehot":
        return params, model_config
    first, *rest = params["layers"]
    tables = {name: table for name, table in params["tables"].items() if name != "E"}
    tables["Wx0"] = _matmul(params["tables"]["Wy" if model_config.embedding == "shared" else "E"], first["Wx"])
    layers = [{name: w for name, w in first.items() if name != "Wx"}, *rest]
    return {**params, "tables": tables, "layers": layers}, _one_hot_form(model_config)


def _one_hot_form(model_config: model_lib.ModelConfig) -> model_lib.ModelConfig:
    return dataclasses.replace(model_config, embedding="onehot", embedding_dim=0)


@functools.partial(
    jax.jit,
    static_argnames=("model_config", "cutoffs", "mode", "item_block", "count_with_product", "reset_flag", "top_k",
                     "unroll", "mesh"))
def _evaluate_chunk(params, hidden, best_place, chunk, model_config, cutoffs, mode, item_block, count_with_product,
                    reset_flag, top_k=0, unroll=1, mesh=None):
    """One chunk of steps: the carried ``hidden`` states and ``best_place`` (n,)
    (per item, its best place in a top-K list so far, K where none; None
    without item coverage) -> those after the chunk, the chunk's sums of
    Recall, MRR and NDCG per cut-off (3, C), and the item counts of
    coverage@K so far (C,) (None without item coverage)."""
    # Per-chunk sums stay small enough for exact float32 counts; the host adds them in float64.
    cutoff_array = jnp.asarray(cutoffs, jnp.float32)
    net = networks.network_for(model_config, reset_flag=reset_flag)

    def input_rows(items):
        if mesh is None:
            return model_lib.embed_inputs(params["tables"], items, net.items)
        name = {"shared": "Wy", "separate": "E", "onehot": "Wx0"}[net.items.embedding]
        return sharding_lib.gather_rows(params["tables"][name], items, mesh)

    # Every step runs, the padding steps of the last chunk too (their lanes are
    # not scored; equal chunks keep them few): a lax.cond to skip them split
    # the step on GPUs, with a wait for the host at every step.
    def step(carry, batch):
        hidden, best_place, totals = carry
        inputs, targets, scored = batch["inputs"], batch["targets"], batch["scored"]
        hidden = net.begin(params["layers"], hidden, {name: batch[name] for name in net.flags}, None)
        output, hidden = net.forward(params["layers"], input_rows(inputs), hidden, None)
        if mesh is None:
            ranks, top = _ranks_by_blocks(output, targets, params["tables"], mode, item_block, count_with_product,
                                          top_k)
        else:
            counts = target_counts_sharded(output, targets, params["tables"], net.items.n_items, item_block, mesh,
                                           mode, count_with_product, top_k)
            counts, top = counts if top_k else (counts, None)
            ranks = _ranks_of_counts(counts, mode)
        if top_k:
            if mesh is not None:  # every device updates its copy of best_place with all lanes' lists
                top, scored_lanes = (jax.lax.with_sharding_constraint(x, sharding_lib.replicated(mesh))
                                     for x in (top, scored))
            else:
                scored_lanes = scored
            places = jnp.where(scored_lanes[:, None], jnp.arange(top_k), top_k)
            best_place = best_place.at[top].min(places, mode="drop")
        hit = (ranks[:, None] <= cutoff_array[None, :]) & scored[:, None]
        recall = jnp.sum(hit, axis=0, dtype=jnp.float32)
        mrr = jnp.sum(jnp.where(hit, 1.0 / ranks[:, None], 0.0), axis=0)
        ndcg = jnp.sum(jnp.where(hit, 1.0 / jnp.log2(ranks[:, None] + 1.0), 0.0), axis=0)
        return (hidden, best_place, totals + jnp.stack([recall, mrr, ndcg])), None

    totals = jnp.zeros((3, len(cutoffs)), jnp.float32)
    (hidden, best_place, totals), _ = jax.lax.scan(step, (hidden, best_place, totals), chunk, unroll=unroll)
    covered = None
    if top_k:
        covered = jnp.sum(best_place[None, :] < jnp.asarray(cutoffs)[:, None], axis=1)
    if mesh is not None:  # every process can read the sums
        totals, covered = jax.lax.with_sharding_constraint((totals, covered), sharding_lib.replicated(mesh))
    return hidden, best_place, totals, covered


@functools.partial(
    jax.jit,
    static_argnames=("model_config", "cutoffs", "mode", "item_block", "count_with_product", "reset_flag", "top_k",
                     "unroll", "members_at_once"))
def _evaluate_population_chunk(params, hidden, best_place, chunk, model_config, cutoffs, mode, item_block,
                               count_with_product, reset_flag, top_k=0, unroll=1, members_at_once=1):
    """:func:`_evaluate_chunk` for P members in one program: ``params``,
    ``hidden`` and ``best_place`` (and every output) with a leading member
    axis; one ``chunk`` of the schedule, shared. ``members_at_once`` members
    run side by side (``jax.vmap``), such groups one after the other."""
    def member(carry):
        return _evaluate_chunk(*carry, chunk, model_config, cutoffs, mode, item_block, count_with_product,
                               reset_flag, top_k, unroll)

    # (batch_size=1 would run groups of one member through vmap: plainly mapped, the step is the single model's.)
    return jax.lax.map(member, (params, hidden, best_place), batch_size=members_at_once if members_at_once > 1 else None)


# Default item blocks. On CPU a block's (lanes x block) scores had better stay
# near the caches: with 512 lanes and a 1M-item catalogue, 16,384-item blocks
# evaluated 17% faster than 65,536 on the 2-core benchmark machine and cut the
# peak memory by 300 MB. Accelerators keep fewer, larger products.
CPU_ITEM_BLOCK = 16384
ACCELERATOR_ITEM_BLOCK = 65536
# Up to this size a step's (lanes x items) float32 scores come from one product
# (512 lanes: catalogues up to 1,048,576 items), which needs neither the
# blocks' appended target rows nor their overlap. With 512 lanes, h 100, on the
# 2-core CPU: 10% less time than 16,384-item blocks at 40,000 items, 21% less
# at 200,000. When blocks took two passes, one product took half the time at
# 1M items on an H200 (not measured since). The reference port scores a whole
# batch at once too.
ONE_PRODUCT_SCORE_BYTES = 2 << 30
# Steps per iteration of the evaluation's loop on accelerators, where each
# iteration waits for the host and launches its kernels anew; only for steps
# whose scores take up to UNROLL_SCORE_BYTES (short steps, where that wait
# weighs; and unrolled steps may hold their scores in memory at once).
ACCELERATOR_UNROLL = 4
UNROLL_SCORE_BYTES = 64 << 20
# Members of a population that evaluate_population runs side by side on CPU
# (accelerators: all of them). One at a time, each member's scores stay nearer
# the caches: 4 members side by side took 1.16x (40,000 items) to 1.26x (3,000)
# the time of 4 evaluate() calls, one after another 0.92-0.95x (h 100, 512
# lanes, 2-core CPU).
POPULATION_MEMBERS_AT_ONCE = 1


def evaluate(
    params: dict,
    model_config: networks.AnyModelConfig,
    sessions: Union[Sessions, UserSessions],
    *,
    cutoffs: Sequence[int] = (1, 5, 10, 20),
    mode: str = "conservative",
    batch_size: int = 512,
    chunk_steps: int = 256,
    item_block: Optional[int] = None,
    mesh: Optional[Mesh] = None,
    item_coverage: bool = False,
) -> dict:
    """Recall@K, MRR@K and NDCG@K over all next-item events of ``sessions``,
    and with ``item_coverage`` the item coverage@K of their top-K lists.

    Catalogues of up to ``item_block`` items are scored in one product per
    step ((batch_size x item_block) floats); larger ones in equal blocks of at
    most ``item_block`` items, each with the lanes' target rows appended
    (see :func:`_counts_by_blocks`). ``None``: the whole catalogue where its
    scores take at most :data:`ONE_PRODUCT_SCORE_BYTES`, else
    :data:`CPU_ITEM_BLOCK` items on CPU, :data:`ACCELERATOR_ITEM_BLOCK` on GPU
    and TPU. A GRU4Rec model over a catalogue of up to ``item_block`` items
    (``None``: the platform's block), with fewer items than the evaluation's
    steps x ``batch_size``, runs in the form of :func:`fold_input_product`
    (the same values up to the products' rounding).

    With ``UserSessions`` (HRNN, or GRU4Rec over users' concatenated
    sessions), each user's sessions are replayed in order to build the state
    and only the user's LAST session (the test session) is scored.

    With a ``mesh``, ``params`` are those of a state placed on it
    (``sharding.place_state``): item tables sharded by rows over ``items``, the
    lanes over ``data`` (``batch_size`` must divide by its size).

    ``item_coverage``: also each step's top-K lists (K the largest cut-off),
    merged block by block and over devices. Off by default: the lists
    (:func:`jax.lax.top_k`) cost more than the rest of the evaluation on CPU
    (3.7x the time at 3,000 items, 2.5x at 40,000; h 100, 512 lanes, on the
    2-core CPU).

    Returns ``{"recall@K": ..., "mrr@K": ..., "ndcg@K": ..., "n_eval_events": N}``
    with ``"coverage@K"`` for every cut-off K where ``item_coverage``.
    """
    return _evaluate(params, model_config, sessions, None, cutoffs, mode, batch_size, chunk_steps, item_block, mesh,
                     item_coverage)[0]


def evaluate_population(
    stacked_params: dict,
    model_config: networks.AnyModelConfig,
    sessions: Union[Sessions, UserSessions],
    *,
    cutoffs: Sequence[int] = (1, 5, 10, 20),
    mode: str = "conservative",
    batch_size: int = 512,
    chunk_steps: int = 256,
    item_block: Optional[int] = None,
    mesh: Optional[Mesh] = None,
    item_coverage: bool = False,
) -> list[dict]:
    """:func:`evaluate` for a population of P models of the same shapes, in one
    compiled program per chunk: every leaf of ``stacked_params`` has a leading
    member axis P. On accelerators the members run side by side (``jax.vmap``
    inside the compiled chunk), on CPU :data:`POPULATION_MEMBERS_AT_ONCE` at a
    time, over one shared schedule. One device only.

    Memory: a step scores (members side by side) x ``batch_size`` lanes at
    once; the default ``item_block`` counts all of them against
    :data:`ONE_PRODUCT_SCORE_BYTES` (one product, or blocks of at most the
    platform's size within it).

    Returns one :func:`evaluate` result per member, in member order (equal up
    to float32 rounding of the batched products; the counts of events equal).
    """
    if mesh is not None:
        raise ValueError("evaluate_population runs on one device; evaluate each member with evaluate() on a mesh")
    sizes = {leaf.shape[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(stacked_params)}
    if len(sizes) != 1 or None in sizes or 0 in sizes:
        raise ValueError("every leaf of stacked_params needs a leading member axis of one size, got leading sizes "
                         f"{sorted(map(str, sizes))}")
    return _evaluate(stacked_params, model_config, sessions, sizes.pop(), cutoffs, mode, batch_size, chunk_steps,
                     item_block, mesh, item_coverage)


def _evaluate(params, model_config, sessions, members, cutoffs, mode, batch_size, chunk_steps, item_block, mesh,
              item_coverage) -> list[dict]:
    """:func:`evaluate` (``members`` None: one model) or :func:`evaluate_population`
    (``members`` = P); returns one result per member."""
    if mode not in EVAL_MODES:
        raise ValueError(f"eval mode must be one of {EVAL_MODES}, got {mode!r}")
    on_cpu = sharding_lib.platform(mesh) == "cpu"
    fold_limit = item_block or (CPU_ITEM_BLOCK if on_cpu else ACCELERATOR_ITEM_BLOCK)
    members_at_once = min(POPULATION_MEMBERS_AT_ONCE, members or 1) if on_cpu else members or 1
    score_lanes = batch_size * members_at_once  # scored at once in a step
    if item_block is None:
        n_items = model_config.n_items
        one_product = mesh is None and score_lanes * n_items * 4 <= ONE_PRODUCT_SCORE_BYTES
        item_block = n_items if one_product else max(1, min(fold_limit, ONE_PRODUCT_SCORE_BYTES // (score_lanes * 4)))
    # Accelerators keep the reduction, which XLA fuses with the comparison there (one read of the
    # scores, where the product would write the hits out and read them back; not timed on a GPU).
    count_with_product = on_cpu
    cutoffs = tuple(int(c) for c in cutoffs)
    if not cutoffs or min(cutoffs) < 1:
        raise ValueError(f"cut-offs must be positive integers, got {cutoffs}")
    if chunk_steps < 1:
        raise ValueError(f"chunk_steps must be >= 1, got {chunk_steps}")
    if isinstance(sessions, UserSessions):
        schedule = user_parallel_schedule(sessions, batch_size)
        scored = schedule.active & schedule.last_session
        reset_flag = "user_start"
    else:
        schedule = session_parallel_schedule(sessions, batch_size)
        scored, reset_flag = schedule.active, "reset"
    n_events = int(scored.sum())
    if n_events == 0:
        raise ValueError("the test data has no session with 2 or more known events")
    # Every item's first-layer input product computed once is less work than each step's, where the
    # catalogue has fewer items than the evaluation runs input rows; only up to one item block of the
    # platform's (or the caller's), which bounds the folded (n, 3h) table's memory.
    if (mesh is None and isinstance(model_config, model_lib.ModelConfig)
            and model_config.n_items <= min(fold_limit, schedule.n_steps * batch_size)):
        if members:
            params = jax.vmap(lambda p: fold_input_product(p, model_config)[0])(params)
            model_config = _one_hot_form(model_config)
        else:
            params, model_config = fold_input_product(params, model_config)
    net = networks.network_for(model_config, reset_flag=reset_flag)
    arrays = {name: getattr(schedule, name) for name in ("inputs", "targets") + net.flags}
    chunks = pad_into_chunks({**arrays, "scored": scored}, equal_chunk_steps(schedule.n_steps, chunk_steps))
    hidden = net.zero_carry(batch_size)
    if members:
        hidden = jax.tree.map(lambda x: jnp.zeros((members,) + x.shape, x.dtype), hidden)
    place = lambda tree: tree  # noqa: E731
    if mesh is not None:
        sharding_lib.check_batch_size(mesh, batch_size, "eval_batch_size")
        hidden = jax.tree.map(lambda x: sharding_lib.put(x, sharding_lib.lane_sharding(mesh, x.ndim, 0)), hidden)
        place = lambda tree: jax.tree.map(  # noqa: E731
            lambda x: sharding_lib.put(x, sharding_lib.lane_sharding(mesh, x.ndim, x.ndim - 1)), tree)
    short_steps = score_lanes * min(item_block, model_config.n_items) * 4 <= UNROLL_SCORE_BYTES
    unroll = ACCELERATOR_UNROLL if short_steps and not on_cpu else 1
    n_items = model_config.n_items
    top_k = min(max(cutoffs), n_items) if item_coverage else 0
    best_place = None
    if top_k:
        best_place = np.full(((members,) if members else ()) + (n_items,), top_k, np.int32)
        best_place = jnp.asarray(best_place) if mesh is None else sharding_lib.put(
            best_place, sharding_lib.replicated(mesh))
    chunk_totals = []
    for c in range(chunks["inputs"].shape[0]):
        chunk = place({name: array[c] for name, array in chunks.items()})
        run_chunk = functools.partial(_evaluate_population_chunk, members_at_once=members_at_once) if members \
            else functools.partial(_evaluate_chunk, **({} if mesh is None else {"mesh": mesh}))
        hidden, best_place, sums, covered = run_chunk(
            params, hidden, best_place, chunk, model_config, cutoffs, mode, item_block, count_with_product,
            reset_flag, top_k, unroll)
        chunk_totals.append(sums)
    # Per member: (3, C) sums of Recall, MRR, NDCG, and (C,) coverage counts.
    totals = np.sum([np.asarray(t, np.float64) for t in chunk_totals], axis=0) / n_events
    totals = totals.reshape(-1, 3, len(cutoffs))
    covered = None if covered is None else np.asarray(covered).reshape(-1, len(cutoffs))
    results = []
    for member in range(totals.shape[0]):
        result = {}
        for i, k in enumerate(cutoffs):
            result[f"recall@{k}"] = float(totals[member, 0, i])
            result[f"mrr@{k}"] = float(totals[member, 1, i])
            result[f"ndcg@{k}"] = float(totals[member, 2, i])
        if top_k:
            for k, count in zip(cutoffs, covered[member]):
                result[f"coverage@{k}"] = int(count) / n_items
        result["n_eval_events"] = n_events
        results.append(result)
    return results
