"""Hyperparameter search with optuna, its trials trained in populations.

``experiments/tune.py`` is the command line; everything here is usable (and
tested) without it.

Search spaces are JSON files (experiments/spaces/) mapping a parameter name,
the name of an ``experiments.train`` flag, to its range::

    {
      "_comment": "keys that start with _ are ignored",
      "layers":        {"type": "int", "low": 64, "high": 512, "step": 32},
      "learning_rate": {"type": "float", "low": 0.01, "high": 0.25, "step": 0.005},
      "momentum":      {"type": "float", "low": 0.0, "high": 0.9, "log": false},
      "elu_param":     {"type": "categorical", "choices": [0.5, 1, 0]}
    }

``int`` and ``float`` take ``low`` <= ``high``, an optional ``step`` that divides
``high - low`` (int: a positive integer, default 1) and an optional ``log``
(log scale: ``low`` > 0 and no step); ``categorical`` takes a non-empty list of
distinct ``choices`` (strings, numbers, booleans; e.g. ``"100,100"`` for two
layers). Which parameters are per member and which per population follows from
the name (:func:`is_member_param`).

A population is up to P trials that share the network's shapes (every tuned
parameter that is not a member scalar: layers, batch size, loss, ...) and
train together. Its first trial is asked from optuna's TPE sampler as usual;
the others are enqueued with the first one's shape values fixed, so that the
sampler draws only their member scalars (learning rate, momentum, dropouts,
...). A trial records its parameters, its population, the metric it is ranked
by and all other metrics as optuna user attributes, so the storage alone holds
the whole study.

Resuming: trials left RUNNING by a stopped process are marked failed and, once,
re-run with the same parameters as the first population of the resumed run; the
study goes on until it holds ``n_trials`` complete trials. The sampler's seed is
the study's plus the number of trials already stored, so a study run straight
through is reproducible, and a resumed one does not repeat its first draws.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import socket
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import jax
import numpy as np

from gru4rec_jax import data as data_lib
from gru4rec_jax import evaluation, experiment, population, training, user_data

if TYPE_CHECKING:  # optuna is imported where it is used: the rest of the package does not need it
    import optuna

__all__ = [
    "MemberResult",
    "Param",
    "SpaceError",
    "StudyData",
    "TuneError",
    "best_flagfile_text",
    "check_space_values",
    "flag_text",
    "is_member_param",
    "load_space",
    "load_study_data",
    "open_study",
    "parse_metric",
    "trial_params",
    "run_study",
    "train_and_evaluate_members",
    "trial_rows",
    "write_outputs",
]


class SpaceError(ValueError):
    """A bad search space file; the message is one line that names the file and the problem."""


class TuneError(RuntimeError):
    """The study cannot go on; the message is one line."""


# The experiments.train flags a space may tune, and the value kind each takes: 'int' and 'float'
# ranges (or categorical choices of those), 'choice' categorical only. Data, evaluation, device and
# output flags are not hyperparameters, and all trials of a study read the same data.
PARAM_KINDS = {
    **{name: "float" for name in training.STEP_SCALARS},  # each member's own
    "layers": "int",  # an int is one layer of that size; categorical strings like "100,100" give more
    "user_layers": "int",
    "batch_size": "int",
    "n_sample": "int",
    "embedding": "int",
    "n_epochs": "int",
    "loss": "choice",
    "final_act": "choice",
    "constrained_embedding": "choice",
    "hrnn_mode": "choice",
}

METRIC_KINDS = ("recall", "mrr", "ndcg", "coverage")  # all ranked higher-is-better


def is_member_param(name: str) -> bool:
    """True for a per-member scalar, False for a shape shared by the population."""
    return name in population.MEMBER_FIELDS


def parse_metric(name: str) -> tuple[str, int]:
    """'mrr@20' -> ('mrr', 20); ValueError with a one-line message otherwise."""
    match = re.fullmatch(r"(\w+)@(\d+)", name)
    if not match or match.group(1) not in METRIC_KINDS or int(match.group(2)) < 1:
        raise ValueError(f"--metric must be one of {', '.join(k + '@K' for k in METRIC_KINDS)} "
                         f"with a cut-off K >= 1, got {name!r}")
    return match.group(1), int(match.group(2))


def flag_text(value: Any) -> str:
    """A parameter value as a flag's text: floats without the step's rounding noise (0.185, not 0.18500000000000003)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".12g")
    return str(value)


