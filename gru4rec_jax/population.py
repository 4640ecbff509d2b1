"""Populations: many models of one shape trained at once, in one compiled program.

The trials of a hyperparameter search mostly share the network's shapes and
differ in scalars (learning rate, momentum, dropout, ...). Here P such models
train together: one compiled training chunk, ``jax.vmap`` over the members'
parameters, optimizer states, PRNG keys and scalar hyperparameters, runs every
member's step on the same session-parallel schedule. Member ``i`` trains as
``training.fit`` would train it alone with ``configs[i]`` (the same random
draws; the vmapped program may round differently in the last bits).

Shapes (:data:`SHAPE_FIELDS` of the configs, and the model config) are the
population's; scalars (:data:`MEMBER_FIELDS`) are each member's. A scalar that
all members share is a constant of the program, as in a single run; the others
are traced per member. Dropout masks are drawn where any member's rate is
above 0 (a member with rate 0 keeps every unit and scales by exactly 1), the
samplers get a member axis where ``sample_alpha`` differs.

On accelerators all members run vmapped. On CPU, members run vmapped in
groups of a few (:func:`default_group_size`), one group's chunk after the
other inside the same program: a vmapped step passes over every member's item
tables several times, and a whole population's tables fall out of the caches.

A member whose training loss becomes non-finite is marked as diverged (its
epoch losses are nan from then on; its parameters are left as they come out);
the others train on unaffected, as nothing in the program mixes members.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from gru4rec_jax import model as model_lib
from gru4rec_jax import networks, sampling, training
from gru4rec_jax.batching import Schedule
from gru4rec_jax.data import Sessions
from gru4rec_jax.training import EpochStats, TrainConfig, TrainState
from gru4rec_jax.user_data import UserSessions

__all__ = [
    "SHAPE_FIELDS",
    "MEMBER_FIELDS",
    "CPU_GROUP_STATE_BYTES",
    "check_population",
    "member_scalars",
    "make_population_chunk",
    "default_group_size",
    "init_population_state",
    "fit_population",
    "member_state",
]

# TrainConfig fields that must be equal across a population (they set the
# compiled program's shapes and kinds), and those that may differ per member.
SHAPE_FIELDS: tuple[str, ...] = (
    "loss", "batch_size", "n_sample", "final_act", "n_epochs", "chunk_steps", "table_update",
)
MEMBER_FIELDS: tuple[str, ...] = training.STEP_SCALARS + ("seed",)


def check_population(configs: Sequence[TrainConfig]) -> None:
    """Raises a one-line ValueError unless ``configs`` can train as one population."""
    if not configs:
        raise ValueError("a population needs at least one member")
    for field in SHAPE_FIELDS:
        values = [getattr(config, field) for config in configs]
        if any(value != values[0] for value in values):
            differing = ", ".join(sorted({repr(value) for value in values}))
            raise ValueError(f"the members of a population must share {field}; got {differing}")


def member_scalars(configs: Sequence[TrainConfig]) -> tuple[dict, dict[str, jax.Array]]:
    """The step scalars of a population: ``(shared, per_member)``.

    ``shared`` maps the scalars that every member has alike to their Python
    value (constants of the program, as in a single run); ``per_member`` the
    others to ``(P,)`` float32 arrays. Dropout rates there are keep
    probabilities, ``float32(1 - rate)`` (see ``model.KeepProbability``).
    """
    shared, per_member = {}, {}
    for name in training.STEP_SCALARS:
        values = [getattr(config, name) for config in configs]
        if all(value == values[0] for value in values):
            shared[name] = values[0]
        elif name.startswith("dropout_p_"):
            per_member[name] = jnp.asarray([1.0 - value for value in values], jnp.float32)
        else:
            per_member[name] = jnp.asarray(values, jnp.float32)
    return shared, per_member


def make_population_chunk(model_config: networks.AnyModelConfig, configs: Sequence[TrainConfig], *,
                          group_size: Optional[int] = None):
    """The jitted ``train_chunk(states, hidden, chunk, run_keys, samplers, log_support, scalars)`` of a population.

    As ``training.make_train_chunk``, vmapped over the members: ``states``,
    ``hidden``, ``run_keys`` (P, 2) and ``scalars`` (the ``per_member`` dict
    of :func:`member_scalars`) have a leading member axis, ``samplers`` too
    where the members' ``sample_alpha`` differ (else one shared table);
    ``chunk`` and ``log_support`` are shared. Returns ``(states, hidden,
    stats)``, each stat (P,). ``states`` and ``hidden`` are donated.

    ``group_size`` members (a divisor of P) run vmapped at a time, each group's
    whole chunk after the previous group's, inside the one program; None:
    :func:`default_group_size`.
    """
    check_population(configs)
    config = configs[0]  # the population's shapes
    shared, per_member = member_scalars(configs)
    n_members = len(configs)
    group_size = group_size or default_group_size(model_config, n_members)
    if n_members % group_size:
        raise ValueError(f"group_size {group_size} does not divide the population's {n_members} members")

    def member_chunk(state, hidden, chunk, run_key, sampler, log_support, scalars):
        scalars = {**shared, **{
            name: model_lib.KeepProbability(value) if name.startswith("dropout_p_") else value
            for name, value in scalars.items()}}
        train_chunk = training.train_chunk_function(model_config, config, scalars)
        return train_chunk(state, hidden, chunk, run_key, sampler, log_support)

    sampler_axis = 0 if "sample_alpha" in per_member else None
    vmapped = jax.vmap(member_chunk, in_axes=(0, 0, None, 0, sampler_axis, None, 0))
    if group_size == n_members:
        return jax.jit(vmapped, donate_argnums=(0, 1))

    def train_chunk(states, hidden, chunk, run_keys, samplers, log_support, scalars):
        def run_group(g, carry):
            states, hidden, stats = carry
            first = g * group_size
            if group_size == 1:
                # A group of one runs the member's own step, not a vmap over one member (XLA
                # then lays out some of the step's products differently, with transposing copies).
                take = lambda x: jax.lax.dynamic_index_in_dim(x, first, keepdims=False)  # noqa: E731
                put = lambda whole, part: jax.lax.dynamic_update_index_in_dim(whole, part, first, 0)  # noqa: E731
                run = member_chunk
            else:
                take = lambda x: jax.lax.dynamic_slice_in_dim(x, first, group_size)  # noqa: E731
                put = lambda whole, part: jax.lax.dynamic_update_slice_in_dim(whole, part, first, 0)  # noqa: E731
                run = vmapped
            group_samplers = samplers if sampler_axis is None else jax.tree.map(take, samplers)
            group_states, group_hidden, group_stats = run(
                jax.tree.map(take, states), jax.tree.map(take, hidden), chunk, take(run_keys), group_samplers,
                log_support, jax.tree.map(take, scalars))
            return tuple(jax.tree.map(put, whole, part) for whole, part in (
                (states, group_states), (hidden, group_hidden), (stats, group_stats)))

        # Each group's whole chunk runs before the next group's (its tables stay in the caches);
        # the members' states are updated in place.
        stats = (jnp.zeros((n_members,), jnp.float32), jnp.zeros((n_members,), jnp.int32),
                 jnp.zeros((n_members,), jnp.int32))
        return jax.lax.fori_loop(0, n_members // group_size, run_group, (states, hidden, stats))

    return jax.jit(train_chunk, donate_argnums=(0, 1))


# On CPU, members run vmapped in groups whose optimizer states (parameters,
# Adagrad accumulators and velocities) take up to this many bytes together:
# the vmapped step makes several passes over every member's item tables, and
# once a group's tables no longer fit the caches those passes run at memory
# speed. Same-process A/B on the 2-core EPYC machine (32 MiB L3), 8 members,
# 2,933 items, per member step against the single run: rsc15_xe (4.1 MiB of
# state each) in groups of 1 / 2 / 4 / 8: 1.01x / 1.11-1.15x / 0.98x / 0.91x;
# retailrocket_bprmax (11.0 MiB) in groups of 1 / 2 / 4: 1.01x / 0.93x / 0.83x.
CPU_GROUP_STATE_BYTES = 10 << 20


def default_group_size(model_config: networks.AnyModelConfig, n_members: int) -> int:
    """How many members run vmapped at once: all of them on accelerators; on CPU the largest
    divisor of ``n_members`` whose optimizer states fit :data:`CPU_GROUP_STATE_BYTES` (at least 1)."""
    if jax.devices()[0].platform != "cpu":
        return n_members
    state = jax.eval_shape(lambda: training.init_train_state(jax.random.PRNGKey(0), model_config))
    member_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
    fitting = max(1, CPU_GROUP_STATE_BYTES // member_bytes)
    return max(size for size in range(1, n_members + 1) if n_members % size == 0 and size <= fitting)


def _stack(trees: Sequence):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def init_population_state(model_config: networks.AnyModelConfig, configs: Sequence[TrainConfig]
                          ) -> tuple[TrainState, jax.Array]:
    """``(states, run_keys)``: each member's fresh state and run key, as ``training.fit`` makes them
    from its seed, stacked on a leading member axis."""
    keys = [jax.random.split(jax.random.PRNGKey(config.seed)) for config in configs]
    # One state at a time, by the single run's compiled init: bit for bit its parameters.
    states = _stack([training.init_train_state(init_key, model_config) for _, init_key in keys])
    return states, jnp.stack([run_key for run_key, _ in keys])


def member_state(stacked_state: TrainState, i: int) -> TrainState:
    """Member ``i``'s state out of a population's stacked one."""
    return jax.tree.map(lambda leaf: leaf[i], stacked_state)


def fit_population(
    sessions: Union[Sessions, UserSessions],
    model_config: networks.AnyModelConfig,
    configs: Sequence[TrainConfig],
    *,
    log: Callable[[str], None] = print,
    on_epoch_end: Optional[Callable[[TrainState, int, list[float]], None]] = None,
    schedule: Optional[Schedule] = None,
    group_size: Optional[int] = None,
    mesh=None,
) -> tuple[TrainState, list[list[EpochStats]]]:
    """Trains the population of ``configs`` for their ``n_epochs`` epochs, from scratch.

    ``sessions`` as in ``training.fit`` (``UserSessions`` for HRNN). Returns
    the stacked state (every leaf with a leading member axis P; see
    :func:`member_state`) and each member's epoch stats (its own loss; the
    seconds and events are the population's). ``on_epoch_end(state, epoch,
    member_losses)`` runs after each epoch (1-based). A member whose loss is
    not finite is reported as diverged and its later losses are nan; the
    others go on (training stops early once every member has diverged).
    ``group_size``: see :func:`make_population_chunk`. One device only: a
    ``mesh`` raises ValueError.
    """
    if mesh is not None:
        raise ValueError("population training runs on one device; it does not take a mesh yet")
    check_population(configs)
    config, n_members = configs[0], len(configs)
    net = training.network_of(model_config, config)
    host_chunks, support = training.training_chunks(sessions, net, config, schedule)
    chunk_steps, n_chunks = host_chunks["inputs"].shape[1], host_chunks["inputs"].shape[0]
    chunks = jax.device_put(host_chunks)
    chunk_at = lambda c: jax.tree.map(lambda a: a[c], chunks)  # noqa: E731
    state, run_keys = init_population_state(model_config, configs)
    _, scalars = member_scalars(configs)
    # One alias table per distinct alpha; a member axis only where the members' alphas differ.
    tables = {c.sample_alpha: None for c in configs}
    tables = {alpha: sampling.alias_table(support, alpha) for alpha in tables}
    samplers = next(iter(tables.values())) if len(tables) == 1 else _stack([tables[c.sample_alpha] for c in configs])
    log_support = training.log_support_of(support)
    zero_carry = lambda: jax.tree.map(  # noqa: E731
        lambda x: jnp.zeros((n_members,) + x.shape, x.dtype), net.zero_carry(config.batch_size))
    args = (run_keys, samplers, log_support, scalars)

    group_size = group_size or default_group_size(model_config, n_members)
    t0 = time.perf_counter()
    train_chunk = training.compile_train_chunk(
        make_population_chunk(model_config, configs, group_size=group_size), state, zero_carry(), chunk_at(0), *args)
    log(f"compiled the population's training chunk ({n_members} members in groups of {group_size}, "
        f"{chunk_steps} steps) in {time.perf_counter() - t0:.1f}s")

    histories: list[list[EpochStats]] = [[] for _ in configs]
    diverged = np.zeros(n_members, bool)
    for epoch in range(config.n_epochs):
        state, (loss_sum, n_steps, n_events), seconds = training.run_epoch(
            train_chunk, state, zero_carry(), chunk_at, n_chunks, args, epoch)
        losses = loss_sum / n_steps
        newly = ~diverged & ~np.isfinite(losses)
        diverged |= newly
        losses = np.where(diverged, np.nan, losses)
        for i, history in enumerate(histories):
            history.append(EpochStats(epoch=epoch + 1, loss=float(losses[i]), seconds=seconds,
                                      n_events=int(n_events[i]), n_steps=int(n_steps[i])))
        stats = histories[0][-1]
        shown = " ".join("diverged" if math.isnan(loss) else f"{loss:.6f}" for loss in losses)
        log(f"epoch {epoch + 1:3d}  losses {shown}  {seconds:7.2f}s  "
            f"{n_members * stats.events_per_sec:9.0f} member events/s")
        if newly.any():
            which = ", ".join(map(str, np.flatnonzero(newly)))
            log(f"member{'s' if newly.sum() > 1 else ''} {which} diverged in epoch {epoch + 1} (non-finite training "
                "loss); the others go on")
        if on_epoch_end is not None:
            on_epoch_end(state, epoch + 1, [float(loss) for loss in losses])
        if diverged.all():
            log("every member has diverged; training stopped")
            break
    return state, histories
