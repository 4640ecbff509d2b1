"""The table runner: orderings against hand-made numbers, outputs, reuse, failures and the CLI."""

import dataclasses
import json
import os
import subprocess
import sys

import optuna
import pytest

from experiments import table_runner
from experiments.paper_tables import TABLES, Row, Table
from gru4rec_jax import baselines, data, synthetic, tuning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _table(tmp_path, gru_flags=("--n_epochs=1",)):
    flagfile = tmp_path / "tiny.cfg"
    flagfile.write_text("\n".join(["--layers=8", "--batch_size=16", "--n_sample=16", "--loss=top1", *gru_flags]) + "\n")
    return Table(
        name="tiny", title="Tiny table", dataset="nothing", cutoff=20,
        rows=(Row("pop", "POP", (0.1, 0.05), baseline="pop"),
              Row("spop", "S-POP", (0.3, 0.2), baseline="spop"),
              Row("gru", "GRU4Rec", (0.5, None), flagfile=str(flagfile))),
        orderings=(("gru", "spop"), ("spop", "pop")),
    )


@pytest.fixture
def tsv_paths(tmp_path):
    train, test = synthetic.generate_train_test(300, 60, seed=3)
    paths = str(tmp_path / "train.tsv"), str(tmp_path / "test.tsv")
    data.write_events(paths[0], train)
    data.write_events(paths[1], test)
    return paths


def test_orderings_follow_the_papers_numbers_per_metric():
    table = Table(name="t", title="t", dataset="d", cutoff=20,
                  rows=(Row("a", "A", (0.6, 0.20), baseline="pop"), Row("b", "B", (0.5, 0.25), baseline="pop"),
                        Row("c", "C", None, baseline="pop")),
                  orderings=(("a", "b"), ("c", "b"), ("a", "missing")))
    means = {"a": {"recall@20": 0.40, "mrr@20": 0.30}, "b": {"recall@20": 0.45, "mrr@20": 0.31},
             "c": {"recall@20": 0.50, "mrr@20": 0.10}}
    got = [(c["higher"], c["lower"], c["metric"], c["paper_says_higher"], c["holds"])
           for c in table_runner.check_orderings(table, means)]
    assert got == [
        ("a", "b", "recall@20", True, False),  # paper .6 > .5, ours .40 < .45
        ("a", "b", "mrr@20", False, True),  # paper .20 < .25, ours .30 < .31: same direction
        ("c", "b", "recall@20", True, True),  # no paper numbers: the claim itself, ours .50 > .45
        ("c", "b", "mrr@20", True, False),
    ]  # ("a", "missing") is skipped: that row was not run


