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
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from gru4rec_jax import threefry

__all__ = [
    "ModelConfig",
    "init_params",
    "gru_cell",
    "embed_inputs",
    "forward_step",
    "dropout_masks",
    "KeepProbability",
    "keep_probability",
    "keep_mask",
    "score_all",
    "zero_hidden",
]

EMBEDDING_MODES = ("shared", "separate", "onehot")
CELLS = ("gru4rec", "pytorch")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape of the network. Hashable, so it can be a static jit argument."""

    n_items: int
    layers: tuple[int, ...] = (100,)
    embedding: str = "shared"  # shared | separate | onehot
    embedding_dim: int = 0  # only for embedding == "separate"
    cell: str = "gru4rec"  # gru4rec | pytorch (see gru_cell)

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {self.cell!r}")
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
    return threefry.uniform(key, shape, -limit, limit)


def _gate_blocks(key, rows, h, blocks):
    """``blocks`` matrices of shape (rows, h), each scaled by its own fans."""
    keys = jax.random.split(key, blocks)
    return jnp.concatenate([_uniform(k, (rows, h), rows, h) for k in keys], axis=1)


# Item tables with more rows than this are drawn block by block (below).
_INIT_BLOCK_ROWS = 1 << 16


def _item_table(key, n, h, blocks=1):
    """An item table (n, blocks * h) initialised like ``_gate_blocks`` with fans (n, h).

    Up to ``_INIT_BLOCK_ROWS`` rows it is exactly ``_gate_blocks``. Larger
    tables are drawn ``_INIT_BLOCK_ROWS`` rows at a time into the result (each
    block from its own key; the last block overlaps the one before it), because
    drawing a whole 1M-row table at once materialises its random bits several
    times over and would set the run's peak memory.
    """
    if n <= _INIT_BLOCK_ROWS:
        return _gate_blocks(key, n, h, blocks)
    rows = _INIT_BLOCK_ROWS
    n_blocks = -(-n // rows)

    def fill(b, table):
        start = jnp.minimum(b * rows, n - rows)
        block_keys = jax.random.split(jax.random.fold_in(key, b), blocks)
        block = jnp.concatenate([_uniform(k, (rows, h), n, h) for k in block_keys], axis=1)
        return jax.lax.dynamic_update_slice(table, block, (start, 0))

    return jax.lax.fori_loop(0, n_blocks, fill, jnp.zeros((n, blocks * h), jnp.float32))


def item_table_rows(key, n, h, start, count, blocks=1):
    """Rows ``[start, start + count)`` of ``_item_table(key, n, h, blocks)``, zero beyond row n.

    ``start`` may be traced (a shard's first row): only the blocks that cover
    these rows are drawn, and each is merged into the result where it owns
    rows, so a device initialises its shard of a table holding no more than
    the shard and one block. Row r of a block-drawn table comes from the last
    block if r >= n - block rows (that block is written last), else from
    block r // block rows.
    """
    width = blocks * h
    if n <= _INIT_BLOCK_ROWS:
        table = jnp.pad(_gate_blocks(key, n, h, blocks), [(0, count), (0, 0)])
        return jax.lax.dynamic_slice(table, (start, 0), (count, width))
    rows = _INIT_BLOCK_ROWS
    n_blocks = -(-n // rows)
    size = max(count, rows)  # a window of one block always fits

    def write(b, block_start, out):
        block_keys = jax.random.split(jax.random.fold_in(key, b), blocks)
        block = jnp.concatenate([_uniform(k, (rows, h), n, h) for k in block_keys], axis=1)
        offset = block_start - start  # the block's first row in ``out`` (may lie outside)
        at = jnp.clip(offset, 0, size - rows)
        source = at - offset + jnp.arange(rows)  # block row landing on out[at + i]
        owned = ((source >= 0) & (source < rows))[:, None]
        window = jax.lax.dynamic_slice(out, (at, 0), (rows, width))
        merged = jnp.where(owned, jnp.roll(block, offset - at, axis=0), window)
        return jax.lax.dynamic_update_slice(out, merged, (at, 0))

    out = jnp.zeros((size, width), jnp.float32)
    first = start // rows
    last = jnp.minimum((start + count - 1) // rows, n_blocks - 2)
    out = jax.lax.fori_loop(first, last + 1, lambda b, out: write(b, b * rows, out), out)
    needs_last = (start < n) & (start + count > n - rows)
    out = jax.lax.cond(needs_last, lambda out: write(n_blocks - 1, n - rows, out), lambda out: out, out)
    return out if size == count else out[:count]


def item_table_keys(key: jax.Array, config: ModelConfig) -> dict[str, tuple[jax.Array, int, int]]:
    """``name -> (key, h, blocks)`` of the randomly initialised item tables (``By`` starts at zero)."""
    key_out, key_in = jax.random.split(key, 2 + len(config.layers))[:2]
    keys = {"Wy": (key_out, config.layers[-1], 1)}
    if config.embedding == "separate":
        keys["E"] = (key_in, config.embedding_dim, 1)
    elif config.embedding == "onehot":
        keys["Wx0"] = (key_in, config.layers[0], 3)
    return keys


def init_params(key: jax.Array, config: ModelConfig) -> dict:
    """Reference initialisation: uniform +-sqrt(6/(fan_in+fan_out)) per gate block, zero biases."""
    n, layers = config.n_items, config.layers
    layer_keys = jax.random.split(key, 2 + len(layers))[2:]
    table_keys = item_table_keys(key, config)
    key_out = table_keys.pop("Wy")[0]
    tables = {"Wy": _item_table(key_out, n, layers[-1]), "By": jnp.zeros((n,), jnp.float32)}
    for name, (k, h, blocks) in table_keys.items():
        tables[name] = _item_table(k, n, h, blocks)
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
            if config.cell == "pytorch":
                p["bh"] = jnp.zeros((3 * h,), jnp.float32)
        layer_params.append(p)
        d_in = h
    return {"tables": tables, "layers": layer_params}


def gru_cell(layer: dict, x_proj: jax.Array, hidden: jax.Array) -> jax.Array:
    """One step of the original GRU4Rec cell (the default).

    Args:
      layer: ``Wrz`` (h, 2h), ``Wh`` (h, h); ``x_proj`` already holds ``x @ Wx + b``
        with column blocks [candidate | reset | update], shape (B, 3h).
      hidden: (B, h) previous state.
    Returns the new state (B, h).

    A layer with a recurrent bias ``bh`` (3h,) (``ModelConfig(cell="pytorch")``)
    is instead ``torch.nn.GRUCell``, which the official PyTorch port uses for
    its layers: the reset gate multiplies the recurrent product (plus its
    bias) rather than the state. It exists to reproduce that port exactly;
    the two forms reach the same ranking quality (README, "How it follows
    the references").
    """
    h = hidden.shape[-1]
    if "bh" in layer:
        rz = jax.nn.sigmoid(x_proj[:, h:] + hidden @ layer["Wrz"] + layer["bh"][h:])
        reset, update = rz[:, :h], rz[:, h:]
        candidate = jnp.tanh(x_proj[:, :h] + reset * (hidden @ layer["Wh"] + layer["bh"][:h]))
    else:
        rz = jax.nn.sigmoid(x_proj[:, h:] + hidden @ layer["Wrz"])
        reset, update = rz[:, :h], rz[:, h:]
        candidate = jnp.tanh((reset * hidden) @ layer["Wh"] + x_proj[:, :h])
    return (1.0 - update) * hidden + update * candidate


def dropout_masks(
    key: jax.Array,
    config: ModelConfig,
    batch_size: int,
    dropout_p_embed: float,
    dropout_p_hidden: float,
) -> list[jax.Array | None]:
    """Keep masks of one training step: [input, layer 1, ..., layer L]; None where the rate is 0.

    In one-hot mode the input mask has shape (B, 1): dropping out a one-hot
    input vector scales or zeroes its single nonzero entry, i.e. the whole
    gathered row. Drawing masks apart from the forward pass lets training draw
    a whole chunk's masks in one vectorised call.
    """
    keys = jax.random.split(key, len(config.layers) + 1)
    input_shape = (batch_size, 1 if config.embedding == "onehot" else config.input_dim)
    shapes = [input_shape] + [(batch_size, h) for h in config.layers]
    rates = [dropout_p_embed] + [dropout_p_hidden] * len(config.layers)
    return [keep_mask(k, rate, shape) for k, shape, rate in zip(keys, shapes, rates)]


class KeepProbability(NamedTuple):
    """A dropout rate given as its keep probability ``1 - rate``, a float32 value that may be traced.

    A population (:mod:`gru4rec_jax.population`) passes each member's rate so:
    computed on the host as ``float32(1 - rate)``, it draws and scales exactly
    as the float ``rate`` does in a single run (``1 - rate`` in float32 would
    round differently). Unlike the float 0, ``KeepProbability(1.0)`` still
    draws a mask (all kept), for members without dropout beside ones with it.
    """

    keep: jax.Array


def keep_probability(rate) -> float | jax.Array:
    """``1 - rate`` of a float rate, or the value of a :class:`KeepProbability`."""
    return rate.keep if isinstance(rate, KeepProbability) else 1.0 - rate


def keep_mask(key: jax.Array, rate, shape: tuple) -> jax.Array | None:
    """Dropout's keep mask of ``shape`` for a float rate or a :class:`KeepProbability`; None for a rate <= 0."""
    if not isinstance(rate, KeepProbability) and rate <= 0:
        return None
    return threefry.bernoulli(key, keep_probability(rate), shape)


def _apply_dropout(x, keep, rate):
    if keep is None:
        return x
    return jnp.where(keep, x / keep_probability(rate), 0.0)


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
    masks: Sequence[jax.Array | None] | None = None,
    context: jax.Array | None = None,
) -> tuple[jax.Array, list[jax.Array]]:
    """Runs every GRU layer for one time step.

    Args:
      layers: the per-layer dense parameters.
      input_rows: (B, d) rows from :func:`embed_inputs`.
      hidden: per-layer states, each (B, h_l).
      dropout_key: draws the dropout masks (:func:`dropout_masks`); or pass
        ``masks`` drawn beforehand. Neither: inference, no dropout.
      context: (B, c) extra input of the first layer, through its ``Wc``: a
        (c, 3h) ``Wc`` adds to all three gate blocks, a (c, 2h) one to the
        reset and update gates only (HRNN-all feeds the user state here).
    Returns ``(output, new_hidden)``: the last layer's output (B, h_L), after
    dropout, and the new states. The state carried forward is each layer's
    output AFTER dropout, as in the reference.
    """
    if dropout_key is not None:
        masks = dropout_masks(dropout_key, config, input_rows.shape[0], dropout_p_embed, dropout_p_hidden)
    if masks is None:
        masks = [None] * (len(layers) + 1)
    x = _apply_dropout(input_rows, masks[0], dropout_p_embed)
    new_hidden = []
    for layer, h, keep in zip(layers, hidden, masks[1:]):
        x_proj = x + layer["b"] if "Wx" not in layer else x @ layer["Wx"] + layer["b"]
        if "Wc" in layer:
            extra = context @ layer["Wc"]
            if extra.shape[1] < x_proj.shape[1]:  # (c, 2h): the gates only, nothing for the candidate block
                extra = jnp.pad(extra, ((0, 0), (x_proj.shape[1] - extra.shape[1], 0)))
            x_proj = x_proj + extra
        x = _apply_dropout(gru_cell(layer, x_proj, h), keep, dropout_p_hidden)
        new_hidden.append(x)
    return x, new_hidden


def score_all(tables: dict, output: jax.Array) -> jax.Array:
    """Scores of every item, ``output @ Wy.T + By``: (B, n)."""
    return output @ tables["Wy"].T + tables["By"]


def zero_hidden(config: ModelConfig, batch_size: int) -> list[jax.Array]:
    return [jnp.zeros((batch_size, h), jnp.float32) for h in config.layers]
