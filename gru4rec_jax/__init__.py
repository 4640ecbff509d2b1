"""gru4rec-jax: the GRU4Rec family of session-based recommenders in JAX."""

from gru4rec_jax import losses, sharding
from gru4rec_jax.batching import Schedule, session_parallel_schedule
from gru4rec_jax.checkpoint import CheckpointWriter
from gru4rec_jax.checkpoint import load as load_checkpoint
from gru4rec_jax.data import DataError, EventTable, ItemMap, Sessions, build_sessions, read_events
from gru4rec_jax.evaluation import evaluate
from gru4rec_jax.losses import (
    LOSSES,
    bpr_loss,
    bpr_max_loss,
    cross_entropy_loss,
    get_loss,
    top1_loss,
    top1_max_loss,
)
from gru4rec_jax.model import ModelConfig, gru_cell, init_params
from gru4rec_jax.optimizer import adagrad_momentum, sparse_adagrad_momentum_update
from gru4rec_jax.recommend import Recommender
from gru4rec_jax.sharding import make_mesh, parse_mesh
from gru4rec_jax.training import TrainConfig, TrainState, TrainingError, fit

__all__ = [
    "CheckpointWriter",
    "DataError",
    "EventTable",
    "ItemMap",
    "LOSSES",
    "ModelConfig",
    "Recommender",
    "Schedule",
    "Sessions",
    "TrainConfig",
    "TrainState",
    "TrainingError",
    "adagrad_momentum",
    "bpr_loss",
    "bpr_max_loss",
    "build_sessions",
    "cross_entropy_loss",
    "evaluate",
    "fit",
    "get_loss",
    "gru_cell",
    "init_params",
    "load_checkpoint",
    "losses",
    "make_mesh",
    "parse_mesh",
    "read_events",
    "session_parallel_schedule",
    "sharding",
    "sparse_adagrad_momentum_update",
    "top1_loss",
    "top1_max_loss",
]
__version__ = "0.1.0"
