r"""Training and evaluation speed on generated data of a chosen shape.

    python -m experiments.benchmark                                   # the default grid
    python -m experiments.benchmark --configs=rsc15_xe --items=3000,1000000 --json_out=bench.json

One row per (configuration, catalogue size), each measured in a fresh
subprocess so that peak memory is that configuration's own:

- train events/s and mini-batches/s: median over ``--timed_chunks`` compiled
  chunks of ``--chunk_steps`` steps, after a warm-up chunk;
- compile: seconds to compile the training chunk (once per run);
- eval events/s: full ranking over all items (``--eval_batch_size`` lanes),
  median of at least ``--eval_runs`` timed runs after a warm-up (up to 21
  within about 2 s, for small catalogues); ``eval/matmul``: the
  step time of a bare (lanes x h) @ (h x n) product (median of up to 21 runs
  after warm-up runs) divided by the evaluation step time (>= 0.5 means
  evaluation runs at least at half the product's speed);
- peak memory of training (read before the evaluation starts) and of the
  evaluation: device peak (GPU; it cannot be reset, so the evaluation's is the
  larger of the two) or peak resident memory above the process's baseline
  after JAX start-up (CPU, reset before the evaluation), next to the bytes of
  the parameters + optimizer state and of the on-device schedule.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

from experiments.benchmark_configs import CONFIGS

flags.DEFINE_list("configs", list(CONFIGS), f"Configurations among {sorted(CONFIGS)}.")
flags.DEFINE_list("items", ["3000", "40000", "1000000"], "Catalogue sizes.")
flags.DEFINE_integer("chunk_steps", 128, "Training steps per compiled chunk.")
flags.DEFINE_integer("timed_chunks", 5, "Timed training chunks (median reported).")
flags.DEFINE_integer("eval_batch_size", 512, "Evaluation lanes.")
flags.DEFINE_integer("eval_events", 20000, "Approximate number of evaluated events.")
flags.DEFINE_integer("eval_runs", 3, "Timed evaluation runs, at least (more, up to 21, while they take under "
                     "2 s in all; median reported).", lower_bound=1)
flags.DEFINE_string("json_out", "", "Write the table as JSON here.")
flags.DEFINE_enum("table_update", "auto", ["auto", "rows", "masked"], "Item-table update strategy.")
flags.DEFINE_enum("matmul_precision", "highest", ["default", "high", "highest"],
                  "Float32 matrix product precision (as in experiments.train).")
flags.DEFINE_string("single", "", "Internal: run one 'config:items' row in this process.")
FLAGS = flags.FLAGS


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _vm_hwm_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _peak_rss_bytes()


def _peak_bytes(device, baseline: int) -> tuple[int, str]:
    """The device's peak bytes in use, or (CPU) the peak resident memory above ``baseline``."""
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"], "device"
    return _vm_hwm_bytes() - baseline, "host RSS above baseline"


