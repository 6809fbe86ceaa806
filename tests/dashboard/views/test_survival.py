"""The Cohort survival page, headless with AppTest: demo, uploads, every validation message, tabs."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # the page imports dashboard.* and engine.*
    sys.path.insert(0, str(ROOT))

PAGE = str(ROOT / "dashboard" / "views" / "survival.py")
REF = ROOT / "tests" / "r_reference"
TIMEOUT = 60


def page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def widget(at, kind: str, label: str):
    found = [w for w in getattr(at, kind) if w.label == label]
    assert found, f"no {kind} labelled {label!r}"
    return found[0]


def press(at, label: str) -> AppTest:
    widget(at, "button", label).click()
    at.run()
    assert not at.exception, at.exception
    return at


def errors(at) -> str:
    return " | ".join(e.value for e in at.error)


def infos(at) -> str:
    return " | ".join(e.value for e in at.info)


def charts(at) -> int:
    return len(at.get("plotly_chart"))


def upload(at, name: str, data: bytes) -> AppTest:
    widget(at, "radio", "Cohort").set_value("Upload a table")
    at.run()
    widget(at, "file_uploader", "Cohort table (CSV, TSV or Excel; one row per patient)").set_value((name, data, "text/csv"))
    at.run()
    assert not at.exception, at.exception
    return at


def test_demo_shows_km_tests_and_downloads():
    at = page()
    assert not at.error
    assert "228 patients, 165 events (event coding: 0 → censored, 1 → event)" in infos(at)
    assert charts(at) >= 2  # KM figure and the hazard-ratio forest plot
    labels = [b.label for b in at.get("download_button")]
    for expected in ("Medians (CSV)", "All curve steps (CSV)", "Test (CSV)", "Hazard ratios (CSV)"):
        assert expected in labels
    assert any(lab.startswith("Figure (HTML") for lab in labels)
    assert any("Log-rank" in m.label for m in at.metric)
    assert "biased" in " ".join(w.value for w in at.warning)  # the cut-point tab says so even before a scan


def test_optimal_cutpoint_and_bad_input_keeps_result():
    at = page()
    widget(at, "selectbox", "Strata").set_value("optimal")
    widget(at, "selectbox", "Continuous column to split").set_value("age")
    widget(at, "number_input", "Permutations (0 = none)").set_value(100)
    press(at, "Analyse")
    assert not at.error, errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Optimal cut (low ≤ cut)"] == "70"
    assert metrics["Corrected p (Lausen–Schumacher 1992)"] == "0.455"
    n_charts = charts(at)
    # now a bad event column: the message shows and the previous result stays
    widget(at, "selectbox", "Event").set_value("age")
    press(at, "Analyse")
    assert "Event column 'age' has values that cannot be read as event/censored" in errors(at)
    assert {m.label: m.value for m in at.metric}["Optimal cut (low ≤ cut)"] == "70"
    assert charts(at) == n_charts


def test_fleming_harrington_is_r_survdiff_rho1():
    at = page()
    widget(at, "selectbox", "Test").set_value("fleming-harrington")
    widget(at, "text_input", "Fleming–Harrington p, q").set_value("1")
    press(at, "Analyse")
    metric = [m for m in at.metric if m.label.startswith("Fleming–Harrington")][0]
    assert metric.label == "Fleming–Harrington (p=1, q=0)" and metric.value == "p = 0.00036"  # R survdiff(rho = 1): p = 0.000363


def test_manual_cuts_typo_is_a_message():
    at = page()
    widget(at, "selectbox", "Strata").set_value("manual")
    widget(at, "text_input", "Manual cut-offs").set_value("60, sixty")
    press(at, "Analyse")
    assert "Cut-off 'sixty' is not a number" in errors(at)


def test_upload_r_coded_status_and_dropped_rows():
    at = upload(page(), "lung.csv", (REF / "lung.csv").read_bytes())
    assert "Map the columns above" in infos(at)
    widget(at, "selectbox", "Group").set_value("ph.ecog")
    press(at, "Analyse")
    assert "1 → censored, 2 → event (R survival convention" in infos(at)
    assert "1 of 228 rows dropped for missing values (ph.ecog: 1)" in infos(at)
    assert charts(at) >= 2 and not at.exception


@pytest.mark.parametrize("frame,set_group,message", [
    (pd.DataFrame({"time": [5, -2, 7, 9], "status": [1, 0, 1, 1], "arm": list("aabb")}), "arm",
     "negative value(s), e.g. -2 in row 2"),
    (pd.DataFrame({"time": ["5", "x", "7", "9"], "status": [1, 0, 1, 1], "arm": list("aabb")}), "arm",
     "non-numeric value(s), e.g. 'x' in row 2"),
    (pd.DataFrame({"time": [5, 6, 7, 9, 3, 4], "status": [1, 0, 1, 0, 1, 1], "arm": ["a"] * 6}), "arm",
     "Only one group ('a') in column 'arm'"),
    (pd.DataFrame({"time": [5, 6, 7, 9, 3, 4], "status": [1, 0, 1, 0, 0, 0], "arm": list("aaabbb")}), "arm",
     "Group 'b' of column 'arm' has no events"),
    (pd.DataFrame({"time": [5, 6, 7], "status": ["dead", "maybe", "alive"], "arm": list("aab")}), "arm",
     "cannot be read as event/censored: maybe"),
])
def test_validation_messages_on_the_page(frame, set_group, message):
    at = upload(page(), "cohort.csv", frame.to_csv(index=False).encode())
    widget(at, "selectbox", "Group").set_value(set_group)
    press(at, "Analyse")
    assert message in errors(at)


def test_group_without_events_still_draws_the_curves():
    frame = pd.DataFrame({"time": [5, 6, 7, 9, 3, 4], "status": [1, 0, 1, 0, 0, 0], "arm": list("aaabbb")})
    at = upload(page(), "cohort.csv", frame.to_csv(index=False).encode())
    widget(at, "selectbox", "Group").set_value("arm")
    press(at, "Analyse")
    assert "has no events" in errors(at) and charts(at) >= 1


def test_broken_upload_is_a_message_and_the_table_stays():
    at = upload(page(), "lung.csv", (REF / "lung.csv").read_bytes())
    press(at, "Analyse")
    assert not at.error
    widget(at, "file_uploader", "Cohort table (CSV, TSV or Excel; one row per patient)").set_value(("empty.csv", b"", "text/csv"))
    at.run()
    assert "empty.csv is empty" in errors(at)
    assert "Table **lung.csv**" in " ".join(c.value for c in at.caption)
    assert charts(at) >= 1


def test_cox_tab_fit_and_too_few_events():
    at = page()
    press(at, "Fit Cox model")
    assert not at.error, errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Concordance (Harrell's C)"] == "0.637"  # R: concordance(coxph(Surv(time, status) ~ age + sex + ph.ecog, lung))
    labels = [b.label for b in at.get("download_button")]
    assert "PH test (CSV)" in labels and "Univariable models (CSV)" in labels
    frame = pd.DataFrame({"time": [5, 6, 7, 9, 3, 4], "status": [1, 0, 0, 0, 0, 0], "x": [1, 2, 3, 4, 5, 6.0], "arm": list("aaabbb")})
    at = upload(at, "few.csv", frame.to_csv(index=False).encode())
    press(at, "Analyse")
    widget(at, "multiselect", "Covariates (numeric)").set_value(["x"])
    press(at, "Fit Cox model")
    assert "Too few events for a Cox model: 1 event(s) for 1 coefficient(s)" in errors(at)


def test_risk_score_tab_demo_split():
    at = page()
    widget(at, "selectbox", "Demo cohort").set_value("gbsg2")
    at.run()
    press(at, "Build risk score")
    assert not at.error, errors(at)
    labels = [b.label for b in at.get("download_button")]
    assert "Frozen model: coefficients + cut-off (JSON)" in labels and "Coefficients (CSV)" in labels
    assert "Validation scores (CSV)" in labels
    assert any(m.label.startswith("Frozen cut-off") for m in at.metric)


def test_join_slide_scores_then_risk_score_with_uploaded_validation():
    import numpy as np

    rng = np.random.default_rng(0)
    n = 80
    score = rng.random(n)
    cohort = pd.DataFrame({"pid": [f"P{i:03d}" for i in range(n)], "time": rng.exponential(10 / (0.2 + score)).round(1),
                           "event": rng.random(n) < 0.8})
    slides = pd.DataFrame({"slide": [f"P{i:03d}-{k}.svs" for i in range(n) for k in "AB"],
                           "mean_score": np.repeat(score, 2) + rng.normal(0, 0.01, 2 * n)})
    at = upload(page(), "cohort.csv", cohort.to_csv(index=False).encode())
    widget(at, "file_uploader", "Features table").set_value(("scores.csv", slides.to_csv(index=False).encode(), "text/csv"))
    at.run()
    widget(at, "selectbox", "Patient id (scores.csv)").set_value("slide")
    widget(at, "number_input", "Use the first N characters of its ids (0 = all; TCGA: 12)").set_value(4)
    press(at, "Join features")
    assert "repeated patient id(s), e.g. 'P000'" in errors(at)  # two slides per patient, not averaged
    widget(at, "checkbox", "Average several rows per patient").check()
    press(at, "Join features")
    assert "Using **cohort.csv + scores.csv**: 80 patients with features." in " ".join(c.value for c in at.caption)
    widget(at, "selectbox", "Event").set_value("event")
    press(at, "Analyse")
    assert "80 patients" in infos(at) and "True → event" in infos(at)
    widget(at, "multiselect", "Features").set_value(["mean_score"])
    widget(at, "radio", "Validation cohort").set_value("Upload a validation table")
    validation = cohort.assign(mean_score=score).iloc[:40]
    widget(at, "file_uploader", "Validation table (same columns)").set_value(("val.csv", validation.to_csv(index=False).encode(), "text/csv"))
    press(at, "Build risk score")
    assert not at.error, errors(at)
    assert "Validation scores (CSV)" in [b.label for b in at.get("download_button")]


def test_an_edited_reupload_with_the_same_name_and_shape_is_analysed_anew():
    """Tables are known by their content: the old id (name, shape, columns) showed the first file's result for the second."""
    first = pd.DataFrame({"time": [5, 6, 7, 9, 3, 4], "status": [1, 0, 1, 1, 1, 0], "arm": list("aaabbb")})
    edited = first.assign(status=[1, 1, 1, 1, 1, 1])
    at = upload(page(), "cohort.csv", first.to_csv(index=False).encode())
    widget(at, "selectbox", "Group").set_value("arm")
    press(at, "Analyse")
    assert "6 patients, 4 events" in infos(at)
    widget(at, "file_uploader", "Cohort table (CSV, TSV or Excel; one row per patient)").set_value(("cohort.csv", edited.to_csv(index=False).encode(), "text/csv"))
    at.run()
    assert "6 patients, 4 events" not in infos(at) and "Map the columns above" in infos(at)  # the old result is not shown for the new table
    widget(at, "selectbox", "Group").set_value("arm")
    press(at, "Analyse")
    assert "6 patients, 6 events" in infos(at)


