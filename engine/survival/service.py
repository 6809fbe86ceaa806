"""The Cohort survival page's services: ONE call per user action, each returning one result object.

>>> table = load_table(upload_bytes, "cohort.csv")              # Table: content-hashed id, name, frame
>>> result = analyse(table, AnalysisSpec(time="time", event="status", group="arm"))
>>> cox = cox_analysis(table, result.spec, CoxSpec(covariates=("age",)))
>>> risk = risk_analysis(table, result.spec, RiskSpec(features=("age",)))

A :class:`Table`'s id is the SHA-256 of what defines it (the uploaded bytes and the encoding chosen;
the demo's key; a join's two ids and options), so an edited re-upload with the same name and shape
gets a new id and never shows the old table's results. Every result carries the id of the table it
was computed from.

Long work (an optimal cut-point with thousands of permutations) runs off the caller's thread with
:class:`BackgroundAnalysis`: ``start()``, then poll ``progress`` / ``done`` / ``result()``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from engine.errors import HistoDashError, InvalidInputError
from engine.survival.compare import LogRankResult, PairwiseResult, logrank_test, pairwise_logrank
from engine.survival.cox import CoxResult, fit_cox, group_hazard_ratios, univariable_cox
from engine.survival.cutpoint import CutpointResult, parse_cuts, stratify
from engine.survival.data import DEMO_COHORTS, Cohort, join_features, load_demo, prepare_cohort, read_table, split_discovery_validation
from engine.survival.km import KMResult, kaplan_meier
from engine.survival.riskscore import RiskScoreResult, risk_score_workflow

STRATA = {"group column": "the group column as it is", "median": "median split", "tertiles": "tertiles",
          "quartiles": "quartiles", "manual": "manual cut-offs", "optimal": "optimal cut-point (maximally selected log-rank)"}
DEFAULT_TIMES = {"days": "365, 730", "weeks": "52, 104", "months": "12, 36, 60", "years": "1, 3, 5"}
BACKGROUND_WORK = 2_000_000  # patients × permutations above which a page should run the analysis off its thread


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class Table:
    """A cohort table and the id of its content."""

    id: str
    name: str
    frame: pd.DataFrame = field(repr=False)
    encoding: str = ""

    @property
    def numeric_columns(self) -> list[str]:
        return [c for c in self.frame.columns if pd.api.types.is_numeric_dtype(self.frame[c])]


def load_table(data: bytes, name: str, *, encoding: str | None = None) -> Table:
    """An uploaded table (:func:`engine.survival.data.read_table`), its id the hash of its bytes and the encoding asked for."""
    frame = read_table(data, name=name, encoding=encoding)
    return Table(_digest("upload", data, encoding or "auto"), name, frame, frame.attrs.get("encoding", ""))


def demo_table(key: str) -> Table:
    if key not in DEMO_COHORTS:
        raise InvalidInputError(f"Unknown demo cohort {key!r}.", f"Choose one of: {', '.join(DEMO_COHORTS)}.")
    return Table(_digest("demo", key), f"demo:{key}", load_demo(key))


def join_tables(table: Table, features: Table, on: str, features_on: str, *, id_chars: int | None = None, aggregate: bool = False) -> Table:
    """``table`` with the per-patient columns of ``features`` joined on (:func:`engine.survival.data.join_features`)."""
    frame = join_features(table.frame, features.frame, on, features_on, id_chars=id_chars, aggregate=aggregate)
    return Table(_digest("join", table.id, features.id, on, features_on, id_chars, aggregate), f"{table.name} + {features.name}", frame)


@dataclass(frozen=True)
class AnalysisSpec:
    """What the Analyse form asks for (every text field is parsed by :func:`analyse`, with messages)."""

    time: str
    event: str
    group: str | None = None
    unit: str = "days"
    show_unit: str | None = None
    strata: str = "group column"
    split_col: str | None = None
    cuts: str = ""
    minprop: float = 0.1
    n_permutations: int = 0
    weighting: str = "logrank"
    fh: str = "1, 0"
    at_times: str = ""

    @property
    def shown_unit(self) -> str:
        return self.show_unit or self.unit

    def work(self, n_rows: int) -> int:
        """Patients × permutations: how heavy the analysis is (see :data:`BACKGROUND_WORK`)."""
        return n_rows * (self.n_permutations if self.strata == "optimal" else 0)


@dataclass(frozen=True, eq=False)
class AnalysisResult:
    """Kaplan–Meier curves and the tests between groups of one table under one spec."""

    table_id: str
    spec: AnalysisSpec
    cohort: Cohort
    km: KMResult
    times: tuple[float, ...]
    scan: CutpointResult | None = None
    cuts: tuple[float, ...] | None = None
    test: LogRankResult | None = None
    pairwise: PairwiseResult | None = None
    hr: CoxResult | None = None
    messages: tuple[HistoDashError, ...] = ()  # tests that could not run (the curves are still valid)


def _fh_weights(text: str) -> tuple[float, float]:
    weights = parse_cuts(text, what="Fleming–Harrington weight")
    if len(weights) > 2:
        raise InvalidInputError("Fleming–Harrington takes two weights, p and q.", "Enter e.g. 1, 0 (R's survdiff rho = 1).")
    p, q = (weights + [1.0, 0.0][len(weights):])[:2]
    return p, q


def analyse(table: Table, spec: AnalysisSpec, progress: Callable[[int, int], None] | None = None) -> AnalysisResult:
    """Prepare the cohort, make the strata, fit Kaplan–Meier and run the tests between groups.

    A test that cannot run (one group, a group without events) is a message in ``messages``; anything
    wrong with the table or the form raises :class:`InvalidInputError`. ``progress(done, total)``
    follows the permutations of an optimal cut-point.
    """
    if spec.strata not in STRATA:
        raise InvalidInputError(f"Unknown strata {spec.strata!r}.", f"Choose one of: {', '.join(STRATA)}.")
    split = spec.strata != "group column"
    if split and not spec.split_col:
        raise InvalidInputError("The table has no numeric column to split.", "Use the group column instead.")
    cohort = prepare_cohort(table.frame, spec.time, spec.event, None if split else spec.group, [spec.split_col] if split else [],
                            time_unit=spec.unit).with_time_unit(spec.shown_unit)
    scan = cuts = None
    if split:
        options = {"minprop": spec.minprop, "n_permutations": int(spec.n_permutations), "progress": progress} if spec.strata == "optimal" else {}
        cohort, cuts, scan = stratify(cohort, spec.split_col, spec.strata, cuts=parse_cuts(spec.cuts) if spec.strata == "manual" else None, **options)
    fh_p, fh_q = _fh_weights(spec.fh)
    times = tuple(parse_cuts(spec.at_times, what="Time") or parse_cuts(DEFAULT_TIMES[spec.shown_unit]))
    out = {"test": None, "pairwise": None, "hr": None}
    messages: list[HistoDashError] = []
    if cohort.group_col is not None:
        for key, fn in [("test", lambda: logrank_test(cohort, spec.weighting, fh_p, fh_q)),
                        ("pairwise", lambda: pairwise_logrank(cohort, spec.weighting, fh_p, fh_q) if len(cohort.group_order) > 2 else None),
                        ("hr", lambda: group_hazard_ratios(cohort))]:
            try:
                out[key] = fn()
            except InvalidInputError as err:  # shown beside the curves, which are still valid
                if str(err) not in [str(m) for m in messages]:
                    messages.append(err)
    return AnalysisResult(table.id, spec, cohort, kaplan_meier(cohort), times, scan, tuple(cuts) if cuts is not None else None,
                          out["test"], out["pairwise"], out["hr"], tuple(messages))


@dataclass(frozen=True)
class CoxSpec:
    covariates: tuple[str, ...] = ()
    with_groups: bool = False
    penalizer: float = 0.0


@dataclass(frozen=True, eq=False)
class CoxAnalysis:
    table_id: str
    model: CoxResult
    univariable: pd.DataFrame | None = None


def cox_analysis(table: Table, analysis: AnalysisResult | None, spec: AnalysisSpec, cox: CoxSpec) -> CoxAnalysis:
    """A Cox model on the chosen covariates (and, with ``with_groups``, the current strata as a factor)."""
    covs = list(cox.covariates)
    if cox.with_groups and analysis is not None and analysis.cuts is not None:  # strata cut from a continuous column: the same cut-offs
        cohort = prepare_cohort(table.frame, spec.time, spec.event, None, list(dict.fromkeys([*covs, spec.split_col])), time_unit=spec.unit)
        cohort, _, _ = stratify(cohort, spec.split_col, "manual", list(analysis.cuts))
    else:
        group = spec.group if cox.with_groups else None
        if cox.with_groups and group is None:
            raise InvalidInputError("No group column chosen, so there are no strata to add.", "Pick a group column.")
        cohort = prepare_cohort(table.frame, spec.time, spec.event, group, covs, time_unit=spec.unit)
    cohort = cohort.with_time_unit(spec.shown_unit)
    model = fit_cox(cohort, covs, include_group=cox.with_groups, penalizer=cox.penalizer)
    return CoxAnalysis(table.id, model, univariable_cox(cohort, covs) if len(covs) > 1 else None)


@dataclass(frozen=True, eq=False)
class RiskSpec:
    features: tuple[str, ...] = ()
    penalizer: float = 0.1
    l1_ratio: float = 0.0
    validation: Table | None = None  # None: split this table 50/50 (seeded, stratified by event)


def risk_analysis(table: Table, spec: AnalysisSpec, risk: RiskSpec) -> tuple[str, RiskScoreResult]:
    """The PathoSig-style risk score: discovery fit, frozen score and cut-off, validation. Returns (table id, result)."""
    if risk.validation is None:
        disc_df, val_df = split_discovery_validation(table.frame, 0.5, stratify=spec.event)
    else:
        disc_df, val_df = table.frame, risk.validation.frame
    feats = list(risk.features)
    disc = prepare_cohort(disc_df, spec.time, spec.event, covariates=feats, time_unit=spec.unit).with_time_unit(spec.shown_unit)
    val = prepare_cohort(val_df, spec.time, spec.event, covariates=feats, time_unit=spec.unit).with_time_unit(spec.shown_unit)
    return table.id, risk_score_workflow(disc, val, feats, penalizer=risk.penalizer, l1_ratio=risk.l1_ratio)


class BackgroundAnalysis:
    """:func:`analyse` on a worker thread: ``start()``, then poll ``progress`` (done, total), ``done`` and ``result()``.

    ``result()`` returns the :class:`AnalysisResult` or raises the error the analysis raised.
    """

    def __init__(self, table: Table, spec: AnalysisSpec):
        self.table, self.spec = table, spec
        self.progress: tuple[int, int] = (0, max(int(spec.n_permutations), 1))
        self._result: AnalysisResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="histodash-survival", daemon=True)

    def start(self) -> BackgroundAnalysis:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._result = analyse(self.table, self.spec, progress=self._progress)
        except BaseException as err:  # noqa: BLE001 - handed to the caller by result()
            self._error = err

    def _progress(self, done: int, total: int) -> None:
        self.progress = (done, total)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive() and (self._result is not None or self._error is not None)

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self.done

    def result(self) -> AnalysisResult:
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise InvalidInputError("The analysis is still running.")
        return self._result
