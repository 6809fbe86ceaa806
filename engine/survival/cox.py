"""Cox proportional-hazards models (lifelines, Efron ties) and R's proportional-hazards test.

:func:`fit_cox` fits :class:`lifelines.CoxPHFitter` on a :class:`~engine.survival.data.Cohort`'s
numeric covariates and/or its group column (indicator per group against the first, R's
``treatment`` contrasts), converged tightly enough (Newton step < 1e-12) to agree with R's
``coxph(..., ties = "efron")`` to better than 1e-6. The proportional-hazards check is
:func:`cox_zph`, a port of R's ``cox.zph`` (survival >= 3.0: a score test for ``beta(t) = beta +
theta g(t)`` with ``g`` = the Kaplan–Meier transform of time), computed from the Schoenfeld residuals.
"""

from __future__ import annotations

import warnings as _warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from engine.errors import InvalidInputError
from engine.survival.data import Cohort, require_groups

FIT_OPTIONS = {"precision": 1e-12, "r_precision": 0.0, "max_steps": 200}
MIN_EVENTS_PER_COEF = 10  # the usual rule of thumb; below it we warn


def group_term(group_col: str, level: str) -> str:
    return f"{group_col}={level}"


def design_matrix(cohort: Cohort, covariates: Sequence[str] = (), include_group: bool = False) -> pd.DataFrame:
    """Numeric covariates plus one 0/1 column per non-reference group (reference = first group)."""
    d = cohort.data
    missing = [c for c in covariates if c not in d.columns]
    if missing:
        raise InvalidInputError(f"Covariate(s) {', '.join(map(repr, missing))} were not mapped when the cohort was prepared.",
                                "Add them to the covariate list.")
    x = d[list(covariates)].astype(float).copy()
    if include_group:
        require_groups(cohort, need_events=False, what="hazard ratios between groups")
        for g in cohort.group_order[1:]:
            x[group_term(cohort.group_col, g)] = (d["group"] == g).astype(float).to_numpy()
    return x


@dataclass(frozen=True)
class CoxResult:
    """A fitted Cox model. ``summary``: term, coef, se, z, p, hr, hr_lower, hr_upper (per coefficient)."""

    summary: pd.DataFrame
    concordance: float
    log_likelihood: float
    n: int
    n_events: int
    penalizer: float = 0.0
    l1_ratio: float = 0.0
    conf_level: float = 0.95
    ph_test: pd.DataFrame | None = None  # term, chi2, df, p (+ GLOBAL)
    reference_group: str | None = None
    warnings: tuple[str, ...] = ()
    schoenfeld: pd.DataFrame | None = None  # time + scaled Schoenfeld residual per term, one row per event

    @property
    def coefficients(self) -> pd.Series:
        return self.summary.set_index("term")["coef"]

    def to_frame(self) -> pd.DataFrame:
        return self.summary.copy()

    def to_dict(self) -> dict:
        def clean(v):
            return None if isinstance(v, float) and not np.isfinite(v) else v

        return {"terms": [{k: clean(v) for k, v in r.items()} for r in self.summary.to_dict("records")],
                "concordance": self.concordance, "log_likelihood": self.log_likelihood, "n": self.n,
                "n_events": self.n_events, "penalizer": self.penalizer, "l1_ratio": self.l1_ratio,
                "reference_group": self.reference_group, "warnings": list(self.warnings)}


def _check_estimable(x: pd.DataFrame, events: int, n: int) -> list[str]:
    p = x.shape[1]
    if p == 0:
        raise InvalidInputError("No covariates for the Cox model.", "Choose at least one covariate or a group column.")
    if events < 2 or events <= p:
        raise InvalidInputError(
            f"Too few events for a Cox model: {events} event(s) for {p} coefficient(s).",
            f"A Cox model needs more events than coefficients ({MIN_EVENTS_PER_COEF} per coefficient is the usual "
            "rule): use fewer covariates or merge groups.")
    const = [c for c in x.columns if x[c].nunique() < 2]
    if const:
        raise InvalidInputError(f"Covariate(s) {', '.join(map(repr, const))} take a single value in the analysed rows.",
                                "Remove them: a constant has no hazard ratio.")
    out = []
    if events < MIN_EVENTS_PER_COEF * p:
        out.append(f"Only {events / p:.1f} events per coefficient (fewer than {MIN_EVENTS_PER_COEF}): estimates may be "
                   "unstable and optimistic; consider fewer covariates or a penaliser.")
    return out


