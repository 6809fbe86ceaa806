"""Job kind ``cohort`` (``engine.jobs.JOB_KINDS``): a cohort run as a background job, on either runner.

Under the embedded runner the job process scores the chunks itself (holding one of the global inference
slots); under :class:`engine.ray_runner.RayRunner` this function runs in the job's driver on the head
(``runs_on_driver``) and fans the chunks out over the cluster's actors. ``params`` are
:class:`engine.cohort.pipeline.CohortSpec` fields plus ``out_dir`` (default: the job's work folder).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from engine.cohort.pipeline import CohortSpec, run_cohort
from engine.cohort.worker import ModelSpec
from engine.config import get_settings
from engine.errors import InvalidInputError
from engine.limits import inference_slot, wait_message

STAGING = ".histodash-uploads"  # hidden folder of the slide library (the library's listing skips it)


def stage_uploads(paths: list[str | Path], library_root: str | Path | None) -> list[str]:
    """Uploaded slides copied into the slide library (``<library>/.histodash-uploads/<sha12>_<name>``), the one folder
    every Ray node mounts; a file already there is not copied again. Returns the copies' paths."""
    if library_root is None:
        raise InvalidInputError("Uploaded slides can go to the cluster only through the slide library, and none is configured.",
                                "Set HISTODASH_SLIDES_DIR to the folder every node mounts, or put the slides there.")
    folder = Path(library_root) / STAGING
    out = []
    for p in map(Path, paths):
        digest = hashlib.sha256(f"{p.name}|{p.stat().st_size}|{p.stat().st_mtime_ns}".encode()).hexdigest()[:12]
        target = folder / f"{digest}_{p.name}"
        try:
            if not target.exists():
                folder.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.part")
                shutil.copyfile(p, tmp)
                tmp.replace(target)
        except OSError as exc:
            raise InvalidInputError(f"'{p.name}' could not be copied into the slide library for the cluster ({exc.strerror or exc}).",
                                    "The library is read-only here: copy the slides into it directly.") from exc
        out.append(str(target))
    return out


def submit_cohort(runner, params: dict, *, uploads: list[str | Path] = (), owner: str | None = None) -> str:
    """Submit a cohort job (the page's one call): this session's uploaded slides join the cohort, copied into the
    slide library first when the job runs on a Ray cluster."""
    params = dict(params)
    if uploads:
        on_cluster = getattr(runner, "backend", "local") == "ray"
        staged = stage_uploads(uploads, get_settings().slides_dir) if on_cluster else [str(p) for p in uploads]
        params["slides"] = [*params.get("slides", []), *staged]
    CohortSpec.from_params(params)  # a bad setting is a message now, not a failed job later
    return runner.submit("cohort", params, owner=owner)


def make_executor(spec: CohortSpec, backend: str):
    """The executor of ``backend`` (``local`` or ``ray``) for ``spec``'s models."""
    from engine.registry import Registry

    registry = Registry(spec.models_dir) if spec.models_dir else Registry()
    card = registry.get(spec.model_id)
    fcard = registry.get(spec.feature_model_id) if spec.feature_model_id else card
    if backend == "ray":
        from engine.cohort.ray_executor import RayExecutor

        return RayExecutor(ModelSpec.from_card(card), ModelSpec.from_card(fcard), batch_size=spec.batch_size, workers=spec.workers,
                           num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, pin=spec.pin, start_together_s=spec.start_together_s)
    from engine.cohort.executor import LocalExecutor

    return LocalExecutor(ModelSpec.from_card(card), ModelSpec.from_card(fcard), batch_size=spec.batch_size)


def run_job(params: dict, ctx) -> dict:
    spec = CohortSpec.from_params(params)
    out_dir = Path(params.get("out_dir") or (Path(ctx.workdir) / "cohort"))
    backend = "ray" if getattr(ctx, "backend", "local") == "ray" else "local"
    ctx.log(f"cohort of {len(spec.slides) + (1 if spec.slide_dir else 0)} source(s) on the {backend} backend, {spec.clusters} clusters")

    def progress(done, total, message="", **extra):
        ctx.progress(done, total, message, **extra)

    executor = make_executor(spec, backend)
    if backend == "ray":
        manifest = run_cohort(spec, out_dir, executor=executor, progress=progress, cancelled=ctx.cancelled, log=ctx.log)
    else:
        def on_wait(place: int) -> None:
            ctx.raise_if_cancelled()
            progress(0, 0, wait_message(place))

        with inference_slot(on_wait=on_wait):  # one global limit on heavy inference (HISTODASH_MAX_CONCURRENT_INFERENCE)
            manifest = run_cohort(spec, out_dir, executor=executor, progress=progress, cancelled=ctx.cancelled, log=ctx.log)
    for message in manifest["messages"]:
        ctx.log(f"note: {message}")
    ctx.metric(n_tiles=manifest["n_tiles"], n_scored_now=manifest["n_scored_now"], score_s=manifest["timings"].get("score_s", 0.0))
    return {"out_dir": str(out_dir), "patients_csv": str(out_dir / "patients.csv"), "n_slides": manifest["n_slides"],
            "n_patients": manifest["n_patients"], "n_tiles": manifest["n_tiles"], "n_scored_now": manifest["n_scored_now"],
            "clusters": spec.clusters, "messages": manifest["messages"], "backend": backend,
            "requeued_chunks": manifest["executor"].get("requeued_chunks", 0), "lost_nodes": manifest["executor"].get("lost_nodes", [])}


run_job.runs_on_driver = True  # RayRunner: fans out itself (actors), instead of running as one Ray task


def library_folders(root: str | Path, limit: int = 500) -> list[str]:
    """The slide library's folders (``""`` = the root), sorted, at most ``limit``: what a cohort can be made of."""
    from engine.slides import SlideLibrary

    library, out, stack = SlideLibrary(Path(root)), [], [""]
    while stack and len(out) < limit:
        rel = stack.pop()
        out.append(rel)
        stack.extend(sorted((e.relpath for e in library.list(rel) if e.is_dir), reverse=True))
    return sorted(out)
