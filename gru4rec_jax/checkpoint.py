"""Checkpoints with orbax: training state plus everything needed to use it.

A checkpoint directory holds one orbax step per finished epoch (the last
``max_to_keep``), each with two items:

- ``state``: the :class:`~gru4rec_jax.training.TrainState` (parameters, both
  optimizer states, the step counter that keys the PRNG);
- ``meta`` (JSON): the item-id map, the model and training configs, the epoch
  and the per-epoch losses so far.

Restoring reads ``meta`` first, rebuilds the abstract state with
``jax.eval_shape`` and restores into it.

A step is written into ``<epoch>.orbax-checkpoint-tmp`` and renamed to
``<epoch>`` once complete, so a run killed while saving leaves no step that
looks finished. A finished step whose files were damaged later fails to load
with a :class:`CheckpointError` naming it; ``load(path, epoch=...)`` picks an
older one.

A state trained on a mesh (:mod:`gru4rec_jax.sharding`) is saved as it is,
sharded, each process writing its own shards, with its padded table row
count in ``meta``. It restores onto any mesh, or onto one device: straight into
the target shardings when the saved row count divides by the target's
``items`` axis (one device always does), then re-padded or cut to the target's
row count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import sys
import tempfile
import warnings
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

__all__ = ["Checkpoint", "CheckpointError", "saved_epochs", "CheckpointWriter", "load", "ignore_abandoned_reads"]


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


def saved_epochs(path: str) -> list[int]:
    """The epochs with a finished checkpoint under ``path``, in order (none: ``[]``)."""
    if not os.path.isdir(path):
        return []
    with ocp.CheckpointManager(os.path.abspath(path)) as manager:
        return sorted(manager.all_steps())


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
    Raises :class:`CheckpointError` (one line, naming the path and epoch) when
    there is no such checkpoint or it cannot be read.
    """
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint directory")
    epochs = saved_epochs(path)
    if not epochs:
        raise CheckpointError(f"{path}: no checkpoint found{_step_directory_hint(path)}")
    step = epochs[-1] if epoch is None else epoch
    if step not in epochs:
        raise CheckpointError(f"{path}: no checkpoint of epoch {epoch} (it holds epochs {_listed(epochs)})")
    try:
        with _stderr_held_back():
            return _restore(path, step, mesh)
    except Exception as error:  # orbax and TensorStore raise many types for a damaged file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        older = [e for e in epochs if e < step]
        hint = f"; epoch {older[-1]} is also there: --load_epoch={older[-1]} loads it" if older else ""
        raise CheckpointError(
            f"{path}: the checkpoint of epoch {step} is damaged or unreadable ({_shortened(reason)}){hint}"
        ) from None


@contextlib.contextmanager
def _stderr_held_back():
    """Holds back what the process writes to its stderr (file descriptor 2) while a restore runs:
    replayed if the restore succeeds, dropped if it fails.

    When one read of a damaged checkpoint fails, orbax abandons the reads still
    in flight; their coroutines and TensorStore's callbacks then print
    tracebacks ("Event loop is closed", "Exception ignored in ...") that would
    bury the one-line error. Most come while the restore fails or when the
    abandoned coroutines are collected, which happens here before stderr is
    given back; the later ones are what :func:`ignore_abandoned_reads` drops.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    failed = True
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            if failed:  # collect the abandoned reads now, without their complaints
                hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
                asyncio_log = logging.getLogger("asyncio")
                was_disabled, asyncio_log.disabled = asyncio_log.disabled, True
                with warnings.catch_warnings():  # "coroutine ... was never awaited"
                    warnings.simplefilter("ignore", RuntimeWarning)
                    gc.collect()
                sys.unraisablehook, asyncio_log.disabled = hook, was_disabled
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not failed:
                held.seek(0)
                sys.stderr.buffer.write(held.read())
                sys.stderr.flush()


def ignore_abandoned_reads() -> None:
    """From now on, keeps the complaints of abandoned checkpoint reads off stderr, for good (a CLI's choice).

    After a failed read of a damaged checkpoint, the reads orbax abandoned print
    "Event loop is closed" tracebacks as they finish (through ``sys.excepthook``,
    from TensorStore's threads, at any later time) and complain again when their
    coroutines are collected (``sys.unraisablehook``, asyncio's log). ``load``
    holds most of that back while it runs; this drops the late ones too, and
    nothing else.
    """
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def closed_loop(error) -> bool:
        return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"

    def quiet_excepthook(kind, error, traceback):
        if not closed_loop(error):
            excepthook(kind, error, traceback)

    def quiet_unraisablehook(unraisable):
        code = getattr(unraisable.object, "cr_code", None)
        if not (closed_loop(unraisable.exc_value) or (code is not None and "orbax" in code.co_filename)):
            unraisablehook(unraisable)

    sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook
    logging.getLogger("asyncio").addFilter(lambda record: "exception was never retrieved" not in record.getMessage())
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


def _listed(epochs: list[int]) -> str:
    return ", ".join(str(e) for e in epochs)


def _shortened(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _step_directory_hint(path: str) -> str:
    """Where ``path`` is one epoch's step directory inside a checkpoint directory, how to load it."""
    parent, name = os.path.split(os.path.normpath(path))
    if name.isdigit() and int(name) in saved_epochs(parent or "."):
        return f"; this is one epoch's step of the checkpoint directory {parent}: load {parent} with --load_epoch={name}"
    return ""


def _restore(path: str, step: int, mesh: Optional[Mesh]) -> Checkpoint:
    with ocp.CheckpointManager(os.path.abspath(path)) as manager:
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
