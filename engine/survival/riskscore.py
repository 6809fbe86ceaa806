"""PathoSig-style risk scores (REFERENCE.md §2): discovery fit, frozen score and cut, validation.

Features (e.g. per-patient cluster proportions, slide scores, clinical variables) -> a (penalised)
Cox model on the *discovery* cohort -> risk score = linear predictor ``sum_j coef_j * x_j`` (not
centred, so it can be applied to any cohort) -> cut at the discovery median -> the *validation*
cohort gets the frozen coefficients and the frozen cut-off, never refitted -> Kaplan–Meier and
log-rank for high versus low risk in both cohorts.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.errors import InvalidInputError
from engine.survival.compare import LogRankResult, logrank_test
from engine.survival.cox import CoxResult, fit_cox, group_hazard_ratios
from engine.survival.data import Cohort
from engine.survival.km import KMResult, kaplan_meier

LOW, HIGH = "low risk", "high risk"


class RiskScoreModel:
    """Cox-based risk score with a frozen cut-off (scikit-learn style: ``fit`` returns ``self``).

    Parameters
    ----------
    features: the covariate columns the score uses.
    penalizer, l1_ratio: lifelines' elastic-net penalty (on standardised covariates); 0 = plain Cox.
    """

    def __init__(self, features: Sequence[str] = (), penalizer: float = 0.1, l1_ratio: float = 0.0):
        self.features = tuple(features)
        self.penalizer = penalizer
        self.l1_ratio = l1_ratio

    def fit(self, cohort: Cohort) -> RiskScoreModel:
        if not self.features:
            raise InvalidInputError("No features chosen for the risk score.", "Pick at least one numeric column.")
        self.cox_: CoxResult = fit_cox(cohort, self.features, penalizer=self.penalizer, l1_ratio=self.l1_ratio,
                                       ph_test=False)
        self.coef_ = self.cox_.coefficients.reindex(list(self.features))
        scores = self.score(cohort)
        self.cutoff_ = float(np.median(scores))
        self.n_discovery_ = cohort.n
        self.events_discovery_ = cohort.n_events
        if np.ptp(scores) == 0:
            raise InvalidInputError("Every discovery patient has the same risk score, so it cannot be cut into groups.",
                                    "Lower the penaliser or the L1 ratio, or choose other features.")
        return self

    def _check_fitted(self):
        if not hasattr(self, "coef_"):
            raise InvalidInputError("The risk score model is not fitted yet.", "Fit it on a discovery cohort first.")

    def score(self, data: Cohort | pd.DataFrame) -> np.ndarray:
        """Risk score of each row: ``sum_j coef_j * x_j`` with the frozen coefficients."""
        self._check_fitted()
        df = data.data if isinstance(data, Cohort) else data
        missing = [f for f in self.features if f not in df.columns]
        if missing:
            raise InvalidInputError(f"The cohort lacks the risk-score feature column(s) {', '.join(map(repr, missing))}.",
                                    "The validation table must have the same feature columns as the discovery table.")
        x = df[list(self.features)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
        return x @ self.coef_.to_numpy(float)

    def assign(self, cohort: Cohort) -> Cohort:
        """Copy of ``cohort`` grouped ``low risk`` (score <= frozen cut-off) / ``high risk``, with a ``risk_score`` column."""
        s = self.score(cohort)
        data = cohort.data.copy()
        data["risk_score"] = s
        data["group"] = np.where(s > self.cutoff_, HIGH, LOW).astype(object)
        order = tuple(g for g in (LOW, HIGH) if (data["group"] == g).any())
        return dataclasses.replace(cohort, data=data, group_col="risk group", group_order=order)

    def coefficients_frame(self) -> pd.DataFrame:
        self._check_fitted()
        tab = self.cox_.summary.set_index("term").loc[list(self.features)].reset_index()
        return tab

    def to_dict(self) -> dict:
        self._check_fitted()
        return {"model": "cox_risk_score", "score": "sum(coefficient * feature)", "features": list(self.features),
                "coefficients": {k: float(v) for k, v in self.coef_.items()}, "cutoff": self.cutoff_,
                "rule": f"'{HIGH}' if score > cutoff else '{LOW}'", "cutoff_definition": "median score of the discovery cohort",
                "penalizer": self.penalizer, "l1_ratio": self.l1_ratio, "n_discovery": self.n_discovery_,
                "events_discovery": self.events_discovery_}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> RiskScoreModel:
        """A frozen model from :meth:`to_dict` output (no refitting)."""
        try:
            m = cls(features=d["features"], penalizer=d.get("penalizer", 0.0), l1_ratio=d.get("l1_ratio", 0.0))
            m.coef_ = pd.Series({f: float(d["coefficients"][f]) for f in m.features})
            m.cutoff_ = float(d["cutoff"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"Not a risk-score model file (missing or bad {exc}).",
                                    "Use a JSON file downloaded from the risk-score tab.") from exc
        m.n_discovery_ = d.get("n_discovery")
        m.events_discovery_ = d.get("events_discovery")
        return m


@dataclass(frozen=True)
class CohortOutcome:
    """High- versus low-risk outcome in one cohort."""

    name: str
    cohort: Cohort
    km: KMResult
    logrank: LogRankResult | None
    hazard_ratio: CoxResult | None
    message: str = ""

    def scores_frame(self) -> pd.DataFrame:
        d = self.cohort.data
        return d[["time", "event", "risk_score", "group"]].rename(columns={"group": "risk_group"})


@dataclass(frozen=True)
class RiskScoreResult:
    model: RiskScoreModel
    discovery: CohortOutcome
    validation: CohortOutcome | None

    def summary_frame(self) -> pd.DataFrame:
        rows = []
        for o in (self.discovery, self.validation):
            if o is None:
                continue
            hr = o.hazard_ratio.summary.iloc[0] if o.hazard_ratio is not None else None
            rows.append({"cohort": o.name, "n": o.cohort.n, "events": o.cohort.n_events,
                         "n_high": int((o.cohort.data["group"] == HIGH).sum()),
                         "logrank_chi2": o.logrank.chi2 if o.logrank else np.nan,
                         "logrank_p": o.logrank.p if o.logrank else np.nan,
                         "hr_high_vs_low": hr["hr"] if hr is not None else np.nan,
                         "hr_lower": hr["hr_lower"] if hr is not None else np.nan,
                         "hr_upper": hr["hr_upper"] if hr is not None else np.nan})
        return pd.DataFrame(rows)


def _outcome(name: str, model: RiskScoreModel, cohort: Cohort) -> CohortOutcome:
    grouped = model.assign(cohort)
    km = kaplan_meier(grouped)
    lr = hr = None
    msg = ""
    try:
        lr = logrank_test(grouped)
        hr = group_hazard_ratios(grouped)
    except InvalidInputError as err:  # e.g. every validation patient on one side of the frozen cut
        msg = str(err)
    return CohortOutcome(name=name, cohort=grouped, km=km, logrank=lr, hazard_ratio=hr, message=msg)


def risk_score_workflow(discovery: Cohort, validation: Cohort | None, features: Sequence[str], *,
                        penalizer: float = 0.1, l1_ratio: float = 0.0) -> RiskScoreResult:
    """Fit on ``discovery``, freeze, apply to ``validation``; KM + log-rank + HR in both."""
    model = RiskScoreModel(features, penalizer=penalizer, l1_ratio=l1_ratio).fit(discovery)
    disc = _outcome("discovery", model, discovery)
    val = _outcome("validation", model, validation) if validation is not None else None
    return RiskScoreResult(model=model, discovery=disc, validation=val)