def test_a_latin1_table_is_read_and_the_encoding_can_be_chosen():
    text = "time;status;arm\n5;1;b\u00e9b\u00e9\n6;0;b\u00e9b\u00e9\n7;1;z\u00fcri\n9;1;z\u00fcri\n"
    at = upload(page(), "excel.csv", text.encode("cp1252"))
    assert "Read as cp1252." in " ".join(c.value for c in at.caption)
    widget(at, "selectbox", "Group").set_value("arm")
    press(at, "Analyse")
    assert "4 patients, 3 events" in infos(at) and not at.error
    widget(at, "selectbox", "Text encoding").set_value("utf-8")
    at.run()
    assert "excel.csv cannot be read as utf-8 text" in errors(at)


def test_many_permutations_run_off_the_script_thread_with_progress():
    """An optimal cut-point with 5,000 permutations on 686 patients runs on a worker thread: the run that starts it returns
    at once with a progress bar and the earlier result still on the page; later runs pick the result up."""
    import time

    at = page()
    widget(at, "selectbox", "Demo cohort").set_value("gbsg2")
    at.run()
    assert "686 patients" in infos(at)
    widget(at, "selectbox", "Strata").set_value("optimal")
    widget(at, "selectbox", "Continuous column to split").set_value("age")
    widget(at, "number_input", "Permutations (0 = none)").set_value(5000)
    press(at, "Analyse")
    assert not at.error, errors(at)
    assert at.session_state["survival_job"] is not None or any(m.label == "Optimal cut (low ≤ cut)" for m in at.metric)
    if "survival_job" in at.session_state:
        assert "686 patients" in infos(at)  # the page rendered, with the earlier result, while the job runs
    for _ in range(600):  # poll as the fragment does (AppTest does not run timers)
        if any(m.label == "Optimal cut (low ≤ cut)" for m in at.metric):
            break
        time.sleep(0.2)
        at.run()
    metrics = {m.label: m.value for m in at.metric}
    from engine import survival as sv

    expected = sv.analyse(sv.demo_table("gbsg2"), sv.AnalysisSpec("time", "cens", strata="optimal", split_col="age", n_permutations=5000))
    assert metrics["Optimal cut (low ≤ cut)"] == f"{expected.scan.cutpoint:g}"
    assert metrics["Permutation p"] == f"{expected.scan.p_permutation:.3g}"


