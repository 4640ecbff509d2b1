"""Scaling out with JAX's SPMD sharding: item tables over devices, lanes over devices, several hosts.

A mesh has two named axes:

- ``items``: every item-indexed table (``Wy``, ``By``, ``E`` / ``Wx0``) and its
  Adagrad accumulator and velocity are split by rows over this axis. No
  device ever holds a whole table, nor the scores of all items.
- ``data``: the session lanes of a mini-batch are split over this axis. The
  global batch, the shared negative samples and the dropout masks are the
  same as on one device (the PRNG keys are replicated), so the algorithm is
  the same; only the order of floating-point reductions differs.

Dense GRU weights, their optimizer state, the sampler and the PRNG keys are
replicated. Tables whose row count does not divide by the ``items`` axis are
padded with zero rows up to the next multiple: padded rows are never sampled,
never a target, never scored (evaluation masks them) and never change in
training (their gradient is zero).

Reading and updating rows of a sharded table runs per device under
``jax.shard_map``: each shard gathers or updates only the rows it owns (the
others are masked) and a ``psum`` over ``items`` assembles gathered rows.
The jitted training chunk and its ``lax.scan`` body are the single-device
ones; with ``mesh=None`` every function here is bypassed and the single-device
code runs unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gru4rec_jax import model as model_lib
from gru4rec_jax import optimizer as optimizer_lib

__all__ = [
    "AXES",
    "MeshSpec",
    "parse_mesh",
    "make_mesh",
    "check_batch_size",
    "platform",
    "padded_rows",
    "replicated",
    "lane_sharding",
    "table_sharding",
    "state_shardings",
    "put",
    "place_state",
    "init_state",
    "pad_tables",
    "unpad_tables",
    "gather_rows",
    "sparse_update",
    "per_device_bytes",
    "initialize_distributed",
]

AXES = ("data", "items")


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """Sizes of the ``data`` and ``items`` axes."""

    data: int = 1
    items: int = 1

    @property
    def size(self) -> int:
        return self.data * self.items

    def __str__(self) -> str:
        return f"data:{self.data},items:{self.items}"


def parse_mesh(spec: str) -> Optional[MeshSpec]:
    """``"items:8"``, ``"data:2,items:4"`` -> :class:`MeshSpec`; ``""`` -> None (one device).

    Raises ValueError (one line) on an unknown axis, a repeated axis or a size that is not a positive integer.
    """
    spec = spec.strip()
    if not spec:
        return None
    sizes: dict[str, int] = {}
    for part in spec.split(","):
        name, sep, value = part.strip().partition(":")
        if not sep or name not in AXES:
            raise ValueError(f"--mesh: expected axis:size with axis in {AXES} (e.g. data:2,items:4), got {part!r}")
        if name in sizes:
            raise ValueError(f"--mesh: axis {name!r} given twice in {spec!r}")
        try:
            size = int(value)
        except ValueError:
            size = 0
        if size < 1:
            raise ValueError(f"--mesh: the size of axis {name!r} must be a positive integer, got {value!r}")
        sizes[name] = size
    return MeshSpec(**sizes)


def make_mesh(spec: MeshSpec, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """The ``(data, items)`` mesh over ``devices`` (default: all devices of all processes).

    Devices are laid out in ``jax.devices()`` order, which groups each
    process's devices together: with several hosts the ``data`` axis (the
    outer one) spans the processes, so each process feeds its own lanes and
    the item collectives stay within a host where the shapes allow.
    """
    devices = list(jax.devices() if devices is None else devices)
    if spec.size != len(devices):
        raise ValueError(
            f"--mesh {spec} needs {spec.size} devices, but {len(devices)} are available "
            f"(on CPU, simulate more with XLA_FLAGS=--xla_force_host_platform_device_count=N)"
        )
    grid = np.asarray(devices, dtype=object).reshape(spec.data, spec.items)
    return Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def platform(mesh: Optional[Mesh]) -> str:
    """The platform ("cpu", "gpu", "tpu") of ``mesh``'s devices, or of the default device without one."""
    return (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform


def check_batch_size(mesh: Mesh, batch_size: int, what: str = "batch_size") -> None:
    if batch_size % mesh.shape["data"]:
        raise ValueError(f"--{what} {batch_size} is not divisible by the mesh's data axis ({mesh.shape['data']})")


def padded_rows(n: int, mesh: Optional[Mesh]) -> int:
    """Row count of a sharded item table: ``n`` rounded up to a multiple of the ``items`` axis."""
    k = 1 if mesh is None else mesh.shape["items"]
    return -(-n // k) * k


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def lane_sharding(mesh: Mesh, ndim: int, lane_axis: int) -> NamedSharding:
    """Lanes (axis ``lane_axis`` of an ``ndim``-array) over ``data``; everything else replicated."""
    spec = [None] * ndim
    spec[lane_axis] = "data"
    return NamedSharding(mesh, P(*spec))


def table_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Rows over ``items`` (replicated over ``data``)."""
    return NamedSharding(mesh, P("items", *([None] * (ndim - 1))))


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """Shardings of a :class:`~gru4rec_jax.training.TrainState` (or its shape tree).

    Item tables and their accumulator and velocity rows over ``items``;
    the dense weights, their optimizer state and the step counter replicated.
    """
    rep = replicated(mesh)
    rows = lambda tree: jax.tree.map(lambda x: table_sharding(mesh, x.ndim), tree)  # noqa: E731
    return dataclasses.replace(
        jax.tree.map(lambda _: rep, state),
        params={"tables": rows(state.params["tables"]), "layers": jax.tree.map(lambda _: rep, state.params["layers"])},
        table_acc=rows(state.table_acc),
        table_vel=rows(state.table_vel),
    )


def put(array: Any, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds in full.

    Each process copies only the slices of its own devices, so with several
    hosts every process feeds its part of the global batch.
    """
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _resize_rows(tree: dict, rows: int) -> dict:
    def resize(x):
        if x.shape[0] >= rows:
            return x[:rows]
        return jnp.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1))

    return jax.tree.map(resize, tree)


