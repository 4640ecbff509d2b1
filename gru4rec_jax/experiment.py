"""One experiment end to end: data, training (or resuming), checkpoints, evaluation.

``experiments/train.py`` maps its flags onto :class:`ExperimentConfig` and
calls :func:`run`; everything here is usable (and tested) without the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from gru4rec_jax import checkpoint as checkpoint_lib
from gru4rec_jax import data as data_lib
from gru4rec_jax import dwell, evaluation, hrnn, synthetic, training, user_data
from gru4rec_jax import sharding as sharding_lib
from gru4rec_jax.model import ModelConfig

__all__ = ["DataConfig", "EvalConfig", "ExperimentConfig", "model_config_for", "run", "write_json_atomic"]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    train_path: str = ""  # empty: the built-in synthetic data
    test_path: str = ""
    session_key: str = "SessionId"
    item_key: str = "ItemId"
    time_key: str = "Time"
    synthetic_sessions: int = 6000
    synthetic_items: int = 1000
    synthetic_seed: int = 0
    dwell_threshold: float = 0.0  # > 0: dwell-time boosting of the training sessions (data's time unit)
    user_key: str = "UserId"  # read only by the user-aware models (hrnn, concat)
    session_gap: float = 0.0  # > 0: sessions are cut at idle gaps per user (needs the user column)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    mode: str = "conservative"
    cutoffs: tuple[int, ...] = (1, 5, 10, 20)
    batch_size: int = 512
    item_coverage: bool = False  # also coverage@K (its top-K lists take 2.5-3.7x the evaluation time on CPU)

    def __post_init__(self):
        if self.mode not in evaluation.EVAL_MODES:
            raise ValueError(f"eval_mode must be one of {evaluation.EVAL_MODES}, got {self.mode!r}")
        if not self.cutoffs or min(self.cutoffs) < 1:
            raise ValueError(f"cutoffs must be positive integers, got {self.cutoffs}")
        if self.batch_size < 1:
            raise ValueError("eval_batch_size must be >= 1")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = DataConfig()
    train: training.TrainConfig = training.TrainConfig()
    eval: EvalConfig = EvalConfig()
    layers: tuple[int, ...] = (100,)
    embedding: str = "shared"  # shared | separate | onehot
    embedding_dim: int = 0
    cell: str = "gru4rec"  # gru4rec | pytorch
    # gru4rec: sessions alone; hrnn: HRNN; concat: GRU4Rec over each user's concatenated
    # sessions ("RNN Concat"). The last two replay each test user's history at evaluation.
    model: str = "gru4rec"
    user_layers: tuple[int, ...] = (100,)
    hrnn_mode: str = "init"
    hrnn_user_input: str = "gates"  # all mode: gates (the authors' code) | all_blocks (the paper's reading)
    save_path: str = ""
    load_path: str = ""
    load_epoch: int = 0  # with load_path: the epoch to load; 0 = the latest
    # With load_path: train on up to train.n_epochs. (Without it, a save_path equal to
    # load_path also resumes: up to the n_epochs the checkpoint's run was started with.)
    resume: bool = False
    metrics_out: str = ""
    mesh: str = ""  # e.g. "items:8" or "data:2,items:4" (sharding.parse_mesh); empty: one device


def write_json_atomic(path: str, payload: dict) -> None:
    """Writes JSON through a temporary file, so an existing file is never half-overwritten."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("wt", dir=directory, delete=False, suffix=".tmp") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        tmp = f.name
    os.replace(tmp, path)


MODELS = ("gru4rec", "hrnn", "concat")


def _same_directory(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _check_save_path(save_path: str, restored, load_path: str) -> None:
    """Refuses a ``save_path`` whose checkpoints training would mix with its own or delete."""
    saved = checkpoint_lib.saved_epochs(save_path)
    if not saved:
        return
    if restored is None or not _same_directory(save_path, load_path):
        raise checkpoint_lib.CheckpointError(
            f"{save_path} already holds checkpoints (up to epoch {saved[-1]}); to resume them, add "
            f"--load_path={save_path}; to start another run, choose another --save_path"
        )
    if saved[-1] > restored.epoch:
        raise checkpoint_lib.CheckpointError(
            f"{save_path} holds checkpoints after epoch {restored.epoch} (up to epoch {saved[-1]}); "
            f"to resume from epoch {restored.epoch}, choose another --save_path"
        )


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                              if jnp.issubdtype(x.dtype, jnp.inexact)]))


