r"""Speed and memory of the data pipeline at full size, on generated files shaped like the public datasets.

    python -m experiments.benchmark_data --events=31000000            # RSC15-sized: read, sessions, convert, set-up
    python -m experiments.benchmark_data --dataset=otto --events=216000000 --stages=convert
    python -m experiments.benchmark_data --events=31000000 --generate_only --data_dir=/data/synthetic

Generates (into --data_dir, or a temporary folder removed at the end) a raw
file in the public format and, for rsc15, the converted training table:

- rsc15: ``yoochoose-clicks.dat``-like lines ``session,ISO time,item,category``
  (sessions 1 to 14 % single clicks, ~3.6 clicks on average; ~37,500 items
  with a Zipf-like popularity plus a rare tail that the filters drop; clicks
  follow item-to-item successors, so that a model has something to learn) and
  ``train.tsv`` (``SessionId ItemId Time``, its sessions of 2 or more clicks,
  as the converter writes them);
- otto: ``train.jsonl``-like lines (OTTO's 1,855,603 items; ~16.8 events per
  session; 90 % clicks, 8 % carts, 2 % orders; ms timestamps over 4 weeks).

Then each stage runs in its own subprocess, so that its peak resident memory
is its own, and the table gives seconds and that peak:

- ``read``: :func:`gru4rec_jax.data.read_events` of the training TSV;
- ``sessions``: the read, then the item map and :func:`~gru4rec_jax.data.build_sessions`
  (seconds of these two; the peak of the whole process);
- ``pandas``: ``pandas.read_csv`` of the same TSV, for comparison (skipped
  when pandas is not installed; it is no dependency of the project);
- ``convert``: what ``experiments.prepare`` does: read the raw file, apply the
  dataset's protocol, write the four splits;
- ``setup``: read and sessions, then one training epoch's set-up: the
  session-parallel schedule, the sampler's alias table, and ``training.fit``
  on the schedule's first chunk (compile + that chunk), with the RSC15
  cross-entropy configuration.

With --dataset=otto only ``convert`` applies. Timings on a shared machine are
noisy; compare the ratios of one run.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from absl import app, flags

STAGES = ("read", "sessions", "pandas", "convert", "setup")

flags.DEFINE_enum("dataset", "rsc15", ["rsc15", "otto"], "Shape and raw format of the generated data.")
flags.DEFINE_integer("events", 31_000_000, "Events (clicks for rsc15, events of every type for otto) to generate.",
                     lower_bound=1000)
flags.DEFINE_integer("seed", 0, "Seed of the generated data.")
flags.DEFINE_list("stages", list(STAGES), f"Stages to run, among {', '.join(STAGES)} (otto: convert).")
flags.DEFINE_string("data_dir", "", "Where the generated files go (kept, and reused when already there); "
                    "empty: a temporary folder, removed at the end.")
flags.DEFINE_bool("generate_only", False, "Only generate the files into --data_dir and print their paths.")
flags.DEFINE_string("json_out", "", "Write the results as JSON here.")
flags.DEFINE_string("single", "", "Internal: run one stage in this process ('stage:path').")
FLAGS = flags.FLAGS

RSC15_ITEMS = 37_500  # items of the RSC15 training data after filtering
RSC15_RARE_ITEMS = 15_000  # and the raw file's rare items, that filtering drops
RSC15_START_MS = 1_396_310_400_000  # 2014-04-01
RSC15_SPAN_MS = 183 * 86_400_000
OTTO_ITEMS = 1_855_603
OTTO_START_MS = 1_659_304_800_000  # 2022-08-01 (UTC+2)
OTTO_SPAN_MS = 28 * 86_400_000
SESSIONS_PER_BLOCK = 250_000


# ---------------------------------------------------------------------------
# Generating.


def _popularity_sampler(rng: np.random.Generator, n_items: int, exponent: float, offset: float):
    """A function drawing item ranks with P(rank k) ~ (k + offset) ** -exponent."""
    cumulative = np.cumsum((np.arange(n_items) + offset) ** -exponent)
    cumulative /= cumulative[-1]
    return lambda size: np.minimum(np.searchsorted(cumulative, rng.random(size)), n_items - 1)


def _session_lengths(rng: np.random.Generator, n_events: int, draw) -> np.ndarray:
    """Lengths drawn by ``draw(size)`` until they hold ``n_events``; the last one cut to fit."""
    chunks, total = [], 0
    while total < n_events:
        lengths = draw(max(1000, (n_events - total) // 3))
        chunks.append(lengths)
        total += int(lengths.sum())
    lengths = np.concatenate(chunks)
    end = np.cumsum(lengths)
    n = int(np.searchsorted(end, n_events)) + 1
    lengths = lengths[:n].copy()
    lengths[-1] -= int(end[n - 1]) - n_events
    return lengths[lengths > 0]


def _within_session(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(session index, position in the session) of every event."""
    session = np.repeat(np.arange(len(lengths)), lengths)
    first = np.cumsum(lengths) - lengths
    return session, np.arange(len(session)) - first[session]


