r"""Trials per hour of a hyperparameter search when P trials train at once as a population.

    python -m experiments.benchmark_tune                                  # P = 1, 4, 8, 16
    python -m experiments.benchmark_tune --populations=1,8 --epochs_per_trial=10 \
        --train_path=../shared/data/rsc15_100k/train_tr.tsv

One row per population size P, each measured in a fresh subprocess (so that
peak memory and compile time are that run's own), ``--repeats`` times round
robin (medians reported). P = 1 is the single-run
program (``training.fit``), the baseline of a search that trains one trial at
a time; P > 1 is ``population.fit_population``, every member with its own
scalar hyperparameters (learning rate, momentum, both dropouts, logQ weight,
sampling alpha; BPR-max: bpreg and ELU parameter too) and seed, drawn at random.

- compile s: compiling the training chunk;
- s/epoch: median over ``--timed_epochs`` epochs of the whole population;
- overhead s: the rest of the training call (compile, initialisation, schedule,
  alias tables), and the evaluation's compile;
- trials/hour: ``3600 P / (overhead + epochs_per_trial x s/epoch [+ evaluations])``,
  EXTRAPOLATED from the timed epochs to ``--epochs_per_trial`` epochs per trial;
- speed-up: trials/hour over the first row's (P = 1 if listed);
- group: members vmapped at a time (``--group_size``; on CPU by default as many
  as fit ``population.CPU_GROUP_STATE_BYTES``, on accelerators all);
- peak MiB: the process's peak resident memory above its JAX start-up
  baseline (CPU) or the device's peak (GPU).

``--eval_events`` > 0 adds the evaluation of every member after training
(``--evals_per_trial`` times per trial): ``evaluation.evaluate`` for P = 1,
``evaluation.evaluate_population`` (all members in one program) for P > 1.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time

from absl import app, flags

from experiments.benchmark_configs import CONFIGS

flags.DEFINE_list("populations", ["1", "4", "8", "16"], "Population sizes P.")
flags.DEFINE_integer("epochs_per_trial", 10, "Epochs of one trial (the timed epochs are extrapolated to this).",
                     lower_bound=1)
flags.DEFINE_integer("timed_epochs", 2, "Epochs timed per population (median).", lower_bound=1)
flags.DEFINE_enum("config", "rsc15_xe", list(CONFIGS), "Shapes and loss (experiments/benchmark_configs.py).")
flags.DEFINE_string("train_path", "", "Training events (TSV). Empty: synthetic sessions of rsc15_100k's size.")
flags.DEFINE_integer("items", 2933, "Synthetic catalogue size (without --train_path).")
flags.DEFINE_integer("sessions", 10650, "Synthetic training sessions (without --train_path): about the 53,000 events of "
                     "rsc15_100k's train_tr.")
flags.DEFINE_integer("chunk_steps", 512, "Training steps per compiled chunk (TrainConfig's default).")
flags.DEFINE_integer("eval_events", 10000, "Approximate evaluated events per evaluation (rsc15_100k's test set has 10,152); "
                     "0: no evaluation.")
flags.DEFINE_integer("evals_per_trial", 1, "Evaluations of each trial (with --eval_events).", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Seed of the members' hyperparameters.")
flags.DEFINE_integer("group_size", 0, "Members vmapped at a time (a divisor of P); 0: the platform's default "
                     "(population.default_group_size).", lower_bound=0)
flags.DEFINE_integer("repeats", 1, "Measure every P this many times, round robin (the medians are reported: on a "
                     "shared machine the load drifts).", lower_bound=1)
flags.DEFINE_string("json_out", "", "Write the rows as JSON here.")
flags.DEFINE_integer("single", 0, "Internal: measure population size P in this process.")
FLAGS = flags.FLAGS


def _host_peak_bytes(reset: bool = False) -> int:
    """The process's peak resident memory (Linux VmHWM); ``reset`` restarts it from the current use."""
    if reset:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def member_configs(n_members: int):
    """``n_members`` TrainConfigs of the chosen shapes, each with its own scalars and seed."""
    import numpy as np

    from gru4rec_jax import training

    loss, _, batch_size, n_sample, _ = CONFIGS[FLAGS.config]
    rng = np.random.default_rng(FLAGS.seed)
    configs = []
    for i in range(n_members):
        scalars = dict(learning_rate=rng.uniform(0.05, 0.3), momentum=rng.uniform(0.0, 0.5),
                       dropout_p_embed=rng.uniform(0.0, 0.5), dropout_p_hidden=rng.uniform(0.0, 0.5),
                       sample_alpha=rng.uniform(0.0, 1.0))
        if loss == "cross-entropy":
            scalars["logq"] = rng.uniform(0.0, 1.0)
        if loss == "bpr-max":
            scalars.update(bpreg=rng.uniform(0.0, 2.0), elu_param=rng.uniform(0.0, 1.0))
        configs.append(training.TrainConfig(loss=loss, batch_size=batch_size, n_sample=n_sample, seed=i,
                                            n_epochs=FLAGS.timed_epochs, chunk_steps=FLAGS.chunk_steps,
                                            **{k: float(v) for k, v in scalars.items()}))
    return configs


