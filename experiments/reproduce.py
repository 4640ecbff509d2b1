r"""Reproduce a table of the GRU4Rec papers: every row, the paper's numbers beside ours.

    python -m experiments.reproduce --table=iclr2016 \
        --train_path=../shared/data/rsc15_100k/train_full.tsv --test_path=../shared/data/rsc15_100k/test.tsv

Tables (experiments/paper_tables.py): iclr2016, cikm2018, dwell2017, hrnn. Writes
``{table}.md``, ``{table}.json`` and, when matplotlib is installed, ``{table}.png``
to --out_dir; how rows run and are reused: experiments/table_runner.py.
"""

from __future__ import annotations

import shlex
import sys

from absl import app, flags, logging

from experiments.paper_tables import TABLES
from experiments.table_runner import ReproduceError, reproduce
from gru4rec_jax import data as data_lib

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
flags.mark_flags_as_required(["table", "train_path", "test_path"])

FLAGS = flags.FLAGS


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
    # Only the columns that differ from the defaults, so that the recorded commands stay short.
    keys = {name: FLAGS[name].value for name in ("session_key", "item_key", "time_key") if FLAGS[name].present}
    # The command that produces the whole table: a run of some rows or a rerun adds to the same files.
    partial = ("--rows", "--rerun", "--norerun")
    command = shlex.join(["python", "-m", "experiments.reproduce"]
                         + [a for a in sys.argv[1:] if a.split("=")[0] not in partial])
    try:
        reproduce(TABLES[FLAGS.table], FLAGS.train_path, FLAGS.test_path, seeds=seeds, rows=FLAGS.rows,
                  out_dir=FLAGS.out_dir, train_flags=FLAGS.train_flag, keys=keys, rerun=FLAGS.rerun,
                  command=command, log=lambda line: print(line, flush=True))
    except (data_lib.DataError, ReproduceError, ValueError, OSError) as error:
        sys.exit(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}")


if __name__ == "__main__":
    app.run(main)
