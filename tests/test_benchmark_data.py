"""experiments.benchmark_data: the generated files are what they claim, and the stages run end to end (tiny)."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gru4rec_jax import data, preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (experiments.benchmark_data defines absl flags: imported here it would clash with other tests' modules.)
OTTO_START_MS, OTTO_SPAN_MS, OTTO_ITEMS = 1_659_304_800_000, 28 * 86_400_000, 1_855_603


def _generate(tmp_path, *flags):
    ran = subprocess.run([sys.executable, "-m", "experiments.benchmark_data", "--generate_only",
                          f"--data_dir={tmp_path}", *flags], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    return dict(line.split(": ", 1) for line in ran.stdout.splitlines())


@pytest.mark.host_process
def test_generated_rsc15_files(tmp_path):
    """Raw yoochoose-like lines; the TSV holds the sessions of >= 2 clicks, as the converter reads them."""
    paths = _generate(tmp_path, "--events=20000", "--seed=3")
    raw, tsv = paths["raw"], paths["tsv"]
    with open(raw, newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 20_000
    assert all(len(r) == 4 and r[1].endswith("Z") and r[0].isdigit() and r[2].isdigit() for r in rows)
    lengths = {}
    for r in rows:
        lengths[r[0]] = lengths.get(r[0], 0) + 1
    assert 0.05 < sum(n == 1 for n in lengths.values()) / len(lengths) < 0.25  # single clicks, as in RSC15
    converted = preprocess.read_rsc15(raw)
    in_tsv = np.asarray([lengths[s] > 1 for s in converted.session_ids.tolist()])
    table = data.read_events(tsv)
    assert len(table) == int(in_tsv.sum())
    for column in ("session_ids", "item_ids", "times"):
        np.testing.assert_array_equal(getattr(table, column), getattr(converted, column)[in_tsv])


@pytest.mark.host_process
def test_generated_otto_file(tmp_path):
    path = _generate(tmp_path, "--dataset=otto", "--events=5000", "--seed=4")["raw"]
    with open(path) as f:
        sessions = [json.loads(line) for line in f]
    events = [e for s in sessions for e in s["events"]]
    assert len(events) == 5_000
    assert [s["session"] for s in sessions] == list(range(len(sessions)))
    assert {e["type"] for e in events} <= {"clicks", "carts", "orders"}
    assert all(OTTO_START_MS <= e["ts"] <= OTTO_START_MS + OTTO_SPAN_MS and 0 <= e["aid"] < OTTO_ITEMS for e in events)
    assert all(all(a["ts"] <= b["ts"] for a, b in zip(s["events"], s["events"][1:])) for s in sessions)


@pytest.mark.host_process
def test_stages_run_in_their_own_processes(tmp_path):
    out = tmp_path / "bench.json"
    ran = subprocess.run([sys.executable, "-m", "experiments.benchmark_data", "--events=20000",
                          "--stages=read,sessions,convert,setup", f"--data_dir={tmp_path}", f"--json_out={out}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    stages = json.loads(out.read_text())["stages"]
    assert set(stages) == {"read", "sessions", "convert", "setup"}
    for result in stages.values():
        assert "error" not in result and result["seconds"] > 0 and result["peak_rss_bytes"] > 0
    assert stages["read"]["events"] == stages["sessions"]["events"] == stages["setup"]["events"]
    assert stages["convert"]["summary"]["raw"]["events"] == 20000
    # 32 lanes: at least (events - sessions) / 32 steps.
    assert 32 * stages["setup"]["n_steps"] >= stages["sessions"]["events"] - stages["sessions"]["sessions"]
    printed = [line.split("|")[1].strip() for line in ran.stdout.splitlines() if line.startswith("| ")]
    assert printed == ["stage", "read", "sessions", "convert", "setup"]


@pytest.mark.host_process
def test_otto_converter_stage(tmp_path):
    out = tmp_path / "bench.json"
    ran = subprocess.run([sys.executable, "-m", "experiments.benchmark_data", "--dataset=otto", "--events=50000",
                          f"--json_out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    stages = json.loads(out.read_text())["stages"]
    assert list(stages) == ["convert"] and "error" not in stages["convert"]
    raw = stages["convert"]["summary"]["raw"]
    assert 0.85 * 50000 < raw["events"] < 0.95 * 50000  # the clicks: 90 % of the events