def place_state(make_state: Callable[..., Any], args: tuple, n_items: int, mesh: Mesh) -> Any:
    """``make_state(*args)`` (a TrainState whose tables have >= ``n_items`` rows) placed on ``mesh``,
    its tables padded or cut to :func:`padded_rows` with zero rows.

    Compiled with the state's output shardings, so each device receives only
    its own rows (a fresh initialisation is drawn directly into the shards).
    """
    rows = padded_rows(n_items, mesh)

    def resized(*args):
        state = make_state(*args)
        return dataclasses.replace(
            state,
            params={**state.params, "tables": _resize_rows(state.params["tables"], rows)},
            table_acc=_resize_rows(state.table_acc, rows),
            table_vel=_resize_rows(state.table_vel, rows),
        )

    shapes = jax.eval_shape(resized, *args)
    return jax.jit(resized, out_shardings=state_shardings(shapes, mesh))(*args)


def init_state(
    init_fn: Callable[[jax.Array], Any], table_keys_fn: Callable[[jax.Array], dict], key: jax.Array,
    n_items: int, mesh: Mesh,
) -> Any:
    """A fresh training state drawn directly into its shards: the single-device
    ``init_fn(key)`` (a TrainState) with its random item tables redrawn per device.

    ``table_keys_fn(key)`` names the tables that ``init_fn`` draws at random and
    how (``model.item_table_keys``); each device draws only the blocks of
    rows it owns (``model.item_table_rows``), so values equal the
    single-device ones (a few may differ in the last bit where XLA fuses the
    draw differently) and no device ever holds a whole table (the
    whole-table draws of ``init_fn`` are unused, and compiled away).
    """
    rows = padded_rows(n_items, mesh)
    n_local = rows // mesh.shape["items"]

    def make(key):
        state = init_fn(key)
        tables = dict(state.params["tables"])
        for name, (table_key, h, blocks) in table_keys_fn(key).items():
            def shard(table_key, h=h, blocks=blocks):
                start = jax.lax.axis_index("items") * n_local
                return model_lib.item_table_rows(table_key, n_items, h, start, n_local, blocks)

            tables[name] = jax.shard_map(
                shard, mesh=mesh, in_specs=P(), out_specs=P("items", None), check_vma=False)(table_key)
        return dataclasses.replace(state, params={**state.params, "tables": tables})

    return place_state(make, (key,), n_items, mesh)


def pad_tables(state: Any, n_items: int, mesh: Mesh) -> Any:
    """An existing state (e.g. restored, or trained on another mesh) moved onto ``mesh``."""
    return place_state(lambda s: s, (state,), n_items, mesh)


