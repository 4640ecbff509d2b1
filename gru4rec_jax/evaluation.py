"""Next-item evaluation with full ranking over all items (GRU4REC.md section 7).

The test sessions run through the same session-parallel schedule (dropout off,
state zeroed at each new session); every event but a session's first is a
target, ranked against ALL training items (items seen earlier in the session
are not excluded). The rank is counted, not sorted for:

- ``standard``:     #(score > target) + 1
- ``conservative``: #(score >= target)           (the reference examples report this)
- ``median``:       #(>) + 0.5 * (#(=) - 1) + 1

Recall@K = mean over events of [rank <= K]; MRR@K = mean of [rank <= K] / rank.
Both are averaged over events, never over batches.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gru4rec_jax import model as model_lib
from gru4rec_jax.batching import session_parallel_schedule
from gru4rec_jax.data import Sessions

__all__ = ["EVAL_MODES", "rank_of_target", "evaluate"]

EVAL_MODES = ("standard", "conservative", "median")


def rank_of_target(scores: jax.Array, targets: jax.Array, mode: str) -> jax.Array:
    """Rank (1 = best) of each row's target among all columns of ``scores`` (B, n)."""
    target_score = jnp.take_along_axis(scores, targets[:, None], axis=1)
    greater = jnp.sum(scores > target_score, axis=1)
    if mode == "standard":
        return greater + 1.0
    equal = jnp.sum(scores == target_score, axis=1)
    if mode == "conservative":
        return (greater + equal).astype(jnp.float32)
    if mode == "median":
        return greater + 0.5 * (equal - 1) + 1.0
    raise ValueError(f"eval mode must be one of {EVAL_MODES}, got {mode!r}")


@functools.partial(jax.jit, static_argnames=("model_config", "cutoffs", "mode"))
def _evaluate_chunk(params, hidden, chunk, model_config, cutoffs, mode):
    # Per-chunk sums stay small enough for exact float32 counts; the host adds them in float64.
    cutoff_array = jnp.asarray(cutoffs, jnp.float32)

    def step(carry, batch):
        hidden, totals = carry
        inputs, targets, active, reset = batch

        def run(hidden):
            hidden = [jnp.where(reset[:, None], 0.0, h) for h in hidden]
            rows = model_lib.embed_inputs(params["tables"], inputs, model_config)
            output, hidden = model_lib.forward_step(params["layers"], rows, hidden, model_config)
            ranks = rank_of_target(model_lib.score_all(params["tables"], output), targets, mode)
            hit = (ranks[:, None] <= cutoff_array[None, :]) & active[:, None]
            recall = jnp.sum(hit, axis=0, dtype=jnp.float32)
            mrr = jnp.sum(jnp.where(hit, 1.0 / ranks[:, None], 0.0), axis=0)
            return hidden, jnp.stack([recall, mrr])

        def skip(hidden):
            return hidden, jnp.zeros((2, len(cutoffs)), jnp.float32)

        hidden, sums = jax.lax.cond(jnp.any(active), run, skip, hidden)
        return (hidden, totals + sums), None

    batches = (chunk["inputs"], chunk["targets"], chunk["active"], chunk["reset"])
    totals = jnp.zeros((2, len(cutoffs)), jnp.float32)
    (hidden, totals), _ = jax.lax.scan(step, (hidden, totals), batches)
    return hidden, totals


def evaluate(
    params: dict,
    model_config: model_lib.ModelConfig,
    sessions: Sessions,
    *,
    cutoffs: Sequence[int] = (1, 5, 10, 20),
    mode: str = "conservative",
    batch_size: int = 512,
    chunk_steps: int = 256,
) -> dict:
    """Recall@K and MRR@K over all next-item events of ``sessions``.

    Returns ``{"recall@K": ..., "mrr@K": ..., "n_eval_events": N}``.
    """
    if mode not in EVAL_MODES:
        raise ValueError(f"eval mode must be one of {EVAL_MODES}, got {mode!r}")
    cutoffs = tuple(int(c) for c in cutoffs)
    if not cutoffs or min(cutoffs) < 1:
        raise ValueError(f"cut-offs must be positive integers, got {cutoffs}")
    schedule = session_parallel_schedule(sessions, batch_size)
    n_events = schedule.n_events
    if n_events == 0:
        raise ValueError("the test data has no session with 2 or more known events")
    chunks = schedule.padded_chunks(min(chunk_steps, schedule.n_steps))
    hidden = model_lib.zero_hidden(model_config, batch_size)
    chunk_totals = []
    for c in range(chunks["inputs"].shape[0]):
        chunk = {name: array[c] for name, array in chunks.items()}
        hidden, sums = _evaluate_chunk(params, hidden, chunk, model_config, cutoffs, mode)
        chunk_totals.append(sums)
    totals = np.sum([np.asarray(t, np.float64) for t in chunk_totals], axis=0) / n_events
    result = {}
    for i, k in enumerate(cutoffs):
        result[f"recall@{k}"] = float(totals[0, i])
        result[f"mrr@{k}"] = float(totals[1, i])
    result["n_eval_events"] = n_events
    return result
