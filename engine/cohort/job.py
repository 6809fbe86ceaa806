"""Job kind ``cohort`` (``engine.jobs.JOB_KINDS``): a cohort run as a background job, on either runner.

Under the embedded runner the job process scores the chunks itself (holding one of the global inference
slots); under :class:`engine.ray_runner.RayRunner` this function runs in the job's driver on the head
(``runs_on_driver``) and fans the chunks out over the cluster's actors. ``params`` are
:class:`engine.cohort.pipeline.CohortSpec` fields plus ``out_dir`` (default: the job's work folder).
"""

from __future__ import annotations

from pathlib import Path

from engine.cohort.pipeline import CohortSpec, run_cohort
from engine.cohort.worker import ModelSpec
from engine.limits import inference_slot, wait_message


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
