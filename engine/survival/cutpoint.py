"""Continuous scores into strata: median, tertiles, quartiles, manual cut-offs, optimal cut-point.

The optimal cut-point is the maximally selected log-rank statistic of Lausen & Schumacher (1992)
as R's ``maxstat::maxstat.test(Surv(time, event) ~ x, smethod = "LogRank", minprop, maxprop =
1 - minprop)`` computes it (also what survminer's ``surv_cutpoint`` calls): the standardised
linear rank statistic of log-rank scores (``exactRankTests::cscores``) for every split
``x <= c`` leaving at least ``minprop`` of the patients on each side. Its p-value must be corrected
for having looked at every cut: we give Lausen & Schumacher's 1992 approximation (maxstat's
``pmethod = "Lau92"``) and, optionally, a permutation p-value with a fixed seed. Even corrected, the
*effect size* at the optimal cut is biased away from zero: validate it on independent patients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from engine.errors import InvalidInputError
from engine.survival.data import Cohort

SPLIT_METHODS = ("median", "tertiles", "quartiles", "manual", "optimal")


def logrank_scores(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Log-rank (Savage) scores as R ``exactRankTests::cscores(Surv(time, event))`` (ties: max rank)."""
    time = np.asarray(time, float)
    event = np.asarray(event, float)
    n = len(time)
    rt = stats.rankdata(time, method="max").astype(int)  # R irank
    order = np.argsort(time, kind="stable")
    fact = event / (n - rt + 1)
    csum = np.cumsum(fact[order])
    return event - csum[rt - 1]


def pvalue_lausen92(b: float, minprop: float = 0.1, maxprop: float = 0.9) -> float:
    """Lausen & Schumacher (1992) approximation of P(max |Z| >= b) (R ``maxstat:::pLausen92``)."""
    if b < 1:
        return 1.0
    db = stats.norm.pdf(b)
    p = 4 * db / b + db * (b - 1 / b) * np.log((maxprop * (1 - minprop)) / ((1 - maxprop) * minprop))
    return float(max(p, 0.0))


@dataclass(frozen=True)
class CutpointResult:
    """The optimal cut (patients with ``x <= cutpoint`` form the low group) and the whole scan."""

    variable: str
    cutpoint: float
    statistic: float
    p_lausen92: float
    p_permutation: float | None
    n_permutations: int
    seed: int | None
    minprop: float
    curve: pd.DataFrame  # cut, statistic, p_unadjusted, n_low
    n: int

    def to_frame(self) -> pd.DataFrame:
        return self.curve.copy()

    def to_dict(self) -> dict:
        return {"variable": self.variable, "cutpoint": self.cutpoint, "statistic": self.statistic,
                "p_lausen92": self.p_lausen92, "p_permutation": self.p_permutation,
                "n_permutations": self.n_permutations, "seed": self.seed, "minprop": self.minprop, "n": self.n}


