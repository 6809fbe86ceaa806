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

    O(n log n): with key = (time, censored) a patient ``j`` is comparable to an event ``i`` exactly
    when ``key_j > key_i``. Patients are laid out by key, descending, and by risk, ascending, within
    a key; a bottom-up merge count (:func:`_earlier_below`) gives, for each position, how many
    earlier positions have a lower (and a lower-or-equal) risk; the patients of the same key before
    it are then subtracted, which the within-key order makes a simple offset.
    """
    t = np.asarray(time, float)
    e = np.asarray(event, int)
    r = np.asarray(risk, float)
    n = len(t)
    if n == 0 or not (e == 1).any():
        return float("nan"), 0, 0, 0
    censored = (e == 0).astype(np.int64)
    _, key = np.unique(np.stack([t, censored.astype(float)], axis=1), axis=0, return_inverse=True)
    key = key.ravel().astype(np.int64)
    _, rank = np.unique(r, return_inverse=True)
    rank = rank.ravel().astype(np.int64)
    order = np.lexsort((rank, -key))  # key descending, then risk ascending
    k, q, ev = key[order], rank[order], e[order]
    pos = np.arange(n)
    below, below_eq = _earlier_below(q)
    new_key = np.r_[True, k[1:] != k[:-1]]
    key_start = np.maximum.accumulate(np.where(new_key, pos, 0))
    new_pair = new_key | np.r_[True, q[1:] != q[:-1]]
    pair_start = np.maximum.accumulate(np.where(new_pair, pos, 0))
    lower = below - (pair_start - key_start)  # earlier, of a greater key, with a lower risk
    lower_eq = below_eq - (pos - key_start)  # … with a lower or equal risk
    is_event = ev == 1
    conc = int(lower[is_event].sum())
    tied = int((lower_eq - lower)[is_event].sum())
    disc = int((key_start - lower_eq)[is_event].sum())
    total = conc + disc + tied
    return ((conc + tied / 2) / total if total else float("nan")), conc, disc, tied


def _earlier_below(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each position ``p``: how many ``q < p`` have ``values[q] < values[p]``, and ``<=`` (non-negative ints).

    Bottom-up merge counting, vectorised per level: at block size ``s`` every element of a right half
    counts the elements of its left half below it, with one ``searchsorted`` over all blocks at once
    (block number × (max + 1) + value keeps blocks apart). ``log2(n)`` levels of one sort each.
    """
    v = np.asarray(values, np.int64)
    n = len(v)
    below = np.zeros(n, np.int64)
    below_eq = np.zeros(n, np.int64)
    width = int(v.max()) + 1 if n else 1
    idx = np.arange(n)
    s = 1
    while s < n:
        block = idx // (2 * s)
        right = (idx % (2 * s)) >= s
        left_sorted = np.sort(block[~right] * width + v[~right])
        qb = block[right] * width
        start = np.searchsorted(left_sorted, qb, side="left")
        below[right] += np.searchsorted(left_sorted, qb + v[right], side="left") - start
        below_eq[right] += np.searchsorted(left_sorted, qb + v[right], side="right") - start
        s *= 2
    return below, below_eq