def fit_cox(cohort: Cohort, covariates: Sequence[str] = (), include_group: bool = False, *, penalizer: float = 0.0,
            l1_ratio: float = 0.0, conf_level: float = 0.95, ph_test: bool = True) -> CoxResult:
    """Fit a Cox PH model (Efron ties) on ``covariates`` and, with ``include_group``, the group indicators."""
    if penalizer < 0 or not 0 <= l1_ratio <= 1:
        raise InvalidInputError("The penaliser must be >= 0 and the L1 ratio between 0 and 1.")
    x = design_matrix(cohort, covariates, include_group)
    d = cohort.data
    warns = _check_estimable(x, int(d["event"].sum()), len(d))
    if include_group:
        ev = d.groupby("group")["event"].sum()
        empty = [g for g in cohort.group_order if ev.get(g, 0) == 0]
        if empty:
            require_groups(cohort, need_events=True, what="a hazard ratio")
    return _fit(x, d["time"].to_numpy(float), d["event"].to_numpy(int), penalizer=penalizer, l1_ratio=l1_ratio,
                conf_level=conf_level, ph_test=ph_test, warns=warns,
                reference=cohort.group_order[0] if include_group else None)


def _fit(x: pd.DataFrame, time: np.ndarray, event: np.ndarray, *, penalizer=0.0, l1_ratio=0.0, conf_level=0.95,
         ph_test=True, warns=(), reference=None) -> CoxResult:
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError, ConvergenceWarning

    df = x.copy()
    tcol, ecol = "__time__", "__event__"
    df[tcol] = time
    df[ecol] = event
    cph = CoxPHFitter(penalizer=penalizer, l1_ratio=l1_ratio, alpha=1 - conf_level)
    warns = list(warns)
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        try:
            cph.fit(df, tcol, ecol, fit_options=dict(FIT_OPTIONS))
        except (ConvergenceError, np.linalg.LinAlgError) as exc:
            raise InvalidInputError(
                "The Cox model did not converge (a covariate may separate events perfectly, or covariates are collinear).",
                "Remove or merge the offending covariates, or add a penaliser (e.g. 0.1).") from exc
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            warns.append(str(w.message).split("\n")[0])
    beta = cph.params_.to_numpy()
    se = cph.standard_errors_.to_numpy()
    z = stats.norm.ppf(1 - (1 - conf_level) / 2)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        summary = pd.DataFrame({
            "term": list(x.columns), "coef": beta, "se": se, "z": beta / se,
            "p": 2 * stats.norm.sf(np.abs(beta / se)), "hr": np.exp(beta),
            "hr_lower": np.exp(beta - z * se), "hr_upper": np.exp(beta + z * se)})
    zph = sch = None
    if ph_test:
        zph = cox_zph(x.to_numpy(float), time, event, beta, terms=list(x.columns))
        sch = scaled_schoenfeld(x.to_numpy(float), time, event, beta, cph.variance_matrix_.to_numpy(), list(x.columns))
    c_index = concordance(time, event, x.to_numpy(float) @ beta)[0]
    return CoxResult(summary=summary, concordance=float(c_index), log_likelihood=float(cph.log_likelihood_),
                     n=len(df), n_events=int(event.sum()), penalizer=penalizer, l1_ratio=l1_ratio, conf_level=conf_level,
                     ph_test=zph, reference_group=reference, warnings=tuple(warns), schoenfeld=sch)


def concordance(time, event, risk) -> tuple[float, int, int, int]:
    """Harrell's C as R's ``concordance(coxph_fit)``: (C, concordant, discordant, tied on risk).

    A pair is comparable when the earlier time is an event; a censored time equal to an event time
    counts as later (still at risk). Pairs tied on risk count one half; pairs of events at the same
    time are not comparable. (lifelines' ``concordance_index`` differs when times and risks tie.)
    """
    t = np.asarray(time, float)
    e = np.asarray(event, int)
    r = np.asarray(risk, float)
    conc = disc = tied = 0
    for i in np.flatnonzero(e == 1):
        j = (t > t[i]) | ((t == t[i]) & (e == 0))
        rj = r[j]
        conc += int((r[i] > rj).sum())
        disc += int((r[i] < rj).sum())
        tied += int((r[i] == rj).sum())
    total = conc + disc + tied
    return ((conc + tied / 2) / total if total else float("nan")), conc, disc, tied


