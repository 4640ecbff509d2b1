"""Faults: the same seed twice, a run killed and resumed, divergence, what a failing run leaves behind.

The subprocess tests run the real CLI; a killed run is killed with SIGKILL.
Damaged checkpoints are covered in test_checkpoint.py (library) and
test_cli.py (one-line errors).
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import pytest

from gru4rec_jax import checkpoint, experiment, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Epochs of about 2 s on the 2-core CPU (compilation takes longer), so that a
# kill sent as soon as epoch 1's checkpoint appears lands inside epoch 2.
MEDIUM = ["--synthetic_sessions=10000", "--synthetic_items=2000", "--batch_size=32", "--n_sample=2048",
          "--layers=64", "--eval_batch_size=256", "--n_epochs=3"]
SMALL = ["--synthetic_sessions=300", "--synthetic_items=50", "--batch_size=8", "--n_sample=16",
         "--layers=16", "--eval_batch_size=64"]
TIMINGS = ("train_events_per_sec", "train_batches_per_sec", "eval_events_per_sec")


def _cli(args, check=True, prefix=()):
    """Runs ``experiments.train`` (after the Python lines ``prefix``, if any) in a subprocess."""
    command = [sys.executable, "-m", "experiments.train", *args]
    if prefix:
        command = [sys.executable, "-c", "\n".join([*prefix, "from absl import app", "from experiments import train",
                                                    f"sys.argv = ['train'] + {list(args)!r}", "app.run(train.main)"])]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def _results(path) -> dict:
    """The metrics JSON without its timings (the only entries allowed to differ between runs)."""
    metrics = json.loads(open(path).read())
    assert len(metrics["epoch_losses"]) >= 1 and "recall@20" in metrics and "mrr@20" in metrics
    return {k: v for k, v in metrics.items() if k not in TIMINGS}


def _error_line(result) -> str:
    assert result.returncode not in (0, -signal.SIGKILL)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr[-3000:]
    return lines[-1]


def _files(directory) -> dict:
    """Every file under ``directory`` with its bytes."""
    found = {}
    for parent, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, directory)] = f.read()
    return found


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Metrics of MEDIUM trained 3 epochs straight."""
    metrics = tmp_path_factory.mktemp("uninterrupted") / "metrics.json"
    _cli(MEDIUM + [f"--metrics_out={metrics}"])
    results = _results(metrics)
    assert len(results["epoch_losses"]) == 3
    return results


def test_same_seed_gives_identical_results_in_another_process(uninterrupted, tmp_path):
    _cli(MEDIUM + [f"--metrics_out={tmp_path / 'again.json'}"])
    assert _results(tmp_path / "again.json") == uninterrupted


def test_same_seed_gives_identical_results_in_one_process():
    config = experiment.ExperimentConfig(
        data=experiment.DataConfig(synthetic_sessions=300, synthetic_items=50),
        train=training.TrainConfig(batch_size=8, n_sample=16, n_epochs=2, dropout_p_hidden=0.2, momentum=0.3),
        eval=experiment.EvalConfig(batch_size=64), layers=(16,),
    )
    first, second = (experiment.run(config, log=lambda message: None) for _ in range(2))
    strip = lambda metrics: {k: v for k, v in metrics.items() if k not in TIMINGS}  # noqa: E731
    assert len(first["epoch_losses"]) == 2 and strip(first) == strip(second)


def _kill_when_saved(process, step_dir, timeout=300):
    """SIGKILLs ``process`` as soon as the finished checkpoint ``step_dir`` appears."""
    deadline = time.monotonic() + timeout
    while not os.path.isdir(step_dir):
        assert process.poll() is None, f"the run ended (exit {process.returncode}) before {step_dir} appeared"
        assert time.monotonic() < deadline, f"no {step_dir} after {timeout}s"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL


def test_run_killed_in_epoch_2_resumes_to_the_uninterrupted_results(uninterrupted, tmp_path):
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "metrics.json"
    command = MEDIUM + [f"--save_path={ckpt}", f"--metrics_out={metrics}"]
    with open(tmp_path / "killed.log", "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "experiments.train", *command], cwd=ROOT,
                                   stdout=output, stderr=subprocess.STDOUT)
        try:
            _kill_when_saved(process, ckpt / "1")
        finally:
            process.kill()
    # Killed inside epoch 2: epoch 1's checkpoint is there, epoch 2's is not, nor any metrics.
    assert checkpoint.saved_epochs(str(ckpt)) == [1] and not metrics.exists()

    # What a user types: the same command again, with --load_path.
    resumed = _cli(command + [f"--load_path={ckpt}"])
    assert "restored" in resumed.stdout and "resuming" in resumed.stdout
    assert _results(metrics) == uninterrupted
    assert checkpoint.saved_epochs(str(ckpt)) == [2, 3]


