r"""Split user-aware events by each user's last session (the HRNN protocol).

    python -m experiments.split_users --input=events.tsv --output_dir=data/hier \
        --time_key=TimeMs --session_gap=1800000

Writes train.tsv / test.tsv (each user's last session is the test session) and
valid_train.tsv / valid_test.tsv (the same split of train.tsv), and prints the
events, sessions and users of each. Without a session column, give
--session_gap (in the data's time unit) to cut sessions at idle gaps.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from gru4rec_jax import data, user_data

flags.DEFINE_string("input", None, "Events TSV with a user column.", required=True)
flags.DEFINE_string("output_dir", None, "Folder for the four split files.", required=True)
flags.DEFINE_string("user_key", "UserId", "User id column.")
flags.DEFINE_string("session_key", "SessionId", "Session id column (ignored with --session_gap).")
flags.DEFINE_string("item_key", "ItemId", "Item id column.")
flags.DEFINE_string("time_key", "Time", "Timestamp column.")
flags.DEFINE_float("session_gap", 0.0, "Cut sessions at idle gaps longer than this (data's time unit); 0 = "
                   "use the session column.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    keys = dict(item_key=FLAGS.item_key, time_key=FLAGS.time_key)
    gap = FLAGS.session_gap or None
    try:
        if gap is None:
            table = data.read_events(FLAGS.input, session_key=FLAGS.session_key, user_key=FLAGS.user_key, **keys)
        else:
            # The session column is not needed: read the user column in its place.
            table = data.read_events(FLAGS.input, session_key=FLAGS.user_key, user_key=FLAGS.user_key, **keys)
        train, test = user_data.split_last_session(table, session_gap=gap, source=FLAGS.input)
        valid_train, valid_test = user_data.split_last_session(train, source=FLAGS.input)
    except (data.DataError, ValueError) as error:
        sys.exit(f"error: {error}")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    out_keys = dict(session_key=FLAGS.session_key, user_key=FLAGS.user_key, **keys)
    for name, part in (("train", train), ("test", test), ("valid_train", valid_train), ("valid_test", valid_test)):
        data.write_events(os.path.join(FLAGS.output_dir, f"{name}.tsv"), part, **out_keys)
        print(f"{name:12s} {len(part):9d} events {part.sessions.n_distinct():8d} sessions "
              f"{part.users.n_distinct():7d} users")


if __name__ == "__main__":
    app.run(main)