def test_reproduce_writes_the_table_and_reuses_runs(tmp_path, tsv_paths):
    table = _table(tmp_path)
    out = tmp_path / "out"
    lines = []
    report = table_runner.reproduce(table, *tsv_paths, seeds=(0, 1), out_dir=str(out), log=lines.append)
    assert {p.name for p in out.iterdir()} >= {"tiny.md", "tiny.json"}
    # Baselines without randomness run once, the network once per seed.
    assert [len(r["runs"]) for r in report["rows"]] == [1, 1, 2]
    on_disk = json.loads((out / "tiny.json").read_text())
    assert on_disk["rows"] == report["rows"]

    # The baseline's metrics are those of the library's evaluator on the same data.
    train = data.read_events(tsv_paths[0])
    item_map = data.ItemMap.from_training(train.item_ids)
    direct = baselines.evaluate(baselines.SessionPopularity(data.build_sessions(train, item_map), len(item_map)),
                                data.build_sessions(data.read_events(tsv_paths[1]), item_map))
    assert report["rows"][1]["runs"][0]["metrics"]["recall@20"] == direct["recall@20"]
    # The network's runs are real and differ by seed.
    runs = report["rows"][2]["runs"]
    assert runs[0]["metrics"]["recall@20"] > 0 and runs[0]["metrics"] != runs[1]["metrics"]
    assert "--seed=1" in runs[1]["command"] and "--metrics_out" not in runs[1]["command"]

    markdown = (out / "tiny.md").read_text()
    assert "| S-POP | .3000 | .2000 |" in markdown
    assert "| GRU4Rec | .5000 | — |" in markdown and " ± " in markdown
    assert len(report["orderings"]) == 4 and "of 4 hold." in markdown
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert any("no chart" in line for line in lines)
    else:
        assert (out / "tiny.png").stat().st_size > 1000

    # A second call reuses every run with the same command; rerun=True runs them again.
    lines.clear()
    again = table_runner.reproduce(table, *tsv_paths, seeds=(0, 1), out_dir=str(out), log=lines.append)
    assert sum("reused" in line for line in lines) == 4
    assert again["rows"] == report["rows"]
    # A table whose runs are all reused keeps their date, machine and version, also from a file written
    # before runs carried their own (they inherit the file's).
    old = json.loads((out / "tiny.json").read_text())
    old.update(date="2000-01-01", version="0000000", machine="an old machine")
    for entry in old["rows"]:
        for run in entry["runs"]:
            for field in ("date", "version", "machine"):
                del run[field]
    (out / "tiny.json").write_text(json.dumps(old))
    again = table_runner.reproduce(table, *tsv_paths, seeds=(0, 1), out_dir=str(out), log=lines.append)
    assert (again["date"], again["version"], again["machine"]) == ("2000-01-01", "0000000", "an old machine")
    assert "Measured 2000-01-01 on a an old machine, gru4rec-jax 0000000." in (out / "tiny.md").read_text()
    # Editing a row's flag file (here, one it includes) makes that row run again.
    included = tmp_path / "included.cfg"
    included.write_text("--n_epochs=1\n")
    with open(table.row("gru").flagfile, "a") as f:
        f.write(f"--flagfile={included}\n")
    lines.clear()
    mixed = table_runner.reproduce(table, *tsv_paths, seeds=(0, 1), out_dir=str(out), log=lines.append)
    assert sum("reused" in line for line in lines) == 2  # the two baselines
    assert mixed["date"] == f"2000-01-01 to {report['date']}" and mixed["version"] == f"0000000; {report['version']}"
    lines.clear()
    included.write_text("--n_epochs=2\n")
    table_runner.reproduce(table, *tsv_paths, seeds=(0, 1), out_dir=str(out), log=lines.append)
    assert sum("reused" in line for line in lines) == 2

    # Running some rows again keeps the others' runs in the files.
    lines.clear()
    partial = table_runner.reproduce(table, *tsv_paths, seeds=(0, 1), rows=["pop"], out_dir=str(out),
                                     rerun=True, log=lines.append)
    assert not any("reused" in line for line in lines) and len(lines) == 3  # running, result, wrote
    assert partial["rows"][1]["runs"][0]["metrics"] == report["rows"][1]["runs"][0]["metrics"]
    assert len(partial["rows"][2]["runs"]) == 2
    assert [r["key"] for r in json.loads((out / "tiny.json").read_text())["rows"] if r["runs"]] == ["pop", "spop", "gru"]


def test_a_failing_row_is_one_line_and_keeps_earlier_results(tmp_path, tsv_paths):
    table = _table(tmp_path, gru_flags=("--n_epochs=1", "--learning_rate=-1"))
    out = tmp_path / "out"
    with pytest.raises(table_runner.ReproduceError) as error:
        table_runner.reproduce(table, *tsv_paths, out_dir=str(out), log=lambda line: None)
    message = str(error.value)
    assert "\n" not in message and "row gru (seed 0) failed" in message and "learning_rate" in message
    kept = json.loads((out / "tiny.json").read_text())
    assert [r["key"] for r in kept["rows"] if r["runs"]] == ["pop", "spop"]


def test_every_row_has_its_flag_file_and_every_ordering_names_rows():
    for table in TABLES.values():
        keys = {r.key for r in table.rows}
        assert all(high in keys and low in keys for high, low in table.orderings)
        for row in table.rows:
            if row.flagfile:
                assert os.path.isfile(os.path.join(ROOT, row.flagfile)), row.flagfile
                assert tuning.load_space(os.path.join(ROOT, row.space)), row.space