def km_time_transform(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """R ``cox.zph(transform = "km")``: 1 - S(t-) of the pooled Kaplan–Meier curve, at each subject's time."""
    ut = np.unique(time)
    d = np.array([event[time == t].sum() for t in ut], float)
    n = np.array([(time >= t).sum() for t in ut], float)
    surv = np.cumprod(1 - d / n)
    idx = np.searchsorted(ut, time, side="left")  # number of curve times strictly below t
    return 1 - np.concatenate([[1.0], surv])[idx]


def cox_zph(x: np.ndarray, time: np.ndarray, event: np.ndarray, beta: np.ndarray, terms: Sequence[str],
            transform: str = "km") -> pd.DataFrame:
    """Proportional-hazards score test per covariate and globally (port of R ``cox.zph``, Efron ties).

    For each term the test asks whether ``beta(t) = beta + theta g(t)``: the score for ``theta`` at
    ``theta = 0`` is the sum of Schoenfeld residuals weighted by the centred ``g(t)``, and the test
    uses the full information matrix of ``(beta, theta)``. ``transform``: ``km``, ``identity``, ``log``
    or ``rank``.
    """
    time = np.asarray(time, float)
    event = np.asarray(event, int)
    x = np.asarray(x, float)
    n, p = x.shape
    if transform == "km":
        tt = km_time_transform(time, event)
    elif transform == "identity":
        tt = time
    elif transform == "log":
        tt = np.log(time)
    elif transform == "rank":
        tt = stats.rankdata(time)
    else:
        raise InvalidInputError(f"Unknown time transform {transform!r}.", "Use km, identity, log or rank.")
    g_all = tt - tt[event == 1].mean()
    eta = x @ beta
    w = np.exp(eta - eta.max())
    u = np.zeros(2 * p)
    imat = np.zeros((2 * p, 2 * p))
    for t in np.unique(time[event == 1]):
        risk = time >= t
        dead = risk & (time == t) & (event == 1)
        nd = int(dead.sum())
        g = g_all[dead][0]
        xr, wr = x[risk], w[risk]
        xd, wd = x[dead], w[dead]
        s0, s1, s2 = wr.sum(), wr @ xr, (xr * wr[:, None]).T @ xr
        d0, d1, d2 = wd.sum(), wd @ xd, (xd * wd[:, None]).T @ xd
        xsum = xd.sum(axis=0)
        u[:p] += xsum
        u[p:] += g * xsum
        for k in range(nd):
            f = k / nd
            a0, a1, a2 = s0 - f * d0, s1 - f * d1, s2 - f * d2
            xbar = a1 / a0
            v = a2 / a0 - np.outer(xbar, xbar)
            u[:p] -= xbar
            u[p:] -= g * xbar
            imat[:p, :p] += v
            imat[:p, p:] += g * v
            imat[p:, :p] += g * v
            imat[p:, p:] += g * g * v
    rows = []
    for j, name in enumerate(terms):
        kk = list(range(p)) + [p + j]
        uu = np.concatenate([np.zeros(p), [u[p + j]]])
        chi = float(uu @ np.linalg.solve(imat[np.ix_(kk, kk)], uu))
        rows.append({"term": name, "chi2": chi, "df": 1, "p": float(stats.chi2.sf(chi, 1))})
    uu = np.concatenate([np.zeros(p), u[p:]])
    chi = float(uu @ np.linalg.solve(imat, uu))
    rows.append({"term": "GLOBAL", "chi2": chi, "df": p, "p": float(stats.chi2.sf(chi, p))})
    return pd.DataFrame(rows)


def scaled_schoenfeld(x: np.ndarray, time: np.ndarray, event: np.ndarray, beta: np.ndarray, var: np.ndarray,
                      terms: Sequence[str]) -> pd.DataFrame:
    """Scaled Schoenfeld residuals (R ``residuals(fit, "scaledsch")`` with Breslow-style means), one row per event.

    For the PH plot: ``beta_j + (n_events * V @ r)_j`` against time; a flat smooth supports PH.
    """
    time = np.asarray(time, float)
    event = np.asarray(event, int)
    x = np.asarray(x, float)
    eta = x @ beta
    w = np.exp(eta - eta.max())
    order = np.argsort(time, kind="stable")
    res, tt = [], []
    for i in order:
        if not event[i]:
            continue
        risk = time >= time[i]
        xbar = (w[risk] @ x[risk]) / w[risk].sum()
        res.append(x[i] - xbar)
        tt.append(time[i])
    r = np.asarray(res)
    scaled = beta + len(r) * r @ np.asarray(var)
    out = pd.DataFrame(scaled, columns=list(terms))
    out.insert(0, "time", tt)
    return out


def univariable_cox(cohort: Cohort, covariates: Sequence[str], conf_level: float = 0.95) -> pd.DataFrame:
    """One Cox model per covariate (same rows as the multivariable model: the cohort's complete cases).

    Returns the stacked coefficient rows with each model's n, events and concordance.
    """
    rows = []
    for c in covariates:
        r = fit_cox(cohort, [c], conf_level=conf_level, ph_test=False)
        rows.append(r.summary.assign(n=r.n, events=r.n_events, concordance=r.concordance))
    if not rows:
        raise InvalidInputError("No covariates for the Cox model.", "Choose at least one covariate.")
    return pd.concat(rows, ignore_index=True)


def group_hazard_ratios(cohort: Cohort, conf_level: float = 0.95) -> CoxResult:
    """Hazard ratio of each group against the first (univariable Cox on the group indicators)."""
    require_groups(cohort, need_events=True, what="a hazard ratio")
    return fit_cox(cohort, (), include_group=True, conf_level=conf_level, ph_test=False)