def _clean(value: Any) -> Any:
    """The value a trial trains with: the one its flag text gives back, so the best flag file reproduces it."""
    return float(flag_text(value)) if isinstance(value, float) else value


def trial_params(trial: "optuna.trial.FrozenTrial") -> dict:
    """The parameters a trial trained with (optuna stores the sampler's floats, e.g. 0.18500000000000003 for
    0.185; the trial trained with their 12-digit text, which its tables and flag file show)."""
    return {name: _clean(value) for name, value in trial.params.items()}


# ----------------------------------------------------------------------------------------------------------------
# Search spaces.


@dataclasses.dataclass(frozen=True)
class Param:
    """One tuned parameter: a range of ints or floats, or categorical choices."""

    name: str
    type: str  # int | float | categorical
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial: "optuna.Trial") -> Any:
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def extremes(self) -> tuple:
        """The values that bound what the parameter can take (checked against the flags before a study)."""
        return self.choices if self.type == "categorical" else (self.low, self.high)

    def to_json(self) -> dict:
        fields = ("choices",) if self.type == "categorical" else ("low", "high", "step", "log")
        spec = {"type": self.type}
        for name in fields:
            value = getattr(self, name)
            if value not in (None, False):
                spec[name] = list(value) if name == "choices" else value
        return spec


