"""experiments.benchmark and experiments.profile_step end to end on tiny shapes."""

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
                    "eval_over_matmul", "train_peak_bytes", "eval_peak_bytes"):
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


@pytest.mark.host_process
def test_profile_step_lists_the_step_and_the_work_outside_it():
    ran = subprocess.run([sys.executable, "-m", "experiments.profile_step", "--config=rsc15_xe", "--items=60",
                          "--steps=8", "--top=4"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = ran.stdout.splitlines()
    assert lines[0].startswith("rsc15_xe, 60 items, 8 steps on ")
    total = next(line for line in lines if line.endswith("all per-step operations (profiler overhead included)"))
    listed = lines[2:lines.index(total)]
    assert len(listed) == 4 and float(total.split()[0]) >= sum(float(line.split()[0]) for line in listed) > 0
    assert any(line.startswith("by part of the step: ") and "loss_and_gradients" in line for line in lines)
    assert any("us/step outside the step" in line for line in lines)
