"""A slide cohort → a patient table: plan on the head, score where the executor says, cluster, aggregate, join, write.

>>> spec = CohortSpec(slide_dir="library/study1", patient_pattern=r"^(P\\d+)_", clinical="clinical.csv", clusters=50)
>>> manifest = run_cohort(spec, "out/cohort")          # LocalExecutor unless given a RayExecutor
>>> pd.read_csv("out/cohort/patients.csv")

Steps (every one on the head except 4):

1. the slides of the folder (recursively; or a list) and their patients (regex on the file name, or a
   mapping column); slides without a patient are left out, with a message;
2. per slide: the tile grid and tissue tiles of :mod:`engine.heatmap` (thumbnail and mask cached);
3. cache lookup: a slide whose record (probabilities + embeddings, :class:`~engine.cohort.store.EmbeddingStore`)
   is complete is not scored again; of the others, only the chunks without a stored part;
4. the chunks go to the executor; as each comes back the head stores its part and writes the tiles'
   probabilities into the result cache under the Slide heatmap's keys (so that page gets them free);
5. phenotype clusters: MiniBatchKMeans fitted on the discovery patients' tiles, applied to every tile;
6. per-slide summaries, the patient table (:mod:`engine.cohort.patients`), the clinical join;
7. files in ``out_dir``: ``patients.csv`` and ``patients.parquet``, ``slides.csv``, ``gallery.csv`` (the tiles
   nearest each cluster centre), ``slides/<name>/`` (a Slide-heatmap result per slide whose ``tiles.csv`` also
   carries the per-tile ``cluster`` and ``cluster_distance`` columns), ``clusterer/`` (arrays + card) and
   ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from engine.cache import shared_cache
from engine.cohort.clusters import DEFAULT_K, Clusterer, fit_clusterer
from engine.cohort.patients import (
    AGGREGATIONS,
    compile_pattern,
    discovery_patients,
    join_clinical,
    map_by_pattern,
    map_by_table,
    mapping_messages,
    patient_table,
    slide_summary,
)
from engine.cohort.store import EmbeddingStore, slide_key
from engine.cohort.worker import ChunkJob, ChunkResult, ModelSpec
from engine.errors import Cancelled, HistoDashError, InvalidInputError
from engine.exports import safe_csv
from engine.forward import EXTRA_FIELDS
from engine.heatmap import HeatmapResult, HeatmapRun, TileGrid, exporters, thumbnail_and_mask
from engine.heatmap.result import frozen
from engine.slides import SLIDE_SUFFIXES, SlideLibrary, open_slide
from engine.tissue import DEFAULT_MIN_TISSUE, TissueMasker

MANIFEST_KIND = "histodash-cohort"


@dataclass
class CohortSpec:
    """What a cohort job does (its ``params``, JSON-serialisable). See :func:`run_cohort`."""

    slide_dir: str | None = None
    slides: list[str] = field(default_factory=list)
    model_id: str | None = None
    feature_model_id: str | None = None
    models_dir: str | None = None
    level: int | None = None
    tile_px: int | None = None
    stride_fraction: float = 1.0
    min_tissue: float = DEFAULT_MIN_TISSUE
    use_mpp: bool = True
    batch_size: int = 32
    chunk_tiles: int = 256
    clusters: int = DEFAULT_K
    discovery: float = 0.5
    seed: int = 0
    fit_tiles: int = 200_000
    patient_pattern: str | None = None
    mapping_table: str | None = None
    slide_column: str | None = None
    patient_column: str | None = None
    clinical: str | None = None
    clinical_id: str | None = None
    aggregate: str = "mean"
    top_k: int = 10
    threshold: float | None = None
    gallery: int = 8
    workers: int | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    pin: str | None = None
    start_together_s: float = 0.0

    @classmethod
    def from_params(cls, params: dict) -> CohortSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in params if k not in names and k not in ("out_dir", "backend", "slide_ids", "title"))
        if unknown:
            raise InvalidInputError(f"Unknown cohort setting(s): {', '.join(unknown)}.")
        spec = cls(**{k: v for k, v in params.items() if k in names and v is not None})
        spec.check()
        return spec

    def check(self) -> None:
        if not self.slide_dir and not self.slides:
            raise InvalidInputError("A cohort needs a slide folder or a list of slides.")
        if self.aggregate not in AGGREGATIONS:
            raise InvalidInputError(f"Unknown aggregation '{self.aggregate}'.", f"Choose one of: {', '.join(AGGREGATIONS)}.")
        if not (self.clusters == 0 or self.clusters >= 2):
            raise InvalidInputError(f"{self.clusters} clusters: choose 0 (none) or at least 2.")
        if int(self.chunk_tiles) < 1 or int(self.batch_size) < 1:
            raise InvalidInputError("chunk_tiles and batch_size must be at least 1.")
        if not 0.0 <= float(self.min_tissue) <= 1.0:
            raise InvalidInputError(f"Minimum tissue fraction {self.min_tissue} must be between 0 and 1.")
        if self.patient_pattern:
            compile_pattern(self.patient_pattern)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class SlidePlan:
    """One slide's tissue tiles and where its record is stored."""

    index: int
    name: str
    path: str
    patient: str | None
    slide_hash: str = ""
    grid: TileGrid | None = None
    x: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    y: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    tissue: np.ndarray = field(default_factory=lambda: np.zeros(0))
    key: str = ""
    error: str | None = None
    cached: bool = False
    scored_now: int = 0

    @property
    def n(self) -> int:
        return int(len(self.x))


