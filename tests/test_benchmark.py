"""experiments.benchmark end to end on a tiny shape: its table, its JSON and its one-line errors."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--chunk_steps=2", "--timed_chunks=2", "--eval_events=64", "--eval_batch_size=8", "--eval_runs=2"]


def _benchmark(*args):
    return subprocess.run([sys.executable, "-m", "experiments.benchmark", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.host_process
def test_benchmark_writes_one_measured_row_per_configuration_and_size(tmp_path):
    out = tmp_path / "bench.json"
    ran = _benchmark("--configs=rsc15_xe", "--items=50,70", f"--json_out={out}", *TINY)
    assert ran.returncode == 0, ran.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["config"], r["items"], r["h"], r["batch_size"]) for r in rows] == [
        ("rsc15_xe", 50, 100, 32), ("rsc15_xe", 70, 100, 32)]
    for r in rows:
        for key in ("train_events_per_sec", "train_batches_per_sec", "compile_seconds", "eval_events_per_sec",
                    "eval_over_matmul", "peak_bytes"):
            assert r[key] > 0, key
        # 32 lanes per step, every lane active in the timed chunks' full steps.
        assert r["train_events_per_sec"] / r["train_batches_per_sec"] == pytest.approx(32, rel=0.05)
        # Parameters + optimizer state: Wy, By and the GRU, each three times, and the step counter.
        n, h = r["items"], r["h"]
        gru = h * 3 * h + h * 2 * h + h * h + 3 * h
        assert r["state_bytes"] == 3 * 4 * (n * (h + 1) + gru) + 4
    printed = [line for line in ran.stdout.splitlines() if line.startswith("| rsc15_xe |")]
    assert [line.split("|")[2].strip() for line in printed] == ["50", "70"]


@pytest.mark.host_process
@pytest.mark.parametrize("args, message", [
    (["--configs=nope"], "error: unknown configuration(s) nope; choose from"),
    (["--items=3k"], "error: --items must be integers, got 3k"),
])
def test_benchmark_rejects_bad_flags_in_one_line(args, message):
    ran = _benchmark(*args)
    assert ran.returncode != 0
    assert ran.stderr.strip().splitlines()[-1].startswith(message)