def _load_tables(cfg: DataConfig, log, with_users: bool = False):
    """(train table, test table or None); dwell-time boosting applies to the train table only."""
    train, test = _read_tables(cfg, log, with_users)
    if cfg.session_gap:
        if train.user_ids is None:
            raise ValueError("--session_gap needs the user column (a user-aware --model)")
        train = _with_gap_sessions(train, cfg.session_gap)
        test = None if test is None else _with_gap_sessions(test, cfg.session_gap)
    if cfg.dwell_threshold:
        boosted = dwell.boost_by_dwell_time(train, cfg.dwell_threshold)
        log(f"dwell-time boosting (threshold {cfg.dwell_threshold:g}): {len(train)} -> {len(boosted)} training events")
        train = boosted
    return train, test


def _with_gap_sessions(table, gap):
    return table.replace(session_ids=user_data.idle_gap_sessions(table.users, table.times, gap))


def _read_tables(cfg: DataConfig, log, with_users: bool):
    keys = dict(session_key=cfg.session_key, item_key=cfg.item_key, time_key=cfg.time_key)
    if with_users:
        keys["user_key"] = cfg.user_key
    if cfg.session_gap and with_users:
        keys["session_key"] = cfg.user_key  # no session column needed
    if cfg.train_path:
        train = data_lib.read_events(cfg.train_path, **keys)
        test = data_lib.read_events(cfg.test_path, **keys) if cfg.test_path else None
        return train, test
    if with_users:
        raise ValueError("the user-aware models need --train_path with a user column")
    log(
        f"no --train_path: using the built-in SYNTHETIC data ({cfg.synthetic_sessions} sessions, "
        f"{cfg.synthetic_items} items, seed {cfg.synthetic_seed})"
    )
    train, test = synthetic.generate_train_test(
        cfg.synthetic_sessions, cfg.synthetic_items, seed=cfg.synthetic_seed
    )
    if cfg.test_path:
        test = data_lib.read_events(cfg.test_path, **keys)
    return train, test


def _replay_data(train_table, test_table, item_map, source) -> user_data.UserSessions:
    """Each test user's training sessions followed by the test session (the user's last)."""
    test_users = test_table.users.values[test_table.users.used()]
    history = train_table.take(np.isin(train_table.users.values, test_users)[train_table.users.codes])
    # Keep test session ids apart from training ones.
    sessions = [data_lib.IdColumn(c.codes, np.char.add(prefix, c.values))
                for prefix, c in (("train:", history.sessions), ("test:", test_table.sessions))]
    combined = data_lib.EventTable(
        session_ids=data_lib.IdColumn.concatenate(sessions),
        item_ids=data_lib.IdColumn.concatenate([history.items, test_table.items]),
        times=np.concatenate([history.times, test_table.times]),
        user_ids=data_lib.IdColumn.concatenate([history.users, test_table.users]),
    )
    return user_data.build_user_sessions(combined, item_map, source=source)


def model_config_for(cfg: ExperimentConfig, n_items: int) -> Union[ModelConfig, hrnn.HRNNConfig]:
    """The network that ``cfg`` describes over a catalogue of ``n_items`` items (GRU4Rec's, or HRNN's)."""
    model_config = ModelConfig(n_items=n_items, layers=cfg.layers, embedding=cfg.embedding,
                               embedding_dim=cfg.embedding_dim, cell=cfg.cell)
    if cfg.model == "hrnn":
        return hrnn.HRNNConfig(session=model_config, user_layers=cfg.user_layers, mode=cfg.hrnn_mode,
                               user_input=cfg.hrnn_user_input)
    return model_config


