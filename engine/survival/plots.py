"""Plotly figures: Kaplan–Meier with risk table (survminer ``ggsurvplot`` layout), forest plot,
p-value-versus-cut-off curve, scaled Schoenfeld residuals. No Streamlit here: pages render them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.survival.compare import LogRankResult
from engine.survival.cox import CoxResult
from engine.survival.cutpoint import CutpointResult
from engine.survival.km import KMResult, default_risk_times

# survminer/ggplot2 hue palette for 2 groups first, then a colour-blind-safe set
PALETTE = ["#F8766D", "#00BFC4", "#7CAE00", "#C77CFF", "#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#0072B2", "#D55E00"]


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def format_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "p = NA"
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.2g}" if p < 0.001 else f"p = {p:.3f}"


def km_figure(km: KMResult, test: LogRankResult | None = None, *, title: str = "", risk_times: Sequence[float] | None = None,
              show_ci: bool = True, show_censors: bool = True, show_median: bool = True, height: int = 620) -> go.Figure:
    """Kaplan–Meier step curves per group with 95 % bands, '+' censor marks, dashed median lines, the test's
    name and p-value, and a number-at-risk table under a shared time axis."""
    risk_times = list(risk_times) if risk_times is not None else default_risk_times(km)
    n_groups = len(km.curves)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        row_heights=[0.78, 0.22] if n_groups <= 3 else [0.7, 0.3],
                        subplot_titles=("", "Number at risk"))
    legend_title = km.group_col or ""
    tmax = max(float(c.table["time"].max()) for c in km.curves)
    medians = []
    for i, c in enumerate(km.curves):
        col = PALETTE[i % len(PALETTE)]
        tab = c.table
        x = np.r_[0.0, tab["time"].to_numpy()]
        y = np.r_[1.0, tab["surv"].to_numpy()]
        if show_ci:
            lo = np.r_[1.0, tab["lower"].to_numpy()]
            hi = np.r_[1.0, tab["upper"].to_numpy()]
            s = y
            lo = np.where(np.isnan(lo) & (s == 1), 1.0, lo)  # R gives NA where S = 1: draw the band as the curve
            hi = np.where(np.isnan(hi) & (s == 1), 1.0, hi)
            ok = np.isfinite(lo) & np.isfinite(hi)
            fig.add_trace(go.Scatter(x=x[ok], y=hi[ok], mode="lines", line=dict(width=0, shape="hv"), hoverinfo="skip",
                                     showlegend=False, legendgroup=c.name), row=1, col=1)
            fig.add_trace(go.Scatter(x=x[ok], y=lo[ok], mode="lines", line=dict(width=0, shape="hv"), fill="tonexty",
                                     fillcolor=_rgba(col, 0.18), hoverinfo="skip", showlegend=False, legendgroup=c.name),
                          row=1, col=1)
        nrisk = np.r_[c.n, tab["n_risk"].to_numpy()]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line=dict(color=col, width=2, shape="hv"), name=c.name,
                                 legendgroup=c.name, customdata=nrisk,
                                 hovertemplate=f"{c.name}<br>t=%{{x:g}}<br>S=%{{y:.3f}}<br>at risk %{{customdata}}<extra></extra>"),
                      row=1, col=1)
        if show_censors:
            cen = c.censor_times()
            if len(cen):
                fig.add_trace(go.Scatter(x=cen["time"], y=cen["surv"], mode="markers", showlegend=False, legendgroup=c.name,
                                         marker=dict(symbol="cross-thin", size=9, line=dict(width=1.5, color=col), color=col),
                                         hovertemplate=f"{c.name}: censored at %{{x:g}}<extra></extra>"), row=1, col=1)
        if show_median and np.isfinite(c.median):
            medians.append(c.median)
            fig.add_shape(type="line", x0=c.median, x1=c.median, y0=0, y1=0.5, line=dict(color=col, dash="dash", width=1),
                          row=1, col=1)
        # number-at-risk row
        counts = c.n_at_risk(risk_times)
        fig.add_trace(go.Scatter(x=risk_times, y=[n_groups - 1 - i] * len(risk_times), mode="text", text=[str(k) for k in counts],
                                 textfont=dict(color=col, size=12), showlegend=False, hoverinfo="skip"), row=2, col=1)
    if medians:
        fig.add_shape(type="line", x0=0, x1=max(medians), y0=0.5, y1=0.5, line=dict(color="grey", dash="dash", width=1), row=1, col=1)
    if test is not None:
        fig.add_annotation(x=0.98, y=0.98, xref="x domain", yref="y domain", xanchor="right", yanchor="top", showarrow=False,
                           text=f"{test.test_name} {format_p(test.p)}", font=dict(size=14), bgcolor="rgba(255,255,255,0.7)",
                           row=1, col=1)
    unit = km.time_unit
    fig.update_yaxes(range=[0, 1.03], title_text="Survival probability", row=1, col=1)
    fig.update_yaxes(range=[-0.6, n_groups - 0.4], tickvals=list(range(n_groups)), ticktext=[c.name for c in reversed(km.curves)],
                     showgrid=False, zeroline=False, row=2, col=1)
    for r in (1, 2):
        fig.update_xaxes(tickvals=risk_times, range=[-0.02 * tmax, tmax * 1.03], row=r, col=1)
    fig.update_xaxes(title_text=f"Time ({unit})", showticklabels=True, row=2, col=1)
    fig.update_layout(title=title or None, height=height, template="plotly_white", legend_title_text=legend_title,
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0), margin=dict(l=60, r=20, t=60, b=50))
    return fig


def forest_figure(cox: CoxResult, title: str = "Hazard ratios (95 % CI)") -> go.Figure:
    """Hazard ratio per term with its confidence interval on a log axis; the line of no effect at 1."""
    s = cox.summary.iloc[::-1]
    labels = [f"{t}" for t in s["term"]]
    text = [f"{h:.2f} ({lo:.2f}–{hi:.2f}), {format_p(p)}" for h, lo, hi, p in zip(s["hr"], s["hr_lower"], s["hr_upper"], s["p"], strict=True)]
    fig = go.Figure(go.Scatter(
        x=s["hr"], y=labels, mode="markers", marker=dict(symbol="square", size=10, color="#333"),
        error_x=dict(type="data", symmetric=False, array=s["hr_upper"] - s["hr"], arrayminus=s["hr"] - s["hr_lower"], width=0),
        text=text, hovertemplate="%{y}: HR %{text}<extra></extra>", showlegend=False))
    fig.add_vline(x=1, line=dict(dash="dash", color="grey"))
    for lab, t in zip(labels, text, strict=True):
        fig.add_annotation(x=1.0, xref="paper", y=lab, xanchor="left", showarrow=False, text=t, font=dict(size=11))
    ref = f" (reference: {cox.reference_group})" if cox.reference_group else ""
    fig.update_xaxes(type="log", title_text="Hazard ratio (log scale)")
    fig.update_layout(title=title + ref, template="plotly_white", height=160 + 40 * len(s), margin=dict(l=10, r=230, t=50, b=50))
    return fig


def cutpoint_figure(scan: CutpointResult, time_unit: str = "") -> go.Figure:
    """Unadjusted log-rank p-value at every admissible cut-off, the optimal cut marked, the corrected p annotated."""
    c = scan.curve
    fig = go.Figure(go.Scatter(x=c["cut"], y=c["p_unadjusted"], mode="lines+markers", line=dict(shape="linear", color="#1f77b4"),
                               customdata=np.c_[c["statistic"], c["n_low"]],
                               hovertemplate="cut ≤ %{x:g}: p = %{y:.3g}<br>|Z| = %{customdata[0]:.3f}, n low = %{customdata[1]}<extra></extra>",
                               name="unadjusted p"))
    fig.add_hline(y=0.05, line=dict(dash="dot", color="grey"))
    fig.add_vline(x=scan.cutpoint, line=dict(dash="dash", color="#d62728"))
    corr = f"corrected p (Lausen–Schumacher 1992) = {scan.p_lausen92:.3g}"
    if scan.p_permutation is not None:
        corr += f"<br>permutation p = {scan.p_permutation:.3g} ({scan.n_permutations} permutations, seed {scan.seed})"
    fig.add_annotation(x=0.0, y=1.01, xref="paper", yref="paper", showarrow=False, xanchor="left", yanchor="bottom", align="left",
                       text=f"optimal cut ≤ {scan.cutpoint:g} (red line); dotted: p = 0.05<br>{corr}",
                       font=dict(color="#d62728"))
    span = float(c["cut"].max() - c["cut"].min()) or 1.0
    fig.update_xaxes(range=[float(c["cut"].min()) - 0.03 * span, float(c["cut"].max()) + 0.03 * span])
    fig.update_yaxes(type="log", title_text="Unadjusted p-value (log scale)")
    fig.update_xaxes(title_text=f"Cut-off of {scan.variable} (low group: ≤ cut-off)")
    fig.update_layout(template="plotly_white", height=460, showlegend=False, margin=dict(l=60, r=20, t=90, b=50))
    return fig


def schoenfeld_figure(cox: CoxResult, term: str, time_unit: str = "") -> go.Figure:
    """Scaled Schoenfeld residuals of one term against time with a running mean; flat ~ proportional hazards."""
    sch = cox.schoenfeld
    if sch is None or term not in sch.columns:
        raise KeyError(term)
    t = sch["time"].to_numpy()
    r = sch[term].to_numpy()
    k = max(5, len(t) // 8)
    smooth = pd.Series(r).rolling(k, center=True, min_periods=max(2, k // 3)).mean()
    beta = float(cox.coefficients[term])
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=t, y=r, mode="markers", marker=dict(size=5, color="rgba(80,80,80,0.5)"), name="residual"))
    fig.add_trace(go.Scatter(x=t, y=smooth, mode="lines", line=dict(color="#d62728", width=2), name=f"running mean ({k} events)"))
    fig.add_hline(y=beta, line=dict(dash="dash", color="#1f77b4"), annotation_text=f"coef = {beta:.3g}")
    fig.update_layout(template="plotly_white", height=380, title=f"Scaled Schoenfeld residuals: {term}",
                      xaxis_title=f"Time ({time_unit})" if time_unit else "Time", yaxis_title=f"beta(t) for {term}",
                      margin=dict(l=60, r=20, t=50, b=50))
    return fig


BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def image_export_available() -> bool:
    """True when static export can run: kaleido >= 1 installed and a local Chrome/Chromium to drive.

    kaleido never downloads a browser here; without one (the Docker image ships none) the pages offer
    the figure's own camera button and the HTML download instead of a button that would fail.
    """
    import importlib.util
    import os
    import shutil

    if importlib.util.find_spec("kaleido") is None:
        return False
    explicit = os.environ.get("BROWSER_PATH")
    if explicit:
        return os.path.isfile(explicit) and os.access(explicit, os.X_OK)
    return any(shutil.which(name) for name in BROWSER_NAMES)


def figure_image(fig: go.Figure, image_format: str = "png", *, width: int = 1000, height: int | None = None, scale: float = 2) -> bytes:
    """The figure as PNG or SVG bytes through kaleido (no network: it uses the system's Chromium)."""
    from engine.errors import UnsupportedFormatError

    if image_format not in ("png", "svg", "pdf"):
        raise UnsupportedFormatError(f"Cannot export a figure as {image_format!r}.", "Choose png, svg or pdf.")
    if not image_export_available():
        raise UnsupportedFormatError("Static image export is not available on this server (it needs kaleido and a local Chromium).",
                                     "Use the camera button on the figure (PNG), or the HTML download (SVG from its camera button).")
    try:
        return fig.to_image(format=image_format, width=width, height=height or fig.layout.height or 600, scale=scale)
    except Exception as exc:  # noqa: BLE001 - kaleido reports a missing or broken browser in many ways
        raise UnsupportedFormatError(f"Static image export failed ({type(exc).__name__}): no usable Chrome/Chromium on this server?",
                                     "Use the camera button on the figure (PNG) or the HTML download.") from exc


def figure_html(fig: go.Figure, image_format: str = "svg") -> str:
    """A self-contained HTML file of the figure (plotly.js inlined, works offline); the camera button of its
    toolbar saves the figure as ``image_format`` (``svg`` for journals, or ``png``) in the browser."""
    return fig.to_html(include_plotlyjs=True, full_html=True,
                       config={"toImageButtonOptions": {"format": image_format, "scale": 3, "filename": "histodash-figure"},
                               "displaylogo": False})