def test_run_killed_while_saving_resumes_to_the_uninterrupted_results(uninterrupted, tmp_path):
    """SIGKILL after epoch 2's checkpoint is written but before orbax renames it into place."""
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "metrics.json"
    command = MEDIUM + [f"--save_path={ckpt}", f"--metrics_out={metrics}"]
    kill_before_renaming_step_2 = [
        "import os, signal, sys",
        "from orbax.checkpoint._src.path import async_path",
        "rename = async_path.rename",
        "async def rename_unless_step_2(src, dst):",
        "    if os.path.basename(str(dst)) == '2':",
        "        os.kill(os.getpid(), signal.SIGKILL)",
        "    return await rename(src, dst)",
        "async_path.rename = rename_unless_step_2",
    ]
    killed = _cli(command, check=False, prefix=kill_before_renaming_step_2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # The complete but unrenamed step 2 is left as orbax's temporary directory, never taken for a checkpoint.
    assert any(name.startswith("2.") for name in os.listdir(ckpt)), os.listdir(ckpt)
    assert checkpoint.saved_epochs(str(ckpt)) == [1] and checkpoint.load(str(ckpt)).epoch == 1

    # Rerun with --load_path set to the --save_path (here without --n_epochs: the run's own 3 epochs).
    resumed = [arg for arg in command if arg != "--n_epochs=3"] + [f"--load_path={ckpt}"]
    _cli(resumed)
    assert _results(metrics) == uninterrupted
    assert checkpoint.saved_epochs(str(ckpt)) == [2, 3]
    assert sorted(os.listdir(ckpt)) == ["2", "3"]  # orbax replaced the temporary directory


def _checkpoint_that_diverges(good, path, learning_rate=1e38):
    """A copy of the checkpoint ``good`` whose run goes on with a learning rate that overflows."""
    restored = checkpoint.load(good)
    writer = checkpoint.CheckpointWriter(path)
    writer.save(restored.state, model_config=restored.model_config,
                train_config=dataclasses.replace(restored.train_config, learning_rate=learning_rate),
                item_map=restored.item_map, epoch=restored.epoch, epoch_losses=restored.epoch_losses,
                extra=restored.extra)
    writer.close()


def test_divergence_stops_with_one_line_and_loses_nothing(tmp_path):
    good, diverging, metrics = tmp_path / "good", tmp_path / "diverging", tmp_path / "metrics.json"
    _cli(SMALL + ["--n_epochs=1", f"--save_path={good}"])
    _checkpoint_that_diverges(str(good), str(diverging))
    _cli([f"--load_path={diverging}", f"--metrics_out={tmp_path / 'before.json'}"])
    metrics.write_text('{"written": "by an earlier run"}')
    files = _files(diverging)

    line = _error_line(_cli([f"--load_path={diverging}", "--n_epochs=3", f"--metrics_out={metrics}"], check=False))
    assert line == (f"error: non-finite training loss in epoch 2; stopped (lower the learning rate?); "
                    f"{diverging} keeps the checkpoint of epoch 1")
    # The last good checkpoint is untouched and evaluates as before; the metrics file is the earlier run's.
    assert _files(diverging) == files
    assert metrics.read_text() == '{"written": "by an earlier run"}'
    _cli([f"--load_path={diverging}", f"--metrics_out={tmp_path / 'after.json'}"])
    assert _results(tmp_path / "after.json") == _results(tmp_path / "before.json")


def test_divergence_of_a_fresh_run_saves_nothing(tmp_path):
    ckpt = tmp_path / "ckpt"
    line = _error_line(_cli(SMALL + ["--n_epochs=2", "--learning_rate=1e38", f"--save_path={ckpt}"], check=False))
    assert line == "error: non-finite training loss in epoch 1; stopped (lower the learning rate?)"
    assert checkpoint.saved_epochs(str(ckpt)) == []


def test_non_finite_parameters_after_a_finite_loss_are_never_saved(tmp_path, monkeypatch):
    """The last step's update comes after its loss: a finite epoch loss can end in non-finite parameters."""
    fit = training.fit

    def fit_whose_second_epoch_ends_in_inf(*args, on_epoch_end, **kwargs):
        def poisoned(state, stats):
            if stats.epoch == 2:
                state = state.replace(params={**state.params, "tables": {
                    **state.params["tables"], "By": state.params["tables"]["By"].at[0].set(jnp.inf)}})
            on_epoch_end(state, stats)
        return fit(*args, on_epoch_end=poisoned, **kwargs)

    monkeypatch.setattr(training, "fit", fit_whose_second_epoch_ends_in_inf)
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "metrics.json"
    config = experiment.ExperimentConfig(
        data=experiment.DataConfig(synthetic_sessions=300, synthetic_items=50),
        train=training.TrainConfig(batch_size=8, n_sample=16, n_epochs=3),
        eval=experiment.EvalConfig(batch_size=64), layers=(16,), save_path=str(ckpt), metrics_out=str(metrics),
    )
    with pytest.raises(training.TrainingError) as caught:
        experiment.run(config, log=lambda message: None)
    assert str(caught.value) == (f"non-finite parameters after epoch 2 (its loss was finite); stopped "
                                 f"(lower the learning rate?); {ckpt} keeps the checkpoint of epoch 1")
    assert checkpoint.saved_epochs(str(ckpt)) == [1] and not metrics.exists()


def test_bad_test_data_stops_the_run_before_training(tmp_path):
    """Test data without a known item is found before training, not after it (no checkpoint is written)."""
    train, test = tmp_path / "train.tsv", tmp_path / "test.tsv"
    train.write_text("SessionId\tItemId\tTime\n1\ta\t1\n1\tb\t2\n2\ta\t3\n2\tc\t4\n")
    test.write_text("SessionId\tItemId\tTime\n5\tzz\t1\n5\tyy\t2\n")
    ckpt = tmp_path / "ckpt"
    line = _error_line(_cli([f"--train_path={train}", f"--test_path={test}", "--n_epochs=1", "--batch_size=2",
                             "--n_sample=4", f"--save_path={ckpt}"], check=False))
    assert "none of its" in line
    assert checkpoint.saved_epochs(str(ckpt)) == []


def test_metrics_out_that_is_a_directory_is_refused_before_training(tmp_path):
    ckpt = tmp_path / "ckpt"
    line = _error_line(_cli(SMALL + ["--n_epochs=1", f"--save_path={ckpt}", f"--metrics_out={tmp_path}"],
                            check=False))
    assert line == f"error: --metrics_out {tmp_path} is a directory; give a file name"
    assert checkpoint.saved_epochs(str(ckpt)) == []
