"""Hyperparameter search: spaces, populations, resuming (also after SIGKILL), outputs and the CLI."""

import contextlib
import csv
import dataclasses
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest

from gru4rec_jax import data, evaluation, experiment, synthetic, training, tuning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACES = os.path.join(ROOT, "experiments", "spaces")
COMPLETE, FAIL, RUNNING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                           optuna.trial.TrialState.RUNNING)


def _write(path, content):
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# Spaces.


def test_the_official_spaces_have_the_published_ranges():
    # The ranges of the official GRU4Rec PyTorch port's parameter spaces (paramspaces/*.json there).
    common = {
        "layers": ("int", 64, 512, 32), "batch_size": ("int", 32, 256, 16),
        "learning_rate": ("float", 0.01, 0.25, 0.005), "dropout_p_embed": ("float", 0.0, 0.5, 0.05),
        "dropout_p_hidden": ("float", 0.0, 0.7, 0.05), "momentum": ("float", 0.0, 0.9, 0.05),
        "sample_alpha": ("float", 0.0, 1.0, 0.1),
    }
    xe = tuning.load_space(os.path.join(SPACES, "gru4rec_xe.json"))
    bprmax = tuning.load_space(os.path.join(SPACES, "gru4rec_bprmax.json"))
    assert list(xe) == list(common)
    assert list(bprmax) == list(common) + ["bpreg", "elu_param"]
    for space in (xe, bprmax):
        for name, (kind, low, high, step) in common.items():
            assert (space[name].type, space[name].low, space[name].high, space[name].step) == (kind, low, high, step)
    assert (bprmax["bpreg"].low, bprmax["bpreg"].high, bprmax["bpreg"].step) == (0.0, 2.0, 0.05)
    assert bprmax["elu_param"].type == "categorical" and bprmax["elu_param"].choices == (0.5, 1, 0)


@pytest.mark.parametrize("name", sorted(os.listdir(SPACES)))
def test_every_shipped_space_fits_the_trainer(name):
    space = tuning.load_space(os.path.join(SPACES, name))
    for param in space.values():
        for value in param.extremes():
            if tuning.is_member_param(param.name):  # TrainConfig refuses what it cannot train
                loss = "cross-entropy" if param.name == "logq" else "bpr-max"
                training.TrainConfig(loss=loss, **{param.name: float(value)})
            else:
                assert isinstance(value, int) and value >= 1, (param.name, value)


def test_a_space_file_parses_every_type(tmp_path):
    path = _write(tmp_path / "space.json", {
        "_comment": "ignored",
        "layers": {"type": "categorical", "choices": ["100", "100,100"]},
        "batch_size": {"type": "int", "low": 32, "high": 256, "step": 16},
        "n_sample": {"type": "int", "low": 16, "high": 4096, "log": True},
        "learning_rate": {"type": "float", "low": 0.001, "high": 0.5, "log": True},
        "momentum": {"type": "float", "low": 0.0, "high": 0.9, "step": 0.05},
        "constrained_embedding": {"type": "categorical", "choices": [True, False]},
    })
    space = tuning.load_space(path)
    assert list(space) == ["layers", "batch_size", "n_sample", "learning_rate", "momentum", "constrained_embedding"]
    assert space["layers"] == tuning.Param("layers", "categorical", choices=("100", "100,100"))
    assert space["batch_size"] == tuning.Param("batch_size", "int", low=32, high=256, step=16)
    assert space["n_sample"] == tuning.Param("n_sample", "int", low=16, high=4096, log=True)
    assert space["learning_rate"] == tuning.Param("learning_rate", "float", low=0.001, high=0.5, log=True)
    assert space["momentum"].step == 0.05 and not space["momentum"].log
    # Shapes are per population, the rest per member, by name.
    assert [tuning.is_member_param(n) for n in space] == [False, False, False, True, True, False]