def run(cfg: ExperimentConfig, log: Callable[[str], None] = print) -> dict:
    """Trains (or restores, or resumes) and evaluates; returns the metrics dict.

    Raises DataError, CheckpointError, TrainingError or ValueError with a
    one-line message on bad input. Checkpoints are written after every epoch
    to ``save_path``; a path that already holds checkpoints of another run is
    refused rather than overwritten. A run that fails (bad data, divergence)
    leaves the checkpoints already written and ``metrics_out`` as they were.
    ``cfg.mesh`` spreads the item tables and lanes over devices
    (:mod:`gru4rec_jax.sharding`).

    With ``load_path``, training resumes when ``cfg.resume`` asks for more
    epochs than the checkpoint has, or when ``save_path`` is ``load_path``
    (the training command rerun with ``--load_path``: it finishes the epochs
    that run was started with); otherwise the checkpoint is evaluated.
    """
    mesh = None
    mesh_spec = sharding_lib.parse_mesh(cfg.mesh)
    if mesh_spec is not None:
        mesh = sharding_lib.make_mesh(mesh_spec)
        sharding_lib.check_batch_size(mesh, cfg.eval.batch_size, "eval_batch_size")
        if not cfg.load_path:
            sharding_lib.check_batch_size(mesh, cfg.train.batch_size)
        log(f"mesh {mesh_spec} over {mesh.size} devices ({jax.process_count()} process(es))")
    if cfg.metrics_out and os.path.isdir(cfg.metrics_out):
        raise ValueError(f"--metrics_out {cfg.metrics_out} is a directory; give a file name")
    restored: Optional[checkpoint_lib.Checkpoint] = None
    target_epochs = cfg.train.n_epochs
    if cfg.load_path:
        restored = checkpoint_lib.load(cfg.load_path, epoch=cfg.load_epoch or None, mesh=mesh)
        log(f"restored {cfg.load_path} (epoch {restored.epoch}, {len(restored.item_map)} items)")
        if not cfg.resume:
            rerun = bool(cfg.save_path) and _same_directory(cfg.save_path, cfg.load_path)
            target_epochs = restored.train_config.n_epochs if rerun else restored.epoch
    needs_training = restored is None or target_epochs > restored.epoch
    save_path = cfg.save_path or (cfg.load_path if needs_training and restored is not None else "")
    if needs_training and save_path:
        _check_save_path(save_path, restored, cfg.load_path)
    if restored is not None and not needs_training and restored.epoch < restored.train_config.n_epochs:
        log(f"evaluating the checkpoint of epoch {restored.epoch} as it is (its run was to train "
            f"{restored.train_config.n_epochs} epochs: --n_epochs={restored.train_config.n_epochs} trains on)")

    data_cfg = cfg.data
    model_name = cfg.model
    if restored is not None:
        model_name = restored.extra.get("model", "gru4rec")
        if not data_cfg.train_path and "data" in restored.extra:
            data_cfg = dataclasses.replace(DataConfig(**restored.extra["data"]), test_path=data_cfg.test_path)
    if model_name not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model_name!r}")
    user_aware = model_name != "gru4rec"
    if restored is None or needs_training or not data_cfg.test_path or user_aware:
        # (User-aware evaluation replays each test user's training sessions.)
        train_table, test_table = _load_tables(data_cfg, log, with_users=user_aware)
    else:
        train_table = None
        test_table = data_lib.read_events(
            data_cfg.test_path, session_key=data_cfg.session_key,
            item_key=data_cfg.item_key, time_key=data_cfg.time_key,
        )

    if restored is not None:
        item_map, model_config = restored.item_map, restored.model_config
        train_config = dataclasses.replace(restored.train_config, n_epochs=target_epochs)
        state, start_epoch, epoch_losses = restored.state, restored.epoch, list(restored.epoch_losses)
        if needs_training:
            log("resuming with the checkpoint's hyperparameters")
    else:
        item_map = data_lib.ItemMap.from_training(train_table.items)
        model_config = model_config_for(cfg, len(item_map))
        train_config, state, start_epoch, epoch_losses = cfg.train, None, 0, []

    metrics: dict = {}
    history: list[training.EpochStats] = []
    if needs_training:
        source = data_cfg.train_path or "synthetic training data"
        if model_name == "hrnn":
            train_data = user_data.build_user_sessions(train_table, item_map, source=source)
            sessions = train_data.sessions
            log(f"training data: {sessions.n_events} events, {sessions.n_sessions} sessions, "
                f"{train_data.n_users} users, {len(item_map)} items")
        else:
            if model_name == "concat":  # one sequence per user
                train_table = train_table.replace(session_ids=train_table.users)
            train_data = data_lib.build_sessions(train_table, item_map, source=source)
            log(f"training data: {train_data.n_events} events, {train_data.n_sessions} sessions, "
                f"{len(item_map)} items")

    # Test sessions before training: bad test data stops the run now, not after it.
    test_sessions = None
    if test_table is not None:
        source = data_cfg.test_path or "synthetic test data"
        if user_aware:
            test_sessions = _replay_data(train_table, test_table, item_map, source)
        else:
            test_sessions = data_lib.build_sessions(test_table, item_map, source=source)

    if needs_training:
        writer = checkpoint_lib.CheckpointWriter(save_path) if save_path else None

        def on_epoch_end(state, stats):
            # A finite loss does not prove finite parameters (the last step's
            # update comes after its loss): never save or evaluate such a state.
            if not _all_finite(state):
                raise training.TrainingError(
                    f"non-finite parameters after epoch {stats.epoch} (its loss was finite); "
                    f"stopped (lower the learning rate?)"
                )
            epoch_losses.append(stats.loss)
            if writer is not None:
                writer.save(
                    state, model_config=model_config, train_config=train_config,
                    item_map=item_map, epoch=stats.epoch, epoch_losses=epoch_losses,
                    extra={"data": dataclasses.asdict(data_cfg), "model": model_name},
                )

        try:
            state, history = training.fit(
                train_data, model_config, train_config, state=state,
                start_epoch=start_epoch, on_epoch_end=on_epoch_end, log=log, mesh=mesh,
            )
        except training.TrainingError as error:
            kept = checkpoint_lib.saved_epochs(save_path) if save_path else []
            if kept:
                raise training.TrainingError(f"{error}; {save_path} keeps the checkpoint of epoch {kept[-1]}") from None
            raise
        finally:
            if writer is not None:
                writer.close()
        if save_path:
            log(f"saved checkpoints to {save_path}")

    metrics["epoch_losses"] = epoch_losses
    if history:
        seconds = sum(h.seconds for h in history)
        metrics["train_events_per_sec"] = sum(h.n_events for h in history) / seconds
        metrics["train_batches_per_sec"] = sum(h.n_steps for h in history) / seconds
    else:
        metrics["train_events_per_sec"] = None

    if test_sessions is not None:
        t0 = time.perf_counter()
        results = evaluation.evaluate(
            state.params, model_config, test_sessions, cutoffs=cfg.eval.cutoffs,
            mode=cfg.eval.mode, batch_size=cfg.eval.batch_size, mesh=mesh, item_coverage=cfg.eval.item_coverage,
        )
        seconds = time.perf_counter() - t0
        metrics.update(results)
        metrics["eval_events_per_sec"] = results["n_eval_events"] / seconds
        log(f"evaluation ({cfg.eval.mode}, {results['n_eval_events']} events, {seconds:.2f}s):")
        for k in cfg.eval.cutoffs:
            coverage = f"  Coverage@{k}: {results[f'coverage@{k}']:.4f}" if cfg.eval.item_coverage else ""
            log(f"  Recall@{k}: {results[f'recall@{k}']:.4f}  MRR@{k}: {results[f'mrr@{k}']:.4f}  "
                f"NDCG@{k}: {results[f'ndcg@{k}']:.4f}{coverage}")
    else:
        log("no test data given: skipping evaluation")

    if cfg.metrics_out and jax.process_index() == 0:
        write_json_atomic(cfg.metrics_out, metrics)
        log(f"wrote {cfg.metrics_out}")
    return metrics
