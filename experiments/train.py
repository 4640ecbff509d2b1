r"""Train and evaluate GRU4Rec from the command line.

    python -m experiments.train                       # built-in synthetic data
    python -m experiments.train --flagfile=experiments/configs/rsc15_xe.cfg \
        --train_path=train.tsv --test_path=test.tsv --metrics_out=metrics.json

Flag names follow the reference implementation's parameters. With
--load_path, a checkpoint is evaluated; adding an explicit --n_epochs larger
than the checkpoint's epoch resumes its training. After a crash, rerun the
training command with --load_path set to its --save_path: it resumes from the
last finished epoch and ends as the uninterrupted run would have.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging

from gru4rec_jax import checkpoint, data, experiment, sharding, training

_D = flags.DEFINE_string
_F = flags.DEFINE_float
_I = flags.DEFINE_integer

# Data.
_D("train_path", "", "Training events (TSV with header). Empty: built-in synthetic data.")
_D("test_path", "", "Test events (TSV). Empty: the synthetic test split, or no evaluation.")
_D("session_key", "SessionId", "Session id column.")
_D("item_key", "ItemId", "Item id column.")
_D("time_key", "Time", "Timestamp column (numeric).")
_I("synthetic_sessions", 6000, "Sessions of the built-in synthetic data.")
_I("synthetic_items", 1000, "Items of the built-in synthetic data.")
_I("synthetic_seed", 0, "Seed of the built-in synthetic data.")
_F("dwell_threshold", 0.0, "Dwell-time boosting of the training sessions: repeat each event floor(dwell / t) + 1 "
   "times (t in the data's time unit); 0 = off. Test data is never boosted.")
_D("user_key", "UserId", "User id column (read by --model=hrnn and --model=concat).")
_F("session_gap", 0.0, "With a user column: cut sessions at idle gaps longer than this (data's time unit) "
   "instead of using the session column; 0 = use the session column.")
# Model.
flags.DEFINE_enum("model", "gru4rec", ["gru4rec", "hrnn", "concat"],
                  "gru4rec: session-based; hrnn: HRNN with a user-level GRU; concat: GRU4Rec over each user's "
                  "concatenated sessions. hrnn and concat replay each test user's history at evaluation.")
flags.DEFINE_list("layers", ["100"], "GRU layer sizes, comma-separated (HRNN: the session GRU).")
flags.DEFINE_list("user_layers", ["100"], "HRNN: user GRU layer sizes.")
flags.DEFINE_enum("hrnn_mode", "init", ["init", "all"], "HRNN: the user state initialises the session GRU "
                  "(init) or is also its input at every step (all).")
flags.DEFINE_enum("hrnn_user_input", "gates", ["gates", "all_blocks"],
                  "HRNN all mode: where the user state enters the first session layer. gates: the reset and update "
                  "gates only, as the authors' code does; all_blocks: the candidate too (the paper's 'input' read "
                  "literally).")
flags.DEFINE_bool("constrained_embedding", True, "Shared input/output item embedding (Wy).")
_I("embedding", 0, "Separate input embedding size; 0 = none (one-hot input unless constrained).")
flags.DEFINE_enum("gru_cell", "gru4rec", ["gru4rec", "pytorch"],
                  "GRU form: the original GRU4Rec cell, or torch.nn.GRUCell as in the official PyTorch port.")
# Loss and sampling.
flags.DEFINE_enum("loss", "cross-entropy", ["cross-entropy", "bpr-max", "top1-max", "top1", "bpr"], "Loss.")
flags.DEFINE_enum("final_act", "auto", list(training.FINAL_ACTIVATIONS), "Final activation before the loss.")
_I("n_sample", 2048, "Extra negative samples per step, shared by the mini-batch.")
_F("sample_alpha", 0.5, "Sampling probability ~ support ** sample_alpha.")
_F("bpreg", 1.0, "Score regularisation of BPR-max.")
_F("elu_param", 0.5, "ELU parameter of the final activation for bpr-max/top1-max; 0 = linear.")
_F("logq", 0.0, "logQ correction weight (cross-entropy only).")
# Optimisation.
_I("batch_size", 64, "Session lanes per mini-batch.")
_F("dropout_p_embed", 0.0, "Dropout on the input embedding.")
_F("dropout_p_hidden", 0.0, "Dropout on every GRU layer's output.")
_F("dropout_p_hidden_usr", 0.0, "HRNN: dropout on the user GRU output.")
_F("dropout_p_init", 0.0, "HRNN: dropout on the session initialisation.")
_F("learning_rate", 0.05, "Adagrad learning rate.")
_F("momentum", 0.0, "Heavy-ball momentum on the Adagrad step.")
_I("n_epochs", 10, "Epochs. With --load_path, an explicit value beyond the checkpoint resumes training.")
_I("seed", 0, "Seed of initialisation, sampling and dropout.")
_I("chunk_steps", 512, "Time steps per compiled device call.")
flags.DEFINE_enum(
    "table_update", "auto", ["auto", "rows", "masked"],
    "How item-table rows are updated (same result): 'rows' touches only the step's rows (best for "
    "large catalogues), 'masked' one pass over the table (faster for small ones), 'auto' picks.",
)
flags.DEFINE_enum(
    "matmul_precision", "highest", ["default", "high", "highest"],
    "Float32 matrix products: 'highest' computes them in full float32 like the reference "
    "implementations; 'default' lets GPUs use TF32 (faster, about 3 fewer significant digits).",
)
# Evaluation.
flags.DEFINE_enum("eval_mode", "conservative", ["standard", "conservative", "median"], "Tie rule of the rank.")
flags.DEFINE_list("cutoffs", ["1", "5", "10", "20"], "Cut-offs K of Recall@K, MRR@K, NDCG@K (and coverage@K).")
_I("eval_batch_size", 512, "Session lanes during evaluation.")
flags.DEFINE_bool("item_coverage", False, "Also item coverage@K: the fraction of the items in at least one test "
                  "event's top-K list (2.5-3.7x the evaluation time on CPU).")
# Checkpoints and outputs.
_D("save_path", "", "Directory for checkpoints (one per epoch).")
_D("load_path", "", "Checkpoint directory to evaluate, or to resume: with an explicit --n_epochs beyond its epoch, "
   "or with --save_path set to the same directory (the training command rerun with --load_path).")
_I("load_epoch", 0, "With --load_path: the epoch whose checkpoint to load (one of the last two saved); 0 = the latest.")
_D("metrics_out", "", "Write the metrics as JSON to this file.")
# Devices and hosts.
_D("mesh", "", "Device mesh, e.g. 'items:8' (item tables sharded by rows over 8 devices) or 'data:2,items:4' "
   "(also lanes over 2); the sizes multiply to the number of devices. Empty: one device.")
_D("coordinator_address", "", "Multi-host: host:port of process 0; starts jax.distributed (also started by "
   "JAX_COORDINATOR_ADDRESS, or GRU4REC_DISTRIBUTED=1 on clusters JAX detects).")
_I("num_processes", 0, "Multi-host: number of processes.")
_I("process_id", -1, "Multi-host: this process's index in [0, num_processes).")

FLAGS = flags.FLAGS


def _int_list(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in FLAGS[name].value)
    except ValueError:
        raise ValueError(f"--{name} must be a comma-separated list of integers, got {','.join(FLAGS[name].value)}") from None


def config_from_flags() -> experiment.ExperimentConfig:
    if FLAGS.constrained_embedding:
        embedding = "shared"
    elif FLAGS.embedding > 0:
        embedding = "separate"
    else:
        embedding = "onehot"
    return experiment.ExperimentConfig(
        data=experiment.DataConfig(
            train_path=FLAGS.train_path, test_path=FLAGS.test_path,
            session_key=FLAGS.session_key, item_key=FLAGS.item_key, time_key=FLAGS.time_key,
            synthetic_sessions=FLAGS.synthetic_sessions, synthetic_items=FLAGS.synthetic_items,
            synthetic_seed=FLAGS.synthetic_seed, dwell_threshold=FLAGS.dwell_threshold,
            user_key=FLAGS.user_key, session_gap=FLAGS.session_gap,
        ),
        train=training.TrainConfig(
            loss=FLAGS.loss, batch_size=FLAGS.batch_size,
            dropout_p_embed=FLAGS.dropout_p_embed, dropout_p_hidden=FLAGS.dropout_p_hidden,
            learning_rate=FLAGS.learning_rate, momentum=FLAGS.momentum,
            n_sample=FLAGS.n_sample, sample_alpha=FLAGS.sample_alpha, bpreg=FLAGS.bpreg,
            elu_param=FLAGS.elu_param, logq=FLAGS.logq, final_act=FLAGS.final_act,
            n_epochs=FLAGS.n_epochs, seed=FLAGS.seed, chunk_steps=FLAGS.chunk_steps,
            table_update=FLAGS.table_update, dropout_p_hidden_usr=FLAGS.dropout_p_hidden_usr,
            dropout_p_init=FLAGS.dropout_p_init,
        ),
        eval=experiment.EvalConfig(
            mode=FLAGS.eval_mode, cutoffs=_int_list("cutoffs"), batch_size=FLAGS.eval_batch_size,
            item_coverage=FLAGS.item_coverage,
        ),
        layers=_int_list("layers"),
        embedding=embedding,
        embedding_dim=FLAGS.embedding,
        cell=FLAGS.gru_cell,
        model=FLAGS.model,
        user_layers=_int_list("user_layers"),
        hrnn_mode=FLAGS.hrnn_mode,
        hrnn_user_input=FLAGS.hrnn_user_input,
        save_path=FLAGS.save_path,
        load_path=FLAGS.load_path,
        load_epoch=FLAGS.load_epoch,
        resume=bool(FLAGS.load_path) and FLAGS["n_epochs"].present,
        metrics_out=FLAGS.metrics_out,
        mesh=FLAGS.mesh,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep orbax's INFO chatter out of the output
    jax.config.update("jax_default_matmul_precision", FLAGS.matmul_precision)
    checkpoint.ignore_abandoned_reads()  # a damaged checkpoint: one line, no tracebacks
    try:
        sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        experiment.run(config_from_flags())
    except (
        data.DataError,
        checkpoint.CheckpointError,
        training.TrainingError,
        ValueError,
        OSError,
    ) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"error: {message}", file=sys.stderr, flush=True)
        # Nothing may follow the one line, not even what the interpreter's
        # shutdown prints about objects orbax left behind.
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