@pytest.mark.parametrize("content, expected", [
    ('{"learning_rate": {"type": "float",', "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"_comment": "only"}', "no parameters to tune"),
    ({"learnin_rate": {"type": "float", "low": 0.1, "high": 0.2}}, "learnin_rate: unknown parameter"),
    ({"learning_rate": {"type": "real", "low": 0.1, "high": 0.2}}, "learning_rate: type must be int, float or categorical"),
    ({"loss": {"type": "int", "low": 1, "high": 2}}, "loss: type int does not fit this parameter (type categorical)"),
    ({"learning_rate": {"type": "int", "low": 1, "high": 2}}, "learning_rate: type int does not fit"),
    ({"momentum": {"type": "float", "low": 0.5, "high": 0.1}}, "momentum: empty range: low 0.5 > high 0.1"),
    ({"momentum": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.3}}, "momentum: step 0.3 does not divide"),
    ({"layers": {"type": "int", "low": 64, "high": 512, "step": 100}}, "layers: step 100 does not divide"),
    ({"momentum": {"type": "float", "low": 0.0, "high": 1.0, "step": -0.1}}, "step must be a positive number"),
    ({"layers": {"type": "int", "low": 64.5, "high": 128}}, "layers: low must be an integer"),
    ({"layers": {"type": "int", "low": 64}}, "layers: int needs 'high'"),
    ({"layers": {"type": "int", "lo": 64, "high": 128}}, "layers: unknown key(s) 'lo'"),
    ({"elu_param": {"type": "categorical", "choices": []}}, "elu_param: categorical needs a non-empty list"),
    ({"elu_param": {"type": "categorical", "choices": [1, 1]}}, "elu_param: duplicate choices"),
    ({"elu_param": {"type": "categorical", "low": 0, "high": 1}}, "unknown key(s) 'high', 'low'"),
    ({"learning_rate": {"type": "float", "low": 0.0, "high": 0.2, "log": True}}, "log scale needs low > 0"),
    ({"learning_rate": {"type": "float", "low": 0.1, "high": 0.2, "log": "yes"}}, "log must be true or false"),
    ({"learning_rate": "0.1"}, "learning_rate: expected an object"),
    ('{"momentum": {"type": "float", "low": 0, "high": 1}, "momentum": {"type": "float", "low": 0, "high": 1}}',
     "momentum given more than once"),
])
def test_bad_spaces_are_one_line_errors_naming_file_and_problem(tmp_path, content, expected):
    path = _write(tmp_path / "bad.json", content)
    with pytest.raises(tuning.SpaceError) as error:
        tuning.load_space(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_a_missing_space_file(tmp_path):
    with pytest.raises(tuning.SpaceError, match="no.json: cannot read the search space"):
        tuning.load_space(str(tmp_path / "no.json"))


def test_space_values_the_flags_refuse_are_errors(tmp_path):
    path = _write(tmp_path / "s.json", {"dropout_p_hidden": {"type": "float", "low": 0.0, "high": 1.0}})
    space = tuning.load_space(path)

    def config_for(params):  # stands in for the flags: TrainConfig's own checks
        return training.TrainConfig(**params)

    with pytest.raises(tuning.SpaceError, match=r"s.json: dropout_p_hidden: the value 1 is refused: dropout_p_hidden "
                                                r"must be in \[0, 1\)"):
        tuning.check_space_values(space, path, config_for)


def test_metric_names():
    assert tuning.parse_metric("mrr@20") == ("mrr", 20) and tuning.parse_metric("coverage@5") == ("coverage", 5)
    for bad in ("hits@20", "recall@0", "recall", "ndcg@x", "recall@20 "):
        with pytest.raises(ValueError, match="--metric must be one of"):
            tuning.parse_metric(bad)


# ---------------------------------------------------------------------------------------------------------------
# Studies with a stand-in trainer (no training: the population logic alone).

SHAPES_AND_SCALARS = {
    "layers": {"type": "int", "low": 8, "high": 64, "step": 8},
    "batch_size": {"type": "categorical", "choices": [8, 16, 32]},
    "learning_rate": {"type": "float", "low": 0.01, "high": 0.2},
    "momentum": {"type": "float", "low": 0.0, "high": 0.9},
}


def _score(params):  # a made-up metric with an optimum inside the space
    return 1.0 - (params["learning_rate"] - 0.1) ** 2 - (params["momentum"] - 0.5) ** 2 - params["layers"] / 1000


class FakeTrainer:
    """Records the populations it is given; member ``fail`` of population ``fail_in`` fails."""

    def __init__(self, fail_in=None, fail=()):
        self.populations, self.fail_in, self.fail = [], fail_in, fail

    def __call__(self, params_list, on_member):
        self.populations.append(params_list)
        results = []
        for i, params in enumerate(params_list):
            if len(self.populations) - 1 == self.fail_in and i in self.fail:
                results.append(tuning.MemberResult(error="non-finite training loss in epoch 1", seconds=1.0))
            else:
                results.append(tuning.MemberResult(metrics={"mrr@20": _score(params), "recall@20": 0.5}, seconds=1.0))
        return results


def _study(tmp_path, space, name="s", setup=None):
    return tuning.open_study(f"sqlite:///{tmp_path}/db/study.db", name, seed=0, setup=setup or {"v": 1},
                             space=space, log=lambda line: None)


def test_populations_share_their_shapes_and_draw_their_own_scalars(tmp_path):
    space = tuning.load_space(_write(tmp_path / "s.json", SHAPES_AND_SCALARS))
    study, pinned = _study(tmp_path, space)
    assert pinned == []
    trainer, lines = FakeTrainer(), []
    tuning.run_study(study, space, n_trials=7, population_size=3, metric="mrr@20", train_members=trainer,
                     log=lines.append)
    assert [len(p) for p in trainer.populations] == [3, 3, 1]  # the last one only as large as needed
    for population in trainer.populations:
        assert len({(p["layers"], p["batch_size"]) for p in population}) == 1
        assert len({(p["learning_rate"], p["momentum"]) for p in population}) == len(population)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert [t.state for t in trials] == [COMPLETE] * 7
    assert [t.user_attrs["population"] for t in trials] == [0, 0, 0, 1, 1, 1, 2]
    flat = [p for population in trainer.populations for p in population]
    for trial, params in zip(trials, flat):
        assert tuning.trial_params(trial) == params and trial.value == _score(params)
        assert trial.user_attrs["metrics"] == {"mrr@20": _score(params), "recall@20": 0.5}
    # A progress line per population with its shapes, one per member with its scalars and the best so far.
    assert lines[0].startswith("population 0 (trials 0-2, 0/7 complete): layers=")
    assert sum(line.startswith("  trial ") and "-> mrr@20" in line and "(best " in line for line in lines) == 7


def test_failed_members_are_recorded_and_the_study_goes_on(tmp_path):
    space = tuning.load_space(_write(tmp_path / "s.json", SHAPES_AND_SCALARS))
    study, _ = _study(tmp_path, space)
    trainer = FakeTrainer(fail_in=0, fail=(1,))
    tuning.run_study(study, space, n_trials=4, population_size=2, metric="mrr@20", train_members=trainer,
                     log=lambda line: None)
    states = [t.state for t in sorted(study.get_trials(), key=lambda t: t.number)]
    assert states == [COMPLETE, FAIL, COMPLETE, COMPLETE, COMPLETE]  # 4 complete: one more trial
    columns, rows = tuning.trial_rows(study, space, "mrr@20")
    assert columns == ["number", "state", "population", *space, "mrr@20", "recall@20", "seconds", "note"]
    assert rows[1]["state"] == "fail" and rows[1]["note"] == "non-finite training loss in epoch 1"
    assert rows[1]["mrr@20"] == "" and rows[0]["mrr@20"] == study.trials[0].value


def test_a_study_that_only_fails_stops(tmp_path):
    space = tuning.load_space(_write(tmp_path / "s.json", SHAPES_AND_SCALARS))
    study, _ = _study(tmp_path, space)
    trainer = FakeTrainer(fail_in=0, fail=(0, 1, 2))
    with pytest.raises(tuning.TuneError, match="3 trials failed in this run"):
        tuning.run_study(study, space, n_trials=3, population_size=3, metric="mrr@20", train_members=trainer,
                         log=lambda line: None)


def test_a_trainer_error_fails_its_population_and_stops_the_study(tmp_path):
    space = tuning.load_space(_write(tmp_path / "s.json", SHAPES_AND_SCALARS))
    study, _ = _study(tmp_path, space)

    def broken(params_list, on_member):
        raise data.DataError("valid.tsv: none of its items are in the training data")

    with pytest.raises(data.DataError):
        tuning.run_study(study, space, n_trials=3, population_size=2, metric="mrr@20", train_members=broken,
                         log=lambda line: None)
    trials = study.get_trials()
    assert [t.state for t in trials] == [FAIL, FAIL]  # none left RUNNING
    assert trials[0].user_attrs["error"] == "valid.tsv: none of its items are in the training data"


def test_a_metric_the_evaluation_lacks_stops_the_study(tmp_path):
    space = tuning.load_space(_write(tmp_path / "s.json", SHAPES_AND_SCALARS))
    study, _ = _study(tmp_path, space)
    with pytest.raises(tuning.TuneError, match="the evaluation reports no ndcg@20"):
        tuning.run_study(study, space, n_trials=2, population_size=2, metric="ndcg@20", train_members=FakeTrainer(),
                         log=lambda line: None)


def test_interrupted_trials_are_failed_and_their_population_runs_again_once(tmp_path):
    space = tuning.load_space(_write(tmp_path / "s.json", SHAPES_AND_SCALARS))
    study, _ = _study(tmp_path, space)
    tuning.run_study(study, space, n_trials=2, population_size=2, metric="mrr@20", train_members=FakeTrainer(),
                     log=lambda line: None)

    def stopped(params_list, on_member):  # the process stops mid-population (as Ctrl-C does)
        on_member(0, tuning.MemberResult(metrics={"mrr@20": _score(params_list[0])}))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tuning.run_study(study, space, n_trials=5, population_size=3, metric="mrr@20", train_members=stopped,
                         log=lambda line: None)
    before = {t.number: t for t in study.get_trials()}
    assert [before[n].state for n in range(5)] == [COMPLETE, COMPLETE, COMPLETE, RUNNING, RUNNING]

    lines = []
    study, pinned = tuning.open_study(f"sqlite:///{tmp_path}/db/study.db", "s", seed=0, setup={"v": 1}, space=space,
                                      log=lines.append)
    assert [t.state for t in study.get_trials()] == [COMPLETE] * 3 + [FAIL] * 2
    assert pinned == [[(3, before[3].params), (4, before[4].params)]]
    assert "2 trial(s) interrupted (3, 4), 2 re-run first" in lines[0]
    trainer = FakeTrainer()
    tuning.run_study(study, space, n_trials=5, population_size=3, metric="mrr@20", train_members=trainer, pinned=pinned,
                     log=lambda line: None)
    assert trainer.populations == [[tuning.trial_params(before[3]), tuning.trial_params(before[4])]]
    after = {t.number: t for t in study.get_trials()}
    assert [after[n].user_attrs.get("retry_of") for n in (5, 6)] == [3, 4]
    for n in range(3):  # finished trials are kept as they were
        assert (after[n].state, after[n].params, after[n].value) == (COMPLETE, before[n].params, before[n].value)
    _, rows = tuning.trial_rows(study, space, "mrr@20")
    assert rows[3]["note"] == "interrupted: its process stopped" and rows[5]["note"] == "re-run of trial 3"


def test_a_resumed_study_draws_new_points(tmp_path):
    space = tuning.load_space(_write(tmp_path / "s.json", SHAPES_AND_SCALARS))
    for n_trials in (2, 4):  # two runs of the same study, the second resuming the first
        study, _ = _study(tmp_path, space)
        tuning.run_study(study, space, n_trials=n_trials, population_size=1, metric="mrr@20",
                         train_members=FakeTrainer(), log=lambda line: None)
    drawn = [(t.params["learning_rate"], t.params["momentum"]) for t in study.get_trials()]
    assert len(drawn) == 4 and len(set(drawn)) == 4


def test_a_study_resumes_only_with_its_setup(tmp_path):
    space = tuning.load_space(_write(tmp_path / "s.json", SHAPES_AND_SCALARS))
    _study(tmp_path, space, setup={"metric": "mrr@20", "train_path": "a.tsv"})
    _study(tmp_path, space, setup={"metric": "mrr@20", "train_path": "a.tsv"})
    with pytest.raises(tuning.TuneError, match="was started with another metric; resume it with the same"):
        _study(tmp_path, space, setup={"metric": "recall@20", "train_path": "a.tsv"})


def test_the_best_flag_file_replaces_the_tuned_flags():
    text = tuning.best_flagfile_text(
        {"loss": "--loss=cross-entropy", "layers": "--layers=100", "learning_rate": "--learning_rate=0.05"},
        {"layers": 224, "learning_rate": 0.18500000000000003, "constrained_embedding": False}, ["best of 3"])
    assert text.splitlines() == ["# best of 3", "--loss=cross-entropy", "--layers=224", "--learning_rate=0.185",
                                 "--constrained_embedding=false"]


# ---------------------------------------------------------------------------------------------------------------
# The command line, for real: a study killed with SIGKILL and resumed, its outputs, its best flag file.

BASE_FLAGS = ["--loss=cross-entropy", "--layers=8", "--batch_size=8", "--n_sample=16", "--n_epochs=1",
              "--eval_batch_size=64", "--chunk_steps=64"]
SMALL_SPACE = {
    "layers": {"type": "int", "low": 8, "high": 16, "step": 8},
    "learning_rate": {"type": "float", "low": 0.02, "high": 0.2},
    "momentum": {"type": "float", "low": 0.0, "high": 0.5},
}


@pytest.fixture
def study_files(tmp_path):
    train, valid = synthetic.generate_train_test(240, 50, seed=5)
    paths = dict(train=str(tmp_path / "train.tsv"), valid=str(tmp_path / "valid.tsv"),
                 base=_write(tmp_path / "base.cfg", "\n".join(BASE_FLAGS) + "\n"),
                 space=_write(tmp_path / "space.json", SMALL_SPACE), out=str(tmp_path / "out"))
    data.write_events(paths["train"], train)
    data.write_events(paths["valid"], valid)
    return paths


def _tune_command(files, *extra):
    return [sys.executable, "-m", "experiments.tune", f"--flagfile={files['base']}", f"--space={files['space']}",
            f"--train_path={files['train']}", f"--valid_path={files['valid']}", f"--out_dir={files['out']}", *extra]


def _trials(storage, name):
    return sorted(optuna.load_study(study_name=name, storage=storage).get_trials(), key=lambda t: t.number)


def _trial_states_read_only(path):
    """The trials' states in an optuna SQLite file, read without creating anything (optuna's own
    loader would create the schema, racing the process that is creating it)."""
    if not os.path.exists(path):
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
            return [state for (state,) in db.execute("SELECT state FROM trials")]
    except sqlite3.Error:  # no trials table yet, or the database is busy
        return []


def test_a_study_killed_with_sigkill_resumes_and_writes_its_outputs(study_files):
    storage = f"sqlite:///{study_files['out']}/study.db"
    command = _tune_command(study_files, "--n_trials=3", "--population=2", "--study_name=kill",
                            f"--storage={storage}", "--metric=mrr@20", "--cutoffs=5,20")
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.2)
            states = _trial_states_read_only(f"{study_files['out']}/study.db")
            if "COMPLETE" in states and "RUNNING" in states:
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        output = child.communicate()[0]
    try:
        before = _trials(storage, "kill")
    except KeyError:  # the child never created its study: its output says why
        pytest.fail(f"the study was not created; the child's exit status {child.returncode}, output:\n{output[-3000:]}")
    # The test's precondition: killed mid-study, with a finished trial and one in training.
    assert COMPLETE in [t.state for t in before] and RUNNING in [t.state for t in before], output

    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    interrupted = [t.number for t in before if t.state == RUNNING]
    assert f"{len(interrupted)} trial(s) interrupted" in done.stdout
    after = _trials(storage, "kill")
    assert sum(t.state == COMPLETE for t in after) == 3
    for old in before:
        new = after[old.number]
        if old.state == COMPLETE:  # kept as it was
            assert (new.state, new.params, new.value, new.user_attrs) == (COMPLETE, old.params, old.value, old.user_attrs)
        elif old.state == RUNNING:  # failed, and run again with its parameters
            assert new.state == FAIL
            retry = [t for t in after if t.user_attrs.get("retry_of") == old.number]
            assert len(retry) == 1 and retry[0].params == old.params and retry[0].state == COMPLETE
    for trial in after:
        if trial.state == COMPLETE:  # every metric recorded, the value among them
            metrics = trial.user_attrs["metrics"]
            assert set(metrics) >= {"recall@5", "mrr@5", "recall@20", "mrr@20"} and metrics["mrr@20"] == trial.value
            assert 0.0 < trial.value <= metrics["recall@20"] <= 1.0

    out = study_files["out"]
    with open(f"{out}/trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [t.number for t in after]
    assert [r["state"] for r in rows] == [t.state.name.lower() for t in after]
    for row, trial in zip(rows, after):
        assert row["population"] == str(trial.user_attrs.get("population", ""))
        if trial.state == COMPLETE:
            assert float(row["mrr@20"]) == trial.value and float(row["recall@5"]) == trial.user_attrs["metrics"]["recall@5"]
            assert int(row["layers"]) == trial.params["layers"]
            assert math.isclose(float(row["learning_rate"]), trial.params["learning_rate"], rel_tol=1e-10)
    markdown = open(f"{out}/trials.md").read()
    assert "| number | state | population | layers | learning_rate | momentum | mrr@20 |" in markdown
    summary = json.load(open(f"{out}/summary.json"))
    best = max((t for t in after if t.state == COMPLETE), key=lambda t: t.value)
    assert summary["best"]["number"] == best.number and summary["n_complete"] == 3
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in done.stdout
    else:
        assert os.path.getsize(f"{out}/history.png") > 1000

    # The best flag file: the base flags with the best trial's parameters, and experiments.train runs it.
    lines = [line for line in open(f"{out}/best.cfg").read().splitlines() if not line.startswith("#")]
    values = dict(line[2:].split("=", 1) for line in lines)
    assert values["loss"] == "cross-entropy" and values["n_sample"] == "16" and values["batch_size"] == "8"
    assert int(values["layers"]) == best.params["layers"]
    for name in ("learning_rate", "momentum"):
        assert math.isclose(float(values[name]), best.params[name], rel_tol=1e-10)
    metrics_out = f"{out}/best_metrics.json"
    run = subprocess.run([sys.executable, "-m", "experiments.train", f"--flagfile={out}/best.cfg",
                          f"--train_path={study_files['train']}", f"--test_path={study_files['valid']}",
                          f"--metrics_out={metrics_out}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rerun = json.load(open(metrics_out))["mrr@20"]
    # Trained in a population: the same computation, compiled differently (rounding may differ).
    assert abs(rerun - best.value) < 0.01


def test_a_coverage_metric_turns_the_item_coverage_on(study_files):
    done = subprocess.run(_tune_command(study_files, "--n_trials=1", "--population=1", "--metric=coverage@5"),
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    best = json.load(open(f"{study_files['out']}/summary.json"))["best"]
    assert 0.0 < best["value"] <= 1.0 and best["value"] == best["metrics"]["coverage@5"]


@pytest.mark.parametrize("extra, expected", [
    (["--population=0"], "error: --population must be >= 1, got 0"),
    (["--n_trials=0"], "error: --n_trials must be >= 1, got 0"),
    (["--metric=hits@20"], "error: --metric must be one of recall@K, mrr@K, ndcg@K, coverage@K"),
    (["--valid_path="], "error: --train_path and --valid_path are required"),
    (["--test_path=x.tsv"], "error: --test_path does not apply to experiments.tune"),
    (["--space=BAD"], "error: BAD: momentum: empty range: low 0.5 > high 0.1"),
    (["--space=REFUSED"], "error: REFUSED: dropout_p_hidden: the value 1 is refused: dropout_p_hidden must be in"),
])
def test_bad_flags_and_spaces_are_one_line_errors(study_files, tmp_path, extra, expected):
    bad = _write(tmp_path / "bad.json", {"momentum": {"type": "float", "low": 0.5, "high": 0.1}})
    refused = _write(tmp_path / "refused.json", {"dropout_p_hidden": {"type": "float", "low": 0.0, "high": 1.0}})
    extra = [e.replace("BAD", bad).replace("REFUSED", refused) for e in extra]
    expected = expected.replace("BAD", bad).replace("REFUSED", refused)
    done = subprocess.run(_tune_command(study_files, *extra), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().startswith(expected) and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not os.path.exists(study_files["out"])  # nothing written


# ---------------------------------------------------------------------------------------------------------------
# The member trainer: the members of a population trained together.


def _member_configs(tmp_path):
    train, valid = synthetic.generate_train_test(200, 40, seed=7)
    paths = str(tmp_path / "train.tsv"), str(tmp_path / "valid.tsv")
    data.write_events(paths[0], train)
    data.write_events(paths[1], valid)
    base = experiment.ExperimentConfig(
        data=experiment.DataConfig(train_path=paths[0]), layers=(8,),
        train=training.TrainConfig(loss="cross-entropy", batch_size=8, n_sample=16, n_epochs=1, chunk_steps=64),
        eval=experiment.EvalConfig(cutoffs=(5,), batch_size=64))
    configs = [dataclasses.replace(base, train=dataclasses.replace(base.train, learning_rate=lr, momentum=m))
               for lr, m in ((0.05, 0.0), (0.2, 0.5))]
    return tuning.load_study_data(base, paths[1], log=lambda line: None), configs


def test_members_train_as_their_single_runs_and_fail_alone(tmp_path):
    study_data, configs = _member_configs(tmp_path)
    # A third member diverges; the others must not notice.
    configs.append(dataclasses.replace(configs[0], train=dataclasses.replace(configs[0].train, learning_rate=1e38)))
    reported = []
    together = tuning.train_and_evaluate_members(study_data, configs, cutoffs=(5, 20), log=lambda line: None,
                                                 on_member=lambda i, result: reported.append((i, result)))
    assert [i for i, _ in reported] == [0, 1, 2] and [r for _, r in reported] == together
    assert together[2].metrics is None and together[2].error == "non-finite training loss"
    # Each other member's metrics are those of its own single run (the population program is compiled
    # differently, so its rounding may differ: a tolerance, and the two members must differ far more).
    singles = []
    for config in configs[:2]:
        model_config = experiment.model_config_for(config, len(study_data.item_map))
        state, _ = training.fit(study_data.train, model_config, config.train, log=lambda line: None)
        singles.append(evaluation.evaluate(state.params, model_config, study_data.valid, cutoffs=(5, 20),
                                           batch_size=64))
    for result, single in zip(together, singles):
        assert not result.error and set(result.metrics) == set(single)
        assert all(abs(result.metrics[k] - single[k]) < 0.01 for k in single if k != "n_eval_events")
    assert abs(singles[0]["mrr@20"] - singles[1]["mrr@20"]) > 0.03
    # Item coverage, when the configurations ask for it (experiments.tune does for --metric=coverage@K).
    covered = [dataclasses.replace(c, eval=dataclasses.replace(c.eval, item_coverage=True)) for c in configs[:2]]
    with_coverage = tuning.train_and_evaluate_members(study_data, covered, cutoffs=(5, 20), log=lambda line: None)
    assert all(0.0 < r.metrics["coverage@20"] <= 1.0 for r in with_coverage)
    assert all("coverage@20" not in r.metrics for r in together[:2])
    assert tuning.is_member_param("momentum") and not tuning.is_member_param("layers")
