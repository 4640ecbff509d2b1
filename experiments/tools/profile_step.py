r"""Where the time of one training step goes, per compiled operation.

    python -m experiments.tools.profile_step --config=rsc15_xe --items=3000

Runs ``--steps`` training steps of a benchmark configuration under
``jax.profiler``, then prints the device time per step of each XLA operation
(top ``--top``), with the HLO instruction it came from, how much of the wall
time some operation was running (the rest goes to the runtime between
operations), and the chunk's work outside the scanned step, spread over its
steps. On CPU it enables
XLA's per-operation trace events (``--xla_cpu_enable_xprof_traceme``).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile

# Per-operation trace events on CPU must be switched on before JAX starts.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

from absl import app, flags  # noqa: E402

from experiments.benchmark_configs import CONFIGS  # noqa: E402

flags.DEFINE_enum("config", "rsc15_xe", list(CONFIGS), "Benchmark configuration.")
flags.DEFINE_integer("items", 3000, "Catalogue size.")
flags.DEFINE_integer("steps", 128, "Profiled training steps (one chunk).")
flags.DEFINE_integer("top", 25, "Operations to list.")
FLAGS = flags.FLAGS

# Host-side bookkeeping events that are not operations of the step.
_NOT_OPS = ("$", "Thunk", "Task", "Slinky", "np.", "PjRt", "CommonPjRt", "Pjit", "Execute", "Compile", "Codegen")


def _source_of_instructions(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the JAX operation it came from (the tail of its op_name)."""
    source = {}
    for match in re.finditer(r"%([\w.-]+) = [^\n]*?op_name=\"([^\"]+)\"", hlo_text):
        path = match.group(2).replace("jit(train_chunk)/", "").replace("while/body/", "")
        path = path.replace("closed_call/", "")
        # Keep the training step's named scope (gather_rows, loss_and_gradients, ...) and the op.
        parts = path.split("/")
        source[match.group(1)] = parts[0] + ("/.../" if len(parts) > 2 else "/") + parts[-1]
    return source


def _wall_and_covered(spans: list[tuple[float, float]]) -> tuple[float, float]:
    """The time from the first (start, end) span's start to the last one's end, and how much of it
    at least one span covers."""
    spans = sorted(spans)
    covered, (start, end) = 0.0, spans[0]
    for span_start, span_end in spans[1:]:
        if span_start > end:
            covered += end - start
            start, end = span_start, span_end
        else:
            end = max(end, span_end)
    covered += end - start
    # Spans are merged in order of their starts, so the last merged end is the latest end.
    return end - spans[0][0], covered


def main(argv):
    del argv
    import jax

    from gru4rec_jax import batching, model, sampling, synthetic, training

    loss, h, batch_size, n_sample, extra = CONFIGS[FLAGS.config]
    sessions = synthetic.generate_sessions(FLAGS.steps * batch_size // 3 + batch_size, FLAGS.items, seed=0)
    model_config = model.ModelConfig(n_items=FLAGS.items, layers=(h,))
    config = training.TrainConfig(loss=loss, batch_size=batch_size, n_sample=n_sample, **extra)
    schedule = batching.session_parallel_schedule(sessions, batch_size)
    chunk = jax.tree.map(lambda a: a[0], jax.device_put(schedule.padded_chunks(FLAGS.steps)))
    support = sampling.item_support(sessions.items, FLAGS.items) + 1.0
    sampler = sampling.alias_table(support, config.sample_alpha)
    log_support = jax.numpy.log(jax.numpy.asarray(support, jax.numpy.float32))
    key = jax.random.PRNGKey(0)
    state = training.init_train_state(jax.random.PRNGKey(1), model_config)
    hidden = model.zero_hidden(model_config, batch_size)
    train_chunk = training.compile_train_chunk(
        training.make_train_chunk(model_config, config), state, hidden, chunk, key, sampler, log_support)
    source = _source_of_instructions(train_chunk.as_text())
    state, hidden, stats = train_chunk(state, hidden, chunk, key, sampler, log_support)  # warm up
    jax.block_until_ready(stats)
    n_steps = int(stats[1])

    trace_dir = tempfile.mkdtemp(prefix="gru4rec_profile_")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    state, hidden, stats = train_chunk(state, hidden, chunk, key, sampler, log_support)
    jax.block_until_ready(stats)
    jax.profiler.stop_trace()

    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))[-1]
    trace = json.load(gzip.open(path))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    total, count = collections.Counter(), collections.Counter()
    spans = []
    for event in events:
        name = event.get("name", "")
        if event.get("ph") == "X" and not name.startswith(_NOT_OPS):
            total[name] += event.get("dur", 0.0)
            count[name] += 1
            spans.append((event["ts"], event["ts"] + event.get("dur", 0.0)))
    # Operations of the scanned step run once per step (a few run a fixed
    # number of times per step); chunk-level ones once per call.
    per_step = {n: d / n_steps for n, d in total.items() if count[n] >= n_steps}
    device = jax.devices()[0]
    print(f"{FLAGS.config}, {FLAGS.items} items, {n_steps} steps on {device.platform}:{device.device_kind}")
    print(f"{'us/step':>9}  {'share':>6}  {'operation':32s} from")
    all_ops = sum(per_step.values())
    for name, us in sorted(per_step.items(), key=lambda kv: -kv[1])[: FLAGS.top]:
        print(f"{us:9.1f}  {100 * us / all_ops:5.1f}%  {name:32s} {source.get(name, '')}")
    print(f"{all_ops:9.1f}  100.0%  all per-step operations (profiler overhead included)")
    by_scope = collections.Counter()
    for name, us in per_step.items():
        by_scope[source.get(name, "?").split("/")[0]] += us
    print("by part of the step: " + ", ".join(
        f"{scope} {100 * us / all_ops:.0f}%" for scope, us in by_scope.most_common()))
    wall, covered = _wall_and_covered(spans)
    # Between operations the runtime schedules and synchronises its threads:
    # on the 2-core CPU, 17-21% of a step's time had no operation running.
    print(f"{wall / n_steps:9.1f}  us/step of wall time, {covered / n_steps:.1f} ({100 * covered / wall:.0f}%) "
          "with an operation running on some thread")
    # Work of the chunk outside the scanned step (e.g. drawing all its steps'
    # samples and dropout masks at once), spread over its steps: easy to miss in
    # the list above, and once 7% of the BPR-max step (JAX's looped random hash).
    outside = {n: d / n_steps for n, d in total.items() if count[n] < n_steps}
    print(f"{sum(outside.values()):9.1f}  us/step outside the step (once per chunk, spread over its steps); largest:")
    for name, us in sorted(outside.items(), key=lambda kv: -kv[1])[:5]:
        print(f"{us:9.1f}  {name:32s} {source.get(name, '')}")


if __name__ == "__main__":
    app.run(main)
