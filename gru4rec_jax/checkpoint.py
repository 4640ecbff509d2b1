"""Checkpoints with orbax: training state plus everything needed to use it.

A checkpoint directory holds one orbax step per finished epoch (the last
``max_to_keep``), each with two items:

- ``state``: the :class:`~gru4rec_jax.training.TrainState` (parameters, both
  optimizer states, the step counter that keys the PRNG);
- ``meta`` (JSON): the item-id map, the model and training configs, the epoch
  and the per-epoch losses so far.

Restoring reads ``meta`` first, rebuilds the abstract state with
``jax.eval_shape`` and restores into it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from gru4rec_jax import hrnn
from gru4rec_jax import model as model_lib
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
        return hrnn.HRNNConfig(session=session(config["session"]), user_layers=tuple(config["user_layers"]),
                               mode=config["mode"])
    return session(config)


def load(path: str, epoch: Optional[int] = None) -> Checkpoint:
    """Restores the checkpoint of ``epoch`` (default: the latest) from ``path``."""
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
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
    return Checkpoint(
        state=restored["state"],
        model_config=model_config,
        train_config=train_config,
        item_map=ItemMap(ids=np.asarray(meta["item_ids"], dtype=str)),
        epoch=int(meta["epoch"]),
        epoch_losses=[float(x) for x in meta["epoch_losses"]],
        extra=meta.get("extra", {}),
    )