# ----------------------------------------------------------------------------- slides and patients


def find_slides(spec: CohortSpec) -> list[tuple[str, str]]:
    """``(absolute path, name)`` of the cohort's slides: the folder's slide files (recursively; names relative to it),
    then the listed ones (names: their file names)."""
    out: list[tuple[str, str]] = []
    if spec.slide_dir:
        folder = Path(spec.slide_dir)
        if not folder.is_dir():
            raise InvalidInputError(f"'{folder.name}' is not a folder.", path=str(folder))
        library = SlideLibrary(folder)
        out += [(str(library.resolve(e.relpath)), e.relpath) for e in sorted(library.walk(), key=lambda e: e.relpath)]
    seen = {n for _, n in out}
    for p in spec.slides or []:
        path = Path(p)
        if not path.is_file():
            raise InvalidInputError(f"No slide file '{path.name}'.", path=str(path))
        if path.suffix.lower() not in SLIDE_SUFFIXES:
            raise InvalidInputError(f"'{path.name}' is not a slide file ({', '.join(SLIDE_SUFFIXES)}).")
        name = path.name if path.name not in seen else f"{path.parent.name}/{path.name}"
        seen.add(name)
        out.append((str(path.resolve()), name))
    if not out:
        raise InvalidInputError(f"No slides found in '{Path(spec.slide_dir or '.').name}'.", "Slide files: " + ", ".join(SLIDE_SUFFIXES))
    return out


def read_any_table(path: str | Path):
    from engine.survival import read_table

    return read_table(str(path))


def map_patients(spec: CohortSpec, names: list[str], clinical: pd.DataFrame | None) -> tuple[dict[str, str | None], list[str]]:
    """Each slide's patient id: the regex, else the mapping table's (or the clinical table's) slide column, else the slide's stem."""
    if spec.patient_pattern:
        ids = map_by_pattern(names, spec.patient_pattern)
    elif spec.slide_column:
        table = read_any_table(spec.mapping_table) if spec.mapping_table else clinical
        if table is None:
            raise InvalidInputError("A slide column was named but there is no mapping or clinical table.")
        ids = map_by_table(names, table, spec.slide_column, spec.patient_column or clinical_id_column(spec, table))
    else:
        ids = {n: Path(n).stem for n in names}
    return ids, mapping_messages(ids)


def clinical_id_column(spec: CohortSpec, clinical: pd.DataFrame) -> str:
    if spec.clinical_id:
        return spec.clinical_id
    if spec.patient_column and spec.patient_column in clinical.columns:
        return spec.patient_column
    for name in ("patient_id", "patient", "case_id", "submitter_id", "id"):
        if name in clinical.columns:
            return name
    return str(clinical.columns[0])


# ----------------------------------------------------------------------------- planning


