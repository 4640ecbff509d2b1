r"""Tune GRU4Rec's hyperparameters with optuna, the trials trained in populations.

    python -m experiments.tune --flagfile=experiments/configs/rsc15_xe_shared_best.cfg \
        --space=experiments/spaces/gru4rec_xe_parspace.json \
        --train_path=data/train_tr.tsv --valid_path=data/train_valid.tsv \
        --n_trials=32 --population=8 --metric=mrr@20 \
        --storage=sqlite:///runs/study.db --study_name=rsc15_xe --out_dir=runs/rsc15_xe

Every flag of experiments.train is accepted (here from the flag file): the space
(gru4rec_jax/tuning.py describes its JSON format) overrides the ones it tunes.
Trials train on --train_path and are ranked by --metric on --valid_path; P of
them that share the network's shapes train together as one population. The
study lives in --storage: the same command resumes a stopped study. Writes
trials.csv, trials.md, history.png, summary.json and the best trial's flag file
(loadable by ``python -m experiments.train --flagfile=``) to --out_dir.
"""

from __future__ import annotations

import os
import shlex
import sys

import jax
from absl import app, flags, logging

from experiments import train  # its flags: the base flag file sets any of them
from gru4rec_jax import checkpoint, data, training, tuning

flags.DEFINE_string("space", None, "Search space: a JSON file of parameter -> range (experiments/spaces/).")
flags.DEFINE_string("valid_path", "", "Validation events (TSV) the trials are ranked on.")
flags.DEFINE_integer("n_trials", 32, "The study goes on until it holds this many complete trials.")
flags.DEFINE_integer("population", 8, "Trials that share the network's shapes and train together.")
flags.DEFINE_string("metric", "mrr@20", "What the trials are ranked by (maximised): recall@K, mrr@K, ndcg@K or "
                    "coverage@K.")
flags.DEFINE_bool("tune_shapes", True, "Tune the space's shape parameters (layers, batch size, ...); with "
                  "--notune_shapes only the member scalars are tuned, the shapes stay those of the flags.")
flags.DEFINE_string("storage", "", "optuna storage URL. Default: sqlite:///{out_dir}/study.db.")
flags.DEFINE_string("study_name", "", "Name of the study in the storage. Default: the space file's name.")
flags.DEFINE_string("out_dir", "runs/tune", "Where trials.csv, trials.md, history.png and summary.json go.")
flags.DEFINE_string("best_flagfile_out", "", "The best trial's flag file. Default: {out_dir}/best.cfg.")

FLAGS = flags.FLAGS

# experiments.train flags that are not part of a trial's setting: the data are --train_path and --valid_path,
# outputs are tune's own, and the trials run on one device.
_NOT_APPLICABLE = {
    "test_path": "the trials are ranked on --valid_path",
    "load_path": "every trial trains from scratch",
    "save_path": "trials keep no checkpoints",
    "metrics_out": "the metrics go to --out_dir",
    "mesh": "trials run on one device",
    "coordinator_address": "trials run in one process",
}
_NOT_BASE = {"train_path", *_NOT_APPLICABLE, "num_processes", "process_id"}


def _log(line: str) -> None:
    print(line, flush=True)


def _events(sessions) -> int:
    return getattr(sessions, "sessions", sessions).n_events  # UserSessions hold their Sessions


def base_flags() -> dict[str, str]:
    """The experiments.train flags the flag file and command line set: flag name -> its '--name=value' line."""
    return {f.name: f.serialize() for f in FLAGS.get_flags_for_module(train)
            if f.present and f.name not in _NOT_BASE}


def config_for(params: dict):
    """The experiment configuration of the base flags with ``params`` (flag name -> value) in place."""
    saved = {name: FLAGS[name].value for name in params}
    try:
        for name, value in params.items():
            FLAGS[name].value = FLAGS[name].parser.parse(tuning.flag_text(value))
        return train.config_from_flags()
    finally:
        for name, value in saved.items():
            FLAGS[name].value = value