def test_background_analysis_reports_progress_and_errors():
    from engine import survival as sv
    from engine.errors import InvalidInputError

    table = sv.demo_table("lung")
    job = sv.BackgroundAnalysis(table, sv.AnalysisSpec("time", "status", strata="optimal", split_col="age", n_permutations=2000)).start()
    assert job.wait(timeout=300) and job.progress == (2000, 2000)
    assert job.result().scan.n_permutations == 2000
    bad = sv.BackgroundAnalysis(table, sv.AnalysisSpec("time", "age", strata="optimal", split_col="age", n_permutations=10)).start()
    assert bad.wait(timeout=300)
    with pytest.raises(InvalidInputError, match="cannot be read as event/censored"):
        bad.result()


def test_table_form_values_and_results_come_back_in_a_new_session_of_the_browser():
    """A refresh, a new tab or a restart is a new Streamlit session with the same browser id (the cookie's): the
    uploaded table, the source choice, the Analyse form's values and every result come back from the workspace
    (dashboard.state), without pressing Analyse again; another browser sees none of it."""
    at = upload(page(), "lung.csv", (REF / "lung.csv").read_bytes())
    widget(at, "selectbox", "Group").set_value("ph.ecog")
    widget(at, "text_input", "Manual cut-offs").set_value("50, 65")
    press(at, "Analyse")
    widget(at, "multiselect", "Covariates (numeric)").set_value(["age"])
    press(at, "Fit Cox model")
    assert not at.error, errors(at)
    concordance = {m.label: m.value for m in at.metric}["Concordance (Harrell's C)"]
    sid = at.session_state["session_id"]

    again = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    again.session_state["session_id"] = sid  # what the browser's cookie names
    again.run()
    assert not again.exception, again.exception
    assert widget(again, "radio", "Cohort").value == "Upload a table"
    assert "Table **lung.csv**" in " ".join(c.value for c in again.caption)
    assert widget(again, "selectbox", "Group").value == "ph.ecog" and widget(again, "text_input", "Manual cut-offs").value == "50, 65"
    assert "1 of 228 rows dropped for missing values (ph.ecog: 1)" in infos(again) and charts(again) >= 2
    assert {m.label: m.value for m in again.metric}["Concordance (Harrell's C)"] == concordance
    assert not again.warning or "default value" not in " ".join(w.value for w in again.warning)

    other = page()  # another browser: the demo, not this one's table
    assert widget(other, "radio", "Cohort").value == "Demo cohort" and "lung.csv" not in " ".join(c.value for c in other.caption)