def plan_slide(plan: SlidePlan, spec: CohortSpec, predictor, feature_card, cache) -> SlidePlan:
    """Tile grid, tissue tiles and store key of one slide (a user error becomes ``plan.error``)."""
    try:
        with open_slide(plan.path) as slide:
            grid = TileGrid.for_slide(slide, predictor.card, level=spec.level, tile_px=spec.tile_px,
                                      stride_fraction=spec.stride_fraction, use_mpp=spec.use_mpp)
            masker = TissueMasker()
            _, mask = thumbnail_and_mask(slide, masker, cache)
            x, y, frac = HeatmapRun(predictor, masker=masker, min_tissue=spec.min_tissue).select_tiles(slide, grid, mask)
            plan.slide_hash = slide.content_hash()
        if not len(x):
            raise InvalidInputError(f"No tissue found in '{Path(plan.name).name}': none of its {grid.n_tiles} tiles has {spec.min_tissue:.0%} tissue or more.")
        plan.grid, plan.x, plan.y, plan.tissue = grid, x.astype(np.int64), y.astype(np.int64), frac
        prep = {"score": predictor.preprocessing_key(), "features": {"input_px": feature_card.input_px, "resize": "pil-bilinear"}}
        plan.key = slide_key(plan.slide_hash, grid.to_dict(), plan.x, plan.y, predictor.card.weights_sha256, feature_card.weights_sha256, prep)
    except HistoDashError as err:
        plan.error = str(err)
    return plan


def chunk_jobs(plan: SlidePlan, chunk: int, store: EmbeddingStore) -> list[ChunkJob]:
    """The chunks of one slide whose parts are not stored yet (none when the slide's record is complete)."""
    if plan.error or store.has(plan.key):
        return []
    out = []
    for start in range(0, plan.n, chunk):
        end = min(start + chunk, plan.n)
        if not store.has_part(plan.key, start, end):
            out.append(ChunkJob(f"{plan.index}:{start}", plan.index, start, end, plan.path, plan.grid.level, plan.grid.read_px,
                                plan.x[start:end], plan.y[start:end]))
    return out


# ----------------------------------------------------------------------------- the run