def unpad_tables(state: Any, n_items: int) -> Any:
    """The state with its tables cut back to ``n_items`` rows (on whatever devices hold it)."""
    return dataclasses.replace(
        state,
        params={**state.params, "tables": _resize_rows(state.params["tables"], n_items)},
        table_acc=_resize_rows(state.table_acc, n_items),
        table_vel=_resize_rows(state.table_vel, n_items),
    )


def _shard_offset(n_local: int) -> jax.Array:
    return jax.lax.axis_index("items") * n_local


def gather_rows(table: jax.Array, indices: jax.Array, mesh: Optional[Mesh]) -> jax.Array:
    """``table[indices]`` for a table sharded by rows over ``items``; indices replicated.

    Each shard reads the indices it owns (zeros elsewhere) and a psum over
    ``items`` assembles the rows: exact, as every row has one owner. Traffic is
    the gathered rows, never the table.
    """
    if mesh is None:
        return table[indices]

    def local(table, indices):
        n_local = table.shape[0]
        offset = indices - _shard_offset(n_local)
        owned = (offset >= 0) & (offset < n_local)
        rows = table.at[jnp.where(owned, offset, n_local)].get(mode="fill", fill_value=0)
        return jax.lax.psum(rows, "items")

    spec = P("items", *([None] * (table.ndim - 1)))
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, P()), out_specs=P())(table, indices)


def sparse_update(
    mesh: Optional[Mesh], update: Callable, table, accumulator, velocity, indices, row_grads
):
    """``update(table, accumulator, velocity, indices, row_grads)`` (the row-sparse optimizer step)
    on a table sharded by rows over ``items``.

    Indices and gradients are replicated; each shard applies the step to the
    rows it owns (indices shifted to its local rows, all others marked "no
    row"), so every row gets exactly the single-device update.
    """
    if mesh is None:
        return update(table, accumulator, velocity, indices, row_grads)
    multi = isinstance(indices, (tuple, list))
    spec = P("items", *([None] * (table.ndim - 1)))

    def local(table, accumulator, velocity, indices, row_grads):
        n_local = table.shape[0]
        start = _shard_offset(n_local)

        def to_local(index):
            offset = index - start
            return jnp.where((offset >= 0) & (offset < n_local), offset, n_local)

        local_indices = tuple(map(to_local, indices)) if multi else to_local(indices)
        return update(table, accumulator, velocity, local_indices, row_grads)

    return jax.shard_map(
        local, mesh=mesh, in_specs=(spec, spec, spec, P(), P()), out_specs=(spec, spec, spec)
    )(table, accumulator, velocity, indices, row_grads)


def sharded_sparse_adagrad(mesh: Optional[Mesh], **optimizer_args) -> Callable:
    """The row-sparse Adagrad-momentum step of :mod:`gru4rec_jax.optimizer` for tables on ``mesh``."""
    update = functools.partial(optimizer_lib.sparse_adagrad_momentum_update, **optimizer_args)
    if mesh is None:
        return update
    return functools.partial(sparse_update, mesh, update)


def per_device_bytes(tree: Any) -> dict[str, int]:
    """Bytes of the addressable shards of every array in ``tree``, per device."""
    totals: dict[str, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            key = str(shard.device)
            totals[key] = totals.get(key, 0) + shard.data.nbytes
    return totals


def initialize_distributed(
    coordinator_address: str = "", num_processes: int = 0, process_id: int = -1
) -> bool:
    """``jax.distributed.initialize`` when flags or the environment ask for several processes.

    Flags win; otherwise ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
    ``JAX_PROCESS_ID`` (read by JAX itself), or a cluster JAX detects (SLURM,
    Cloud TPU), with ``GRU4REC_DISTRIBUTED=1``. Returns whether it initialised.
    On CPU, cross-process collectives go through gloo.
    """
    from_env = bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) or os.environ.get("GRU4REC_DISTRIBUTED") == "1"
    if not coordinator_address and not from_env:
        if num_processes > 1 or process_id >= 0:
            raise ValueError("--num_processes and --process_id need --coordinator_address")
        return False
    if coordinator_address and (num_processes < 1 or not 0 <= process_id < num_processes):
        raise ValueError("--coordinator_address needs --num_processes >= 1 and 0 <= --process_id < --num_processes")
    # Only CPU devices use it; accelerators keep their own collectives.
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # a JAX without the option (gloo may be its default)
        pass
    if coordinator_address:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    else:
        jax.distributed.initialize()
    return True
