"""The absl entry point: outputs, checkpoints, resume, flag files and one-line errors."""

import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--synthetic_sessions=300", "--synthetic_items=50", "--batch_size=8", "--n_sample=16",
         "--layers=16", "--eval_batch_size=64"]


def run_cli(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def _error_line(result):
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines, "no error message"
    assert lines[-1].startswith("error: ") or "Flags parsing error" in lines[-1] or "FATAL" in lines[-1], lines
    assert "Traceback" not in result.stderr
    return lines[-1]


def test_train_evaluate_save_resume(tmp_path):
    metrics_path, ckpt = tmp_path / "m.json", tmp_path / "ckpt"
    run_cli(*SMALL, "--n_epochs=2", f"--save_path={ckpt}", f"--metrics_out={metrics_path}")
    metrics = json.loads(metrics_path.read_text())
    for k in (1, 5, 10, 20):
        # 1/rank <= 1/log2(rank + 1) <= 1 for every rank >= 1.
        assert 0.0 <= metrics[f"recall@{k}"] <= 1.0
        assert 0.0 <= metrics[f"mrr@{k}"] <= metrics[f"ndcg@{k}"] <= metrics[f"recall@{k}"]
    assert not any(key.startswith("coverage@") for key in metrics)  # opt-in
    assert len(metrics["epoch_losses"]) == 2 and metrics["train_events_per_sec"] > 0
    assert metrics["n_eval_events"] > 0

    # Evaluate only: same metrics, no training; with item coverage.
    again = tmp_path / "again.json"
    out = run_cli(f"--load_path={ckpt}", f"--metrics_out={again}", "--item_coverage")
    evaluated = json.loads(again.read_text())
    assert evaluated["recall@20"] == metrics["recall@20"] and evaluated["train_events_per_sec"] is None
    assert evaluated["ndcg@20"] == metrics["ndcg@20"]
    coverage = [evaluated[f"coverage@{k}"] for k in (1, 5, 10, 20)]
    assert 0.0 < coverage[0] <= coverage[1] <= coverage[2] <= coverage[3] <= 1.0
    assert "NDCG@20: " in out.stdout and "Coverage@20: " in out.stdout
    assert "epoch" not in out.stdout.split("restored")[-1].split("evaluation")[0].replace("epoch 2", "")

    # Resume to 3 epochs == training 3 epochs straight.
    resumed, straight = tmp_path / "resumed.json", tmp_path / "straight.json"
    run_cli(f"--load_path={ckpt}", "--n_epochs=3", f"--metrics_out={resumed}")
    run_cli(*SMALL, "--n_epochs=3", f"--metrics_out={straight}")
    r, s = json.loads(resumed.read_text()), json.loads(straight.read_text())
    assert r["epoch_losses"] == s["epoch_losses"]
    assert r["recall@20"] == s["recall@20"] and r["mrr@20"] == s["mrr@20"]


def test_refuses_to_overwrite_checkpoints(tmp_path):
    ckpt = tmp_path / "ckpt"
    run_cli(*SMALL, "--n_epochs=1", f"--save_path={ckpt}")
    before = sorted(glob.glob(str(ckpt / "**"), recursive=True))
    line = _error_line(run_cli(*SMALL, "--n_epochs=1", f"--save_path={ckpt}", check=False))
    assert line == (f"error: {ckpt} already holds checkpoints (up to epoch 1); to resume them, add "
                    f"--load_path={ckpt}; to start another run, choose another --save_path")
    assert sorted(glob.glob(str(ckpt / "**"), recursive=True)) == before


def _contents(directory):
    return {path: open(path, "rb").read() for path in glob.glob(str(directory / "**"), recursive=True)
            if os.path.isfile(path)}


def test_damaged_checkpoint_is_a_one_line_error_and_an_older_epoch_resumes(tmp_path):
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "m.json"
    run_cli(*SMALL, "--n_epochs=2", f"--save_path={ckpt}", f"--metrics_out={metrics}")
    manifest = ckpt / "2" / "state" / "manifest.ocdbt"
    manifest.write_bytes(bytes(range(256))[: len(manifest.read_bytes())])  # overwritten with garbage
    damaged = f"error: {ckpt}: the checkpoint of epoch 2 is damaged or unreadable ("
    hint = "; epoch 1 is also there: --load_epoch=1 loads it"
    for args in ([], ["--n_epochs=3"]):  # evaluating, resuming
        line = _error_line(run_cli(f"--load_path={ckpt}", *args, check=False))
        assert line.startswith(damaged) and line.endswith(hint), line

    # Resuming from epoch 1 must not write over (or delete) the later epoch in the same directory.
    contents = _contents(ckpt)
    line = _error_line(run_cli(f"--load_path={ckpt}", "--load_epoch=1", "--n_epochs=3", check=False))
    assert line == (f"error: {ckpt} holds checkpoints after epoch 1 (up to epoch 2); "
                    f"to resume from epoch 1, choose another --save_path")
    assert _contents(ckpt) == contents
    # Into another directory it resumes, and retrains epoch 2 exactly.
    resumed = tmp_path / "resumed.json"
    run_cli(f"--load_path={ckpt}", "--load_epoch=1", "--n_epochs=3", f"--save_path={tmp_path / 'again'}",
            f"--metrics_out={resumed}")
    losses = json.loads(resumed.read_text())["epoch_losses"]
    assert len(losses) == 3 and losses[:2] == json.loads(metrics.read_text())["epoch_losses"]


def _tsv(path, header, rows):
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_file", "no such file"),
        ("missing_column", "missing column(s) Time"),
        ("bad_time", "non-numeric Time"),
        ("empty", "empty file"),
        ("unknown_test_items", "none of its"),
        ("bad_flag", "batch_size must be >= 1"),
        ("bad_cutoffs", "--cutoffs must be a comma-separated list of integers"),
        ("bad_layers", "layers must be positive"),
    ],
)
def test_bad_input_gives_one_line_error(tmp_path, case, expected):
    good = _tsv(tmp_path / "train.tsv", ["SessionId", "ItemId", "Time"],
                [(1, "a", 1), (1, "b", 2), (2, "a", 3), (2, "c", 4)])
    args = {
        "missing_file": [f"--train_path={tmp_path / 'nope.tsv'}"],
        "missing_column": [f"--train_path={_tsv(tmp_path / 'm.tsv', ['SessionId', 'ItemId'], [(1, 'a')])}"],
        "bad_time": [f"--train_path={_tsv(tmp_path / 'b.tsv', ['SessionId', 'ItemId', 'Time'], [(1, 'a', 'noon')])}"],
        "empty": [f"--train_path={tmp_path / 'e.tsv'}"],
        "unknown_test_items": [f"--train_path={good}", "--test_path=" + _tsv(
            tmp_path / "t.tsv", ["SessionId", "ItemId", "Time"], [(5, "zz", 1), (5, "yy", 2)])],
        "bad_flag": ["--batch_size=0"],
        "bad_cutoffs": ["--cutoffs=5,x"],
        "bad_layers": ["--layers=0"],
    }[case]
    (tmp_path / "e.tsv").write_text("")
    line = _error_line(run_cli(*args, "--n_epochs=1", "--n_sample=4", "--batch_size=" + ("0" if case == "bad_flag" else "2"),
                               check=False))
    assert expected in line


