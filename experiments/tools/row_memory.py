r"""What the row-sparse table update's memory accesses cost by themselves, per catalogue size.

    python -m experiments.tools.row_memory --items=3000,1000000

The training step's row update (``optimizer.sparse_adagrad_momentum_update``)
reads the touched rows of three (n, h) tables, the item table, its Adagrad
accumulator and its velocity, and writes them back. This times those accesses
alone, with none of the update's arithmetic, in one compiled loop of
``--steps`` steps, each on ``--rows`` distinct random rows (the rsc15_xe
benchmark set touches up to 2,112 a step: 2,048 samples, 32 targets, 32 inputs):

- read: every table's rows gathered (and added into a carried buffer of
  ``--rows`` x ``--units``, which stays in cache);
- read + write: every table's rows gathered and scattered back, changed.

One row per catalogue size: microseconds per step (median of ``--repeats``
loops), the bytes those rows hold per second, and the time per step above the
first catalogue size's. Where the tables outgrow the caches, this is the least
a row update of that shape can cost with XLA's gathers and scatters (see the
README's benchmark section).
"""

from __future__ import annotations

import statistics
import sys
import time

from absl import app, flags

flags.DEFINE_list("items", ["3000", "1000000"], "Catalogue sizes (table rows).")
flags.DEFINE_integer("units", 100, "Row width h (float32 values).")
flags.DEFINE_integer("rows", 2112, "Distinct rows touched per step.")
flags.DEFINE_integer("tables", 3, "Tables read (and written) per step.")
flags.DEFINE_integer("steps", 64, "Steps per compiled loop.")
flags.DEFINE_integer("repeats", 7, "Timed loops per measurement (median reported).")
flags.DEFINE_integer("seed", 0, "Seed of the drawn rows.")
FLAGS = flags.FLAGS


def _loop(write: bool):
    """A jitted loop over steps that reads (and, with ``write``, rewrites) the given rows of every table."""
    import jax

    def loop(tables, index, carried):
        def body(carry, rows):
            tables, carried = carry
            got = [table.at[rows].get(mode="fill", fill_value=0) for table in tables]
            if write:
                tables = tuple(table.at[rows].set(values + 1.0, mode="drop") for table, values in zip(tables, got))
            else:
                carried = carried + sum(got)
            return (tables, carried), None

        return jax.lax.scan(body, (tables, carried), index)[0]

    return jax.jit(loop, donate_argnums=(0, 2))


def measure(n_items: int, *, units: int, rows: int, tables: int, steps: int, repeats: int, seed: int) -> dict:
    """Microseconds per step of the read and the read + write loops on ``n_items``-row tables."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    index = jnp.asarray(np.stack([rng.choice(n_items, rows, replace=False) for _ in range(steps)]), jnp.int32)
    result = {"items": n_items}
    for name, write in (("read_us", False), ("read_write_us", True)):
        loop = _loop(write)
        state = (tuple(jnp.full((n_items, units), i + 1.0, jnp.float32) for i in range(tables)),
                 jnp.zeros((rows, units), jnp.float32))
        state = jax.block_until_ready(loop(state[0], index, state[1]))  # compile and warm up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            state = jax.block_until_ready(loop(state[0], index, state[1]))
            times.append((time.perf_counter() - start) / steps)
        result[name] = 1e6 * statistics.median(times)
    return result


def main(argv):
    del argv
    try:
        sizes = [int(n) for n in FLAGS.items]
    except ValueError:
        sys.exit(f"error: --items must be integers, got {','.join(FLAGS.items)}")
    for name in ("units", "rows", "tables", "steps", "repeats"):
        if getattr(FLAGS, name) < 1:
            sys.exit(f"error: --{name} must be at least 1, got {getattr(FLAGS, name)}")
    if not sizes or min(sizes) < FLAGS.rows:
        sys.exit(f"error: every --items size must hold the {FLAGS.rows} distinct --rows, got {','.join(FLAGS.items)}")

    import jax

    row_bytes = FLAGS.tables * FLAGS.rows * FLAGS.units * 4
    print(f"{FLAGS.tables} tables of h {FLAGS.units}, {FLAGS.rows} rows per step ({row_bytes / 2**20:.2f} MiB), "
          f"{FLAGS.steps} steps per loop, on {jax.devices()[0].platform}")
    print("| items | table MiB | read us/step | read GB/s | read+write us/step | read+write GB/s "
          "| read extra us | read+write extra us |")
    print("|---|---|---|---|---|---|---|---|")
    first = None
    for n in sizes:
        row = measure(n, units=FLAGS.units, rows=FLAGS.rows, tables=FLAGS.tables, steps=FLAGS.steps,
                      repeats=FLAGS.repeats, seed=FLAGS.seed)
        first = first or row
        print(f"| {n:,} | {n * FLAGS.units * 4 / 2**20:,.1f} | {row['read_us']:.1f} "
              f"| {row_bytes / row['read_us'] / 1e3:.1f} | {row['read_write_us']:.1f} "
              f"| {2 * row_bytes / row['read_write_us'] / 1e3:.1f} | {row['read_us'] - first['read_us']:+.0f} "
              f"| {row['read_write_us'] - first['read_write_us']:+.0f} |")


if __name__ == "__main__":
    app.run(main)
