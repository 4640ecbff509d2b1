"""Training: the whole session-parallel loop on device, one jitted call per chunk.

One call of the compiled chunk function runs ``chunk_steps`` time steps with
``jax.lax.scan``; each step resets the lanes that start a session, draws the
shared negative samples, runs the GRU, computes the loss over the (M, M+S)
score matrix and applies the optimizer (dense Adagrad-momentum for the GRU
weights, row-sparse for the item tables) inside the scan body. PRNG keys are
``fold_in(run_key, global_step)``, so a resumed run draws exactly what an
uninterrupted one would. Steps with no active lane (padding of the last chunk)
change nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from typing import Callable, Optional, Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from gru4rec_jax import losses as losses_lib
from gru4rec_jax import networks
from gru4rec_jax import optimizer as optimizer_lib
from gru4rec_jax import sampling
from gru4rec_jax import sharding as sharding_lib
from gru4rec_jax.batching import Schedule, equal_chunk_steps, pad_into_chunks, session_parallel_schedule
from gru4rec_jax.data import Sessions
from gru4rec_jax.user_data import UserSessions, user_parallel_schedule

__all__ = [
    "TrainConfig",
    "TrainState",
    "TrainingError",
    "EpochStats",
    "init_train_state",
    "make_train_chunk",
    "compile_train_chunk",
    "final_activation",
    "fit",
]

FINAL_ACTIVATIONS = ("auto", "linear", "tanh", "relu", "elu")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message is one line."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters; names and defaults follow the reference GRU4Rec."""

    loss: str = "cross-entropy"
    batch_size: int = 64
    dropout_p_embed: float = 0.0
    dropout_p_hidden: float = 0.0
    learning_rate: float = 0.05
    momentum: float = 0.0
    n_sample: int = 2048
    sample_alpha: float = 0.5
    bpreg: float = 1.0
    elu_param: float = 0.5
    logq: float = 0.0
    final_act: str = "auto"
    n_epochs: int = 10
    seed: int = 0
    chunk_steps: int = 512
    table_update: str = "auto"  # auto | rows | masked: see optimizer.sparse_adagrad_momentum_update
    dropout_p_hidden_usr: float = 0.0  # HRNN: dropout on the user GRU output
    dropout_p_init: float = 0.0  # HRNN: dropout on the session initialisation

    def __post_init__(self):
        checks = [
            (self.loss in losses_lib.LOSSES, f"loss must be one of {sorted(losses_lib.LOSSES)}"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (0.0 <= self.dropout_p_embed < 1.0, "dropout_p_embed must be in [0, 1)"),
            (0.0 <= self.dropout_p_hidden < 1.0, "dropout_p_hidden must be in [0, 1)"),
            (0.0 <= self.dropout_p_hidden_usr < 1.0, "dropout_p_hidden_usr must be in [0, 1)"),
            (0.0 <= self.dropout_p_init < 1.0, "dropout_p_init must be in [0, 1)"),
            (self.learning_rate > 0.0, "learning_rate must be > 0"),
            (0.0 <= self.momentum < 1.0, "momentum must be in [0, 1)"),
            (self.n_sample >= 0, "n_sample must be >= 0"),
            (self.sample_alpha >= 0.0, "sample_alpha must be >= 0"),
            (self.bpreg >= 0.0, "bpreg must be >= 0"),
            (self.elu_param >= 0.0, "elu_param must be >= 0"),
            (self.logq >= 0.0, "logq must be >= 0"),
            (self.final_act in FINAL_ACTIVATIONS, f"final_act must be one of {FINAL_ACTIVATIONS}"),
            (self.n_epochs >= 0, "n_epochs must be >= 0"),
            (self.chunk_steps >= 1, "chunk_steps must be >= 1"),
            (self.table_update in ("auto", "rows", "masked"), "table_update must be auto, rows or masked"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.logq > 0 and self.loss != "cross-entropy":
            raise ValueError("logq applies to the cross-entropy loss only")


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint needs to resume training exactly."""

    params: dict
    dense_opt: optimizer_lib.AdagradMomentumState  # over params["layers"]
    table_acc: dict  # same keys and shapes as params["tables"]
    table_vel: dict
    step: jax.Array  # global step counter (int32), keys the PRNG


@functools.partial(jax.jit, static_argnums=1)
def init_train_state(key: jax.Array, model_config: networks.AnyModelConfig) -> TrainState:
    """Fresh parameters and zero optimizer state. Compiled, so that drawing a large
    table does not materialise its random bits next to it (peak memory)."""
    params = networks.network_for(model_config).init_params(key)
    zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)  # noqa: E731
    return TrainState(
        params=params,
        dense_opt=optimizer_lib.AdagradMomentumState(zeros(params["layers"]), zeros(params["layers"])),
        table_acc=zeros(params["tables"]),
        table_vel=zeros(params["tables"]),
        step=jnp.zeros((), jnp.int32),
    )


# The TrainConfig fields that enter the training step as values, not shapes.
# A single run's compiled chunk holds them as constants; a population
# (:mod:`gru4rec_jax.population`) passes those that differ between its
# members as traced per-member values (``train_chunk_function``).
STEP_SCALARS = (
    "learning_rate", "momentum", "dropout_p_embed", "dropout_p_hidden", "dropout_p_hidden_usr", "dropout_p_init",
    "bpreg", "elu_param", "sample_alpha", "logq",
)
_DROPOUT_RATES = ("dropout_p_embed", "dropout_p_hidden", "dropout_p_hidden_usr", "dropout_p_init")


def _is_constant(value) -> bool:
    """Whether a step scalar is a Python number (baked in) rather than a traced value."""
    return isinstance(value, (int, float))


def final_activation(config: TrainConfig, elu_param=None) -> Callable[[jax.Array], jax.Array]:
    """The activation applied to training scores before the loss.

    ``auto`` picks the reference's choice per loss: linear for cross-entropy
    (the softmax is the loss), ELU(elu_param) for BPR-max and TOP1-max (linear
    when elu_param is 0), tanh for the 2016 TOP1 and BPR. ``elu_param`` (the
    config's by default) may be a traced value, a population member's: 0 still
    means linear, chosen per member by a select.
    """
    name = config.final_act
    elu_param = config.elu_param if elu_param is None else elu_param
    if name == "auto":
        name = {"cross-entropy": "linear", "top1": "tanh", "bpr": "tanh"}.get(config.loss, "elu")
    if name == "elu" and not _is_constant(elu_param):
        return lambda x: jnp.where(elu_param > 0, jax.nn.elu(x, alpha=elu_param), x)
    if name == "elu" and elu_param > 0:
        return functools.partial(jax.nn.elu, alpha=elu_param)
    return {"tanh": jnp.tanh, "relu": jax.nn.relu}.get(name, lambda x: x)


def network_of(model_config: networks.AnyModelConfig, config: TrainConfig, scalars: Optional[dict] = None
               ) -> networks.Network:
    """The network with the config's dropout rates, or those of ``scalars`` (see ``train_chunk_function``)."""
    scalars = _constant_scalars(config) if scalars is None else scalars
    return networks.network_for(model_config, **{name: scalars[name] for name in _DROPOUT_RATES})


def _constant_scalars(config: TrainConfig) -> dict:
    """The step scalars of ``config`` as Python numbers: a single run's constants."""
    return {name: getattr(config, name) for name in STEP_SCALARS}


def make_train_chunk(model_config: networks.AnyModelConfig, config: TrainConfig, mesh: Optional[Mesh] = None):
    """Builds the jitted ``train_chunk(state, hidden, chunk, run_key, sampler, log_support)``.

    ``chunk`` holds ``[chunk_steps, B]`` arrays: inputs, targets, active and
    the network's flags (``reset`` for GRU4Rec, ``user_start`` and
    ``session_start`` for HRNN). Returns ``(state, hidden, stats)`` with stats
    = (loss sum over steps, number of steps run, number of events). ``state``
    and ``hidden`` (the network's carried state) are donated.

    With a ``mesh`` (:mod:`gru4rec_jax.sharding`), the state's item tables
    are sharded by rows over ``items`` (padded, see ``sharding.place_state``)
    and the lanes of ``hidden`` and ``chunk`` over ``data``; the same step
    runs, its row gathers and row updates per shard.
    """
    train_chunk = train_chunk_function(model_config, config, _constant_scalars(config), mesh)
    if mesh is None:
        return jax.jit(train_chunk, donate_argnums=(0, 1))
    # Outputs keep the inputs' shardings, so one compiled chunk serves every call.
    net = network_of(model_config, config)
    state_shape = jax.eval_shape(lambda: init_train_state(jax.random.PRNGKey(0), model_config))
    hidden_shape = jax.eval_shape(lambda: net.zero_carry(config.batch_size))
    out_shardings = (
        sharding_lib.state_shardings(state_shape, mesh),
        jax.tree.map(lambda x: sharding_lib.lane_sharding(mesh, x.ndim, 0), hidden_shape),
        sharding_lib.replicated(mesh),
    )
    return jax.jit(train_chunk, donate_argnums=(0, 1), out_shardings=out_shardings)


def train_chunk_function(
    model_config: networks.AnyModelConfig, config: TrainConfig, scalars: dict, mesh: Optional[Mesh] = None
):
    """The unjitted ``train_chunk`` of :func:`make_train_chunk`, its step scalars taken from ``scalars``.

    ``scalars`` maps every name of :data:`STEP_SCALARS` to a Python number (a
    single run: constants in the compiled program, exactly the step as written)
    or to a traced float32 scalar (a population member's value, see
    :mod:`gru4rec_jax.population`); dropout rates then come as ``model.KeepProbability``, which
    draws a mask even where the member's rate is 0 (all kept). The config
    gives the shapes and kinds (loss, batch size, samples, activation, table
    update); a traced logQ weight or ELU parameter of 0 acts as in a single run
    (nothing subtracted; linear).
    """
    net = network_of(model_config, config, scalars)
    learning_rate, momentum = scalars["learning_rate"], scalars["momentum"]
    B, S = config.batch_size, config.n_sample
    # Lane j's positive is candidate j: losses that can take it as an index
    # do (less work than one-hot labels, the same values).
    integer_labels = config.loss in _INTEGER_LABEL_LOSSES
    loss_fn = _INTEGER_LABEL_LOSSES[config.loss] if integer_labels else losses_lib.LOSSES[config.loss]
    loss_params = {"bpreg": scalars["bpreg"]} if config.loss == "bpr-max" else {}
    activation = final_activation(config, scalars["elu_param"])
    sparse_update = sharding_lib.sharded_sparse_adagrad(
        mesh,
        learning_rate=learning_rate,
        momentum=momentum,
        strategy=config.table_update,
    )
    input_table = {"shared": "Wy", "separate": "E", "onehot": "Wx0"}[net.items.embedding]
    candidates_first = _candidates_first(mesh)
    candidates_axis = 0 if candidates_first else 1
    labels = jnp.arange(B) if integer_labels else losses_lib.gru4rec_labels(B, B + S)
    labels = labels.T if candidates_first and not integer_labels else labels
    logq = scalars["logq"]
    use_logq = config.loss == "cross-entropy" and not (_is_constant(logq) and logq <= 0)
    n_items = net.items.n_items
    # Where the output table's update is the masked one (a catalogue within a
    # few times the rows a step touches), its gradient is taken table-shaped
    # straight from the product (see _candidate_scores) instead of as rows.
    n_output_touched = B + S + (B if input_table == "Wy" else 0)
    dense_output_grads = mesh is None and optimizer_lib.resolve_table_update(
        config.table_update, n_items, n_output_touched) == "masked"

    def objective(layers, input_rows, output_rows, output_bias, hidden, flags, where, columns, masks, log_support):
        hidden = net.begin(layers, hidden, flags, masks)
        output, new_hidden = net.forward(layers, input_rows, hidden, masks)
        # Scores of the M+S candidates (rows of ``output_rows``) for the M lanes,
        # on CPU as the (M+S, M) transpose of the paper's score matrix (see
        # _candidates_first), elsewhere as the paper's (M, M+S) matrix.
        if dense_output_grads:  # output_rows and output_bias are the whole tables
            scores = _candidate_scores(n_items, output_rows, output_bias, columns, output)
        else:
            scores = output_rows @ output.T + output_bias[:, None]
        if not candidates_first:
            scores, where = scores.T, where.T
        scores = activation(scores)
        if use_logq:
            correction = sampling.logq_correction(log_support, columns, B, logq, scalars["sample_alpha"])
            scores = scores - jnp.expand_dims(correction, 1 - candidates_axis)
        loss = loss_fn(scores, labels, where=where, reduce_fn=jnp.sum, axis=candidates_axis, **loss_params)
        # The reference divides by the nominal batch size, not the active lanes.
        return loss / B, new_hidden

    grad_fn = jax.value_and_grad(objective, argnums=(0, 1, 2, 3), has_aux=True)

    def step_randomness(run_key, step, sampler):
        """Negative samples and dropout masks of one step, keyed by the global step."""
        key_sample, key_dropout = jax.random.split(jax.random.fold_in(run_key, step))
        samples = sampling.draw_negatives(key_sample, sampler, S) if S > 0 else None
        return samples, net.draw_masks(key_dropout, B)

    def train_step(state: TrainState, hidden, batch, log_support, workspace):
        inputs, targets, active = batch["inputs"], batch["targets"], batch["active"]
        samples, masks = batch["samples"], batch["masks"]
        flags = {name: batch[name] for name in net.flags}
        columns, column_valid = targets, active
        if S > 0:
            columns = jnp.concatenate([targets, samples])
            # Samples are columns of every real step; a padding step touches no row.
            column_valid = jnp.concatenate([active, jnp.broadcast_to(jnp.any(active), (S,))])
        tables = state.params["tables"]
        # Named scopes label the profile of experiments/tools/profile_step.py.
        with jax.named_scope("gather_rows"):
            input_rows = sharding_lib.gather_rows(tables[input_table], inputs, mesh)
            if dense_output_grads:
                output_rows, output_bias = tables["Wy"], tables["By"]
            else:
                output_rows = sharding_lib.gather_rows(tables["Wy"], columns, mesh)
                output_bias = sharding_lib.gather_rows(tables["By"], columns, mesh)
        where = column_valid[:, None] & active[None, :]
        with jax.named_scope("loss_and_gradients"):
            (loss, new_hidden), grads = grad_fn(
                state.params["layers"], input_rows, output_rows, output_bias,
                hidden, flags, where, columns, masks, log_support,
            )
        g_layers, g_input, g_output, g_bias = grads

        any_active = jnp.any(active)
        with jax.named_scope("dense_update"):
            # A padding step (no active lane) must change nothing. (Item tables
            # need no guard: such a step touches no row.)
            layers, dense_opt = optimizer_lib.adagrad_momentum_step(
                state.params["layers"], state.dense_opt, g_layers,
                learning_rate=learning_rate, momentum=momentum, apply=any_active)

        # Rows of inactive lanes are not touched (index n = "no row"; n counts
        # a sharded table's padding rows too).
        n_rows = tables["Wy"].shape[0]
        input_index = jnp.where(active, inputs, n_rows)
        output_index = jnp.where(column_valid, columns, n_rows)
        # name -> (indices, their gradients)
        touched = {"By": (output_index, g_bias)}
        if input_table == "Wy":
            touched["Wy"] = ((input_index, output_index), (g_input, g_output))
        else:
            touched["Wy"] = (output_index, g_output)
            touched[input_table] = (input_index, g_input)
        new_tables, new_acc, new_vel = dict(tables), dict(state.table_acc), dict(state.table_vel)
        for name, (index, row_grads) in touched.items():
            with jax.named_scope(f"table_update_{name}"):
                old = (tables[name], state.table_acc[name], state.table_vel[name])
                if dense_output_grads and name in ("Wy", "By"):
                    # The output layer's gradients are table-shaped; the input
                    # rows' (shared embedding) are added to them.
                    grads = g_bias if name == "By" else g_output
                    if name == "Wy" and input_table == "Wy":
                        grads = grads.at[input_index].add(g_input, mode="drop")
                    new_tables[name], new_acc[name], new_vel[name] = optimizer_lib.masked_adagrad_momentum_update(
                        *old, grads, index, learning_rate=learning_rate, momentum=momentum)
                elif workspace is None:
                    new_tables[name], new_acc[name], new_vel[name] = sparse_update(*old, index, row_grads)
                else:
                    new_tables[name], new_acc[name], new_vel[name], workspace = sparse_update(
                        *old, index, row_grads, workspace=workspace)
        state = TrainState(
            params={"tables": new_tables, "layers": layers},
            dense_opt=dense_opt,
            table_acc=new_acc,
            table_vel=new_vel,
            step=state.step + any_active.astype(jnp.int32),
        )
        return state, new_hidden, loss, workspace

    def scan_body(carry, batch, log_support):
        state, hidden, loss_sum, n_steps, n_events, workspace = carry
        active = batch["active"]
        # Padding steps (the tail of the last chunk, kept short by equal-size
        # chunks) run like the others but change nothing; a lax.cond to skip
        # them costs more than it saves.
        state, hidden, loss, workspace = train_step(state, hidden, batch, log_support, workspace)
        any_active = jnp.any(active)
        return (
            state,
            hidden,
            loss_sum + loss,
            n_steps + any_active.astype(jnp.int32),
            n_events + jnp.sum(active, dtype=jnp.int32),
            workspace,
        ), None

    def train_chunk(state, hidden, chunk, run_key, sampler, log_support):
        # The chunk's random draws in one vectorised call (many small per-step
        # calls are slow on CPU); step t still uses fold_in(run_key, t), so
        # results do not depend on the chunk length. Padding steps sit at the
        # end of the last chunk, so real steps are numbered consecutively.
        steps = state.step + jnp.arange(chunk["inputs"].shape[0], dtype=jnp.int32)
        samples, masks = jax.vmap(step_randomness, in_axes=(None, 0, None))(run_key, steps, sampler)
        batches = {name: chunk[name] for name in ("inputs", "targets", "active") + net.flags}
        batches.update(samples=samples, masks=masks)
        zero_f, zero_i = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
        # Deduplicating touched rows needs an item-indexed scratch vector:
        # filled once per chunk and carried, not once per step and table.
        # (Sharded tables fill a shard-sized one per update instead.)
        n_rows = state.params["tables"]["Wy"].shape[0]
        workspace = optimizer_lib.dedup_workspace(n_rows) if mesh is None else None
        body = functools.partial(scan_body, log_support=log_support)
        (state, hidden, loss_sum, n_steps, n_events, _), _ = jax.lax.scan(
            body, (state, hidden, zero_f, zero_i, zero_i, workspace), batches
        )
        return state, hidden, (loss_sum, n_steps, n_events)

    return train_chunk


# Losses of the training step that take each lane's positive as an index.
_INTEGER_LABEL_LOSSES = {
    "cross-entropy": losses_lib.cross_entropy_loss_with_integer_labels,
    "bpr-max": losses_lib.bpr_max_loss_with_integer_labels,
    "top1-max": losses_lib.top1_max_loss_with_integer_labels,
}


def _candidates_first(mesh: Optional[Mesh]) -> bool:
    """Whether the training step scores its candidates as the (M+S, M) transpose of the paper's matrix.

    On CPU: the three products of the output layer (scores, and the gradients
    of the outputs and of the candidate rows) then have the long candidate
    dimension outermost, which on the 2-core CPU made them a quarter faster
    together at B 32, h 100 (no change at B 80, h 224); with the whole step as
    it is now, the other layout ran the cross-entropy step 6% and the BPR-max
    step 22% slower there (2,933 items). Not on GPUs: there the
    losses' reductions over the candidates, then over the major axis of a
    matrix only M columns wide, were slow (H200, BPR-max set at 2,933 items:
    two such reductions took 80 of the step's 236 us, and the loss with its
    gradient took 46 us against 16-22 us over the minor axis). The loss is the
    same either way.
    """
    return sharding_lib.platform(mesh) == "cpu"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _candidate_scores(n_rows, table, bias, columns, output):
    """``table[columns] @ output.T + bias[columns][:, None]``, the (K, B) scores of
    K candidate rows for B outputs, whose gradients with respect to ``table``
    and ``bias`` come table-shaped: the score gradient is summed into an
    (n_rows, B) matrix by candidate, then one (n_rows, B) x (B, h) product gives
    the table's gradient (zero in rows no candidate names). Building it from
    the (K, h) row gradients instead scatters K rows of h values into a zeroed
    table-sized buffer; with the catalogue within a few times K the product is
    the cheaper of the two (on the 2-core CPU at 2,933 items: the cross-entropy
    set's step 4% faster, the BPR-max set's 1-3%). ``columns`` must be rows of
    the table (the training step's are: inactive lanes' targets are 0, with
    their score gradients masked to zero)."""
    return _candidate_scores_fwd(n_rows, table, bias, columns, output)[0]


def _candidate_scores_fwd(n_rows, table, bias, columns, output):
    rows = table[columns]
    return rows @ output.T + bias[columns][:, None], (rows, columns, output)


def _candidate_scores_bwd(n_rows, residuals, score_grads):
    rows, columns, output = residuals
    by_row = jnp.zeros((n_rows, score_grads.shape[1]), score_grads.dtype).at[columns].add(score_grads, mode="drop")
    bias_grads = jnp.zeros((n_rows,), score_grads.dtype).at[columns].add(score_grads.sum(axis=1), mode="drop")
    return by_row @ output, bias_grads, None, score_grads.T @ rows


_candidate_scores.defvjp(_candidate_scores_fwd, _candidate_scores_bwd)


# XLA:CPU hands dot products and reductions to YNNPACK by default. Its
# reductions are slower than XLA's own loops on the training step's
# (M+S, M) score matrices, and its products are slower than XLA's own for
# narrow layers, faster for wide ones. Same-process A/B of the compiled
# chunk on the 2-core benchmark machine (JAX 0.10, 3k items), YNNPACK
# products against XLA's: h 100 (B 32, 80, 128) 5-10% slower, h 224 (B 32,
# 80, 128) 2-7% slower, h 256 and 320 even, h 384 and 512 6-10% faster.
_YNNPACK_PRODUCTS_ABOVE_UNITS = 320


def _cpu_compiler_options(output_units: int) -> dict:
    """XLA:CPU options for a training chunk whose output layer has ``output_units`` units.

    Besides the products' library, XLA's own loops may use 512-bit vectors
    where the CPU has them (XLA prefers 256 bits by default; LLVM ignores the
    preference on CPUs without AVX-512). Same-process A/B on the 2-core
    AVX-512 benchmark machine (JAX 0.10, 2,933 items, medians of 11): the
    cross-entropy step 2.3% faster, BPR-max 3.6%, the large set 1.3%; no
    change at 1M items, where the row updates' memory accesses dominate.
    """
    wide = output_units > _YNNPACK_PRODUCTS_ABOVE_UNITS
    return {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT" if wide else "",
        "xla_cpu_prefer_vector_width": 512,
    }


def compile_train_chunk(train_chunk, *args, mesh: Optional[Mesh] = None):
    """Compiles ``make_train_chunk``'s function for ``args`` ahead of time.

    On CPU with :func:`_cpu_compiler_options` for the output layer's width
    (``args[0]`` is the train state); an XLA build that does not know them
    (their names are experimental) compiles without them.
    """
    lowered = train_chunk.lower(*args)
    if sharding_lib.platform(mesh) != "cpu":
        return lowered.compile()
    options = _cpu_compiler_options(args[0].params["tables"]["Wy"].shape[-1])
    try:
        return lowered.compile(options)
    except jax.errors.JaxRuntimeError as error:
        if not any(name in str(error) for name in options):
            raise
        return lowered.compile()


@dataclasses.dataclass
class EpochStats:
    epoch: int  # 1-based
    loss: float  # mean over steps of (summed loss / batch_size), as the reference prints
    seconds: float
    n_events: int
    n_steps: int

    @property
    def events_per_sec(self) -> float:
        return self.n_events / self.seconds

    @property
    def batches_per_sec(self) -> float:
        return self.n_steps / self.seconds


class _Progress:
    """A one-line progress bar on a terminal, silent otherwise."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.enabled = hasattr(stream, "isatty") and stream.isatty()

    def update(self, epoch, done, total, events, seconds):
        if not self.enabled:
            return
        width = 30
        filled = int(width * done / max(total, 1))
        rate = events / max(seconds, 1e-9)
        self.stream.write(
            f"\repoch {epoch} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} chunks  {rate:,.0f} events/s"
        )
        self.stream.flush()

    def clear(self):
        if self.enabled:
            self.stream.write("\r" + " " * 79 + "\r")
            self.stream.flush()


def training_chunks(
    sessions: Union[Sessions, UserSessions], net: networks.Network, config: TrainConfig,
    schedule: Optional[Schedule] = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The training schedule in chunks, and every item's training event count.

    Returns ``(chunks, support)``: the schedule's ``inputs``, ``targets``,
    ``active`` and the network's flags as host arrays ``[n_chunks,
    chunk_steps, B]`` (equal chunks of at most ``config.chunk_steps``, the
    last padded), and :func:`sampling.item_support`. ``schedule`` (built from
    the sessions by default) must be the one of ``sessions``.
    """
    if isinstance(sessions, UserSessions):
        schedule = schedule or user_parallel_schedule(sessions, config.batch_size)
        sessions = sessions.sessions
    if schedule is None:
        schedule = session_parallel_schedule(sessions, config.batch_size)
    if schedule.n_steps == 0:
        raise TrainingError("the training data has no session with 2 or more events")
    chunk_steps = equal_chunk_steps(schedule.n_steps, config.chunk_steps)
    arrays = {name: getattr(schedule, name) for name in ("inputs", "targets", "active") + net.flags}
    return pad_into_chunks(arrays, chunk_steps), sampling.item_support(sessions.items, net.items.n_items)


def log_support_of(support: np.ndarray) -> jax.Array:
    """The log-support that the logQ correction reads (items never seen count as seen once)."""
    return jnp.asarray(np.log(np.maximum(support, 1.0)), jnp.float32)


def run_epoch(train_chunk, state, hidden, chunk_at: Callable[[int], dict], n_chunks: int, args: tuple, epoch: int):
    """One epoch: ``train_chunk(state, hidden, chunk_at(c), *args)`` for every chunk ``c``, with a
    progress bar on a terminal.

    Returns ``(state, (loss_sum, n_steps, n_events), seconds)``, the stats
    summed over the chunks as float64 numpy values (of the chunk stats' shape:
    one per member for a population).
    """
    stats = []
    progress = _Progress()
    t0 = time.perf_counter()
    events_so_far = 0
    for c in range(n_chunks):
        state, hidden, chunk_stats = train_chunk(state, hidden, chunk_at(c), *args)
        stats.append(chunk_stats)
        if progress.enabled:
            events_so_far += int(np.max(chunk_stats[2]))
            progress.update(epoch + 1, c + 1, n_chunks, events_so_far, time.perf_counter() - t0)
    sums = tuple(np.sum([np.asarray(s[i], np.float64) for s in stats], axis=0) for i in range(3))
    seconds = time.perf_counter() - t0
    progress.clear()
    return state, sums, seconds


def fit(
    sessions: Union[Sessions, UserSessions],
    model_config: networks.AnyModelConfig,
    config: TrainConfig,
    *,
    state: Optional[TrainState] = None,
    start_epoch: int = 0,
    on_epoch_end: Optional[Callable[[TrainState, EpochStats], None]] = None,
    log: Callable[[str], None] = print,
    schedule: Optional[Schedule] = None,
    mesh: Optional[Mesh] = None,
) -> tuple[TrainState, list[EpochStats]]:
    """Trains for epochs ``start_epoch + 1 .. config.n_epochs``.

    GRU4Rec trains on ``Sessions`` (session-parallel), HRNN on ``UserSessions``
    (user-parallel). ``state`` resumes a checkpointed run (its step counter keys the PRNG);
    ``on_epoch_end(state, stats)`` runs after every finished epoch (e.g. to
    save a checkpoint). Raises :class:`TrainingError` on a non-finite loss,
    before that epoch's ``on_epoch_end``, so the last good checkpoint is kept.

    With a ``mesh`` (:mod:`gru4rec_jax.sharding`) the state is placed on it
    (item tables padded and sharded by rows, lanes over ``data``); the
    returned state stays there. ``None``: one device, as always.
    """
    run_key, init_key = jax.random.split(jax.random.PRNGKey(config.seed))
    net = network_of(model_config, config)
    if mesh is not None:
        sharding_lib.check_batch_size(mesh, config.batch_size)
        n_items = net.items.n_items
        if state is None:
            state = sharding_lib.init_state(
                lambda key: init_train_state(key, model_config), net.item_table_keys, init_key, n_items, mesh)
        else:
            state = sharding_lib.pad_tables(state, n_items, mesh)
    elif state is None:
        state = init_train_state(init_key, model_config)
    host_chunks, support = training_chunks(sessions, net, config, schedule)
    chunk_steps, n_chunks = host_chunks["inputs"].shape[1], host_chunks["inputs"].shape[0]
    sampler = sampling.alias_table(support, config.sample_alpha)
    log_support = log_support_of(support)
    if mesh is None:
        chunks = jax.device_put(host_chunks)
        chunk_at = lambda c: jax.tree.map(lambda a: a[c], chunks)  # noqa: E731
        zero_carry = lambda: net.zero_carry(config.batch_size)  # noqa: E731
    else:
        # Every process builds the whole schedule; each copies only its own lanes to its devices.
        lanes = sharding_lib.lane_sharding(mesh, 2, 1)
        device_chunks = [
            {name: sharding_lib.put(a[c], lanes) for name, a in host_chunks.items()} for c in range(n_chunks)
        ]
        chunk_at = device_chunks.__getitem__
        zero_carry = lambda: jax.tree.map(  # noqa: E731
            lambda x: sharding_lib.put(x, sharding_lib.lane_sharding(mesh, x.ndim, 0)),
            net.zero_carry(config.batch_size))
        run_key, sampler, log_support = (
            jax.tree.map(lambda x: sharding_lib.put(x, sharding_lib.replicated(mesh)), tree)
            for tree in (run_key, sampler, log_support))
    train_chunk = make_train_chunk(model_config, config, mesh)
    # Compile once, ahead of time, so that epoch timings measure training only.
    t0 = time.perf_counter()
    train_chunk = compile_train_chunk(
        train_chunk, state, zero_carry(), chunk_at(0), run_key, sampler, log_support, mesh=mesh)
    log(f"compiled the training chunk ({chunk_steps} steps) in {time.perf_counter() - t0:.1f}s")

    history = []
    for epoch in range(start_epoch, config.n_epochs):
        state, (loss_sum, n_steps, n_events), seconds = run_epoch(
            train_chunk, state, zero_carry(), chunk_at, n_chunks, (run_key, sampler, log_support), epoch)
        epoch_stats = EpochStats(
            epoch=epoch + 1,
            loss=float(loss_sum / n_steps),
            seconds=seconds,
            n_events=int(n_events),
            n_steps=int(n_steps),
        )
        if not math.isfinite(epoch_stats.loss):
            raise TrainingError(
                f"non-finite training loss in epoch {epoch + 1}; stopped (lower the learning rate?)"
            )
        log(
            f"epoch {epoch_stats.epoch:3d}  loss {epoch_stats.loss:.6f}  {seconds:7.2f}s  "
            f"{epoch_stats.batches_per_sec:8.1f} mb/s  {epoch_stats.events_per_sec:9.0f} events/s"
        )
        history.append(epoch_stats)
        if on_epoch_end is not None:
            on_epoch_end(state, epoch_stats)
    return state, history