def km_time_transform(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """R ``cox.zph(transform = "km")``: 1 - S(t-) of the pooled Kaplan–Meier curve, at each subject's time."""
    time = np.asarray(time, float)
    ut, inverse = np.unique(time, return_inverse=True)
    d = np.bincount(inverse.ravel(), weights=np.asarray(event, float), minlength=len(ut))
    n = np.cumsum(np.bincount(inverse.ravel(), minlength=len(ut))[::-1])[::-1].astype(float)  # at risk: time >= t
    surv = np.cumprod(1 - d / n)
    idx = np.searchsorted(ut, time, side="left")  # number of curve times strictly below t
    return 1 - np.concatenate([[1.0], surv])[idx]


@dataclass(frozen=True)
class _EventTimes:
    """Per distinct event time ``u_g`` (ascending): risk-set sums of ``w`` and ``w x`` over ``time >= u_g``,
    sums over the deaths at ``u_g``, and for every death its group and Efron fraction ``k / n_deaths``."""

    times: np.ndarray  # (G,)
    s0: np.ndarray  # (G,)
    s1: np.ndarray  # (G, p)
    d0: np.ndarray  # (G,)
    d1: np.ndarray  # (G, p)
    xsum: np.ndarray  # (G, p) sum of x over the deaths
    dead: np.ndarray  # (E,) row index of each death, by time
    group: np.ndarray  # (E,) its event-time group
    frac: np.ndarray  # (E,) k / n_deaths of its group (Efron)


def _event_times(x: np.ndarray, time: np.ndarray, event: np.ndarray, w: np.ndarray) -> _EventTimes:
    order = np.argsort(-time, kind="stable")  # descending: a cumulative sum is a risk-set sum
    ts = time[order]
    c0 = np.cumsum(w[order])
    c1 = np.cumsum(w[order, None] * x[order], axis=0)
    dead = np.flatnonzero(event == 1)
    dead = dead[np.argsort(time[dead], kind="stable")]
    ut, group = np.unique(time[dead], return_inverse=True)
    group = group.ravel()
    last = len(ts) - np.searchsorted(ts[::-1], ut, side="left") - 1  # last position with time >= u in the descending order
    G, p = len(ut), x.shape[1]
    d0 = np.bincount(group, weights=w[dead], minlength=G)
    d1 = np.zeros((G, p))
    xsum = np.zeros((G, p))
    np.add.at(d1, group, w[dead, None] * x[dead])
    np.add.at(xsum, group, x[dead])
    nd = np.bincount(group, minlength=G)
    first = np.r_[0, np.cumsum(nd)[:-1]]
    frac = (np.arange(len(dead)) - first[group]) / nd[group]
    return _EventTimes(ut, c0[last], c1[last], d0, d1, xsum, dead, group, frac)


def _time_weights(cum_at_groups: np.ndarray, group_times: np.ndarray, time: np.ndarray) -> np.ndarray:
    """For each row: the sum of a per-group quantity over the event times ``u_g <= time`` (cumulative, then looked up)."""
    k = np.searchsorted(group_times, time, side="right")
    return np.concatenate([[0.0], np.cumsum(cum_at_groups)])[k]


def cox_zph(x: np.ndarray, time: np.ndarray, event: np.ndarray, beta: np.ndarray, terms: Sequence[str],
            transform: str = "km") -> pd.DataFrame:
    """Proportional-hazards score test per covariate and globally (port of R ``cox.zph``, Efron ties).

    For each term the test asks whether ``beta(t) = beta + theta g(t)``: the score for ``theta`` at
    ``theta = 0`` is the sum of Schoenfeld residuals weighted by the centred ``g(t)``, and the test
    uses the full information matrix of ``(beta, theta)``. ``transform``: ``km``, ``identity``, ``log``
    or ``rank``.

    Vectorised (O(n p² + n log n)): risk-set sums are cumulative sums in time order; the information
    matrix's second-moment part is ``sum_j w_j x_j x_jᵀ c(t_j)`` with ``c(t)`` the sum of ``g^m / a0`` over
    the event times up to ``t``, so no per-time ``p × p`` sums are formed.
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
    et = _event_times(x, time, event, w)
    gi, f = et.group, et.frac
    g_group = np.zeros(len(et.times))
    g_group[gi] = g_all[et.dead]  # the same g for every death at one time
    a0 = et.s0[gi] - f * et.d0[gi]  # (E,)
    xbar = (et.s1[gi] - f[:, None] * et.d1[gi]) / a0[:, None]  # (E, p)
    resid = et.xsum.sum(axis=0) - xbar.sum(axis=0)
    u = np.concatenate([resid, et.xsum.T @ g_group - xbar.T @ g_group[gi]])
    blocks = []
    dead_x = x[et.dead]
    for m in range(3):  # weights 1, g, g² of the (beta, beta), (beta, theta), (theta, theta) blocks
        c = g_group[gi] ** m
        per_group_a = np.bincount(gi, weights=c / a0, minlength=len(et.times))
        per_group_b = np.bincount(gi, weights=c * f / a0, minlength=len(et.times))
        row_w = w * _time_weights(per_group_a, et.times, time)
        second = (x * row_w[:, None]).T @ x
        second -= (dead_x * (w[et.dead] * per_group_b[gi])[:, None]).T @ dead_x
        blocks.append(second - (xbar * c[:, None]).T @ xbar)
    imat = np.block([[blocks[0], blocks[1]], [blocks[1], blocks[2]]])
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
    et = _event_times(x, time, event, w)
    r = x[et.dead] - et.s1[et.group] / et.s0[et.group][:, None]
    scaled = beta + len(r) * r @ np.asarray(var)
    out = pd.DataFrame(scaled, columns=list(terms))
    out.insert(0, "time", time[et.dead])
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
