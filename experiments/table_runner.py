"""Runs a paper table's rows and writes its Markdown, JSON and PNG (the engine of ``experiments.reproduce``).

Each GRU4Rec row is one ``python -m experiments.train`` run of its flag file per
seed, in a subprocess (the command is recorded and can be rerun alone);
baselines run in this process with the same ranking protocol. The JSON is
rewritten after every run, and runs already in it with the same command and
unchanged flag files are reused, so an interrupted reproduction continues where
it stopped.

With :class:`TuneSettings`, each GRU4Rec row is first tuned on the validation
split by ``python -m experiments.tune`` (its space's member scalars; the
network shapes stay the flag file's), and its test runs use the best trial's
flag file. The studies live in ``{out_dir}/tune/{table}.db``, one per row and
setting, so a rerun resumes or reuses them.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional, Sequence

from experiments.paper_tables import Row, Table
from gru4rec_jax import baselines
from gru4rec_jax import data as data_lib
from gru4rec_jax.experiment import write_json_atomic

__all__ = ["ReproduceError", "TuneSettings", "check_orderings", "flagfile_digest", "reproduce"]

DETERMINISTIC_BASELINES = ("pop", "spop", "itemknn")  # one run serves every seed


class ReproduceError(RuntimeError):
    """A run failed; the message is one line."""


@dataclasses.dataclass(frozen=True)
class TuneSettings:
    """Tune every GRU4Rec row on the validation split before its test runs."""

    trials: int
    train_path: str  # the validation split's training part (experiments.prepare: train_tr.tsv)
    test_path: str  # and its validation events (train_valid.tsv)
    population: int = 8
    metric: str = ""  # empty: mrr@{table.cutoff}


def _fmt(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.4f}".lstrip("0")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return mean, std


class BaselineData:
    """Train/test sessions for the in-process baselines, read once per reproduction."""

    def __init__(self, train_path: str, test_path: str, keys: dict):
        train = data_lib.read_events(train_path, **keys)
        self.item_map = data_lib.ItemMap.from_training(train.item_ids)
        self.train = data_lib.build_sessions(train, self.item_map, source=train_path)
        self.test = data_lib.build_sessions(data_lib.read_events(test_path, **keys), self.item_map, source=test_path)

    def model(self, name: str, seed: int):
        n = len(self.item_map)
        if name == "pop":
            return baselines.Popularity(self.train, n)
        if name == "spop":
            return baselines.SessionPopularity(self.train, n)
        if name == "itemknn":
            return baselines.ItemKNN(self.train, n)
        if name == "bprmf":
            return baselines.BPRMF(self.train, n, seed=seed)
        raise ValueError(f"unknown baseline {name!r}")


def train_command(row: Row, seed: int, paths: dict, extra: Sequence[str], metrics_out: str) -> list[str]:
    return [
        sys.executable, "-m", "experiments.train", f"--flagfile={row.flagfile}",
        *(f"--{k}={v}" for k, v in paths.items()), f"--seed={seed}", *extra, f"--metrics_out={metrics_out}",
    ]


def flagfile_digest(path: str) -> str:
    """SHA-1 of a flag file and of the flag files it includes: a run is reused only if they are unchanged."""
    digest = hashlib.sha1()
    pending, seen = [path], set()
    while pending:
        current = pending.pop()
        if current in seen or not os.path.isfile(current):
            continue  # a missing file fails in the run itself, with its own message
        seen.add(current)
        with open(current, "rb") as f:
            text = f.read()
        digest.update(text)
        pending += [line[len("--flagfile="):].strip() for line in text.decode().splitlines()
                    if line.startswith("--flagfile=")]
    return digest.hexdigest()


def _display_command(command: list[str]) -> str:
    """The command as a user would type it (python, no temporary metrics file)."""
    shown = ["python"] + [c for c in command[1:] if not c.startswith("--metrics_out=")]
    return shlex.join(shown)


def _child_env() -> dict:
    """The environment of a training run: this checkout importable whatever the working directory."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")


