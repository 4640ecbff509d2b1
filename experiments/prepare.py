r"""Turn a raw public dataset into the split event tables that training reads.

    python -m experiments.prepare --dataset=rsc15 --raw_path=yoochoose-clicks.dat --out_dir=data/rsc15
    python -m experiments.prepare --dataset=retailrocket --raw_path=events.csv --out_dir=data/rr
    python -m experiments.prepare --dataset=csv --raw_path=events.csv --out_dir=data/mine \
        --csv_user_col=user --csv_item_col=item --csv_time_col=ts --csv_time_unit=0.001

Writes train_full.tsv / test.tsv and the validation split of train_full,
train_tr.tsv / train_valid.tsv, into --out_dir (header SessionId, ItemId, Time;
Time in unix seconds), and prints the events, sessions and items of each. rsc15
follows the 2016 protocol of the GRU4Rec paper; the other datasets the 2023
protocol of Hidasi & Czapp (see gru4rec_jax/preprocess.py).

Full-size files are read with pyarrow, block by block (OTTO's JSONL keeping
only the needed integer and time columns); stages that take over 5 s report
their progress on stderr. Measured figures: experiments/benchmark_data.py.
"""

from __future__ import annotations

import sys

from absl import app, flags

from gru4rec_jax import data, preprocess

_D = flags.DEFINE_string
_F = flags.DEFINE_float

flags.DEFINE_enum("dataset", None, list(preprocess.DATASETS),
                  "Raw format and protocol: rsc15 (yoochoose-clicks.dat, 2016 protocol), rsc15_2023 (the same file, "
                  "2023 protocol), diginetica (train-item-views.csv), retailrocket (events.csv), otto (train.jsonl), "
                  "csv (any delimited user-event file, see --csv_*).", required=True)
_D("raw_path", None, "The raw file.", required=True)
_D("out_dir", None, "Folder for train_full.tsv, test.tsv, train_tr.tsv, train_valid.tsv.", required=True)
_F("test_days", None, "Length of the test period at the end of the data, in days (also that of the validation "
   "period). Default: 7 for diginetica and retailrocket, 1 otherwise.")
flags.DEFINE_integer("min_item_support", preprocess.MIN_ITEM_SUPPORT, "Items with fewer events are dropped.")
_F("session_gap", None, "retailrocket, otto, csv: idle seconds after which a user's next event starts a new "
   "session. Default: 3600; for otto 0 (one session per line).")
# The generic CSV.
_D("csv_item_col", "", "csv: item id column.")
_D("csv_time_col", "", "csv: time column.")
_D("csv_user_col", "", "csv: user id column (sessions are cut at --session_gap idle gaps).")
_D("csv_session_col", "", "csv: session id column (used instead of cutting the user's events).")
_D("csv_event_col", "", "csv: event type column; only the rows of --csv_keep_events are kept.")
flags.DEFINE_list("csv_keep_events", [], "csv: event types to keep (the views), comma-separated.")
_D("csv_delimiter", ",", "csv: field delimiter (one character; 'tab' or '\\t' for a tab).")
_D("csv_time_format", "number", "csv: 'number' (times in units of --csv_time_unit), 'iso' (ISO 8601, UTC when no "
   "zone is given), or a strptime format such as '%Y-%m-%d %H:%M:%S'.")
_F("csv_time_unit", 1.0, "csv: seconds per unit of a numeric time (0.001 for milliseconds).")

FLAGS = flags.FLAGS

_CSV_FLAGS = ("csv_item_col", "csv_time_col", "csv_user_col", "csv_session_col", "csv_event_col",
              "csv_keep_events", "csv_delimiter", "csv_time_format", "csv_time_unit")


def reader_options_from_flags() -> dict[str, object]:
    """The reader's keyword arguments; a ValueError names a flag that does not fit --dataset."""
    dataset = FLAGS.dataset
    options: dict[str, object] = {}
    if dataset != "csv":
        given = [f"--{name}" for name in _CSV_FLAGS if FLAGS[name].present]
        if given:
            raise ValueError(f"--dataset={dataset} takes no --csv_* flags (given: {', '.join(given)})")
    if FLAGS.session_gap is not None:
        if preprocess.DATASETS[dataset].session_gap is None:
            raise ValueError(f"--session_gap does not apply to --dataset={dataset} (its sessions have ids)")
        options["session_gap"] = FLAGS.session_gap
    if dataset == "csv":
        for name in ("csv_item_col", "csv_time_col"):
            if not FLAGS[name].value:
                raise ValueError(f"--{name} is required with --dataset=csv")
        delimiter = FLAGS.csv_delimiter
        options.update(
            item_col=FLAGS.csv_item_col, time_col=FLAGS.csv_time_col,
            user_col=FLAGS.csv_user_col or None, session_col=FLAGS.csv_session_col or None,
            event_col=FLAGS.csv_event_col or None, keep_events=tuple(FLAGS.csv_keep_events),
            delimiter="\t" if delimiter in ("tab", "\\t") else delimiter,
            time_format=FLAGS.csv_time_format, time_unit=FLAGS.csv_time_unit,
        )
    return options


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        splits, summary = preprocess.prepare(
            FLAGS.dataset, FLAGS.raw_path, test_days=FLAGS.test_days, min_item_support=FLAGS.min_item_support,
            reader_options=reader_options_from_flags(),
        )
        paths = preprocess.write_splits(splits, FLAGS.out_dir)
    except (data.DataError, ValueError, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        sys.exit(f"error: {message}")
    for name, stats in summary.items():
        print(f"{name:12s} {stats['events']:10d} events {stats['sessions']:9d} sessions {stats['items']:8d} items")
    print(f"wrote {', '.join(paths)}")


if __name__ == "__main__":
    app.run(main)