def _session_times(rng: np.random.Generator, starts_ms: np.ndarray, lengths: np.ndarray, gap_ms,
                   period_ms: tuple[int, int]) -> np.ndarray:
    """Event times (ms): the session's start plus the sum of gaps drawn by ``gap_ms(size)``.

    Sessions end in ``period_ms`` (as in a dump of a period): one that would run
    past its end starts earlier, one longer than the period is compressed into it.
    """
    session, position = _within_session(lengths)
    gaps = gap_ms(len(session))
    gaps[position == 0] = 0
    within = np.cumsum(gaps)
    within -= np.repeat(within[np.cumsum(lengths) - lengths], lengths)
    span = within[np.cumsum(lengths) - 1]
    period = period_ms[1] - period_ms[0]
    too_long = span > period
    if too_long.any():
        scale = np.where(too_long, period / np.maximum(span, 1), 1.0)  # (float: ms * ms overflows int64)
        within = np.minimum(np.floor(within * scale[session]).astype(np.int64), period)
        span = np.minimum(span, period)
    starts_ms = np.minimum(starts_ms, period_ms[1] - span)
    return starts_ms[session] + within


def _write_lines(f, lines: pa.Array) -> None:
    """Writes the strings of ``lines`` (each ending in a newline) one after another, straight from the buffer."""
    lines = pa.concat_arrays([lines.cast(pa.large_string())])  # offset 0, 64-bit offsets
    offsets = np.frombuffer(lines.buffers()[1], np.int64, len(lines) + 1)
    f.write(memoryview(lines.buffers()[2])[int(offsets[0]):int(offsets[-1])])