def run_gru_row(row: Row, seed: int, paths: dict, extra: Sequence[str], log_dir: str) -> dict:
    metrics_out = os.path.join(log_dir, f"{row.key}_seed{seed}.json")
    command = train_command(row, seed, paths, extra, metrics_out)
    log_path = os.path.join(log_dir, f"{row.key}_seed{seed}.log")
    with open(log_path, "wt") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=_child_env())
    if done.returncode != 0:
        with open(log_path) as f:
            lines = [line.strip() for line in f.read().replace("\r", "\n").splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        raise ReproduceError(f"row {row.key} (seed {seed}) failed: {last} (log: {log_path})")
    with open(metrics_out) as f:
        return json.load(f)


def tuned_flagfile(out_dir: str, table: Table, row: Row) -> str:
    return os.path.join(out_dir, "tune", f"{table.name}_{row.key}.cfg")


def tune_command(table: Table, row: Row, tune: TuneSettings, keys: dict, extra: Sequence[str], out_dir: str) -> list[str]:
    """The experiments.tune run of a row. Its study's name carries a digest of everything that decides the trials'
    results, so that a changed flag file, space, split or flag starts a new study instead of resuming a stale one."""
    metric = tune.metric or f"mrr@{table.cutoff}"
    setting = hashlib.sha1()
    for part in (flagfile_digest(row.flagfile), flagfile_digest(row.space), tune.train_path, tune.test_path, metric,
                 *(f"{k}={v}" for k, v in sorted(keys.items())), *extra):
        setting.update(part.encode() + b"\0")
    folder = os.path.join(out_dir, "tune")
    return [
        sys.executable, "-m", "experiments.tune", f"--flagfile={row.flagfile}", f"--space={row.space}",
        f"--train_path={tune.train_path}", f"--valid_path={tune.test_path}", *(f"--{k}={v}" for k, v in keys.items()),
        f"--n_trials={tune.trials}", f"--population={tune.population}", f"--metric={metric}", "--notune_shapes",
        f"--storage=sqlite:///{os.path.join(folder, table.name + '.db')}",
        f"--study_name={row.key}_{setting.hexdigest()[:10]}", f"--out_dir={os.path.join(folder, f'{table.name}_{row.key}')}",
        f"--best_flagfile_out={tuned_flagfile(out_dir, table, row)}", *extra,
    ]


def tune_row(table: Table, row: Row, tune: TuneSettings, keys: dict, extra: Sequence[str], out_dir: str,
             log_dir: str) -> dict:
    """Tunes a row (or resumes, or reuses, its study); returns what the table reports of it."""
    command = tune_command(table, row, tune, keys, extra, out_dir)
    log_path = os.path.join(log_dir, f"{row.key}_tune.log")
    with open(log_path, "wt") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=_child_env())
    if done.returncode != 0:
        with open(log_path) as f:
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        raise ReproduceError(f"tuning row {row.key} failed: {last} (log: {log_path})")
    out_dir_flag = next(c for c in command if c.startswith("--out_dir="))
    with open(os.path.join(out_dir_flag.split("=", 1)[1], "summary.json")) as f:
        summary = json.load(f)
    best = summary["best"]
    return dict(trials=summary["n_complete"], metric=summary["metric"], value=best["value"], params=best["params"],
                flagfile=summary["best_flagfile"], command=shlex.join(["python"] + command[1:]),
                valid=[tune.train_path, tune.test_path])


def check_orderings(table: Table, means: dict) -> list[dict]:
    """For each claimed (higher, lower) pair and metric: the paper's direction and whether ours agrees.

    The paper's direction comes from its numbers where both are known, else the
    claim itself (e.g. boosting helps); pairs with a row not run are skipped.
    """
    checks = []
    for high, low in table.orderings:
        if high not in means or low not in means:
            continue
        for m, metric in enumerate(("recall", "mrr")):
            name = f"{metric}@{table.cutoff}"
            paper_high, paper_low = (table.row(high).paper or (None, None))[m], (table.row(low).paper or (None, None))[m]
            paper_says_higher = paper_high > paper_low if None not in (paper_high, paper_low) else True
            ours_high, ours_low = means[high][name], means[low][name]
            checks.append(dict(
                higher=high, lower=low, metric=name, paper=[paper_high, paper_low], ours=[ours_high, ours_low],
                paper_says_higher=paper_says_higher, holds=(ours_high > ours_low) == paper_says_higher,
            ))
    return checks


