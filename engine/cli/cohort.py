"""The cohort commands.

``python -m engine cohort SLIDE_DIR --clinical clinical.csv --patient-pattern REGEX --out cohort/ [--backend ray] [--clusters 50]``
writes ``patients.csv`` (+ ``.parquet``): one row per patient — the id column, ``n_slides``, ``n_tiles``,
``mean_score`` and the other slide-score summaries, ``cluster_<k>`` proportions summing to 1, the clinical
columns — and ``slides.csv`` (per-slide summaries), ``gallery.csv``, ``clusterer/`` and ``manifest.json``
(:mod:`engine.cohort`). ``--backend local`` scores in this process; ``--backend ray`` submits one cohort job
to the Ray cluster (``--ray-address``, else ``HISTODASH_RAY_ADDRESS``, else Ray's ``RAY_ADDRESS``) and follows
it; Ctrl-C cancels it. Run it on the head: the job's driver writes ``--out`` there. The default backend is
``HISTODASH_RUNNER`` (``local``).

``python -m engine cohort-scores SLIDE_DIR --out slides.csv``: one row of scores per slide of a folder (no
clusters, no patients; :func:`engine.heatmap.cohort_scores`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from engine.cli.common import ConsoleProgress, add_model_arguments
from engine.cli.heatmap import add_tiling_arguments, tiling_kwargs
from engine.cohort.clusters import DEFAULT_K
from engine.cohort.patients import AGGREGATIONS
from engine.config import get_settings
from engine.exports import safe_csv
from engine.heatmap.cohort import cohort_scores
from engine.tissue import DEFAULT_MIN_TISSUE


def _cmd_cohort_scores(args: argparse.Namespace) -> int:
    frame = cohort_scores(args.slide_dir, **tiling_kwargs(args))
    safe_csv(frame, args.out)  # slide names are user text: escaped for spreadsheets
    if not args.quiet:
        bad = int(frame["error"].notna().sum())
        print(f"{len(frame)} slides scored ({bad} with errors); wrote {args.out}", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("cohort-scores", help="score every slide of a folder into one table (input of the survival page)")
    c.add_argument("slide_dir", metavar="SLIDE_DIR")
    c.add_argument("--out", required=True, help="CSV file to write")
    add_tiling_arguments(c)
    c.set_defaults(func=_cmd_cohort_scores)


def params_from_args(args: argparse.Namespace) -> dict:
    """The cohort job's parameters (:class:`engine.cohort.pipeline.CohortSpec` fields) from the command line."""
    def absolute(p):
        return str(Path(p).expanduser().resolve()) if p else None

    return {
        "slide_dir": absolute(args.slide_dir), "clinical": absolute(args.clinical), "patient_pattern": args.patient_pattern,
        "mapping_table": absolute(args.slide_map), "slide_column": args.slide_column, "patient_column": args.patient_column,
        "clinical_id": args.clinical_id, "model_id": args.model, "feature_model_id": args.feature_model, "models_dir": absolute(args.models_dir),
        "level": args.level, "tile_px": args.tile_px, "stride_fraction": args.stride, "min_tissue": args.min_tissue,
        "use_mpp": not args.ignore_mpp, "batch_size": args.batch_size, "chunk_tiles": args.chunk_tiles, "clusters": args.clusters,
        "discovery": args.discovery, "seed": args.seed, "aggregate": args.aggregate, "workers": args.workers,
        "num_cpus": args.num_cpus, "num_gpus": args.num_gpus, "pin": args.pin,
    }


def _printer(quiet: bool):
    """The pipeline's ``progress(done, total, message, **extra)`` on the console (tiles, then the status message)."""
    console = ConsoleProgress(quiet=quiet)

    def progress(done, total, message="", **_):
        if total:
            console.progress(done, total)
        elif message:
            console.status(message)
    return progress