def _median_seconds(fn, *, min_runs: int, max_runs: int, budget_seconds: float) -> float:
    """Median wall time of ``fn()`` over ``min_runs`` to ``max_runs`` runs, stopping once ``budget_seconds`` are spent."""
    times = []
    while len(times) < max_runs and (len(times) < min_runs or sum(times) < budget_seconds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_one(config_name: str, n_items: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from gru4rec_jax import batching, evaluation, model, sampling, synthetic, training

    jax.config.update("jax_default_matmul_precision", FLAGS.matmul_precision)
    device = jax.devices()[0]
    jnp.zeros(1).block_until_ready()
    _reset_peak_rss()
    baseline = _vm_hwm_bytes()

    loss, h, batch_size, n_sample, extra = CONFIGS[config_name]
    steps = FLAGS.chunk_steps * (FLAGS.timed_chunks + 1)
    # Sessions average 5 events (4 training steps of one lane each).
    n_sessions = int(steps * batch_size / 4 * 1.1) + batch_size
    sessions = synthetic.generate_sessions(n_sessions, n_items, seed=0)
    model_config = model.ModelConfig(n_items=n_items, layers=(h,))
    config = training.TrainConfig(loss=loss, batch_size=batch_size, n_sample=n_sample,
                                  chunk_steps=FLAGS.chunk_steps, table_update=FLAGS.table_update, **extra)
    schedule = batching.session_parallel_schedule(sessions, batch_size)
    chunks = jax.device_put(schedule.padded_chunks(FLAGS.chunk_steps))
    support = np.maximum(sampling.item_support(sessions.items, n_items), 1.0)
    sampler = sampling.alias_table(support, config.sample_alpha)
    log_support = jnp.asarray(np.log(support), jnp.float32)
    run_key = jax.random.PRNGKey(0)
    state = training.init_train_state(jax.random.PRNGKey(1), model_config)
    hidden = model.zero_hidden(model_config, batch_size)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    data_bytes = sum(x.nbytes for x in jax.tree.leaves(chunks))

    t0 = time.perf_counter()
    chunk_of = lambda c: jax.tree.map(lambda a: a[c], chunks)  # noqa: E731
    compiled = training.compile_train_chunk(
        training.make_train_chunk(model_config, config), state, hidden, chunk_of(0), run_key, sampler, log_support)
    compile_seconds = time.perf_counter() - t0

    times, events, n_steps = [], [], []
    for c in range(min(FLAGS.timed_chunks + 1, chunks["inputs"].shape[0])):
        t0 = time.perf_counter()
        state, hidden, stats = compiled(state, hidden, chunk_of(c), run_key, sampler, log_support)
        jax.block_until_ready(stats)
        if c:  # the first chunk warms up
            times.append(time.perf_counter() - t0)
            events.append(int(stats[2]))
            n_steps.append(int(stats[1]))
    train_eps = statistics.median(e / t for e, t in zip(events, times))
    train_mbs = statistics.median(s / t for s, t in zip(n_steps, times))
    train_peak, peak_kind = _peak_bytes(device, baseline)
    _reset_peak_rss()

    # Evaluation on fresh sessions of the same catalogue.
    test = synthetic.generate_sessions(max(FLAGS.eval_events // 4, 1), n_items, seed=1)
    kwargs = dict(batch_size=FLAGS.eval_batch_size, cutoffs=(20,))
    evaluation.evaluate(state.params, model_config, test, **kwargs)  # compile
    # A small catalogue evaluates in a tenth of a second, where a few runs are noisy (eval/matmul
    # 0.51-0.71 from 3 runs at 3,000 items): time at least --eval_runs, more within about 2 s.
    results = []
    eval_seconds = _median_seconds(
        lambda: results.append(evaluation.evaluate(state.params, model_config, test, **kwargs)),
        min_runs=FLAGS.eval_runs, max_runs=max(FLAGS.eval_runs, 21), budget_seconds=2.0)
    result = results[-1]
    eval_schedule = batching.session_parallel_schedule(test, FLAGS.eval_batch_size)
    eval_step = eval_seconds / eval_schedule.n_steps

    # Read before the bare product below allocates its own (lanes x n) output.
    eval_peak, _ = _peak_bytes(device, baseline)

    x = jax.random.normal(jax.random.PRNGKey(2), (FLAGS.eval_batch_size, h))
    matmul = jax.jit(lambda x, w: x @ w.T)
    product = lambda: matmul(x, state.params["tables"]["Wy"]).block_until_ready()  # noqa: E731
    # Right after the evaluation the first few products can run at half speed on
    # CPU (seen with 3,000 items: 4.3-4.9 ms, then 2.1-2.4 ms): warm up, then
    # take the median of up to 21 runs (at least 3, about 2 s).
    _median_seconds(product, min_runs=1, max_runs=5, budget_seconds=0.5)
    matmul_step = _median_seconds(product, min_runs=3, max_runs=21, budget_seconds=2.0)

    return {
        "config": config_name, "items": n_items, "h": h, "batch_size": batch_size, "n_sample": n_sample,
        "loss": loss, "device": f"{device.platform}:{device.device_kind}",
        "train_events_per_sec": train_eps, "train_batches_per_sec": train_mbs,
        "compile_seconds": compile_seconds, "eval_events_per_sec": result["n_eval_events"] / eval_seconds,
        "eval_over_matmul": matmul_step / eval_step,
        "train_peak_bytes": train_peak, "eval_peak_bytes": eval_peak, "peak_kind": peak_kind,
        "state_bytes": state_bytes, "data_bytes": data_bytes,
        "train_peak_over_state_and_data": train_peak / (state_bytes + data_bytes),
    }


def _row(r: dict) -> str:
    mb = 1 << 20
    return (f"| {r['config']} | {r['items']:,} | {r['h']} | {r['batch_size']} | {r['train_events_per_sec']:,.0f} | "
            f"{r['train_batches_per_sec']:,.0f} | {r['compile_seconds']:.1f} | {r['eval_events_per_sec']:,.0f} | "
            f"{r['eval_over_matmul']:.2f} | {r['train_peak_bytes'] / mb:,.0f} | {r['eval_peak_bytes'] / mb:,.0f} | "
            f"{(r['state_bytes'] + r['data_bytes']) / mb:,.0f} |")


HEADER = ("| config | items | h | B | train events/s | mini-batches/s | compile s | eval events/s | "
          "eval/matmul | train peak MiB | eval peak MiB | state+data MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv):
    del argv
    if FLAGS.single:
        name, items = FLAGS.single.split(":")
        print(json.dumps(run_one(name, int(items))))
        return
    unknown = [c for c in FLAGS.configs if c not in CONFIGS]
    if unknown:
        sys.exit(f"error: unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    try:
        items = [int(i) for i in FLAGS.items]
    except ValueError:
        sys.exit(f"error: --items must be integers, got {','.join(FLAGS.items)}")
    rows = []
    print(HEADER, flush=True)
    for name in FLAGS.configs:
        for n in items:
            args = [sys.executable, "-m", "experiments.benchmark", f"--single={name}:{n}"]
            passed_on = ("chunk_steps", "timed_chunks", "eval_batch_size", "eval_events", "eval_runs",
                         "matmul_precision", "table_update")
            args += [f"--{f}={FLAGS[f].value}" for f in passed_on]
            out = subprocess.run(args, capture_output=True, text=True,
                                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            if out.returncode != 0:
                print(f"| {name} | {n:,} | failed: {out.stderr.strip().splitlines()[-1] if out.stderr else '?'} |",
                      flush=True)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(_row(row), flush=True)
    if rows:
        print(f"device: {rows[0]['device']}")
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    app.run(main)
