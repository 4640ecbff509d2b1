"""experiments.benchmark and experiments.tools.profile_step end to end on tiny shapes."""

import json
import os
import re
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
    ran = subprocess.run([sys.executable, "-m", "experiments.tools.profile_step", "--config=rsc15_xe", "--items=60",
                          "--steps=8", "--top=4"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = ran.stdout.splitlines()
    assert lines[0].startswith("rsc15_xe, 60 items, 8 steps on ")
    total = next(line for line in lines if line.endswith("all per-step operations (profiler overhead included)"))
    listed = lines[2:lines.index(total)]
    assert len(listed) == 4 and float(total.split()[0]) >= sum(float(line.split()[0]) for line in listed) > 0
    assert any(line.startswith("by part of the step: ") and "loss_and_gradients" in line for line in lines)
    assert any("us/step outside the step" in line for line in lines)
    wall_line = next(line for line in lines if line.endswith("with an operation running on some thread"))
    wall, covered, share = re.match(r"\s*([\d.]+)  us/step of wall time, ([\d.]+) \((\d+)%\)", wall_line).groups()
    assert 0 < float(covered) <= float(wall)
    assert abs(int(share) - 100 * float(covered) / float(wall)) <= 1


def _row_memory(*args):
    return subprocess.run([sys.executable, "-m", "experiments.tools.row_memory", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.host_process
def test_row_memory_times_reads_and_writes_per_catalogue_size():
    ran = _row_memory("--items=40,64", "--units=8", "--rows=16", "--tables=2", "--steps=3", "--repeats=2")
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = ran.stdout.splitlines()
    assert lines[0].startswith("2 tables of h 8, 16 rows per step (0.00 MiB), 3 steps per loop, on ")
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert [r[0].strip() for r in rows] == ["40", "64"]
    for r in rows:
        read_us, read_rate, both_us, both_rate = (float(x) for x in r[2:6])
        assert read_us > 0 and both_us > 0
        # The rates are the rows' bytes (2 tables x 16 rows x 8 floats), once read, twice read and written.
        assert read_rate == pytest.approx(2 * 16 * 8 * 4 / read_us / 1e3, rel=0.1, abs=0.06)
        assert both_rate == pytest.approx(2 * 2 * 16 * 8 * 4 / both_us / 1e3, rel=0.1, abs=0.06)
    assert rows[0][6].strip() == "+0" and rows[0][7].strip() == "+0"


@pytest.mark.host_process
@pytest.mark.parametrize("args, message", [
    (["--items=3k"], "error: --items must be integers, got 3k"),
    (["--items=100", "--rows=200"], "error: every --items size must hold the 200 distinct --rows, got 100"),
    (["--steps=0"], "error: --steps must be at least 1, got 0"),
])
def test_row_memory_rejects_bad_flags_in_one_line(args, message):
    ran = _row_memory(*args)
    assert ran.returncode != 0
    assert ran.stderr.strip().splitlines()[-1] == message