def _check_flags() -> None:
    for name, why in _NOT_APPLICABLE.items():
        if FLAGS[name].present:
            raise ValueError(f"--{name} does not apply to experiments.tune ({why})")
    if not FLAGS.space:
        raise ValueError("--space is required (a JSON search space, e.g. experiments/spaces/gru4rec_xe_parspace.json)")
    if not FLAGS.train_path or not FLAGS.valid_path:
        raise ValueError("--train_path and --valid_path are required")
    if FLAGS.n_trials < 1:
        raise ValueError(f"--n_trials must be >= 1, got {FLAGS.n_trials}")
    if FLAGS.population < 1:
        raise ValueError(f"--population must be >= 1, got {FLAGS.population}")
    tuning.parse_metric(FLAGS.metric)


def run() -> dict:
    _check_flags()
    metric, (kind, cutoff) = FLAGS.metric, tuning.parse_metric(FLAGS.metric)
    if kind == "coverage":  # the evaluation lists the top-K items only when asked
        FLAGS.item_coverage = True
    space = tuning.load_space(FLAGS.space)
    if not FLAGS.tune_shapes:
        kept = {name: p for name, p in space.items() if tuning.is_member_param(name)}
        if not kept:
            raise tuning.SpaceError(f"{FLAGS.space}: no member parameter to tune with --notune_shapes")
        if len(kept) < len(space):
            _log(f"--notune_shapes: {', '.join(n for n in space if n not in kept)} stay as the flags set them")
        space = kept
    base_config = train.config_from_flags()  # the base flags alone must make a valid run
    tuning.check_space_values(space, FLAGS.space, config_for)
    flag_lines = base_flags()
    out_dir = FLAGS.out_dir
    storage = FLAGS.storage or f"sqlite:///{os.path.join(out_dir, 'study.db')}"
    study_name = FLAGS.study_name or os.path.splitext(os.path.basename(FLAGS.space))[0]
    best_flagfile = FLAGS.best_flagfile_out or os.path.join(out_dir, "best.cfg")
    setup = dict(space={name: p.to_json() for name, p in space.items()}, metric=metric,
                 train_path=FLAGS.train_path, valid_path=FLAGS.valid_path, base_flags=sorted(flag_lines.values()))
    study, pinned = tuning.open_study(storage, study_name, seed=FLAGS.seed, setup=setup, space=space, log=_log)

    flagfiles = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--flagfile=")]
    description = (f"Trained on `{FLAGS.train_path}`, ranked by {metric} on `{FLAGS.valid_path}` "
                   f"({base_config.eval.mode} ties); base flags {', '.join(f'`{f}`' for f in flagfiles) or 'none'}.")
    details = f"Populations of up to {FLAGS.population} trials; storage `{storage}`."
    command = shlex.join(["python", "-m", "experiments.tune", *sys.argv[1:]])

    def write():
        return tuning.write_outputs(study, space, metric, out_dir, base_flags=flag_lines, best_flagfile=best_flagfile,
                                    description=description, details=details, command=command, log=_log)

    n_complete = sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))
    if n_complete < FLAGS.n_trials:
        _log(f"study {study_name!r} in {storage}: {n_complete} of {FLAGS.n_trials} trials complete; "
             f"space {', '.join(space)}")
        study_data = tuning.load_study_data(base_config, FLAGS.valid_path, log=_log)
        _log(f"data: {_events(study_data.train)} training events, {len(study_data.item_map)} items; "
             f"{_events(study_data.valid)} validation events")
        cutoffs = sorted(set(base_config.eval.cutoffs) | {cutoff})
        trainer = tuning.member_trainer(study_data, config_for, cutoffs=cutoffs, log=logging.info)
        tuning.run_study(study, space, n_trials=FLAGS.n_trials, population_size=FLAGS.population, metric=metric,
                         train_members=trainer, pinned=pinned, after_population=write, log=_log)
    else:
        _log(f"study {study_name!r} in {storage} already holds {n_complete} complete trials")
    summary = write()
    best = summary["best"]
    _log(f"best: trial {best['number']} (population {best['population']}), {metric} {best['value']:.4f}: "
         + " ".join(f"{k}={tuning.flag_text(v)}" for k, v in best["params"].items()))
    _log(f"wrote {best_flagfile}; the trials' tables and chart in {out_dir}")
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # --verbosity=0 shows every trial's training lines
    jax.config.update("jax_default_matmul_precision", FLAGS.matmul_precision)
    try:
        run()
    except (tuning.TuneError, data.DataError, checkpoint.CheckpointError, training.TrainingError,
            ValueError, OSError) as error:
        sys.exit(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}")


if __name__ == "__main__":
    app.run(main)
