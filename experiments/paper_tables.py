"""The paper tables that ``experiments.reproduce`` runs: their rows and the paper's numbers.

A row is either a non-neural baseline of :mod:`gru4rec_jax.baselines`, run in
process, or one ``python -m experiments.train`` run of a flag file in
experiments/configs/. ``paper`` holds the published (Recall@K, MRR@K) on the full
dataset (EXTENSIONS.md section 4); None where the paper's number could not be
confirmed. ``orderings`` are the paper's claims that the reproduction checks:
(higher row, lower row), compared on Recall@K and MRR@K separately. ``space`` is
the search space (experiments/spaces/) whose member scalars ``experiments.reproduce
--tune_trials`` tunes for a GRU4Rec row; the row's network shapes stay its flag
file's, since they are what the table compares.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

__all__ = ["Row", "Table", "TABLES"]

CONFIGS = "experiments/configs"
SPACES = "experiments/spaces"


@dataclasses.dataclass(frozen=True)
class Row:
    key: str
    label: str
    paper: Optional[tuple[Optional[float], Optional[float]]] = None
    baseline: str = ""  # pop | spop | itemknn | bprmf
    flagfile: str = ""  # for GRU4Rec rows
    space: str = ""  # GRU4Rec rows: the search space of --tune_trials (without one a row cannot be tuned)

    def __post_init__(self):
        if bool(self.baseline) == bool(self.flagfile):
            raise ValueError(f"row {self.key}: give exactly one of baseline and flagfile")
        if self.space and self.baseline:
            raise ValueError(f"row {self.key}: a baseline has no search space")


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    title: str
    dataset: str  # what the paper's numbers were measured on
    cutoff: int
    rows: tuple[Row, ...]
    orderings: tuple[tuple[str, str], ...] = ()
    note: str = ""

    def row(self, key: str) -> Row:
        return next(r for r in self.rows if r.key == key)


def _gru(key, label, config, paper=None, space="gru4rec_2016"):
    return Row(key, label, paper, flagfile=f"{CONFIGS}/{config}.cfg", space=f"{SPACES}/{space}.json")


_POP = Row("pop", "POP", (0.0050, 0.0012), baseline="pop")
_SPOP = Row("spop", "S-POP", (0.2672, 0.1775), baseline="spop")
_KNN = Row("itemknn", "Item-KNN", (0.5065, 0.2048), baseline="itemknn")
_BPRMF = Row("bprmf", "BPR-MF", (0.2574, 0.0618), baseline="bprmf")
_TOP1_100 = ("top1_100", "GRU4Rec TOP1, 100 units", "iclr2016_rsc15_top1_100", (0.5853, 0.2305))

ICLR2016 = Table(
    name="iclr2016",
    title="ICLR 2016: GRU4Rec against the baselines (RSC15, in-batch negatives only)",
    dataset="full RSC15",
    cutoff=20,
    rows=(
        _POP, _SPOP, _KNN, _BPRMF,
        _gru(*_TOP1_100),
        _gru("bpr_100", "GRU4Rec BPR, 100 units", "iclr2016_rsc15_bpr_100", (0.6069, 0.2407)),
        _gru("xe_100", "GRU4Rec cross-entropy, 100 units", "iclr2016_rsc15_xe_100", (0.6074, 0.2430)),
        _gru("top1_1000", "GRU4Rec TOP1, 1000 units", "iclr2016_rsc15_top1_1000", (0.6206, 0.2693)),
        _gru("bpr_1000", "GRU4Rec BPR, 1000 units", "iclr2016_rsc15_bpr_1000", (0.6322, 0.2467)),
        _gru("xe_1000", "GRU4Rec cross-entropy, 1000 units", "iclr2016_rsc15_xe_1000", (0.5777, 0.2153)),
    ),
    orderings=(
        ("top1_100", "itemknn"), ("bpr_100", "itemknn"), ("xe_100", "itemknn"),
        ("top1_1000", "itemknn"), ("bpr_1000", "itemknn"), ("xe_1000", "itemknn"),
        ("itemknn", "spop"), ("spop", "bprmf"), ("bprmf", "pop"),
        ("top1_1000", "top1_100"), ("bpr_1000", "bpr_100"), ("xe_100", "xe_1000"),
    ),
)

CIKM2018 = Table(
    name="cikm2018",
    title="CIKM 2018: top-k gains, 2048 shared samples (RSC15, 100 units)",
    dataset="full RSC15",
    cutoff=20,
    rows=(
        _KNN,
        _gru("original", "original GRU4Rec (TOP1, no samples)", *_TOP1_100[2:]),
        # TOP1 with samples has the cross-entropy space's scalars (no bpreg, tanh output instead of ELU).
        _gru("top1", "TOP1 + samples", "cikm2018_rsc15_top1", (0.6141, 0.2261), "gru4rec_xe"),
        _gru("xe", "cross-entropy + samples", "cikm2018_rsc15_xe", (0.7208, 0.3137), "gru4rec_xe"),
        _gru("top1max", "TOP1-max + samples", "cikm2018_rsc15_top1max", (0.7086, 0.3047), "gru4rec_top1max"),
        _gru("bprmax", "BPR-max + samples", "cikm2018_rsc15_bprmax", (0.7211, 0.3170), "gru4rec_bprmax"),
    ),
    orderings=(
        ("original", "itemknn"), ("top1", "original"), ("xe", "original"), ("top1max", "original"),
        ("bprmax", "original"), ("top1max", "top1"), ("bprmax", "top1"), ("bprmax", "top1max"),
    ),
)

DWELL2017 = Table(
    name="dwell2017",
    title="RecTemp 2017: dwell-time boosting of the training sessions (RSC15, GRU4Rec TOP1, 100 units)",
    dataset="full RSC15",
    cutoff=20,
    rows=(
        _gru("no_boost", "GRU4Rec, no boosting", "iclr2016_rsc15_top1_100"),
        *(_gru(f"t{t}", f"GRU4Rec-Dwell, t = {t} s", f"dwell2017_rsc15_t{t}") for t in (50, 75, 100, 150)),
        _gru("control", "GRU4Rec, no boosting, 20 epochs (control)", "dwell2017_rsc15_control_20epochs"),
    ),
    orderings=tuple((f"t{t}", "no_boost") for t in (50, 75, 100, 150)) + (("t75", "control"),),
    note="The workshop paper's table could not be read (EXTENSIONS.md section 2): the deliverable is the "
    "with/without comparison over a sweep of thresholds, whichever direction it shows. Boosting also means more "
    "updates per epoch; the control row trains without boosting for about as many updates as t = 75 s gets.",
)

HRNN = Table(
    name="hrnn",
    title="RecSys 2017: HRNN against session-based and concatenated-history models (released XING small settings)",
    dataset="XING",
    cutoff=5,
    rows=(
        Row("pop", "POP", baseline="pop"),
        Row("itemknn", "Item-KNN", baseline="itemknn"),
        _gru("session_only", "GRU4Rec, sessions only", "xing_gru4rec_session_only"),
        _gru("concat", "RNN Concat", "xing_rnn_concat"),
        _gru("hrnn_init", "HRNN-init, 100 units", "xing_hrnn_small_init", space="hrnn"),
        _gru("hrnn_all", "HRNN-all, 100 units", "xing_hrnn_small_all", (0.1334, None), space="hrnn"),
    ),
    orderings=(
        ("hrnn_init", "session_only"), ("hrnn_all", "session_only"), ("hrnn_init", "concat"),
        ("hrnn_all", "concat"), ("session_only", "itemknn"), ("itemknn", "pop"),
    ),
    note="Only HRNN-all's Recall@5 on XING could be confirmed from the paper (EXTENSIONS.md section 3); "
    "the data here is a RetailRocket sample, not XING.",
)

TABLES = {t.name: t for t in (ICLR2016, CIKM2018, DWELL2017, HRNN)}