def test_flag_files_build_valid_configs():
    """Every flag file in experiments/configs parses and yields a valid configuration."""
    from absl import flags

    from experiments import train
    from gru4rec_jax import losses

    paths = sorted(glob.glob(os.path.join(ROOT, "experiments", "configs", "*.cfg")))
    assert len(paths) >= 10
    for path in paths:
        try:
            flags.FLAGS(["prog", f"--flagfile={path}"])
            config = train.config_from_flags()
        finally:
            flags.FLAGS.unparse_flags()
        assert config.train.n_epochs == (20 if "control_20epochs" in path else 10), path
        assert config.train.loss in losses.LOSSES, path


@pytest.mark.parametrize("args, message", [
    (["--mesh=model:2"], "error: --mesh: expected axis:size"),
    (["--mesh=items:0"], "error: --mesh: the size of axis 'items' must be a positive integer"),
    (["--mesh=items:2"], "error: --mesh data:1,items:2 needs 2 devices, but 1 are available"),
    (["--num_processes=2", "--process_id=0"], "error: --num_processes and --process_id need --coordinator_address"),
])
def test_bad_mesh_and_host_flags_are_one_line_errors(args, message):
    assert _error_line(run_cli(*SMALL, *args, check=False)).startswith(message)


def test_batch_must_divide_by_the_data_axis(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run([sys.executable, "-m", "experiments.train", *SMALL, "--mesh=data:2", "--batch_size=7"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert _error_line(result) == "error: --batch_size 7 is not divisible by the mesh's data axis (2)"


def test_sharded_run_saves_a_checkpoint_that_one_device_evaluates_alike(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    sharded, single, ckpt = tmp_path / "sharded.json", tmp_path / "single.json", tmp_path / "ckpt"
    result = subprocess.run([sys.executable, "-m", "experiments.train", *SMALL, "--n_epochs=1", "--mesh=items:2",
                             f"--save_path={ckpt}", f"--metrics_out={sharded}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mesh data:1,items:2 over 2 devices" in result.stdout
    run_cli(f"--load_path={ckpt}", f"--metrics_out={single}")
    expected, got = json.loads(sharded.read_text()), json.loads(single.read_text())
    for k in (1, 5, 10, 20):
        assert got[f"recall@{k}"] == pytest.approx(expected[f"recall@{k}"], abs=1e-6)
        assert got[f"mrr@{k}"] == pytest.approx(expected[f"mrr@{k}"], abs=1e-6)