RUN_PROVENANCE = ("date", "machine", "version")


def _machine() -> str:
    import jax

    device = jax.devices()[0]
    return (f"{platform.machine()} {os.cpu_count()}-core {device.platform.upper()} machine, "
            f"Python {platform.python_version()}, JAX {jax.__version__}")


def _version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return commit.stdout.strip() + ("+local changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_markdown(path: str, report: dict, table: Table) -> None:
    k = table.cutoff
    seeds = report["seeds"]
    tune = report.get("tune")
    tune_note = [
        f"Rows marked *tuned* were tuned first on the validation split (train `{tune['train_path']}`, validate "
        f"`{tune['test_path']}`) by `python -m experiments.tune`: {tune['trials']} trials ranked by "
        f"{tune['metric']}, populations of up to {tune['population']}, over their search space's per-member "
        f"scalars (learning rate, momentum, dropout, ...; the network shapes stay the flag file's, as the table "
        f"compares them); their test runs use the best trial's flag file.", "",
    ] if tune else []
    lines = [
        f"# {table.title}", "",
        "Reproduce with:", "", "```", report["command"], "```", "",
        f"Measured {report['date']} on a {report['machine']}, gru4rec-jax {report['version']}. "
        f"Train `{report['train_path']}`, test `{report['test_path']}`; every next event of the test sessions "
        f"ranked against all training items, conservative ties. Ours: mean ± standard deviation over seeds "
        f"{', '.join(map(str, seeds))} (baselines without randomness run once). Paper: {table.dataset}.",
        "",
        *tune_note,
        f"| method | paper R@{k} | paper MRR@{k} | R@{k} | MRR@{k} | seconds per run |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        paper = row["paper"] or [None, None]
        if not row["runs"]:
            continue
        tuned = row.get("tuned")
        label = row["label"] + (f" (*tuned*, {tuned['trials']} trials)" if tuned else "")
        cells = [label, _fmt(paper[0]), _fmt(paper[1])]
        for metric in ("recall", "mrr"):
            mean, std = row["mean"][f"{metric}@{k}"], row["std"][f"{metric}@{k}"]
            cells.append(_fmt(mean) + (f" ± {_fmt(std)}" if len(row["runs"]) > 1 else ""))
        cells.append(f"{row['mean_seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Each GRU4Rec run alone:", ""]
    for row in report["rows"]:
        if row["runs"] and row["kind"] == "gru4rec":
            lines.append(f"- {row['label']}: `{row['runs'][0]['command']}`")
            if row.get("tuned"):
                lines.append(f"  (its flag file from `{row['tuned']['command']}`)")
    if report["orderings"]:
        labels = {r["key"]: r["label"] for r in report["rows"]}
        lines += ["", "## The paper's orderings on this data", ""]
        for c in report["orderings"]:
            relation = "above" if c["paper_says_higher"] else "below"
            paper = (f"paper {_fmt(c['paper'][0])} vs {_fmt(c['paper'][1])}"
                     if None not in c["paper"] else "no paper numbers: the expected direction")
            verdict = "holds" if c["holds"] else "does NOT hold"
            lines.append(f"- {labels[c['higher']]} {relation} {labels[c['lower']]} on {c['metric']}: {verdict} "
                         f"(ours {_fmt(c['ours'][0])} vs {_fmt(c['ours'][1])}; {paper})")
        held = sum(c["holds"] for c in report["orderings"])
        lines += ["", f"{held} of {len(report['orderings'])} hold."]
    if table.note:
        lines += ["", table.note]
    with open(path + ".tmp", "wt") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


def write_chart(path: str, report: dict, table: Table) -> bool:
    """A bar chart of paper vs ours per row; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in report["rows"] if r["runs"]]
    k = table.cutoff
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 1.8), sharey=True)
    positions = range(len(rows))
    for m, (metric, ax) in enumerate(zip(("recall", "mrr"), axes)):
        ours = [r["mean"][f"{metric}@{k}"] for r in rows]
        spread = [r["std"][f"{metric}@{k}"] for r in rows]
        paper = [(r["paper"] or [None, None])[m] for r in rows]
        ax.barh([p + 0.2 for p in positions], ours, height=0.4, xerr=spread, label="ours", color="tab:blue")
        ax.barh([p - 0.2 for p in positions], [v or 0.0 for v in paper], height=0.4,
                label=f"paper ({table.dataset})", color="tab:gray")
        ax.set_xlabel(f"{'Recall' if metric == 'recall' else 'MRR'}@{k}")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(list(positions), [r["label"] for r in rows])
    axes[0].invert_yaxis()
    fig.suptitle(table.title, fontsize=10)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    return True


def reproduce(
    table: Table,
    train_path: str,
    test_path: str,
    *,
    seeds: Sequence[int] = (0,),
    rows: Sequence[str] = (),
    out_dir: str = "experiments/results",
    train_flags: Sequence[str] = (),
    keys: Optional[dict] = None,
    rerun: bool = False,
    command: str = "",
    tune: Optional[TuneSettings] = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Runs the table's rows and writes ``{out_dir}/{table.name}.{md,json,png}``; returns the report.

    With ``tune``, each selected GRU4Rec row is tuned on the validation split first and runs with the best
    trial's flag file (:func:`tune_row`)."""
    keys = keys or {}
    unknown = sorted(set(rows) - {r.key for r in table.rows})
    if unknown:
        raise ValueError(f"unknown row(s) {', '.join(unknown)} for table {table.name} "
                         f"(rows: {', '.join(r.key for r in table.rows)})")
    selected = [r for r in table.rows if not rows or r.key in rows]
    if tune is not None:
        untunable = [r.key for r in selected if not r.baseline and not r.space]
        if untunable:
            raise ValueError(f"row(s) {', '.join(untunable)} name no search space to tune (experiments/paper_tables.py)")
    for path in (train_path, test_path) + ((tune.train_path, tune.test_path) if tune else ()):
        if not os.path.isfile(path):
            raise data_lib.DataError(f"{path}: no such file")
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"{table.name}.json")
    previous, previous_rows = {}, {}
    if os.path.exists(json_path):
        with open(json_path) as f:
            previous_report = json.load(f)
        previous_rows = {r["key"]: r for r in previous_report.get("rows", [])}
        previous = {(r["key"], run["seed"], run["command"], run.get("flagfile_digest", "")): run
                    for r in previous_rows.values() for run in r["runs"]}
        for run in previous.values():  # files written before runs carried their own provenance
            for field in RUN_PROVENANCE:
                run.setdefault(field, previous_report.get(field, "unknown"))
    provenance = dict(date=datetime.date.today().isoformat(), machine=_machine(), version=_version())
    report = dict(
        table=table.name, title=table.title, command=command, **provenance, train_path=train_path, test_path=test_path,
        seeds=list(seeds), cutoff=table.cutoff, rows=[], orderings=[],
        tune=None if tune is None else dict(dataclasses.asdict(tune), metric=tune.metric or f"mrr@{table.cutoff}"),
    )
    paths = dict(train_path=train_path, test_path=test_path, **keys)
    baseline_data: Optional[BaselineData] = None
    log_dir = tempfile.mkdtemp(prefix=f"reproduce_{table.name}_")
    n_runs = sum(1 if r.baseline in DETERMINISTIC_BASELINES else len(seeds) for r in selected)
    done = 0
    for row in table.rows:  # rows not selected keep the runs the JSON already has
        entry = dict(key=row.key, label=row.label, paper=list(row.paper) if row.paper else None,
                     kind="baseline" if row.baseline else "gru4rec", runs=[])
        report["rows"].append(entry)
        run_row = row
        if tune is not None and not row.baseline:
            if row in selected:
                log(f"{row.label}: tuning on the validation split ({tune.trials} trials)")
                entry["tuned"] = tune_row(table, row, tune, keys, train_flags, out_dir, log_dir)
                tuned = entry["tuned"]
                log(f"{row.label}: tuned, {tuned['metric']} {tuned['value']:.4f} (the best of {tuned['trials']} "
                    f"trials): " + " ".join(f"{k}={v}" for k, v in tuned["params"].items()))
            elif previous_rows.get(row.key, {}).get("tuned"):
                entry["tuned"] = previous_rows[row.key]["tuned"]
            run_row = dataclasses.replace(row, flagfile=tuned_flagfile(out_dir, table, row))
        for seed in seeds[:1] if row.baseline in DETERMINISTIC_BASELINES else seeds:
            if row.baseline:
                shown, digest = f"baselines {row.baseline} (seed {seed}) on {train_path} -> {test_path}", ""
            else:
                shown = _display_command(train_command(run_row, seed, paths, train_flags, ""))
                digest = flagfile_digest(run_row.flagfile)
            key = (row.key, seed, shown, digest)
            if row not in selected:
                if key in previous:
                    entry["runs"].append(previous[key])
                continue
            done += 1
            prefix = f"[{done}/{n_runs}] {row.label}, seed {seed}"
            if key in previous and not rerun:
                entry["runs"].append(previous[key])
                log(f"{prefix}: reused from {json_path}")
                continue
            log(f"{prefix}: running")
            t0 = time.perf_counter()
            if row.baseline:
                baseline_data = baseline_data or BaselineData(train_path, test_path, keys)
                metrics = baselines.evaluate(baseline_data.model(row.baseline, seed), baseline_data.test,
                                             cutoffs=sorted({1, 5, 10, 20, table.cutoff}))
            else:
                metrics = run_gru_row(run_row, seed, paths, train_flags, log_dir)
            seconds = time.perf_counter() - t0
            entry["runs"].append(dict(seed=seed, command=shown, flagfile_digest=digest, seconds=seconds, metrics=metrics,
                                      **provenance))
            k = table.cutoff
            log(f"{prefix}: R@{k} {metrics[f'recall@{k}']:.4f}  MRR@{k} {metrics[f'mrr@{k}']:.4f}  ({seconds:.0f} s)")
            _summarise(report, table)
            write_json_atomic(json_path, report)
    _summarise(report, table)
    write_json_atomic(json_path, report)
    md_path = os.path.join(out_dir, f"{table.name}.md")
    write_markdown(md_path, report, table)
    written = [json_path, md_path]
    png_path = os.path.join(out_dir, f"{table.name}.png")
    if write_chart(png_path, report, table):
        written.append(png_path)
    else:
        log("matplotlib is not installed: no chart (pip install matplotlib)")
    log("wrote " + ", ".join(written))
    return report


def _summarise(report: dict, table: Table) -> None:
    runs = [run for entry in report["rows"] for run in entry["runs"]]
    if runs:  # the table is as old as its runs: a rerun that reuses them all changes no date or version
        dates = sorted({run["date"] for run in runs})
        report["date"] = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
        for field in ("version", "machine"):
            report[field] = "; ".join(sorted({run[field] for run in runs}))
    means = {}
    for entry in report["rows"]:
        if not entry["runs"]:
            continue
        names = [n for n in entry["runs"][0]["metrics"] if n.startswith(("recall@", "mrr@"))]
        stats = {n: _mean_std([run["metrics"][n] for run in entry["runs"]]) for n in names}
        entry["mean"] = {n: s[0] for n, s in stats.items()}
        entry["std"] = {n: s[1] for n, s in stats.items()}
        entry["mean_seconds"] = _mean_std([run["seconds"] for run in entry["runs"]])[0]
        means[entry["key"]] = entry["mean"]
    report["orderings"] = check_orderings(table, means)