_RANGE_KEYS = ("type", "low", "high", "step", "log")
_CHOICE_KEYS = ("type", "choices")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_param(name: str, spec: Any) -> Param:
    """Param of one entry of a space file; ValueError naming the problem (the caller prefixes file and name)."""
    if name not in PARAM_KINDS:
        raise ValueError(f"unknown parameter (tunable: {', '.join(sorted(PARAM_KINDS))})")
    if not isinstance(spec, dict):
        raise ValueError('expected an object such as {"type": "float", "low": 0.0, "high": 1.0}')
    kind = spec.get("type")
    if kind not in ("int", "float", "categorical"):
        raise ValueError(f"type must be int, float or categorical, got {kind!r}")
    allowed = _CHOICE_KEYS if kind == "categorical" else _RANGE_KEYS
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))} for type {kind} (allowed: {', '.join(allowed)})")
    flag_kind = PARAM_KINDS[name]
    if kind != "categorical" and flag_kind != kind:
        wanted = "categorical" if flag_kind == "choice" else f"{flag_kind} or categorical"
        raise ValueError(f"type {kind} does not fit this parameter (type {wanted})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError("categorical needs a non-empty list of choices")
        if not all(isinstance(c, (str, bool)) or _is_number(c) for c in choices):
            raise ValueError("choices must be strings, numbers or booleans")
        if len({(type(c), c) for c in choices}) < len(choices):
            raise ValueError(f"duplicate choices in {choices}")
        return Param(name, kind, choices=tuple(choices))
    for key in ("low", "high"):
        if key not in spec:
            raise ValueError(f"{kind} needs {key!r}")
        if not _is_number(spec[key]) or (kind == "int" and not float(spec[key]).is_integer()):
            raise ValueError(f"{key} must be {'an integer' if kind == 'int' else 'a finite number'}, got {spec[key]!r}")
    low, high = spec["low"], spec["high"]
    if low > high:
        raise ValueError(f"empty range: low {low} > high {high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        if not _is_number(step) or step <= 0 or (kind == "int" and not float(step).is_integer()):
            raise ValueError(f"step must be a positive {'integer' if kind == 'int' else 'number'}, got {step!r}")
        n_steps = (high - low) / step
        if abs(n_steps - round(n_steps)) > 1e-9 * max(1.0, n_steps):
            raise ValueError(f"step {step} does not divide the range [{low}, {high}] into whole steps")
    if log:
        if low <= 0:
            raise ValueError(f"log scale needs low > 0, got {low}")
        if step is not None and step != 1:
            raise ValueError("log scale takes no step")
        step = None
    if kind == "int":
        low, high, step = int(low), int(high), None if step is None else int(step)
    return Param(name, kind, low=low, high=high, step=step, log=log)


def load_space(path: str) -> dict[str, Param]:
    """Reads a search space file (format: the module docstring); SpaceError with a one-line message if bad."""
    try:
        with open(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except OSError as error:
        raise SpaceError(f"{path}: cannot read the search space: {error.strerror or error}") from None

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise SpaceError(f"{path}: {repeated[0]} given more than once")
        return dict(pairs)

    try:
        raw = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as error:
        raise SpaceError(f"{path}: not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: expected a JSON object mapping parameter names to their ranges")
    space = {}
    for name, spec in raw.items():
        if name.startswith("_"):
            continue
        try:
            space[name] = _parse_param(name, spec)
        except ValueError as error:
            raise SpaceError(f"{path}: {name}: {error}") from None
    if not space:
        raise SpaceError(f"{path}: no parameters to tune")
    return space


def check_space_values(space: dict[str, Param], path: str, config_for: Callable[[dict], Any]) -> None:
    """Builds a configuration at each parameter's extremes (the base flags for the rest), so that a range
    the flags refuse (e.g. dropout 1.0, an unknown loss) is one error before the study, not failed trials."""
    for param in space.values():
        for value in param.extremes():
            try:
                config_for({param.name: value})
            except ValueError as error:
                message = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise SpaceError(f"{path}: {param.name}: the value {flag_text(value)} is refused: {message}") from None


# ----------------------------------------------------------------------------------------------------------------
# Training the members of a population.


@dataclasses.dataclass(frozen=True)
class StudyData:
    """Training and validation data of a study, read once for all its trials."""

    item_map: data_lib.ItemMap
    train: Union[data_lib.Sessions, user_data.UserSessions]
    valid: Union[data_lib.Sessions, user_data.UserSessions]


@dataclasses.dataclass(frozen=True)
class MemberResult:
    """What one member's training gave: its metrics, or the reason it failed."""

    metrics: Optional[dict] = None
    error: str = ""
    seconds: float = 0.0  # wall time of the training it was part of (the whole population's when trained together)


def load_study_data(cfg: experiment.ExperimentConfig, valid_path: str,
                    log: Callable[[str], None] = print) -> StudyData:
    """Reads the training data and the validation data as ``experiment.run`` would with ``test_path=valid_path``,
    so that a trial's metrics are those of ``experiments.train`` with the same flags."""
    data_cfg = dataclasses.replace(cfg.data, test_path=valid_path)
    user_aware = cfg.model != "gru4rec"
    # experiment.run's own reading and session building (the same private helpers), done once here.
    train_table, valid_table = experiment._load_tables(data_cfg, log, with_users=user_aware)
    item_map = data_lib.ItemMap.from_training(train_table.item_ids)
    if cfg.model == "hrnn":
        train = user_data.build_user_sessions(train_table, item_map, source=data_cfg.train_path)
    else:
        if cfg.model == "concat":  # one sequence per user
            train_table = dataclasses.replace(train_table, session_ids=train_table.user_ids)
        train = data_lib.build_sessions(train_table, item_map, source=data_cfg.train_path)
    if user_aware:
        valid = experiment._replay_data(train_table, valid_table, item_map, valid_path)
    else:
        valid = data_lib.build_sessions(valid_table, item_map, source=valid_path)
    return StudyData(item_map=item_map, train=train, valid=valid)


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


# Failures of one population that leave the study able to go on: a diverged loss, or the device refusing
# (e.g. out of memory for a large shape). Anything else (bad data, bad flags) stops the study.
_TRIAL_FAILURES = (training.TrainingError, jax.errors.JaxRuntimeError)


def train_and_evaluate_members(
    data: StudyData,
    configs: Sequence[experiment.ExperimentConfig],
    *,
    cutoffs: Sequence[int],
    on_member: Callable[[int, MemberResult], None] = lambda i, result: None,
    log: Callable[[str], None] = print,
) -> list[MemberResult]:
    """Trains the members of one population together on ``data.train`` and evaluates them on ``data.valid``.

    The configurations must share the network and the shape fields of
    TrainConfig (``population.check_population``); they train as one stacked
    state (``population.fit_population``, each member as its single run would)
    and are evaluated together (``evaluation.evaluate_population``). A member
    whose loss diverged fails alone. ``on_member(i, result)`` is called for
    each member in order. Returns one result per config.
    """
    model_config = experiment.model_config_for(configs[0], len(data.item_map))
    if any(experiment.model_config_for(c, len(data.item_map)) != model_config for c in configs[1:]):
        raise ValueError("the members of a population must share the network (layers, embedding, model)")
    train_configs = [c.train for c in configs]
    population.check_population(train_configs)
    eval_kwargs = dict(cutoffs=tuple(cutoffs), mode=configs[0].eval.mode, batch_size=configs[0].eval.batch_size,
                       item_coverage=configs[0].eval.item_coverage)
    t0 = time.perf_counter()
    try:
        state, histories = population.fit_population(data.train, model_config, train_configs, log=log)
        member_metrics = evaluation.evaluate_population(state.params, model_config, data.valid, **eval_kwargs)
    except _TRIAL_FAILURES as error:
        seconds = time.perf_counter() - t0
        results = [MemberResult(error=_first_line(error), seconds=seconds) for _ in train_configs]
    else:
        seconds = time.perf_counter() - t0
        results = [
            MemberResult(metrics=dict(metrics), seconds=seconds)
            if all(math.isfinite(stats.loss) for stats in history)
            else MemberResult(error="non-finite training loss", seconds=seconds)
            for history, metrics in zip(histories, member_metrics)
        ]
    for i, result in enumerate(results):
        on_member(i, result)
    return results


# ----------------------------------------------------------------------------------------------------------------
# The study.


def _optuna():
    try:
        import optuna
    except ImportError:
        raise TuneError("optuna is not installed (pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the study prints its own progress lines
    return optuna


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sqlite_directory(storage: str) -> None:
    """SQLite creates the database file but not its folder."""
    prefix = "sqlite:///"
    if storage.startswith(prefix):
        folder = os.path.dirname(storage[len(prefix):])
        if folder:
            os.makedirs(folder, exist_ok=True)


def _json_native(value: Any) -> Any:
    return json.loads(json.dumps(value))


def open_study(
    storage: str,
    study_name: str,
    *,
    seed: int,
    setup: dict,
    space: dict[str, Param],
    log: Callable[[str], None] = print,
) -> tuple["optuna.Study", list[list[tuple[int, dict]]]]:
    """Creates the study, or loads it to resume; returns it and the interrupted populations to re-run.

    ``setup`` (JSON data: space, metric, data, base flags) is stored with a new
    study; resuming one that was started with another setup is refused (its
    trials would not be comparable). Trials left RUNNING by a process that is no
    longer running are marked failed; each interrupted population comes back as
    a list of ``(trial number, params)`` to run first (a trial is re-run once).
    One process per study: a RUNNING trial of a live process on this host is an
    error.
    """
    optuna = _optuna()
    _sqlite_directory(storage)
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", load_if_exists=True)
    except Exception as error:  # SQLAlchemy's errors for a bad URL or an unreadable file, optuna's own
        raise TuneError(f"cannot open storage {storage!r}: {_first_line(error)}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # constant_liar in older optuna
        # constant_liar: the members of a population are asked before any finishes; counting the running ones
        # as poor results keeps TPE from drawing them all near the same point. The seed moves on with the
        # trials already there, so that a resumed study does not draw its first random points again.
        sampler = optuna.samplers.TPESampler(seed=seed + len(study.get_trials(deepcopy=False)), constant_liar=True)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise TuneError(f"study {study_name!r} in {storage} minimises; use another --study_name")
    setup = _json_native(setup)
    previous = study.user_attrs.get("setup")
    if previous is None:
        study.set_user_attr("setup", setup)
    elif previous != setup:
        differing = [key for key in sorted(set(setup) | set(previous)) if setup.get(key) != previous.get(key)]
        raise TuneError(f"study {study_name!r} in {storage} was started with another {', '.join(differing)}; "
                        f"resume it with the same settings or choose another --study_name")

    trial_state = optuna.trial.TrialState
    running = study.get_trials(deepcopy=False, states=(trial_state.RUNNING,))
    host = socket.gethostname()
    for trial in running:
        worker_host, _, pid = trial.user_attrs.get("worker", "").rpartition(":")
        if worker_host == host and pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            raise TuneError(f"trial {trial.number} of study {study_name!r} is running in process {pid}; "
                            f"one process per study")
    groups: dict[Any, list[tuple[int, dict]]] = {}
    for trial in running:
        study.tell(trial.number, state=trial_state.FAIL)
        if set(trial.params) == set(space) and "retry_of" not in trial.user_attrs:
            groups.setdefault(trial.user_attrs.get("population"), []).append((trial.number, dict(trial.params)))
    # A trial enqueued but never asked (the process stopped in between) would otherwise be the next one asked.
    for _ in study.get_trials(deepcopy=False, states=(trial_state.WAITING,)):
        leftover = study.ask()
        leftover.set_user_attr("error", "queued by a stopped process, never run")
        study.tell(leftover, state=trial_state.FAIL)
    pinned = list(groups.values())
    if running:
        log(f"resuming study {study_name!r}: {len(running)} trial(s) interrupted "
            f"({', '.join(str(t.number) for t in running)}), {sum(map(len, pinned))} re-run first")
    return study, pinned


def _count(study: "optuna.Study", state) -> int:
    return len(study.get_trials(deepcopy=False, states=(state,)))


def _ask_population(study, space, size, pinned, population_id):
    """Asks ``size`` trials sharing their shapes: the first as the sampler likes (or pinned), the rest with
    the first's shape values enqueued, so that TPE draws only their member scalars."""
    trials, params = [], []
    shapes = None
    for i in range(size):
        retry_of = None
        if i < len(pinned):
            retry_of, fixed = pinned[i]
            study.enqueue_trial(fixed)
        elif shapes is not None:
            study.enqueue_trial(shapes)
        trial = study.ask()
        trial.set_user_attr("population", population_id)
        trial.set_user_attr("worker", _worker())
        if retry_of is not None:
            trial.set_user_attr("retry_of", retry_of)
        values = {name: _clean(param.suggest(trial)) for name, param in space.items()}
        if shapes is None:
            shapes = {name: trial.params[name] for name in space if not is_member_param(name)}
        trials.append(trial)
        params.append(values)
    return trials, params


def _format_params(params: dict, names: Sequence[str]) -> str:
    return " ".join(f"{name}={flag_text(params[name])}" for name in names)


def run_study(
    study: "optuna.Study",
    space: dict[str, Param],
    *,
    n_trials: int,
    population_size: int,
    metric: str,
    train_members: Callable[[list[dict], Callable[[int, MemberResult], None]], list[MemberResult]],
    pinned: Sequence[Sequence[tuple[int, dict]]] = (),
    after_population: Optional[Callable[[], None]] = None,
    log: Callable[[str], None] = print,
) -> None:
    """Runs populations until the study holds ``n_trials`` complete trials.

    ``train_members(params_list, on_member)`` trains one population (a list of
    parameter dicts sharing their shapes) and reports each member's
    :class:`MemberResult` through ``on_member(i, result)`` as it is known (or
    returns them). ``pinned``: interrupted populations to run first
    (:func:`open_study`). Raises TuneError when as many trials failed in this
    call as the study wants, since a search that only fails has a cause to fix.
    """
    optuna = _optuna()
    complete, fail = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    members = [name for name in space if is_member_param(name)]
    shapes = [name for name in space if not is_member_param(name)]
    if not members and population_size > 1:
        log("the space has no member parameter: populations of one trial")
        population_size = 1
    queue = [list(group) for group in pinned]
    failures = 0
    while (n_complete := _count(study, complete)) < n_trials:
        group = queue.pop(0) if queue else []
        size = max(min(population_size, n_trials - n_complete), min(len(group), population_size))
        ids = [t.user_attrs.get("population", -1) for t in study.get_trials(deepcopy=False)]
        population_id = max(ids, default=-1) + 1
        trials, params = _ask_population(study, space, size, group, population_id)
        numbers = [t.number for t in trials]
        log(f"population {population_id} (trials {numbers[0]}-{numbers[-1]}, {n_complete}/{n_trials} complete): "
            + (_format_params(params[0], shapes) or "the base flags' shapes"))
        told: set[int] = set()

        def on_member(i: int, result: MemberResult) -> None:
            nonlocal failures
            trial = trials[i]
            trial.set_user_attr("seconds", result.seconds)
            error = result.error
            if not error:
                if metric not in result.metrics:
                    error = f"the evaluation reports no {metric} (it gives {', '.join(sorted(result.metrics))})"
                    raise TuneError(error)
                if not math.isfinite(result.metrics[metric]):
                    error = f"{metric} is not finite"
            if error:
                trial.set_user_attr("error", error)
                study.tell(trial, state=fail)
                failures += 1
                outcome = f"failed: {error}"
            else:
                trial.set_user_attr("metrics", {k: v for k, v in result.metrics.items() if _is_number(v)})
                study.tell(trial, result.metrics[metric])
                outcome = f"{metric} {result.metrics[metric]:.4f}"
            told.add(i)
            best = study.best_trial if _count(study, complete) else None
            log(f"  trial {trial.number}: {_format_params(params[i], members)} -> {outcome}"
                + (f"  (best {best.value:.4f}, trial {best.number})" if best else ""))

        try:
            results = train_members(params, on_member)
            for i, result in enumerate(results):
                if i not in told:
                    on_member(i, result)
        except Exception as error:  # the study stops; its trials must not stay RUNNING
            for i, trial in enumerate(trials):
                if i not in told:
                    trial.set_user_attr("error", _first_line(error))
                    study.tell(trial, state=fail)
            raise
        if after_population is not None:
            after_population()
        if failures >= n_trials:
            raise TuneError(f"{failures} trials failed in this run (the last: "
                            f"{trials[-1].user_attrs.get('error', '?') if trials else '?'}); stopping")


def member_trainer(
    data: StudyData,
    config_for: Callable[[dict], experiment.ExperimentConfig],
    *,
    cutoffs: Sequence[int],
    log: Callable[[str], None] = print,
) -> Callable[[list[dict], Callable[[int, MemberResult], None]], list[MemberResult]]:
    """``train_members`` for :func:`run_study`: the members' configurations from their parameters, trained on
    ``data``; a member whose parameters the flags refuse fails alone."""

    def train_members(params_list, on_member):
        configs, index = [], []
        for i, params in enumerate(params_list):
            try:
                configs.append(config_for(params))
                index.append(i)
            except ValueError as error:
                on_member(i, MemberResult(error=_first_line(error)))
        if configs:
            train_and_evaluate_members(data, configs, cutoffs=cutoffs, log=log,
                                       on_member=lambda j, result: on_member(index[j], result))
        return []

    return train_members


# ----------------------------------------------------------------------------------------------------------------
# Outputs.


def _metric_order(name: str) -> tuple:
    kind, _, k = name.partition("@")
    return (METRIC_KINDS.index(kind) if kind in METRIC_KINDS else len(METRIC_KINDS), int(k) if k.isdigit() else 0)


def trial_rows(study: "optuna.Study", space: dict[str, Param], metric: str) -> tuple[list[str], list[dict]]:
    """(columns, one dict per trial in number order): number, state, population, every parameter, the metric,
    the other metrics, seconds and a note (why it failed, or which trial it re-ran)."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    others = sorted({name for t in trials for name in t.user_attrs.get("metrics", {})} - {metric, "n_eval_events"},
                    key=_metric_order)
    columns = ["number", "state", "population", *space, metric, *others, "seconds", "note"]
    rows = []
    for t in trials:
        metrics = t.user_attrs.get("metrics", {})
        note = t.user_attrs.get("error", "")
        if t.state.name == "FAIL" and not note:
            note = "interrupted: its process stopped"
        if "retry_of" in t.user_attrs:
            note = f"re-run of trial {t.user_attrs['retry_of']}" + (f"; {note}" if note else "")
        row = dict(number=t.number, state=t.state.name.lower(), population=t.user_attrs.get("population", ""),
                   seconds=t.user_attrs.get("seconds", ""), note=note)
        params = trial_params(t)
        for name in space:
            row[name] = flag_text(params[name]) if name in params else ""
        for name in (metric, *others):
            row[name] = metrics.get(name, "")
        rows.append(row)
    return columns, rows


def _cell(value: Any, column: str) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if column == "seconds" else f"{value:.4f}"
    return str(value).replace("|", "\\|")


def _write_text(path: str, text: str) -> None:
    """Through a temporary file, so that a stopped run never leaves a half-written output."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path + ".tmp", "wt", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def best_flagfile_text(base_flags: dict[str, str], params: dict, header: Sequence[str]) -> str:
    """A flag file for ``experiments.train``: the base flags (name -> '--name=value' line) with the tuned ones
    replaced by ``params``."""
    lines = [f"# {line}" for line in header]
    lines += [line for name, line in base_flags.items() if name not in params]
    lines += [f"--{name}={flag_text(value)}" for name, value in params.items()]
    return "\n".join(lines) + "\n"


def write_history_chart(path: str, rows: list[dict], metric: str, title: str) -> bool:
    """The metric of every complete trial by trial number, coloured by population, with the best so far;
    False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    done = [r for r in rows if r["state"] == "complete"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if done:
        numbers = np.array([r["number"] for r in done])
        values = np.array([r[metric] for r in done])
        populations = np.array([r["population"] if r["population"] != "" else -1 for r in done])
        points = ax.scatter(numbers, values, c=populations, cmap="viridis", s=28, zorder=3)
        fig.colorbar(points, ax=ax, label="population", ticks=MaxNLocator(integer=True))
        ax.step(numbers, np.maximum.accumulate(values), where="post", color="tab:red", label="best so far")
        ax.legend(loc="lower right")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    return True


def write_outputs(
    study: "optuna.Study",
    space: dict[str, Param],
    metric: str,
    out_dir: str,
    *,
    base_flags: dict[str, str],
    best_flagfile: str,
    description: str,
    details: str = "",
    command: str = "",
    log: Callable[[str], None] = print,
) -> dict:
    """Writes trials.csv, trials.md, history.png (with matplotlib), summary.json and, once a trial is complete,
    the best flag file; returns the summary. ``description`` (the data, metric and base flags) heads the best flag
    file too; ``details`` only trials.md (what may change between resumed runs without changing the study)."""
    columns, rows = trial_rows(study, space, metric)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_text(os.path.join(out_dir, "trials.csv"), buffer.getvalue())

    complete = [r for r in rows if r["state"] == "complete"]
    summary = dict(study=study.study_name, metric=metric, description=description, command=command,
                   n_complete=len(complete), n_failed=sum(r["state"] == "fail" for r in rows),
                   best_flagfile=best_flagfile if complete else None, best=None)
    lines = [f"# Study {study.study_name}", "", description + (f" {details}" if details else ""), ""]
    if command:
        lines += ["```", command, "```", ""]
    if complete:
        trial = study.best_trial
        summary["best"] = dict(number=trial.number, value=trial.value, population=trial.user_attrs.get("population"),
                               params=trial_params(trial),
                               metrics=trial.user_attrs.get("metrics", {}))
        header = [f"experiments.tune: the best of {len(complete)} complete trials of study {study.study_name}: "
                  f"trial {trial.number} (population {trial.user_attrs.get('population')}), {metric} {trial.value:.4f}.",
                  description, f"Tuned: {', '.join(space)}; the other flags are the base flags of the study."]
        _write_text(best_flagfile, best_flagfile_text(base_flags, summary["best"]["params"], header))
        lines += [f"Best: trial {trial.number}, {metric} {trial.value:.4f} ({len(complete)} complete trials); "
                  f"flag file `{best_flagfile}`.", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c], c) for c in columns) + " |" for row in rows]
    _write_text(os.path.join(out_dir, "trials.md"), "\n".join(lines) + "\n")
    _write_text(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if not write_history_chart(os.path.join(out_dir, "history.png"), rows, metric, f"study {study.study_name}: {metric}"):
        log("matplotlib is not installed: no history.png (pip install matplotlib)")
    return summary