def generate_rsc15(n_events: int, raw_path: str, tsv_path: str, seed: int = 0) -> dict[str, int]:
    """Writes a yoochoose-clicks-like raw file and its training TSV; returns their sizes."""
    from gru4rec_jax.data import format_floats

    rng = np.random.default_rng(seed)
    popular = _popularity_sampler(rng, RSC15_ITEMS, 1.0, 10.0)
    successors = popular(RSC15_ITEMS * 4).reshape(RSC15_ITEMS, 4)
    labels = 214_000_000 + rng.choice(900_000, RSC15_ITEMS + RSC15_RARE_ITEMS, replace=False)

    def draw_lengths(size):
        return np.where(rng.random(size) < 0.14, 1, 1 + rng.geometric(0.334, size))

    lengths = _session_lengths(rng, n_events, draw_lengths)
    starts = np.sort(rng.integers(RSC15_START_MS, RSC15_START_MS + RSC15_SPAN_MS, len(lengths)))
    sizes = {"raw_events": 0, "tsv_events": 0, "sessions": len(lengths)}
    with open(raw_path, "wb") as raw, open(tsv_path, "wb") as tsv:
        tsv.write(b"SessionId\tItemId\tTime\n")
        for a in range(0, len(lengths), SESSIONS_PER_BLOCK):
            block = lengths[a:a + SESSIONS_PER_BLOCK]
            session, position = _within_session(block)
            items = popular(len(session))
            follow = rng.random(len(session)) < 0.6
            pick = rng.integers(0, 4, len(session))
            for k in range(1, int(block.max())):
                at = np.flatnonzero((position == k) & follow)
                items[at] = successors[items[at - 1], pick[at]]
            rare = rng.random(len(session)) < 0.001
            items[rare] = RSC15_ITEMS + rng.integers(0, RSC15_RARE_ITEMS, int(rare.sum()))
            times = _session_times(rng, starts[a:a + len(block)], block,
                                   lambda size: rng.exponential(150_000.0, size).astype(np.int64),
                                   (RSC15_START_MS, RSC15_START_MS + RSC15_SPAN_MS))
            columns = {"session": pa.array(a + 1 + session), "time": pc.binary_join_element_wise(
                pc.strftime(pa.array(times, pa.timestamp("ms")), format="%Y-%m-%dT%H:%M:%S"), "Z", ""),
                "item": pa.array(labels[items]), "category": pa.array(np.zeros(len(session), np.int64))}
            options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
            pa_csv.write_csv(pa.table(columns), raw, options)
            in_tsv = np.repeat(block > 1, block)
            pa_csv.write_csv(pa.table({"s": columns["session"].filter(in_tsv), "i": columns["item"].filter(in_tsv),
                                       "t": format_floats(times[in_tsv] / 1000.0)}),
                             tsv, pa_csv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none"))
            sizes["raw_events"] += len(session)
            sizes["tsv_events"] += int(in_tsv.sum())
    return sizes


def generate_otto(n_events: int, path: str, seed: int = 0) -> dict[str, int]:
    """Writes an OTTO-train.jsonl-like file; returns its size."""
    rng = np.random.default_rng(seed)
    popular = _popularity_sampler(rng, OTTO_ITEMS, 1.0, 30.0)
    aids = rng.permutation(OTTO_ITEMS)
    kinds = pa.array(["clicks", "carts", "orders"])

    def draw_lengths(size):
        return np.clip(np.rint(np.exp(rng.normal(np.log(6.0), 1.44, size))), 2, 500).astype(np.int64)

    def draw_gaps(size):
        long_gap = rng.random(size) < 0.15
        return np.where(long_gap, rng.exponential(86_400_000.0, size), rng.exponential(60_000.0, size)).astype(np.int64)

    lengths = _session_lengths(rng, n_events, draw_lengths)
    starts = np.sort(rng.integers(OTTO_START_MS, OTTO_START_MS + OTTO_SPAN_MS, len(lengths)))
    with open(path, "wb") as f:
        for a in range(0, len(lengths), SESSIONS_PER_BLOCK):
            block = lengths[a:a + SESSIONS_PER_BLOCK]
            times = _session_times(rng, starts[a:a + len(block)], block, draw_gaps,
                                   (OTTO_START_MS, OTTO_START_MS + OTTO_SPAN_MS))
            kind = np.searchsorted([0.9, 0.98], rng.random(len(times)))
            events = pc.binary_join_element_wise(
                '{"aid":', pc.cast(pa.array(aids[popular(len(times))]), pa.string()),
                ',"ts":', pc.cast(pa.array(times), pa.string()),
                ',"type":"', kinds.take(pa.array(kind)), '"}', "")
            offsets = pa.array(np.r_[0, np.cumsum(block)].astype(np.int32))
            joined = pc.binary_join(pa.ListArray.from_arrays(offsets, events), ",")
            lines = pc.binary_join_element_wise(
                '{"session":', pc.cast(pa.array(np.arange(a, a + len(block))), pa.string()),
                ',"events":[', joined, "]}\n", "")
            _write_lines(f, lines)
    return {"events": int(lengths.sum()), "sessions": len(lengths)}


def data_files(data_dir: str, dataset: str, n_events: int, seed: int) -> dict[str, str]:
    """Paths of the generated files (generated unless there already)."""
    os.makedirs(data_dir, exist_ok=True)
    stem = os.path.join(data_dir, f"{dataset}_{n_events}_{seed}")
    if dataset == "rsc15":
        paths = {"raw": stem + "_clicks.dat", "tsv": stem + "_train.tsv"}
        if not all(os.path.exists(p) for p in paths.values()):
            t0 = time.perf_counter()
            sizes = generate_rsc15(n_events, paths["raw"] + ".tmp", paths["tsv"] + ".tmp", seed)
            for path in paths.values():
                os.replace(path + ".tmp", path)
            print(f"generated {sizes} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    else:
        paths = {"raw": stem + "_train.jsonl"}
        if not os.path.exists(paths["raw"]):
            t0 = time.perf_counter()
            sizes = generate_otto(n_events, paths["raw"] + ".tmp", seed)
            os.replace(paths["raw"] + ".tmp", paths["raw"])
            print(f"generated {sizes} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return paths


# ---------------------------------------------------------------------------
# Stages, each in its own process.


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _read_and_group(path: str) -> dict:
    """The training table read, then its item map and sessions; seconds of each."""
    from gru4rec_jax import data

    t0 = time.perf_counter()
    table = data.read_events(path)
    t1 = time.perf_counter()
    item_map = data.ItemMap.from_training(table.items)
    sessions = data.build_sessions(table, item_map, source=path)
    return {"item_map": item_map, "sessions": sessions, "read_seconds": t1 - t0,
            "sessions_seconds": time.perf_counter() - t1}


def run_stage(stage: str, path: str) -> dict:
    """Runs ``stage`` on ``path`` in this process: its seconds (and those of its parts) and peak memory."""
    from gru4rec_jax import data, preprocess  # imported before the clock starts (JAX's start-up is no data work)

    t0 = time.perf_counter()
    if stage == "read":
        table = data.read_events(path)
        result = {"events": len(table), "session_ids": len(table.sessions.values), "item_ids": len(table.items.values)}
    elif stage in ("sessions", "setup"):
        grouped = _read_and_group(path)
        sessions, item_map = grouped.pop("sessions"), grouped.pop("item_map")
        result = {"events": sessions.n_events, "sessions": sessions.n_sessions, "items": len(item_map), **grouped}
        if stage == "setup":
            t0 = time.perf_counter()  # the set-up's own seconds
            result.update(_training_setup(sessions, len(item_map)))
    elif stage == "pandas":
        import pandas  # only here: pandas is no dependency of the project

        t0 = time.perf_counter()
        frame = pandas.read_csv(path, sep="\t", dtype={"SessionId": str, "ItemId": str, "Time": float})
        result = {"events": len(frame)}
    elif stage == "convert":
        dataset = "otto" if path.endswith(".jsonl") else "rsc15"
        splits, summary = preprocess.prepare(dataset, path)
        t1 = time.perf_counter()
        out_dir = tempfile.mkdtemp(prefix="benchmark_data_")
        try:
            preprocess.write_splits(splits, out_dir)
        finally:
            shutil.rmtree(out_dir)
        result = {"write_seconds": time.perf_counter() - t1, "summary": summary}
    else:
        raise ValueError(f"unknown stage {stage!r}")
    result["seconds"] = time.perf_counter() - t0
    result["peak_rss_bytes"] = _peak_rss_bytes()
    return result


def _training_setup(sessions, n_items: int) -> dict:
    """One epoch's set-up with the RSC15 cross-entropy configuration: seconds of each part."""
    import dataclasses

    from gru4rec_jax import batching, sampling, training
    from gru4rec_jax.model import ModelConfig

    config = training.TrainConfig(loss="cross-entropy", batch_size=32, dropout_p_hidden=0.4, learning_rate=0.2,
                                  momentum=0.2, sample_alpha=0.5, logq=1.0, bpreg=0.0, elu_param=0.0,
                                  n_sample=2048, n_epochs=1)
    parts = {}
    t0 = time.perf_counter()
    schedule = batching.session_parallel_schedule(sessions, config.batch_size)
    parts["schedule_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sampling.alias_table(sampling.item_support(sessions.items, n_items), config.sample_alpha)
    parts["alias_table_seconds"] = time.perf_counter() - t0
    # training.fit on the schedule's first chunk: its own set-up (support, alias table, chunks), compile, one chunk.
    chunk_steps = batching.equal_chunk_steps(schedule.n_steps, config.chunk_steps)
    first = dataclasses.replace(schedule, **{f.name: getattr(schedule, f.name)[:chunk_steps]
                                             for f in dataclasses.fields(schedule)})
    messages = []
    t0 = time.perf_counter()
    training.fit(sessions, ModelConfig(n_items=n_items, layers=(100,)), config, schedule=first, log=messages.append)
    parts["fit_first_chunk_seconds"] = time.perf_counter() - t0
    parts.update(n_steps=schedule.n_steps, chunk_steps=chunk_steps,
                 compiled=next((m for m in messages if m.startswith("compiled")), ""))
    return parts


def _run_in_subprocess(stage: str, path: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "experiments.benchmark_data", f"--single={stage}:{path}"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f}"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.single:
        stage, path = FLAGS.single.split(":", 1)
        print(json.dumps(run_stage(stage, path)))
        return
    stages = FLAGS.stages
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise app.UsageError(f"unknown stage(s) {', '.join(unknown)} (known: {', '.join(STAGES)})")
    if FLAGS.dataset == "otto":
        stages = [s for s in stages if s == "convert"]
        if not stages:
            raise app.UsageError("--dataset=otto benchmarks the converter only: --stages=convert")
    if FLAGS.generate_only and not FLAGS.data_dir:
        raise app.UsageError("--generate_only needs --data_dir")
    data_dir = FLAGS.data_dir or tempfile.mkdtemp(prefix="benchmark_data_")
    try:
        paths = data_files(data_dir, FLAGS.dataset, FLAGS.events, FLAGS.seed)
        if FLAGS.generate_only:
            for name, path in paths.items():
                print(f"{name}: {path}")
            return
        results = {}
        print("| stage | file | seconds | peak RSS GiB | details |\n|---|---|---|---|---|")
        for stage in stages:
            if stage == "pandas":
                try:
                    import pandas  # noqa: F401
                except ImportError:
                    print("| pandas | - | - | - | skipped: pandas is not installed |")
                    continue
            path = paths["raw"] if stage == "convert" else paths["tsv"]
            result = _run_in_subprocess(stage, path)
            results[stage] = result
            if "error" in result:
                print(f"| {stage} | {os.path.basename(path)} | - | - | failed: {result['error']} |")
                continue
            details = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in result.items()
                       if k not in ("seconds", "peak_rss_bytes", "summary")}
            if "summary" in result:
                details["filtered"] = result["summary"]["filtered"]
            print(f"| {stage} | {os.path.basename(path)} | {result['seconds']:.1f} | {_gb(result['peak_rss_bytes'])} "
                  f"| {json.dumps(details)} |", flush=True)
        if FLAGS.json_out:
            with open(FLAGS.json_out, "w") as f:
                json.dump({"dataset": FLAGS.dataset, "events": FLAGS.events, "seed": FLAGS.seed, "stages": results},
                          f, indent=2)
    finally:
        if not FLAGS.data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