def test_reproduce_tunes_rows_on_the_validation_split_first(tmp_path, tsv_paths):
    table = _table(tmp_path)
    table = dataclasses.replace(table, rows=table.rows[:1] + (
        dataclasses.replace(table.rows[2], space=_space(tmp_path)),))
    valid_train, valid_test = synthetic.generate_train_test(240, 60, seed=4)
    valid = str(tmp_path / "valid_train.tsv"), str(tmp_path / "valid_test.tsv")
    data.write_events(valid[0], valid_train)
    data.write_events(valid[1], valid_test)
    tune = table_runner.TuneSettings(trials=2, train_path=valid[0], test_path=valid[1], population=2)
    out, lines = tmp_path / "out", []
    report = table_runner.reproduce(table, *tsv_paths, out_dir=str(out), tune=tune, log=lines.append)

    tuned = report["rows"][1]["tuned"]
    assert tuned["trials"] == 2 and tuned["metric"] == "mrr@20" and tuned["valid"] == list(valid)
    assert set(tuned["params"]) == {"learning_rate", "momentum"}  # the row's shapes stay its flag file's
    flagfile = tuned["flagfile"]
    assert flagfile == str(out / "tune" / "tiny_gru.cfg")
    flags = dict(line[2:].split("=", 1) for line in open(flagfile).read().splitlines() if line.startswith("--"))
    assert flags["layers"] == "8" and flags["batch_size"] == "16" and flags["loss"] == "top1"
    assert float(flags["learning_rate"]) == tuned["params"]["learning_rate"]
    # The test run trains on the training file with the tuned flag file, on the test file.
    run = report["rows"][1]["runs"][0]
    assert f"--flagfile={flagfile}" in run["command"] and f"--test_path={tsv_paths[1]}" in run["command"]
    assert run["metrics"]["recall@20"] > 0
    markdown = (out / "tiny.md").read_text()
    assert "| GRU4Rec (*tuned*, 2 trials) |" in markdown and "Rows marked *tuned* were tuned first" in markdown
    assert f"validate `{valid[1]}`" in markdown and "experiments.tune" in markdown

    # Again: the study is complete (no new trial) and the test run is reused.
    lines.clear()
    again = table_runner.reproduce(table, *tsv_paths, out_dir=str(out), tune=tune, log=lines.append)
    assert sum("reused" in line for line in lines) == 2 and again["rows"][1]["tuned"] == tuned
    studies = optuna.get_all_study_summaries(f"sqlite:///{out}/tune/tiny.db")
    assert [s.n_trials for s in studies] == [2]


def _space(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"layers": {"type": "int", "low": 8, "high": 16, "step": 8},
                                "learning_rate": {"type": "float", "low": 0.01, "high": 0.1},
                                "momentum": {"type": "float", "low": 0.0, "high": 0.5}}))
    return str(path)


@pytest.mark.parametrize("args, expected", [
    (["--table=iclr2016", "--rows=nope"], "error: unknown row(s) nope for table iclr2016"),
    (["--table=iclr2016", "--seeds=a"], "error: --seeds must be a comma-separated list of integers"),
    (["--table=iclr2016", "--tune_trials=2"], "error: --tune_trials needs --valid_train_path and --valid_test_path"),
    (["--table=iclr2016", "--tune_trials=2", "--valid_train_path=a", "--valid_test_path=b", "--tune_metric=hit@5"],
     "error: --tune_metric must be one of recall@K"),
])
def test_cli_errors_are_one_line(tmp_path, tsv_paths, args, expected):
    done = subprocess.run(
        [sys.executable, "-m", "experiments.reproduce", *args, f"--train_path={tsv_paths[0]}",
         f"--test_path={tsv_paths[1]}", f"--out_dir={tmp_path}"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert done.returncode != 0
    assert done.stderr.strip().startswith(expected) and len(done.stderr.strip().splitlines()) == 1


def test_cli_missing_data_file(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "experiments.reproduce", "--table=cikm2018", f"--train_path={tmp_path}/no.tsv",
         f"--test_path={tmp_path}/no.tsv", f"--out_dir={tmp_path}"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert done.returncode != 0 and done.stderr.strip() == f"error: {tmp_path}/no.tsv: no such file"
