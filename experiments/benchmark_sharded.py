r"""Memory of a catalogue too large for one device, trained and evaluated sharded over several.

    python -m experiments.benchmark_sharded --items=10000000 --h=100 --mesh=items:8 --device_memory_gib=2

``--device_memory_gib`` is the memory each (simulated) device is given. The
script computes the bytes of the training state (item tables ``Wy``, ``By``
with their Adagrad accumulators and velocities, the GRU weights and their
optimizer state) and of the replicated sampler; checks that the state does
NOT fit one device of that size and that each device's share of the sharded
state does; then initialises the state directly into its shards, trains a few
chunks (configuration ``rsc15_xe`` of experiments/benchmark_configs.py,
synthetic sessions) and evaluates a few hundred events with full ranking over
all items. Reported per device: the bytes of the arrays' addressable shards
(state, then state + sampler), and the device's peak from ``memory_stats()``
where the platform has it (GPUs, TPUs; not CPU). On CPU the devices are
simulated (``--xla_force_host_platform_device_count``, set here) and share the
host's memory, whose peak resident size is reported too.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import sys
import time

from absl import app, flags

flags.DEFINE_integer("items", 10_000_000, "Catalogue size.")
flags.DEFINE_integer("h", 100, "GRU size (= item embedding size, shared embedding).")
flags.DEFINE_string("mesh", "items:8", "Mesh (gru4rec_jax.sharding.parse_mesh).")
flags.DEFINE_float("device_memory_gib", 2.0, "Memory of one (simulated) device, GiB.")
flags.DEFINE_integer("chunk_steps", 16, "Training steps per chunk.")
flags.DEFINE_integer("chunks", 3, "Training chunks run.")
flags.DEFINE_integer("eval_events", 256, "About this many evaluated events.")
flags.DEFINE_integer("eval_batch_size", 64, "Evaluation lanes.")
flags.DEFINE_string("json_out", "", "Write the report as JSON here.")
FLAGS = flags.FLAGS

GIB = 1 << 30


def state_bytes(n_items: int, h: int) -> tuple[int, int]:
    """(item tables with accumulator and velocity, dense GRU weights with theirs), float32, shared embedding."""
    tables = (n_items * h + n_items) * 4 * 3
    dense = (h * 3 * h + h * 2 * h + h * h + 3 * h) * 4 * 3
    return tables, dense


def run() -> dict:
    import jax
    import numpy as np

    from experiments.benchmark_configs import CONFIGS
    from gru4rec_jax import batching, evaluation, model, networks, sampling, sharding, synthetic, training

    jax.config.update("jax_default_matmul_precision", "highest")
    spec = sharding.parse_mesh(FLAGS.mesh)
    if spec is None:
        raise ValueError("--mesh must name a mesh")
    mesh = sharding.make_mesh(spec)
    n, h = FLAGS.items, FLAGS.h
    limit = FLAGS.device_memory_gib * GIB
    tables, dense = state_bytes(n, h)
    # Replicated on every device: the sampler's alias table (keep f32, alias i32) and log-support (f32).
    replicated = n * (4 + 4 + 4)
    rows = sharding.padded_rows(n, mesh)
    per_device = tables * rows // n // spec.items + dense + replicated
    report = {
        "items": n, "h": h, "mesh": str(spec), "devices": jax.device_count(),
        "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
        "device_memory_gib": FLAGS.device_memory_gib,
        "one_device_state_gib": (tables + dense) / GIB,
        "one_device_state_and_sampler_gib": (tables + dense + replicated) / GIB,
        "per_device_planned_gib": per_device / GIB,
    }
    print(json.dumps(report, indent=1), flush=True)
    if tables + dense <= limit:
        raise ValueError(f"the state ({(tables + dense) / GIB:.2f} GiB) fits one {FLAGS.device_memory_gib} GiB "
                         f"device: nothing to show; lower --device_memory_gib")
    if per_device > limit:
        raise ValueError(f"each device would need {per_device / GIB:.2f} GiB > --device_memory_gib")

    loss, _, batch_size, n_sample, extra = CONFIGS["rsc15_xe"]
    model_config = model.ModelConfig(n_items=n, layers=(h,))
    config = training.TrainConfig(loss=loss, batch_size=batch_size, n_sample=n_sample,
                                  chunk_steps=FLAGS.chunk_steps, table_update="rows", **extra)
    t0 = time.perf_counter()
    state = sharding.init_state(lambda key: training.init_train_state(key, model_config),
                                networks.network_for(model_config).item_table_keys, jax.random.PRNGKey(1), n, mesh)
    jax.block_until_ready(state)
    report["init_seconds"] = time.perf_counter() - t0
    state_per_device = sharding.per_device_bytes(state)

    steps = FLAGS.chunk_steps * FLAGS.chunks
    sessions = synthetic.generate_sessions(int(steps * batch_size / 4 * 1.1) + batch_size, n, seed=0)
    schedule = batching.session_parallel_schedule(sessions, batch_size)
    host_chunks = batching.pad_into_chunks(
        {name: getattr(schedule, name) for name in ("inputs", "targets", "active", "reset")}, FLAGS.chunk_steps)
    lanes, rep = sharding.lane_sharding(mesh, 2, 1), sharding.replicated(mesh)
    support = np.maximum(sampling.item_support(sessions.items, n), 1.0)
    sampler = jax.tree.map(lambda x: sharding.put(x, rep), sampling.alias_table(support, config.sample_alpha))
    log_support = sharding.put(np.log(support).astype(np.float32), rep)
    run_key = sharding.put(np.asarray(jax.random.PRNGKey(0)), rep)
    hidden = [sharding.put(np.zeros((batch_size, h), np.float32), sharding.lane_sharding(mesh, 2, 0))]
    chunk_of = lambda c: {k: sharding.put(a[c], lanes) for k, a in host_chunks.items()}  # noqa: E731
    t0 = time.perf_counter()
    train_chunk = training.compile_train_chunk(
        training.make_train_chunk(model_config, config, mesh), state, hidden, chunk_of(0), run_key, sampler,
        log_support, mesh=mesh)
    report["compile_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    losses, events = [], 0
    for c in range(min(FLAGS.chunks, host_chunks["inputs"].shape[0])):
        state, hidden, stats = train_chunk(state, hidden, chunk_of(c), run_key, sampler, log_support)
        losses.append(float(stats[0]) / max(int(stats[1]), 1))
        events += int(stats[2])
    report["train_seconds"] = time.perf_counter() - t0
    report["train_events"] = events
    report["train_losses"] = losses

    test = synthetic.generate_sessions(max(FLAGS.eval_events // 4, 1), n, seed=1)
    t0 = time.perf_counter()
    metrics = evaluation.evaluate(state.params, model_config, test, cutoffs=(20,),
                                  batch_size=FLAGS.eval_batch_size, mesh=mesh)
    report["eval_seconds"] = time.perf_counter() - t0
    report["eval_events"] = metrics["n_eval_events"]
    report["recall@20"] = metrics["recall@20"]

    with_sampler = sharding.per_device_bytes((state, sampler, log_support))
    report["per_device_state_gib"] = {d: b / GIB for d, b in state_per_device.items()}
    report["per_device_state_and_sampler_gib"] = {d: b / GIB for d, b in with_sampler.items()}
    report["max_per_device_gib"] = max(with_sampler.values()) / GIB
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in mesh.devices.flat]
    report["device_peak_gib"] = None if None in peaks else [p / GIB for p in peaks]
    report["host_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    report["fits"] = report["max_per_device_gib"] <= FLAGS.device_memory_gib and (
        report["device_peak_gib"] is None or max(report["device_peak_gib"]) <= FLAGS.device_memory_gib)
    return report


def main(argv):
    del argv
    # Simulated CPU devices must be asked for before JAX starts (no effect on GPUs/TPUs);
    # the mesh is validated later, by gru4rec_jax.sharding.
    size = math.prod(int(s) for s in re.findall(r":(\d+)", FLAGS.mesh)) or 1
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={size}").strip()
    try:
        report = run()
    except ValueError as error:
        sys.exit(f"error: {error}")
    print(json.dumps(report, indent=1))
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    app.run(main)