def _cmd_cohort(args: argparse.Namespace) -> int:
    from engine.errors import InvalidInputError

    params = {k: v for k, v in params_from_args(args).items() if v is not None}
    out = Path(args.out).expanduser().resolve()
    backend = args.backend or get_settings().runner
    if backend == "local":
        from engine.cohort.job import make_executor
        from engine.cohort.pipeline import CohortSpec, run_cohort

        spec = CohortSpec.from_params(params)
        manifest = run_cohort(spec, out, executor=make_executor(spec, "local"), progress=_printer(args.quiet))
        messages, summary = manifest["messages"], manifest
    elif backend == "ray":
        from engine.ray_runner import RayRunner

        runner = RayRunner(args.ray_address)
        job_id = runner.submit("cohort", dict(params, out_dir=str(out)))
        if not args.quiet:
            print(f"submitted {job_id} to the Ray cluster", file=sys.stderr)
        show = _printer(args.quiet)
        try:
            while (rec := runner.get(job_id)).active:
                p = rec.progress or {}
                show(p.get("done", 0), p.get("total", 0), p.get("message", rec.state))
                time.sleep(1.0)
        except KeyboardInterrupt:
            runner.cancel(job_id)
            print(f"\ncancelling {job_id}", file=sys.stderr)
            runner.wait(job_id, timeout=30)
            raise
        if rec.state != "succeeded":
            raise InvalidInputError(f"The cohort job {job_id} {rec.state}" + (f": {rec.error}" if rec.error else "."),
                                    f"python -m engine jobs show {job_id} (with HISTODASH_RUNNER=ray) shows its log.")
        messages, summary = rec.result.get("messages", []), rec.result
    else:  # pragma: no cover - argparse restricts choices
        raise InvalidInputError(f"Unknown backend '{backend}'.")
    if not args.quiet:
        print(f"\n{summary['n_patients']} patients from {summary['n_slides']} slides, {summary['n_tiles']} tissue tiles "
              f"({summary['n_scored_now']} scored now, the rest from the store); wrote {out}/patients.csv", file=sys.stderr)
        for m in messages:
            print(f"note: {m}", file=sys.stderr)
    return 0


def add_cohort_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cohort", help="score a folder of slides into a patient table (slide scores + phenotype cluster proportions + clinical columns)")
    p.add_argument("slide_dir", metavar="SLIDE_DIR", help="folder of slides (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (patients.csv, slides.csv, clusterer/, manifest.json, …)")
    p.add_argument("--clinical", default=None, help="clinical table (CSV/TSV/XLSX: patient id, time, event, covariates)")
    p.add_argument("--clinical-id", default=None, help="its patient-id column (default: patient_id, patient, case_id, … or the first)")
    p.add_argument("--patient-pattern", default=None, help="regular expression on the slide file name; its first group is the patient id")
    p.add_argument("--slide-map", default=None, help="table mapping slides to patients (default: the clinical table, with --slide-column)")
    p.add_argument("--slide-column", default=None, help="column of slide names (path, file name or stem) in the mapping table")
    p.add_argument("--patient-column", default=None, help="column of patient ids in the mapping table")
    p.add_argument("--clusters", type=int, default=DEFAULT_K, help=f"phenotype clusters K (default {DEFAULT_K}; 0 = none)")
    p.add_argument("--discovery", type=float, default=0.5, help="share of patients whose tiles fit the clusters (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aggregate", choices=list(AGGREGATIONS), default="mean", help="several slides per patient: mean of slides or tile-weighted")
    add_model_arguments(p)
    p.add_argument("--feature-model", default=None, help="model whose penultimate layer gives the tile features (default: --model)")
    p.add_argument("--level", type=int, default=None, help="pyramid level to tile when µm/px are unknown (default 0)")
    p.add_argument("--tile-px", type=int, default=None, help="tile side at --level (default: the model's input size)")
    p.add_argument("--stride", type=float, default=1.0, help="stride as a fraction of the tile")
    p.add_argument("--min-tissue", type=float, default=DEFAULT_MIN_TISSUE)
    p.add_argument("--ignore-mpp", action="store_true", help="tile by --level even when µm/px are known")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunk-tiles", type=int, default=256, help="tiles per unit of work sent to a worker")
    p.add_argument("--backend", choices=["local", "ray"], default=None, help="local (this process) or ray (a job on the cluster); default $HISTODASH_RUNNER or local")
    p.add_argument("--ray-address", default=None, help="the cluster's Jobs address, e.g. http://head:8265 (default $HISTODASH_RAY_ADDRESS)")
    p.add_argument("--workers", type=int, default=None, help="Ray: tile workers (default: one per free CPU of the workers)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="Ray: CPUs per tile worker")
    p.add_argument("--num-gpus", type=float, default=0.0, help="Ray: GPUs per tile worker (GPU nodes)")
    p.add_argument("--pin", default=None, help="Ray: a custom node resource the workers must run on")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_cohort)