def _scan(y_sorted: np.ndarray, m: np.ndarray) -> np.ndarray:
    """|standardised cumulative score| at each split size in ``m``; y_sorted: (..., N) scores in x order."""
    n = y_sorted.shape[-1]
    ss = y_sorted.sum(axis=-1, keepdims=True)
    ssq = (y_sorted ** 2).sum(axis=-1, keepdims=True)
    e = m / n * ss
    v = m * (n - m) / (n ** 2 * (n - 1)) * (n * ssq - ss ** 2)
    cs = np.cumsum(y_sorted, axis=-1)[..., m - 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs((cs - e) / np.sqrt(v))


def optimal_cutpoint(time, event, x, *, variable: str = "x", minprop: float = 0.1, n_permutations: int = 0,
                     seed: int | None = 20240601, progress=None) -> CutpointResult:
    """Maximally selected log-rank statistic over cuts of ``x`` with at least ``minprop`` per side.

    ``n_permutations`` (0 = none, at most 10 000) adds a permutation p-value: the scores are permuted
    with ``numpy.random.default_rng(seed)`` and the whole scan repeated; p = (1 + #{max >= observed}) / (B + 1).
    ``progress(done, total)`` is called after each chunk of permutations (a ``Cancelled`` it raises stops the scan).
    """
    if not 0 < minprop < 0.5:
        raise InvalidInputError(f"Minimum group proportion must be between 0 and 0.5, not {minprop}.",
                                "0.1–0.2 is usual: smaller values allow tiny, unstable groups.")
    if not 0 <= n_permutations <= 10_000:
        raise InvalidInputError("Number of permutations must be between 0 and 10 000.")
    time, event, x = (np.asarray(a, float) for a in (time, event, x))
    n = len(x)
    if event.sum() == 0:
        raise InvalidInputError("No events: an optimal cut-point cannot be searched.")
    maxprop = 1 - minprop
    scores = logrank_scores(time, event)
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], scores[order]
    first = np.r_[True, xs[1:] != xs[:-1]]
    m = np.flatnonzero(first)  # = (R: which(!ties) - 1) number of patients strictly below each value
    m = m[(m >= max(1, int(np.floor(n * minprop)))) & (m <= int(np.floor(n * maxprop)))]
    if len(m) == 0:
        raise InvalidInputError(
            f"{variable!r} has too few distinct values to split with at least {minprop:.0%} of patients per group.",
            "Lower the minimum group proportion or choose another variable.")
    stat = _scan(ys, m)
    best = int(np.nanargmax(stat))
    b = float(stat[best])
    cut = float(xs[m[best] - 1])
    p_perm = None
    if n_permutations:
        rng = np.random.default_rng(seed)
        maxima = np.empty(n_permutations)
        chunk = max(1, min(500, 2_000_000 // max(n, 1)))  # ≤ 2 M scores per chunk: bounded memory, regular progress
        for start in range(0, n_permutations, chunk):
            k = min(chunk, n_permutations - start)
            perm = np.argsort(rng.random((k, n)), axis=1)
            maxima[start:start + k] = np.nanmax(_scan(ys[perm], m), axis=1)
            if progress is not None:
                progress(start + k, n_permutations)
        p_perm = float((1 + np.sum(maxima >= b - 1e-12)) / (n_permutations + 1))
    curve = pd.DataFrame({"cut": xs[m - 1], "statistic": stat, "p_unadjusted": 2 * stats.norm.sf(stat), "n_low": m})
    return CutpointResult(variable=variable, cutpoint=cut, statistic=b, p_lausen92=pvalue_lausen92(b, minprop, maxprop),
                          p_permutation=p_perm, n_permutations=int(n_permutations), seed=seed if n_permutations else None,
                          minprop=minprop, curve=curve, n=n)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def cut_labels(cuts: Sequence[float]) -> list[str]:
    """Labels of the bins (-inf, c1], (c1, c2], …, (ck, inf)."""
    cuts = list(cuts)
    if len(cuts) == 1:
        return [f"low (≤ {_fmt(cuts[0])})", f"high (> {_fmt(cuts[0])})"]
    labels = [f"≤ {_fmt(cuts[0])}"]
    labels += [f"{_fmt(a)}–{_fmt(b)}" for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    labels.append(f"> {_fmt(cuts[-1])}")
    return labels


def split_points(x: Sequence[float], method: str, cuts: Sequence[float] | None = None) -> list[float]:
    """Cut-offs for ``median``, ``tertiles``, ``quartiles`` (R's default quantile, type 7) or ``manual``."""
    x = np.asarray(x, float)
    if method == "median":
        pts = [float(np.median(x))]
    elif method == "tertiles":
        pts = list(np.quantile(x, [1 / 3, 2 / 3]))
    elif method == "quartiles":
        pts = list(np.quantile(x, [0.25, 0.5, 0.75]))
    elif method == "manual":
        if not cuts:
            raise InvalidInputError("No cut-offs given.", "Enter one or more numbers separated by commas, e.g. 50, 65.")
        pts = sorted({float(c) for c in cuts})
    else:
        raise InvalidInputError(f"Unknown split method {method!r}.", f"Use one of: {', '.join(SPLIT_METHODS)}.")
    return sorted(set(float(p) for p in pts))


def parse_cuts(text: str, what: str = "Cut-off") -> list[float]:
    """Parse '50, 65.5; 70' into numbers, with a clear message on a typo."""
    out = []
    for tok in text.replace(";", ",").split(","):
        tok = tok.strip()
        if not tok:
            continue
        try:
            value = float(tok)
        except ValueError:
            raise InvalidInputError(f"{what} {tok!r} is not a number.", "Enter numbers separated by commas, e.g. 50, 65.") from None
        if not np.isfinite(value):
            raise InvalidInputError(f"{what} {tok!r} is not a finite number.", "Enter numbers separated by commas, e.g. 50, 65.")
        out.append(value)
    return out


def stratify(cohort: Cohort, column: str, method: str = "median", cuts: Sequence[float] | None = None,
             **optimal_kwargs) -> tuple[Cohort, list[float], CutpointResult | None]:
    """A copy of ``cohort`` whose groups are bins of the numeric covariate ``column``.

    Returns the new cohort, the cut-offs used and, for ``method="optimal"``, the scan result.
    """
    if column not in cohort.covariates:
        raise InvalidInputError(f"Column {column!r} was not prepared as a numeric covariate.",
                                "Choose it among the covariates to split it into strata.")
    d = cohort.data
    x = d[column].to_numpy(float)
    scan = None
    if method == "optimal":
        scan = optimal_cutpoint(d["time"], d["event"], x, variable=column, **optimal_kwargs)
        pts = [scan.cutpoint]
    else:
        pts = split_points(x, method, cuts)
    labels = cut_labels(pts)
    codes = np.searchsorted(np.asarray(pts), x, side="left")  # x <= c1 -> 0, c1 < x <= c2 -> 1, ...
    grp = np.asarray(labels, dtype=object)[codes]
    present = [lab for i, lab in enumerate(labels) if (codes == i).any()]
    data = d.copy()
    data["group"] = grp
    new = dataclasses.replace(cohort, data=data, group_col=f"{column} ({method})", group_order=tuple(present))
    return new, pts, scan
