"""The GRU4Rec network as pure functions over a parameter pytree.

Parameters are split by how the optimizer treats them:

- ``tables``: item-indexed matrices, updated row-sparsely. ``Wy`` (n, h_L)
  output embedding, ``By`` (n,) output bias, and per embedding mode ``E``
  (n, d) for a separate input embedding or ``Wx0`` (n, 3 h_0) for one-hot
  input (the first GRU layer's input matrix, a row lookup).
- ``layers``: one dict per GRU layer with ``Wx`` (d_in, 3h) (absent for the
  first layer in one-hot mode), ``Wrz`` (h, 2h), ``Wh`` (h, h), ``b`` (3h,).

The cell is the original GRU4Rec form (GRU4REC.md section 5): the reset gate
multiplies the state BEFORE the recurrent matmul and there is one bias per
layer -- not flax's GRUCell.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp

__all__ = [
    "ModelConfig",
    "init_params",
    "gru_cell",
    "embed_inputs",
    "forward_step",
    "score_all",
    "zero_hidden",
]

EMBEDDING_MODES = ("shared", "separate", "onehot")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape of the network. Hashable, so it can be a static jit argument."""

    n_items: int
    layers: tuple[int, ...] = (100,)
    embedding: str = "shared"  # shared | separate | onehot
    embedding_dim: int = 0  # only for embedding == "separate"

    def __post_init__(self):
        if self.embedding not in EMBEDDING_MODES:
            raise ValueError(f"embedding mode must be one of {EMBEDDING_MODES}, got {self.embedding!r}")
        if not self.layers or min(self.layers) < 1:
            raise ValueError(f"layers must be positive sizes, got {self.layers}")
        if self.embedding == "separate" and self.embedding_dim < 1:
            raise ValueError("a separate embedding needs embedding_dim >= 1")
        if self.n_items < 1:
            raise ValueError("the model needs at least one item")

    @property
    def input_dim(self) -> int:
        if self.embedding == "shared":
            return self.layers[-1]
        if self.embedding == "separate":
            return self.embedding_dim
        return self.n_items


def _uniform(key, shape, fan_in, fan_out):
    # Glorot-uniform with the reference's per-gate-block fans.
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, jnp.float32, -limit, limit)


def _gate_blocks(key, rows, h, blocks):
    """``blocks`` matrices of shape (rows, h), each scaled by its own fans."""
    keys = jax.random.split(key, blocks)
    return jnp.concatenate([_uniform(k, (rows, h), rows, h) for k in keys], axis=1)


def init_params(key: jax.Array, config: ModelConfig) -> dict:
    """Reference initialisation: uniform +-sqrt(6/(fan_in+fan_out)) per gate block, zero biases."""
    n, layers = config.n_items, config.layers
    key_out, key_in, *layer_keys = jax.random.split(key, 2 + len(layers))
    tables = {
        "Wy": _uniform(key_out, (n, layers[-1]), n, layers[-1]),
        "By": jnp.zeros((n,), jnp.float32),
    }
    if config.embedding == "separate":
        tables["E"] = _uniform(key_in, (n, config.embedding_dim), n, config.embedding_dim)
    elif config.embedding == "onehot":
        tables["Wx0"] = _gate_blocks(key_in, n, layers[0], 3)
    layer_params = []
    d_in = config.input_dim
    for i, (h, k) in enumerate(zip(layers, layer_keys)):
        k_x, k_rz, k_h = jax.random.split(k, 3)
        p = {
            "Wrz": _gate_blocks(k_rz, h, h, 2),
            "Wh": _uniform(k_h, (h, h), h, h),
            "b": jnp.zeros((3 * h,), jnp.float32),
        }
        if not (i == 0 and config.embedding == "onehot"):
            p["Wx"] = _gate_blocks(k_x, d_in, h, 3)
        layer_params.append(p)
        d_in = h
    return {"tables": tables, "layers": layer_params}


def gru_cell(layer: dict, x_proj: jax.Array, hidden: jax.Array) -> jax.Array:
    """One step of the original GRU4Rec cell.

    Args:
      layer: ``Wrz`` (h, 2h), ``Wh`` (h, h); ``x_proj`` already holds ``x @ Wx + b``
        with column blocks [candidate | reset | update], shape (B, 3h).
      hidden: (B, h) previous state.
    Returns the new state (B, h).
    """
    h = hidden.shape[-1]
    rz = jax.nn.sigmoid(x_proj[:, h:] + hidden @ layer["Wrz"])
    reset, update = rz[:, :h], rz[:, h:]
    candidate = jnp.tanh((reset * hidden) @ layer["Wh"] + x_proj[:, :h])
    return (1.0 - update) * hidden + update * candidate


def _dropout(key, x, rate):
    if rate <= 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def embed_inputs(tables: dict, items: jax.Array, config: ModelConfig) -> jax.Array:
    """Input rows of ``items`` (B,): the embedding, or the one-hot layer's Wx0 rows."""
    name = {"shared": "Wy", "separate": "E", "onehot": "Wx0"}[config.embedding]
    return tables[name][items]


def forward_step(
    layers: Sequence[dict],
    input_rows: jax.Array,
    hidden: Sequence[jax.Array],
    config: ModelConfig,
    *,
    dropout_key: jax.Array | None = None,
    dropout_p_embed: float = 0.0,
    dropout_p_hidden: float = 0.0,
) -> tuple[jax.Array, list[jax.Array]]:
    """Runs every GRU layer for one time step.

    Args:
      layers: the per-layer dense parameters.
      input_rows: (B, d) rows from :func:`embed_inputs`.
      hidden: per-layer states, each (B, h_l).
      dropout_key: None for inference (no dropout).
    Returns ``(output, new_hidden)``: the last layer's output (B, h_L), after
    dropout, and the new states. The state carried forward is each layer's
    output AFTER dropout, as in the reference.
    """
    training = dropout_key is not None
    keys = jax.random.split(dropout_key, len(layers) + 1) if training else [None] * (len(layers) + 1)
    x = input_rows
    if training:
        # In one-hot mode this is exactly inverted dropout of the one-hot input
        # vector: its single nonzero entry scales (or zeroes) the gathered row.
        if config.embedding == "onehot" and dropout_p_embed > 0:
            keep = jax.random.bernoulli(keys[0], 1.0 - dropout_p_embed, (x.shape[0], 1))
            x = jnp.where(keep, x / (1.0 - dropout_p_embed), 0.0)
        else:
            x = _dropout(keys[0], x, dropout_p_embed)
    new_hidden = []
    for i, (layer, h) in enumerate(zip(layers, hidden)):
        x_proj = x + layer["b"] if "Wx" not in layer else x @ layer["Wx"] + layer["b"]
        x = gru_cell(layer, x_proj, h)
        if training:
            x = _dropout(keys[i + 1], x, dropout_p_hidden)
        new_hidden.append(x)
    return x, new_hidden


def score_all(tables: dict, output: jax.Array) -> jax.Array:
    """Scores of every item, ``output @ Wy.T + By``: (B, n)."""
    return output @ tables["Wy"].T + tables["By"]


def zero_hidden(config: ModelConfig, batch_size: int) -> list[jax.Array]:
    return [jnp.zeros((batch_size, h), jnp.float32) for h in config.layers]