def _training_data():
    from gru4rec_jax import data, synthetic

    if not FLAGS.train_path:
        return synthetic.generate_sessions(FLAGS.sessions, FLAGS.items, seed=0), FLAGS.items
    table = data.read_events(FLAGS.train_path)
    item_map = data.ItemMap.from_training(table.item_ids)
    return data.build_sessions(table, item_map), len(item_map)


def _evaluate_members(state, model_config, test, n_members: int) -> list[dict]:
    """Every member's metrics on ``test``: a single run's evaluation, or the population's in one program."""
    from gru4rec_jax import evaluation

    if n_members == 1:
        return [evaluation.evaluate(state.params, model_config, test)]
    return evaluation.evaluate_population(state.params, model_config, test)


def run_population(n_members: int) -> dict:
    import jax

    from gru4rec_jax import model, population, synthetic, training

    device = jax.devices()[0]
    jax.numpy.zeros(1).block_until_ready()
    sessions, n_items = _training_data()
    _, h, _, _, _ = CONFIGS[FLAGS.config]
    model_config = model.ModelConfig(n_items=n_items, layers=(h,))
    configs = member_configs(n_members)
    baseline = _host_peak_bytes(reset=True)
    messages = []
    t0 = time.perf_counter()
    if n_members == 1:
        state, history = training.fit(sessions, model_config, configs[0], log=messages.append)
        histories = [history]
    else:
        state, histories = population.fit_population(sessions, model_config, configs, log=messages.append,
                                                     group_size=FLAGS.group_size or None)
    total_seconds = time.perf_counter() - t0
    compiled = next(m for m in messages if m.startswith("compiled"))
    compile_seconds = float(re.search(r"in ([\d.]+)s$", compiled).group(1))
    group = re.search(r"in groups of (\d+)", compiled)
    epoch_seconds = [stats.seconds for stats in histories[0]]
    overhead = total_seconds - sum(epoch_seconds)
    device_peak = (device.memory_stats() or {}).get("peak_bytes_in_use")
    peak = device_peak if device_peak is not None else _host_peak_bytes() - baseline

    eval_seconds = 0.0
    if FLAGS.eval_events > 0:
        test = synthetic.generate_sessions(max(FLAGS.eval_events // 4, 1), n_items, seed=1)
        t0 = time.perf_counter()
        _evaluate_members(state, model_config, test, n_members)  # compiles
        first_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        _evaluate_members(state, model_config, test, n_members)
        eval_seconds = time.perf_counter() - t0
        overhead += max(first_seconds - eval_seconds, 0.0)  # the evaluation's compile, once per population

    epoch = statistics.median(epoch_seconds)
    trial_seconds = overhead + FLAGS.epochs_per_trial * epoch + FLAGS.evals_per_trial * eval_seconds
    return {
        "members": n_members, "group_size": int(group.group(1)) if group else 1, "config": FLAGS.config,
        "items": n_items, "peak_bytes": float(peak),
        "device": f"{device.platform}:{device.device_kind}",
        "compile_seconds": compile_seconds, "overhead_seconds": overhead, "epoch_seconds": epoch,
        "epoch_seconds_all": epoch_seconds, "eval_seconds": eval_seconds,
        "member_events_per_second": n_members * histories[0][0].n_events / epoch,
        "trials_per_hour": 3600.0 * n_members / trial_seconds,
        "peak_kind": "host RSS above baseline" if device_peak is None else "device",
        "losses": [h[-1].loss for h in histories],
    }


HEADER = ("| P | group | compile s | overhead s | s/epoch | member events/s | eval s | trials/hour | speed-up | "
          "peak MiB |\n|---|---|---|---|---|---|---|---|---|---|")


def _row(r: dict, reference: float) -> str:
    label = f"{r['members']}" + (" (single run)" if r["members"] == 1 else "")
    return (f"| {label} | {r['group_size']} | {r['compile_seconds']:.1f} | {r['overhead_seconds']:.1f} | "
            f"{r['epoch_seconds']:.2f} | {r['member_events_per_second']:,.0f} | {r['eval_seconds']:.2f} | "
            f"{r['trials_per_hour']:,.0f} | {r['trials_per_hour'] / reference:.2f}x | "
            f"{r['peak_bytes'] / (1 << 20):,.0f} |")


def _median_row(runs: list[dict]) -> dict:
    """The runs of one P as one row: the median of every number, the first run's other fields."""
    row = dict(runs[0])
    for name, value in row.items():
        if isinstance(value, float):
            row[name] = statistics.median(run[name] for run in runs)
    row["runs"] = runs
    return row


def main(argv):
    del argv
    if FLAGS.single:
        print(json.dumps(run_population(FLAGS.single)))
        return
    try:
        sizes = [int(p) for p in FLAGS.populations]
    except ValueError:
        sys.exit(f"error: --populations must be integers, got {','.join(FLAGS.populations)}")
    if not sizes or min(sizes) < 1:
        sys.exit("error: --populations must be sizes >= 1")
    loss, h, batch_size, n_sample, _ = CONFIGS[FLAGS.config]
    evaluations = f" and {FLAGS.evals_per_trial} evaluation(s) per trial" if FLAGS.eval_events else ""
    print(f"{FLAGS.config}: {loss}, h {h}, B {batch_size}, {n_sample} samples; trials/hour EXTRAPOLATED from "
          f"{FLAGS.timed_epochs} timed epoch(s) to {FLAGS.epochs_per_trial} epochs per trial, with one compile "
          f"and setup (overhead) per population{evaluations}; medians of {FLAGS.repeats} run(s) per P.", flush=True)
    passed_on = ("epochs_per_trial", "timed_epochs", "config", "train_path", "items", "sessions", "chunk_steps",
                 "eval_events", "evals_per_trial", "seed", "group_size")
    measured = {size: [] for size in sizes}
    for repeat in range(FLAGS.repeats):
        for size in sizes:
            args = [sys.executable, "-m", "experiments.benchmark_tune", f"--single={size}"]
            args += [f"--{name}={FLAGS[name].value}" for name in passed_on]
            out = subprocess.run(args, capture_output=True, text=True,
                                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            if out.returncode != 0:
                print(f"P={size}, run {repeat + 1}: failed: "
                      f"{out.stderr.strip().splitlines()[-1] if out.stderr else '?'}", flush=True)
                continue
            run = json.loads(out.stdout.strip().splitlines()[-1])
            measured[size].append(run)
            print(f"P={size}, run {repeat + 1}: {run['epoch_seconds']:.2f} s/epoch, "
                  f"{run['trials_per_hour']:,.0f} trials/hour", flush=True)
    rows = [_median_row(runs) for runs in measured.values() if runs]
    if not rows:
        sys.exit("error: no population size could be measured")
    print(HEADER)
    for row in rows:
        print(_row(row, rows[0]["trials_per_hour"]))
    print(f"device: {rows[0]['device']}, {rows[0]['items']:,} items; speed-up: trials/hour over the first row's")
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    app.run(main)
