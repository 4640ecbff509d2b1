"""Load a trained model and recommend the next items for a session prefix.

Example::

    rec = Recommender.load("runs/my_model")          # a --save_path directory
    rec.recommend(["214536502", "214536506"], k=5)   # [(item_id, score), ...]
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gru4rec_jax import checkpoint
from gru4rec_jax import model as model_lib
from gru4rec_jax.data import DataError, ItemMap

__all__ = ["Recommender"]


@functools.partial(jax.jit, static_argnames=("model_config", "k"))
def _top_k_after(params, items, length, model_config, k):
    """Runs the GRU over ``items[:length]`` (padded to a fixed size) and ranks all items."""
    hidden = model_lib.zero_hidden(model_config, 1)

    def step(carry, inputs):
        hidden, output = carry
        item, valid = inputs
        rows = model_lib.embed_inputs(params["tables"], item[None], model_config)
        new_output, new_hidden = model_lib.forward_step(params["layers"], rows, hidden, model_config)
        keep = lambda new, old: jnp.where(valid, new, old)  # noqa: E731
        return (jax.tree.map(keep, new_hidden, hidden), keep(new_output, output)), None

    output = jnp.zeros((1, model_config.layers[-1]), jnp.float32)
    valid = jnp.arange(items.shape[0]) < length
    (hidden, output), _ = jax.lax.scan(step, (hidden, output), (items, valid))
    scores = model_lib.score_all(params["tables"], output)[0]
    return jax.lax.top_k(scores, k)


class Recommender:
    """A trained GRU4Rec model with its item map."""

    def __init__(self, params: dict, model_config: model_lib.ModelConfig, item_map: ItemMap):
        self.params = params
        self.model_config = model_config
        self.item_map = item_map

    @classmethod
    def load(cls, path: str, epoch: Optional[int] = None) -> "Recommender":
        """From a checkpoint directory written by ``--save_path``: its latest epoch, or ``epoch``."""
        ckpt = checkpoint.load(path, epoch=epoch)
        if not isinstance(ckpt.model_config, model_lib.ModelConfig) or ckpt.extra.get("model", "gru4rec") != "gru4rec":
            raise checkpoint.CheckpointError(
                f"{path}: Recommender serves session-only GRU4Rec models; this one needs the user's history")
        return cls(ckpt.state.params, ckpt.model_config, ckpt.item_map)

    def recommend(self, session_items: Sequence[str], k: int = 20) -> list[tuple[str, float]]:
        """Top-``k`` next items (id, score) after the session prefix ``session_items``.

        Items unknown to the model are skipped, as in evaluation. Items already
        in the session are not excluded.
        """
        k = min(int(k), len(self.item_map))
        if k < 1:
            raise ValueError("k must be >= 1")
        indices = self.item_map.lookup([str(i) for i in session_items])
        indices = indices[indices >= 0]
        if len(indices) == 0:
            raise DataError("none of the session's items is known to the model")
        # Pad to a power of two so that prefixes of similar length share a compilation.
        padded = np.zeros(1 << max(0, int(len(indices) - 1).bit_length()), np.int32)
        padded[: len(indices)] = indices
        scores, top = _top_k_after(self.params, padded, len(indices), self.model_config, k)
        return [(str(self.item_map.ids[i]), float(s)) for i, s in zip(np.asarray(top), np.asarray(scores))]
