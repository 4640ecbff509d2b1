r"""Reproduce a table of the GRU4Rec papers: every row, the paper's numbers beside ours.

    python -m experiments.reproduce --table=iclr2016 \
        --train_path=../shared/data/rsc15_100k/train_full.tsv --test_path=../shared/data/rsc15_100k/test.tsv

Tables (experiments/paper_tables.py): iclr2016, cikm2018, dwell2017, hrnn. Writes
``{table}.md``, ``{table}.json`` and, when matplotlib is installed, ``{table}.png``
to --out_dir; how rows run and are reused: experiments/table_runner.py.

With --tune_trials=N, every GRU4Rec row is first tuned on the validation split
(--valid_train_path -> --valid_test_path, which experiments.prepare writes as
train_tr.tsv and train_valid.tsv) with N trials of ``experiments.tune``, as the
papers chose their settings, and its test runs use the best trial's flags.
"""

from __future__ import annotations

import shlex
import sys

from absl import app, flags, logging

from experiments.paper_tables import TABLES
from experiments.table_runner import ReproduceError, TuneSettings, reproduce
from gru4rec_jax import data as data_lib
from gru4rec_jax import tuning

flags.DEFINE_enum("table", None, sorted(TABLES), "The paper table to reproduce.")
flags.DEFINE_string("train_path", None, "Training events (TSV with header).")
flags.DEFINE_string("test_path", None, "Test events (TSV with header).")
flags.DEFINE_list("seeds", ["0"], "Seeds; every seeded row runs once per seed (mean and spread reported).")
flags.DEFINE_list("rows", [], "Run only these rows (keys from experiments/paper_tables.py); default: all.")
flags.DEFINE_string("out_dir", "experiments/results", "Where the Markdown, JSON and PNG files go.")
flags.DEFINE_multi_string("train_flag", [], "Extra flag for every GRU4Rec run, e.g. --train_flag=--n_epochs=1.")
flags.DEFINE_bool("rerun", False, "Rerun the selected rows' runs already in the JSON file instead of reusing them.")
flags.DEFINE_string("session_key", "SessionId", "Session id column.")
flags.DEFINE_string("item_key", "ItemId", "Item id column.")
flags.DEFINE_string("time_key", "Time", "Timestamp column.")
flags.DEFINE_integer("tune_trials", 0, "Tune every GRU4Rec row with this many trials on the validation split before "
                     "its test runs (experiments.tune; its space's member scalars, the row's shapes kept); 0: no tuning.")
flags.DEFINE_string("valid_train_path", "", "With --tune_trials: training events of the validation split "
                    "(experiments.prepare's train_tr.tsv).")
flags.DEFINE_string("valid_test_path", "", "With --tune_trials: validation events (experiments.prepare's train_valid.tsv).")
flags.DEFINE_integer("tune_population", 8, "With --tune_trials: trials trained together as one population.")
flags.DEFINE_string("tune_metric", "", "With --tune_trials: what the trials are ranked by. Default: mrr@K, K the "
                    "table's cut-off.")
flags.mark_flags_as_required(["table", "train_path", "test_path"])

FLAGS = flags.FLAGS


def _tune_flags_problem() -> str:
    if FLAGS.tune_trials < 0:
        return f"--tune_trials must be >= 0, got {FLAGS.tune_trials}"
    if not FLAGS.valid_train_path or not FLAGS.valid_test_path:
        return ("--tune_trials needs --valid_train_path and --valid_test_path (the validation split; "
                "experiments.prepare writes train_tr.tsv and train_valid.tsv)")
    if FLAGS.tune_population < 1:
        return f"--tune_population must be >= 1, got {FLAGS.tune_population}"
    if FLAGS.tune_metric:
        try:
            tuning.parse_metric(FLAGS.tune_metric)
        except ValueError as error:
            return str(error).replace("--metric", "--tune_metric")
    return ""


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        seeds = [int(s) for s in FLAGS.seeds]
    except ValueError:
        sys.exit(f"error: --seeds must be a comma-separated list of integers, got {','.join(FLAGS.seeds)}")
    if not seeds:
        sys.exit("error: --seeds is empty")
    tune = None
    if FLAGS.tune_trials:
        problem = _tune_flags_problem()
        if problem:
            sys.exit(f"error: {problem}")
        tune = TuneSettings(trials=FLAGS.tune_trials, train_path=FLAGS.valid_train_path,
                            test_path=FLAGS.valid_test_path, population=FLAGS.tune_population, metric=FLAGS.tune_metric)
    # Only the columns that differ from the defaults, so that the recorded commands stay short.
    keys = {name: FLAGS[name].value for name in ("session_key", "item_key", "time_key") if FLAGS[name].present}
    # The command that produces the whole table: a run of some rows or a rerun adds to the same files.
    partial = ("--rows", "--rerun", "--norerun")
    command = shlex.join(["python", "-m", "experiments.reproduce"]
                         + [a for a in sys.argv[1:] if a.split("=")[0] not in partial])
    try:
        reproduce(TABLES[FLAGS.table], FLAGS.train_path, FLAGS.test_path, seeds=seeds, rows=FLAGS.rows,
                  out_dir=FLAGS.out_dir, train_flags=FLAGS.train_flag, keys=keys, rerun=FLAGS.rerun,
                  command=command, tune=tune, log=lambda line: print(line, flush=True))
    except (data_lib.DataError, ReproduceError, ValueError, OSError) as error:
        sys.exit(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}")


if __name__ == "__main__":
    app.run(main)
