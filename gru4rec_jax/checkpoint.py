"""Checkpoints with orbax: training state plus everything needed to use it.

A checkpoint directory holds one orbax step per finished epoch (the last
``max_to_keep``), each with two items:

- ``state``: the :class:`~gru4rec_jax.training.TrainState` (parameters, both
  optimizer states, the step counter that keys the PRNG);
- ``meta`` (JSON): the item-id map, the model and training configs, the epoch
  and the per-epoch losses so far.

Restoring reads ``meta`` first, rebuilds the abstract state with
``jax.eval_shape`` and restores into it.

A state trained on a mesh (:mod:`gru4rec_jax.sharding`) is saved as it is,
sharded, each process writing its own shards, with its padded table row
count in ``meta``. It restores onto any mesh, or onto one device: straight into
the target shardings when the saved row count divides by the target's
``items`` axis (one device always does), then re-padded or cut to the target's
row count.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, SingleDeviceSharding

from gru4rec_jax import hrnn
from gru4rec_jax import model as model_lib
from gru4rec_jax import sharding as sharding_lib
from gru4rec_jax import training
from gru4rec_jax.data import ItemMap

__all__ = ["Checkpoint", "CheckpointError", "save_dir_has_checkpoints", "CheckpointWriter", "load"]


class CheckpointError(ValueError):
    """A checkpoint path that cannot be used; the message is one line."""


@dataclasses.dataclass
class Checkpoint:
    state: training.TrainState
    model_config: model_lib.ModelConfig | hrnn.HRNNConfig
    train_config: training.TrainConfig
    item_map: ItemMap
    epoch: int
    epoch_losses: list[float]
    extra: dict[str, Any]


def _options(max_to_keep):
    return ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)


def save_dir_has_checkpoints(path: str) -> bool:
    if not os.path.isdir(path):
        return False
    with ocp.CheckpointManager(os.path.abspath(path)) as manager:
        return manager.latest_step() is not None


class CheckpointWriter:
    """Saves one checkpoint per epoch under ``path`` (orbax CheckpointManager)."""

    def __init__(self, path: str, max_to_keep: int = 2):
        self._manager = ocp.CheckpointManager(os.path.abspath(path), options=_options(max_to_keep))

    def save(
        self,
        state: training.TrainState,
        *,
        model_config: model_lib.ModelConfig,
        train_config: training.TrainConfig,
        item_map: ItemMap,
        epoch: int,
        epoch_losses: list[float],
        extra: Optional[dict] = None,
    ) -> None:
        meta = {
            "model_type": "hrnn" if isinstance(model_config, hrnn.HRNNConfig) else "gru4rec",
            "model_config": dataclasses.asdict(model_config),
            "train_config": dataclasses.asdict(train_config),
            "item_ids": item_map.ids.tolist(),
            "epoch": epoch,
            "epoch_losses": list(epoch_losses),
            "extra": extra or {},
            "table_rows": int(state.params["tables"]["Wy"].shape[0]),  # > n_items: padded for a mesh
        }
        self._manager.save(
            epoch,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        )
        # Finish writing before training goes on: a crash later must not
        # leave this epoch half-written.
        self._manager.wait_until_finished()

    def close(self):
        self._manager.close()


def _model_config(meta: dict):
    def session(d):
        return model_lib.ModelConfig(**{**d, "layers": tuple(d["layers"])})

    config = meta["model_config"]
    if meta.get("model_type", "gru4rec") == "hrnn":
        # A checkpoint without user_input predates it: its all mode fed all three gate blocks.
        return hrnn.HRNNConfig(session=session(config["session"]), user_layers=tuple(config["user_layers"]),
                               mode=config["mode"], user_input=config.get("user_input", "all_blocks"))
    return session(config)


def _with_rows(abstract, rows: int):
    resize = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct((rows,) + x.shape[1:], x.dtype), tree)
    return dataclasses.replace(
        abstract,
        params={**abstract.params, "tables": resize(abstract.params["tables"])},
        table_acc=resize(abstract.table_acc),
        table_vel=resize(abstract.table_vel),
    )


def _restore_target(abstract, rows: int, mesh: Optional[Mesh]):
    """The abstract state of ``rows``-row tables with the shardings to restore into."""
    abstract = _with_rows(abstract, rows)
    if mesh is None:
        shardings = jax.tree.map(lambda _: SingleDeviceSharding(jax.local_devices()[0]), abstract)
    elif rows % mesh.shape["items"] == 0:
        shardings = sharding_lib.state_shardings(abstract, mesh)
    else:
        # Saved rows do not split over this mesh's items axis: read them
        # replicated, then re-pad (needs each device to hold a whole table once).
        shardings = jax.tree.map(lambda _: sharding_lib.replicated(mesh), abstract)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def load(path: str, epoch: Optional[int] = None, mesh: Optional[Mesh] = None) -> Checkpoint:
    """Restores the checkpoint of ``epoch`` (default: the latest) from ``path``.

    With a ``mesh`` the state is placed on it (tables padded and sharded by
    rows, as ``training.fit`` wants them), whatever mesh it was saved from;
    without one it lands on one device with its tables cut to ``n_items`` rows.
    """
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint directory")
    with ocp.CheckpointManager(os.path.abspath(path)) as manager:
        step = manager.latest_step() if epoch is None else epoch
        if step is None or step not in manager.all_steps():
            raise CheckpointError(f"{path}: no checkpoint found" + ("" if epoch is None else f" for epoch {epoch}"))
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        model_config = _model_config(meta)
        train_config = training.TrainConfig(**meta["train_config"])
        abstract = jax.eval_shape(
            lambda: training.init_train_state(jax.random.PRNGKey(0), model_config)
        )
        n_items = abstract.params["tables"]["Wy"].shape[0]
        rows = int(meta.get("table_rows", n_items))
        # Explicit target shardings, also for one device: a state saved from
        # a mesh cannot be restored onto its own (absent) topology.
        abstract = _restore_target(abstract, rows, mesh)
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
    state = restored["state"]
    if mesh is not None:
        state = sharding_lib.pad_tables(state, n_items, mesh)
    elif rows != n_items:
        state = sharding_lib.unpad_tables(state, n_items)
    return Checkpoint(
        state=state,
        model_config=model_config,
        train_config=train_config,
        item_map=ItemMap(ids=np.asarray(meta["item_ids"], dtype=str)),
        epoch=int(meta["epoch"]),
        epoch_losses=[float(x) for x in meta["epoch_losses"]],
        extra=meta.get("extra", {}),
    )
