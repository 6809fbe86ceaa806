"""Cohorts on the embedded backend: clusters, patient table, store/resume, and the whole pipeline on generated slides
of known composition (LC25000 patches) with a synthetic outcome, checked against what was put in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.cohort.clusters import Clusterer, fit_clusterer
from engine.cohort.patients import join_clinical, map_by_pattern, map_by_table, mapping_messages, patient_table
from engine.cohort.store import EmbeddingStore
from engine.errors import InvalidInputError
from tests.conftest import shared_path

PATTERN = r"^(P\d+)_"

# ----------------------------------------------------------------------------- parts (no model)


def test_clusterer_assigns_as_sklearn_predicts_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (4, 16))
    emb = [centres[rng.integers(0, 4, 300)] + rng.normal(0, 1, (300, 16)) for _ in range(3)]
    clusterer, km = fit_clusterer(emb, 4, seed=1, meta={"note": "test"}, return_estimator=True)
    new = centres[rng.integers(0, 4, 200)] + rng.normal(0, 1, (200, 16))
    labels, dists = clusterer.assign(new)
    np.testing.assert_array_equal(labels, km.predict((new - clusterer.mean) / clusterer.scale))
    z = (new - clusterer.mean) / clusterer.scale
    np.testing.assert_allclose(dists, np.linalg.norm(z - clusterer.centers[labels], axis=1), rtol=1e-9)
    clusterer.save(tmp_path / "c")
    back = Clusterer.load(tmp_path / "c")
    np.testing.assert_array_equal(back.assign(new)[0], labels)
    assert back.card["k"] == 4 and back.card["n_fit_tiles"] == 900 and back.card["note"] == "test" and len(back.card["arrays_sha256"]) == 64
    (tmp_path / "c" / "clusterer.npz").write_bytes(b"changed")
    with pytest.raises(Exception, match="does not match its card"):
        Clusterer.load(tmp_path / "c")
    with pytest.raises(InvalidInputError, match="need at least 50 tiles"):
        fit_clusterer([new[:10]], 50)


def test_slides_map_to_patients_and_aggregate_by_mean_or_tiles():
    names = ["a/P01_s1.svs", "P01_s2.tiff", "P02_x.svs", "notes.svs"]
    ids = map_by_pattern(names, PATTERN)
    assert ids == {"a/P01_s1.svs": "P01", "P01_s2.tiff": "P01", "P02_x.svs": "P02", "notes.svs": None}
    assert "1 slide(s) have no patient id" in mapping_messages(ids)[0] and "'notes.svs'" in mapping_messages(ids)[0]
    with pytest.raises(InvalidInputError, match="has no group"):
        map_by_pattern(names, r"P\d+")
    with pytest.raises(InvalidInputError, match="No slide could be mapped"):
        mapping_messages(map_by_pattern(names, r"^(Q\d+)"))
    table = pd.DataFrame({"slide": ["P01_s1", "P01_s2.tiff", "a/P02_x.svs"], "pid": ["X1", "X1", "X2"]})
    assert map_by_table(names, table, "slide", "pid") == {"a/P01_s1.svs": "X1", "P01_s2.tiff": "X1", "P02_x.svs": "X2", "notes.svs": None}

    slides = [  # P01: 2 slides (4 tiles and 1 tile), P02: 1 slide; K = 3
        {"name": "a/P01_s1.svs", "scores": [0.1, 0.2, 0.9, 0.8], "labels": [0, 0, 1, 2]},
        {"name": "P01_s2.tiff", "scores": [1.0], "labels": [2]},
        {"name": "P02_x.svs", "scores": [0.5, 0.5], "labels": [1, 1]},
    ]
    mean = patient_table(slides, ids, k=3, how="mean", threshold=0.5, top_k=2).set_index("patient_id")
    tiles = patient_table(slides, ids, k=3, how="tiles", threshold=0.5, top_k=2).set_index("patient_id")
    assert mean.loc["P01", "n_slides"] == 2 and mean.loc["P01", "n_tiles"] == 5
    assert mean.loc["P01", "mean_score"] == pytest.approx((0.5 + 1.0) / 2)
    assert tiles.loc["P01", "mean_score"] == pytest.approx(3.0 / 5)
    assert mean.loc["P01", "top_k_mean"] == pytest.approx((0.85 + 1.0) / 2) and tiles.loc["P01", "top_k_mean"] == pytest.approx(0.95)
    assert mean.loc["P01", "fraction_over_threshold"] == pytest.approx((0.5 + 1) / 2) and tiles.loc["P01", "fraction_over_threshold"] == pytest.approx(0.6)
    np.testing.assert_allclose(mean.loc["P01", ["cluster_0", "cluster_1", "cluster_2"]], [0.25, 0.125, 0.625])
    np.testing.assert_allclose(tiles.loc["P01", ["cluster_0", "cluster_1", "cluster_2"]], [0.4, 0.2, 0.4])
    np.testing.assert_allclose(mean[["cluster_0", "cluster_1", "cluster_2"]].sum(1), 1.0)
    np.testing.assert_allclose(mean.loc["P02", ["cluster_0", "cluster_1", "cluster_2"]], [0, 1, 0])

    clinical = pd.DataFrame({"case": ["P01", "P03", "P03", " P02 "], "time": [10, 20, 25, 30], "status": [1, 0, 0, 1]})
    joined, messages = join_clinical(mean.reset_index(), clinical, "case")
    assert list(joined["case"]) == ["P01", "P02"] and list(joined["time"]) == [10, 30] and "patient_id" not in joined.columns
    assert any("more than once" in m and "'P03'" in m for m in messages)
    assert any("have no slide" in m and "'P03'" in m for m in messages)
    with pytest.raises(InvalidInputError, match="No patient id of the slides"):
        join_clinical(mean.reset_index(), clinical.assign(case=["A", "B", "C", "D"]), "case")
    with pytest.raises(InvalidInputError, match="no column 'patient'"):
        join_clinical(mean.reset_index(), clinical, "patient")


def test_embedding_store_merges_parts_into_one_slide_record(tmp_path):
    store = EmbeddingStore(tmp_path)
    key = "ab" + "0" * 62
    rng = np.random.default_rng(0)
    p, e = rng.random((5, 3)).astype(np.float32), rng.random((5, 8)).astype(np.float32)
    store.save_part(key, 0, 2, p[:2], e[:2])
    assert store.has_part(key, 0, 2) and not store.has_part(key, 2, 4) and not store.has(key)
    store.save_part(key, 2, 4, p[2:4], e[2:4])
    store.save_part(key, 4, 5, p[4:], e[4:])
    rec = store.complete(key, 5, 2)
    assert store.has(key) and not list(tmp_path.glob("*/*.part-*"))
    np.testing.assert_array_equal(store.load(key)["probabilities"], p)
    np.testing.assert_array_equal(rec["embeddings"], e.astype(np.float16))


# ----------------------------------------------------------------------------- the pipeline on generated slides


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """96 patients, one 3×3-patch slide each (864 tiles), outcome hazard exp(4 · share of lung_scc); one local run, K = 8."""
    from engine.cohort.pipeline import run_cohort
    from engine.cohort.synthetic import load_patches, write_cohort

    patches = load_patches(shared_path("lc25000-lung-224"))
    root = tmp_path_factory.mktemp("cohort")
    data = write_cohort(root, patches, 96, rows=3, cols=3, seed=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HISTODASH_HOME", str(root / "home"))
        mp.setenv("HISTODASH_CACHE_DIR", str(root / "cache"))
        mp.delenv("HISTODASH_MODELS_DIR", raising=False)
        params = {"slide_dir": data["slide_dir"], "patient_pattern": PATTERN, "clinical": data["clinical"], "tile_px": 224, "clusters": 8, "chunk_tiles": 64}
        manifest = run_cohort(params, root / "out")
    return {**data, "root": root, "out": root / "out", "manifest": manifest, "params": params}


def test_cluster_proportions_recover_the_known_composition(cohort):
    from engine.cohort.synthetic import composition_error

    tiles = []
    for t in cohort["truth"]:
        frame = pd.read_csv(cohort["out"] / "slides" / t["path"].rsplit("/", 1)[-1] / "tiles.csv")
        tiles.append({"x": frame.x.to_numpy(), "y": frame.y.to_numpy(), "cluster": frame.cluster.to_numpy()})
    measure = composition_error(cohort["truth"], tiles, 3)
    print(f"\ncomposition recovery (K=8, 96 slides × 9 patches): {json.dumps(measure)}")
    assert measure["n_tiles"] >= 0.95 * 96 * 9  # tissue detection keeps (almost) every patch
    assert measure["purity"] > 0.9
    assert measure["mae"] < 0.05 and measure["max_error"] < 0.35


def test_the_survival_step_finds_the_outcome_hidden_in_the_composition(cohort):
    from engine import survival as sv

    table = pd.read_csv(cohort["out"] / "patients.csv")
    feats = cohort["manifest"]["feature_columns"]
    disc_df, val_df = sv.split_discovery_validation(table, 0.5, stratify="event")  # the page's defaults
    disc = sv.prepare_cohort(disc_df, "time", "event", covariates=feats)
    val = sv.prepare_cohort(val_df, "time", "event", covariates=feats)
    risk = sv.risk_score_workflow(disc, val, feats, penalizer=0.1)
    print("\n" + risk.summary_frame().to_string())
    assert risk.validation.logrank.p < 0.01 and risk.discovery.logrank.p < 0.01
    # the score is driven by the clusters that hold the risk class: check against the truth that was put in
    truth = cohort["patients"].set_index("patient_id").loc[table["patient_id"], "true_lung_scc"].to_numpy()
    assert np.corrcoef(risk.model.score(table), truth)[0, 1] > 0.8


def test_the_patient_table_and_the_files_around_it(cohort):
    out, manifest = cohort["out"], cohort["manifest"]
    table = pd.read_csv(out / "patients.csv")
    k = 8
    assert list(table.columns[:8]) == ["patient_id", "n_slides", "n_tiles", "mean_score", "median_score", "max_score", "fraction_over_threshold", "top_k_mean"]
    assert [f"cluster_{j}" for j in range(k)] == manifest["feature_columns"] and {"time", "event", "age"} <= set(table.columns)
    assert len(table) == 96 and table.patient_id.is_unique
    np.testing.assert_allclose(table[manifest["feature_columns"]].sum(1), 1.0, atol=1e-6)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "patients.parquet"), table, check_exact=False, rtol=1e-5, check_dtype=False)
    clinical = pd.read_csv(cohort["clinical"]).set_index("patient_id")
    assert (table.set_index("patient_id")["time"] == clinical.loc[table.patient_id, "time"]).all()
    slides = pd.read_csv(out / "slides.csv")
    assert len(slides) == 96 and slides["discovery"].sum() == 48 and (slides.scored_now == slides.n_tiles).all()
    gallery = pd.read_csv(out / "gallery.csv")
    assert set(gallery.cluster) <= set(range(k)) and gallery.groupby("cluster").size().max() <= 8
    assert (gallery.groupby("cluster").distance.apply(lambda d: d.is_monotonic_increasing)).all()
    card = json.loads((out / "clusterer" / "card.json").read_text())
    assert card["k"] == k and card["n_discovery_patients"] == 48 and card["feature_model"]["id"] == "lc25000-lung-cnn" and "made by" in card["feature_layer"]
    assert manifest["n_tiles"] == manifest["n_scored_now"] == int(table.n_tiles.sum()) and manifest["executor"]["backend"] == "local"
    # each slide is also a Slide-heatmap result with the per-tile cluster column
    from engine.heatmap import HeatmapResult

    one = out / "slides" / "P000_s1.tiff"
    result = HeatmapResult.load(one)
    tiles = pd.read_csv(one / "tiles.csv")
    assert result.n_tiles == len(tiles) and {"cluster", "cluster_distance"} <= set(tiles.columns)
    assert tiles.cluster.between(0, k - 1).all()
    from engine.overlay import tiles_payload

    assert (result.to_frame().cluster.to_numpy() == tiles.cluster.to_numpy()).all()
    assert {"cluster", "cluster_distance"} <= set(tiles_payload(result)["columns"])  # the viewer's layers


def test_the_slide_heatmap_reuses_what_the_cohort_scored(cohort, monkeypatch):
    from engine.heatmap import compute_heatmap

    monkeypatch.setenv("HISTODASH_CACHE_DIR", str(cohort["root"] / "cache"))
    result, _ = compute_heatmap(cohort["truth"][0]["path"], tile_px=224)
    assert result.n_tiles > 0 and result.cached.all()
    tiles = pd.read_csv(cohort["out"] / "slides" / "P000_s1.tiff" / "tiles.csv")
    np.testing.assert_allclose(np.sort(result.scores), np.sort(tiles.score.to_numpy()), atol=1e-5)


def test_an_interrupted_cohort_resumes_and_a_rerun_scores_only_new_slides(cohort, tmp_path, monkeypatch):
    from engine.cohort.executor import LocalExecutor
    from engine.cohort.pipeline import run_cohort

    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("P000_s1.tiff", "P001_s1.tiff", "P002_s1.tiff"):
        shutil.copy(cohort["slide_dir"] + "/" + name, slides / name)
    params = dict(cohort["params"], slide_dir=str(slides), clusters=2, chunk_tiles=4)
    results = []
    real_run = LocalExecutor.run

    def counting_run(self, jobs, on_result, on_error=None, cancelled=None):
        def record(job, res):
            results.append(job.n)
            on_result(job, res)
        return real_run(self, jobs, record, on_error, lambda: len(results) >= 2)

    monkeypatch.setattr(LocalExecutor, "run", counting_run)
    with pytest.raises(Exception, match="cancelled after 2"):
        run_cohort(params, tmp_path / "a")
    monkeypatch.setattr(LocalExecutor, "run", real_run)
    first = run_cohort(params, tmp_path / "a")
    assert first["n_scored_now"] == first["n_tiles"] - sum(results) and sum(results) == 8
    shutil.copy(cohort["slide_dir"] + "/P003_s1.tiff", slides / "P003_s1.tiff")
    again = run_cohort(params, tmp_path / "b")
    new = pd.read_csv(tmp_path / "b" / "slides.csv").set_index("slide")
    assert again["n_scored_now"] == new.loc["P003_s1.tiff", "n_tiles"] and new.loc["P000_s1.tiff", "from_store"]


def test_cli_cohort_of_generated_and_real_slides(cohort, tmp_path, capsys):
    slides = tmp_path / "lib"
    (slides / "real").mkdir(parents=True)
    for name in ("P000_s1.tiff", "P001_s1.tiff"):
        shutil.copy(cohort["slide_dir"] + "/" + name, slides / name)
    shutil.copy(shared_path("wsi", "CMU-1-Small-Region.svs"), slides / "real" / "CMU-1-Small-Region.svs")
    shutil.copy(shared_path("wsi", "TCGA-CR-7395-01A-01-TS1.svs"), slides / "real" / "TCGA-CR-7395-01A-01-TS1.svs")
    clinical = tmp_path / "clinical.csv"
    pd.DataFrame({"case": ["P000", "P001", "CMU-1", "TCGA-CR-7395", "P999"], "time": [5, 8, 3, 9, 1], "event": [1, 0, 1, 1, 0]}).to_csv(clinical, index=False)

    def cli(*argv) -> int:
        from engine.cli import main

        return main(list(argv))

    out = tmp_path / "out"
    code = cli("cohort", str(slides), "--clinical", str(clinical), "--clinical-id", "case", "--patient-pattern", r"^(P\d+|CMU-1|TCGA-\w\w-\d{4})",
               "--out", str(out), "--clusters", "4", "--tile-px", "224", "--ignore-mpp")
    err = capsys.readouterr().err
    assert code == 0, err
    table = pd.read_csv(out / "patients.csv")
    assert sorted(table.case) == ["CMU-1", "P000", "P001", "TCGA-CR-7395"] and "4 patients from 4 slides" in err
    assert "note: 1 patient(s) of the clinical table have no slide: 'P999'" in err
    np.testing.assert_allclose(table[[f"cluster_{j}" for j in range(4)]].sum(1), 1.0, atol=1e-6)
    assert (table.set_index("case").loc[["CMU-1", "TCGA-CR-7395"], "n_tiles"] > 20).all()
    assert cli("cohort", str(slides), "--out", str(tmp_path / "bad"), "--patient-pattern", "P\\d+") == 2
    assert "error: The patient pattern 'P\\\\d+' has no group." in capsys.readouterr().err


def test_uploaded_slides_join_a_cohort_and_are_staged_into_the_library_for_ray(tmp_path, monkeypatch):
    from engine.cohort.job import STAGING, submit_cohort
    from engine.slides import SlideLibrary

    class Runner:  # records what would be submitted
        def __init__(self, backend):
            self.backend, self.sent = backend, []

        def submit(self, kind, params, *, owner=None):
            self.sent.append((kind, params, owner))
            return "cohort-1"

    upload = tmp_path / "session" / "P9_up.tiff"
    upload.parent.mkdir()
    upload.write_bytes(b"slide bytes")
    local = Runner("local")
    submit_cohort(local, {"slide_dir": str(tmp_path)}, uploads=[upload], owner="s1")
    assert local.sent == [("cohort", {"slide_dir": str(tmp_path), "slides": [str(upload)]}, "s1")]

    monkeypatch.delenv("HISTODASH_SLIDES_DIR", raising=False)
    with pytest.raises(InvalidInputError, match="only through the slide library"):
        submit_cohort(Runner("ray"), {"slide_dir": str(tmp_path)}, uploads=[upload])
    library = tmp_path / "library"
    library.mkdir()
    monkeypatch.setenv("HISTODASH_SLIDES_DIR", str(library))
    ray = Runner("ray")
    submit_cohort(ray, {"slide_dir": str(library)}, uploads=[upload])
    submit_cohort(ray, {"slide_dir": str(library)}, uploads=[upload])
    staged = [p for _, params, _ in ray.sent for p in params["slides"]]
    assert staged[0] == staged[1] and staged[0].startswith(str(library / STAGING)) and Path(staged[0]).read_bytes() == b"slide bytes"
    assert len(list((library / STAGING).iterdir())) == 1 and SlideLibrary(library).list("") == []  # hidden from the library's listing
    with pytest.raises(InvalidInputError, match="has no group"):
        submit_cohort(local, {"slide_dir": str(tmp_path), "patient_pattern": "P"})