def run_cohort(spec: CohortSpec | dict, out_dir: str | Path, *, executor=None, progress: Callable | None = None,
               cancelled: Callable[[], bool] | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Run a cohort (module docstring); returns the manifest (also written to ``out_dir/manifest.json``)."""
    from engine.predict import TilePredictor
    from engine.registry import Registry

    spec = spec if isinstance(spec, CohortSpec) else CohortSpec.from_params(spec)
    spec.check()
    say = log or (lambda _m: None)
    report = progress or (lambda *a, **k: None)
    stop = cancelled or (lambda: False)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # 1. slides and patients
    slides = find_slides(spec)
    clinical = read_any_table(spec.clinical) if spec.clinical else None
    ids, messages = map_patients(spec, [n for _, n in slides], clinical)
    plans = [SlidePlan(i, name, path, ids.get(name)) for i, (path, name) in enumerate(slides)]
    todo = [p for p in plans if p.patient is not None]

    # 2. models, grid, tissue
    registry = Registry(spec.models_dir) if spec.models_dir else Registry()
    card = registry.get(spec.model_id)
    feature_card = registry.get(spec.feature_model_id) if spec.feature_model_id else card
    cache = shared_cache()
    predictor = TilePredictor(card, cache=cache, batch_size=spec.batch_size)
    store = EmbeddingStore()
    threshold = float(card.threshold if spec.threshold is None else spec.threshold)
    for i, plan in enumerate(todo):
        if stop():
            raise Cancelled("cancelled while planning")
        report(0, 0, f"planning slide {i + 1} of {len(todo)}")
        plan_slide(plan, spec, predictor, feature_card, cache)
    timings["plan_s"] = time.perf_counter() - t0
    for plan in todo:
        if plan.error:
            messages.append(f"'{plan.name}' is left out: {plan.error}")
    usable = [p for p in todo if not p.error]
    if not usable:
        raise InvalidInputError("No slide of the cohort could be tiled.", " ".join(messages[-3:]))

    # 3-4. what is not stored yet, scored by the executor
    chunk = int(spec.chunk_tiles)
    jobs = [j for p in usable for j in chunk_jobs(p, chunk, store)]
    total = sum(p.n for p in usable)
    pending_tiles = sum(j.n for j in jobs)
    done = [total - pending_tiles]
    per_slide_left = {p.index: sum(j.n for j in jobs if j.slide == p.index) for p in usable}
    for p in usable:
        p.cached = per_slide_left[p.index] == 0 and store.has(p.key)
    slides_done = [sum(1 for v in per_slide_left.values() if v == 0)]
    by_index = {p.index: p for p in usable}
    heat = HeatmapRun(predictor)
    feature_layer: list[str | None] = [None]
    per_node: dict[str, int] = {}  # tiles scored per node (Ray node id, or host)
    say(f"{len(usable)} slides, {total} tissue tiles; {pending_tiles} to score in {len(jobs)} chunk(s), the rest from the store")

    def on_result(job: ChunkJob, result: ChunkResult) -> None:
        plan = by_index[job.slide]
        feature_layer[0] = feature_layer[0] or (result.node or {}).get("feature_layer")
        store.save_part(plan.key, job.start, job.end, result.probabilities, result.embeddings, **result.extras)
        for i in range(job.n):  # the Slide heatmap page's cache entries (the same values its own forward pass stores)
            cache.set(heat.tile_key(plan.slide_hash, plan.grid, job.x[i], job.y[i]), result.row(i))
        plan.scored_now += job.n
        per_slide_left[job.slide] -= job.n
        if per_slide_left[job.slide] == 0:
            store.complete(plan.key, plan.n, chunk)
            slides_done[0] += 1
        done[0] += job.n
        node = (result.node or {}).get("node_id") or (result.node or {}).get("host") or "?"
        per_node[node] = per_node.get(node, 0) + job.n
        report(done[0], total, f"{slides_done[0]} of {len(usable)} slides scored", slides_done=slides_done[0], slides_total=len(usable),
               nodes=dict(per_node))

    def on_error(job: ChunkJob, exc: BaseException) -> bool:
        plan = by_index[job.slide]
        plan.error = str(exc)
        messages.append(f"'{plan.name}' is left out: {exc}")
        say(f"slide {plan.index} failed: {type(exc).__name__}")
        return True

    report(done[0], total, f"{slides_done[0]} of {len(usable)} slides from the store" if slides_done[0] else "scoring", slides_done=slides_done[0],
           slides_total=len(usable))
    t1 = time.perf_counter()
    if executor is None:
        from engine.cohort.executor import LocalExecutor

        executor = LocalExecutor(ModelSpec.from_card(card), ModelSpec.from_card(feature_card), batch_size=spec.batch_size)
    run_kwargs = {"log": say} if getattr(executor, "name", "") == "ray" else {}
    stats = executor.run(jobs, on_result, on_error, stop, **run_kwargs) if jobs else {"backend": getattr(executor, "name", "?"), "chunks": 0}
    timings["score_s"] = time.perf_counter() - t1
    usable = [p for p in usable if not p.error]
    if not usable:
        raise InvalidInputError("No slide of the cohort could be scored.", " ".join(messages[-3:]))

    # 5. clusters
    t2 = time.perf_counter()
    records = {}
    for p in usable:
        rec = store.load(p.key)
        if rec is None:  # parts merged by a run that was cut short between two files
            rec = store.complete(p.key, p.n, chunk)
        records[p.index] = rec
    positive = list(card.positive_indices)
    scores = {i: r["probabilities"][:, positive].astype(np.float64).sum(1) for i, r in records.items()}
    disc = discovery_patients([p.patient for p in usable], spec.discovery, spec.seed)
    k = int(spec.clusters)
    clusterer = None
    labels: dict[int, np.ndarray] = {}
    dists: dict[int, np.ndarray] = {}
    if k:
        fit_on = [p for p in usable if p.patient in disc]
        meta = {"feature_model": {"id": feature_card.id, "sha256": feature_card.weights_sha256},
                "feature_layer": f"input of the last dense layer (made by '{feature_layer[0]}')" if feature_layer[0] else "input of the last dense layer",
                "discovery_fraction": spec.discovery,
                "n_discovery_patients": len(disc), "discovery_slides": [p.name for p in fit_on]}
        clusterer = fit_clusterer([records[p.index]["embeddings"] for p in fit_on], k, seed=spec.seed, max_tiles=spec.fit_tiles, meta=meta)
        for p in usable:
            labels[p.index], dists[p.index] = clusterer.assign(records[p.index]["embeddings"])
        clusterer.save(out / "clusterer")
    timings["cluster_s"] = time.perf_counter() - t2

    # 6-7. tables and files
    t3 = time.perf_counter()
    id_col = clinical_id_column(spec, clinical) if clinical is not None else "patient_id"
    slide_recs = [{"name": p.name, "scores": scores[p.index], "labels": labels.get(p.index)} for p in usable]
    table = patient_table(slide_recs, {p.name: p.patient for p in usable}, k=k, how=spec.aggregate, id_column="patient_id",
                          threshold=threshold, top_k=spec.top_k)
    if clinical is not None:
        table, join_msgs = join_clinical(table, clinical, id_col)
        messages += join_msgs
    elif id_col != "patient_id":
        table = table.rename(columns={"patient_id": id_col})
    safe_csv(table, out / "patients.csv", float_format="%.6g")  # ids and clinical text escaped for spreadsheets (engine.exports)
    files = {"patients.csv": "patients.csv"}
    try:
        table.to_parquet(out / "patients.parquet", index=False)
        files["patients.parquet"] = "patients.parquet"
    except Exception as exc:  # noqa: BLE001 - no parquet engine: the CSV is enough
        messages.append(f"patients.parquet was not written ({type(exc).__name__}).")
    slide_rows = []
    for p in usable:
        summ = slide_summary(scores[p.index], labels.get(p.index), k, threshold, spec.top_k)
        counts = summ.pop("cluster_counts")
        row = {"slide": p.name, "patient_id": p.patient, "discovery": p.patient in disc, **summ, "from_store": p.cached, "scored_now": p.scored_now}
        if "in_domain" in records[p.index]:  # the model's out-of-domain flags (engine.forward): the share of this slide's tiles inside
            row["in_domain_fraction"] = float(np.mean(records[p.index]["in_domain"]))
        row.update({f"cluster_{j}": float(counts[j] / max(1, p.n)) for j in range(k)})
        slide_rows.append(row)
        _write_slide_result(out / "slides" / _safe(p.name), p, records[p.index], scores[p.index], labels.get(p.index), dists.get(p.index), card, threshold, spec)
    for p in todo:
        if p.error:
            slide_rows.append({"slide": p.name, "patient_id": p.patient, "error": p.error})
    for name, pid in ids.items():
        if pid is None:
            slide_rows.append({"slide": name, "patient_id": None, "error": "no patient id"})
    safe_csv(pd.DataFrame(slide_rows), out / "slides.csv", float_format="%.6g")
    files["slides.csv"] = "slides.csv"
    if clusterer is not None:
        safe_csv(gallery_frame(usable, dists, labels, k, spec.gallery), out / "gallery.csv", float_format="%.6g")
        files.update({"gallery.csv": "gallery.csv", "clusterer": "clusterer/card.json"})
    timings["write_s"] = time.perf_counter() - t3
    timings["total_s"] = time.perf_counter() - t0
    scored_now = sum(p.scored_now for p in usable)
    manifest = {
        "kind": MANIFEST_KIND, "version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "spec": spec.to_dict(), "model": {"id": card.id, "sha256": card.weights_sha256, "classes": list(card.classes), "threshold": threshold},
        "feature_model": {"id": feature_card.id, "sha256": feature_card.weights_sha256, "layer": feature_layer[0]},
        "clusterer": {k2: v for k2, v in (clusterer.card if clusterer else {}).items() if k2 != "discovery_slides"},
        "patient_id_column": id_col, "feature_columns": [f"cluster_{j}" for j in range(k)],
        "score_columns": ["mean_score", "median_score", "max_score", "fraction_over_threshold", "top_k_mean"],
        "n_slides": len(usable), "n_slides_left_out": len(plans) - len(usable), "n_patients": int(len(table)), "n_tiles": int(total),
        "n_scored_now": int(scored_now), "n_from_store": int(total - scored_now), "messages": messages, "executor": _jsonable(stats),
        "timings": timings, "files": files, "versions": _versions(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    say(f"patient table: {len(table)} patients, {k} clusters; {scored_now} tiles scored now, {total - scored_now} from the store")
    return manifest


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:150] or "slide"


def _write_slide_result(folder: Path, plan: SlidePlan, record: dict, scores, labels, dists, card, threshold: float, spec: CohortSpec) -> None:
    """A Slide-heatmap result (``HeatmapResult.load`` reads it) whose ``tiles.csv`` also carries ``cluster`` columns."""
    result = HeatmapResult(
        grid=plan.grid, x=plan.x, y=plan.y, tissue=plan.tissue, probabilities=record["probabilities"].astype(np.float64), scores=scores,
        cached=np.zeros(plan.n, bool), classes=tuple(card.classes), model_id=card.id, model_sha256=card.weights_sha256, threshold=threshold,
        slide_name=Path(plan.name).name, slide_hash=plan.slide_hash,
        params=frozen({"min_tissue": spec.min_tissue, "level": spec.level, "tile_px": spec.tile_px, "stride_fraction": spec.stride_fraction,
                       "source": "cohort"}),
        columns=frozen({**{k: record[k].astype(bool if k == "in_domain" else np.float64) for k in EXTRA_FIELDS if k in record},
                        **({} if labels is None else {"cluster": np.asarray(labels, np.int64), "cluster_distance": np.asarray(dists, np.float64)})}),
    )
    folder.mkdir(parents=True, exist_ok=True)
    exporters.tiles_csv(result, folder / "tiles.csv")  # the Slide heatmap's files, less the PNG and GeoJSON
    (folder / "summary.json").write_text(json.dumps(result.summary(), indent=2))
    (folder / "manifest.json").write_text(json.dumps(result.manifest(), indent=2, default=str))


def gallery_frame(plans: list[SlidePlan], dists: dict, labels: dict, k: int, n: int) -> pd.DataFrame:
    """The ``n`` tiles nearest each cluster centre (across slides): where to read them for a gallery."""
    rows = []
    for p in plans:
        for i in range(p.n):
            rows.append((int(labels[p.index][i]), float(dists[p.index][i]), p.name, p.path, int(p.x[i]), int(p.y[i]), p.grid.tile0, p.grid.level, p.grid.read_px))
    frame = pd.DataFrame(rows, columns=["cluster", "distance", "slide", "path", "x", "y", "tile0", "level", "read_px"])
    frame = frame.sort_values(["cluster", "distance"], kind="stable").groupby("cluster", sort=True).head(n)
    frame["rank"] = frame.groupby("cluster").cumcount()
    return frame.reset_index(drop=True)


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("tensorflow-cpu", "tensorflow", "keras", "scikit-learn", "numpy", "openslide-python", "ray"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def load_result(out_dir: str | Path) -> dict:
    """A finished cohort's tables: ``{"manifest", "patients", "slides", "gallery", "clusterer"}`` (what the page shows)."""
    out = Path(out_dir)
    manifest = json.loads((out / "manifest.json").read_text())
    res = {"manifest": manifest, "patients": pd.read_csv(out / "patients.csv"), "slides": pd.read_csv(out / "slides.csv")}
    res["gallery"] = pd.read_csv(out / "gallery.csv") if (out / "gallery.csv").exists() else None
    res["clusterer"] = Clusterer.load(out / "clusterer") if (out / "clusterer" / "card.json").exists() else None
    return res


def slide_result(out_dir: str | Path, slide_hash: str) -> HeatmapResult | None:
    """The cohort's per-slide result (``out_dir/slides/<name>/``, with its ``cluster`` columns) of the slide whose
    content hash is ``slide_hash``; None when that slide is not in the cohort (the Slide heatmap page draws it)."""
    for folder in sorted((Path(out_dir) / "slides").glob("*/")):
        try:
            meta = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            continue  # a damaged folder is not this slide's result
        if isinstance(meta, dict) and isinstance(meta.get("slide"), dict) and meta["slide"].get("hash") == slide_hash:
            return HeatmapResult.load(folder)
    return None


def slide_files(params: dict) -> dict[str, str]:
    """``{name in slides.csv: slide file}`` of a cohort job's slides (:func:`find_slides` on its parameters);
    slides that have gone since are left out."""
    try:
        return {name: path for path, name in find_slides(CohortSpec.from_params(params))}
    except HistoDashError:
        return {}


def gallery_tiles(gallery: pd.DataFrame, cluster: int, n: int = 8, max_px: int = 256) -> list[tuple[str, np.ndarray]]:
    """``(caption, RGB)`` of the ``n`` tiles nearest a cluster's centre (read from their slides, at most ``max_px`` a side)."""
    from PIL import Image

    out = []
    rows = gallery[gallery.cluster == int(cluster)].sort_values("rank").head(n)
    for r in rows.itertuples():
        try:
            with open_slide(r.path) as slide:
                rgb = slide.read_region((int(r.x), int(r.y)), int(r.level), (int(r.read_px), int(r.read_px)))
        except HistoDashError:
            continue  # a slide moved away since: its tile is left out of the gallery
        if max(rgb.shape[:2]) > max_px:
            rgb = np.asarray(Image.fromarray(rgb).resize((max_px, max_px), Image.BILINEAR))
        out.append((f"{Path(r.slide).name} · ({r.x}, {r.y}) · d {r.distance:.2f}", rgb))
    return out
