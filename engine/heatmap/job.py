"""One heatmap from a slide path: :func:`compute_heatmap`, and the job entry point :func:`run_job`.

:func:`compute_heatmap` loads the model (on a thread, while the slide is opened and its tissue found),
tiles the slide (:class:`~engine.heatmap.grid.TileGrid`), waits for a global inference slot
(:mod:`engine.limits`; the place in line goes to ``status``) and runs :class:`~engine.heatmap.inference.HeatmapRun`.
:func:`run_job` is the ``heatmap`` job kind (:data:`engine.jobs.JOB_KINDS`): it writes the five result
files and a thumbnail into the job's folder. A slide uploaded into a browser session's workspace is kept with
the job (:func:`keep_slide`: a hard link, else a copy), so the finished heatmap and its viewer still open for
their owner after the workspace is swept.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from engine.cache import make_key
from engine.config import get_settings
from engine.errors import Cancelled, InvalidInputError
from engine.heatmap.grid import TileGrid
from engine.heatmap.inference import HeatmapRun
from engine.heatmap.result import HeatmapResult, frozen
from engine.limits import inference_slot, wait_message
from engine.privacy import loggable_name
from engine.progress import Progress, Status, say
from engine.render import png_bytes
from engine.slides import Slide, open_slide
from engine.tissue import DEFAULT_MIN_TISSUE, TissueMask, TissueMasker

log = logging.getLogger(__name__)
KEPT_DIR = "slide"  # under the job's work folder: the job's own link to (or copy of) an uploaded slide


def keep_slide(slide_path: str | Path, folder: Path) -> Path | None:
    """Keep a session's uploaded slide (a file under ``settings.work_dir``) in ``folder``: a hard link (no space,
    instant) where the file system allows, else a copy. Returns the kept path; None when the slide is not an
    upload (a library slide stays where it is) or it cannot be kept (full disk: logged, the job goes on)."""
    src = Path(slide_path)
    try:
        src.resolve().relative_to(get_settings().work_dir.resolve())
    except (ValueError, OSError, RuntimeError):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / src.name
    with contextlib.suppress(FileNotFoundError):
        dst.unlink()
    try:
        try:
            os.link(src, dst)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise
            shutil.copy2(src, dst)
    except OSError as exc:
        with contextlib.suppress(OSError):
            dst.unlink()
        log.warning("the uploaded slide could not be kept with its job (%s): its heatmap opens only while the upload exists",
                    errno.errorcode.get(exc.errno or 0, type(exc).__name__))
        return None
    return dst


def thumbnail_and_mask(slide: Slide, masker: TissueMasker, cache=None) -> tuple[np.ndarray, TissueMask]:
    """The slide's thumbnail and tissue mask, cached with the tiles (a repeated run reads no pixels)."""
    key = make_key("heatmap-thumb/v2", slide.content_hash(), masker.cache_key())
    hit = cache.get(key) if cache is not None else None
    if hit is not None:
        return hit["thumb"], TissueMask(hit["mask"], hit["sx"], hit["sy"], hit["threshold"])
    thumb, _ = slide.get_thumbnail(masker.max_side)
    mask = masker.thumbnail_mask(thumb, slide.dimensions[0] / thumb.shape[1], slide.dimensions[1] / thumb.shape[0])
    if cache is not None:
        cache.set(key, {"thumb": thumb, "mask": mask.mask, "sx": mask.scale_x, "sy": mask.scale_y, "threshold": mask.threshold})
    return thumb, mask


def compute_heatmap(
    slide_path: str | Path, *, model_id: str | None = None, models_dir: str | Path | None = None, level: int | None = None,
    tile_px: int | None = None, stride_fraction: float = 1.0, min_tissue: float = DEFAULT_MIN_TISSUE, batch_size: int = 32,
    user_mpp: float | None = None, use_mpp: bool = True, cache: bool = True, readers: int = 1,
    progress: Progress | None = None, status: Status | None = None, cancelled: Callable[[], bool] | None = None, predictor=None,
) -> tuple[HeatmapResult, np.ndarray]:
    """Open a slide, tile it, score it; returns ``(result, thumbnail)``.

    ``progress(done, total)`` counts tissue tiles; ``status(message)`` carries the place in the
    inference queue and what the run is doing; ``cancelled()`` turning true raises
    :class:`engine.errors.Cancelled` (finished tiles stay cached).
    """
    from engine.predict import TilePredictor
    from engine.registry import Registry

    t_start = time.perf_counter()
    if predictor is None:
        registry = Registry(models_dir) if models_dir else Registry()
        predictor = TilePredictor(registry.get(model_id), cache=None if cache else False, batch_size=batch_size)
    # load the model (seconds for a large one) while the slide is opened and its tissue detected
    load_error: list[BaseException] = []

    def load():
        try:
            predictor.runner  # noqa: B018 - the property loads the model and its detector (on this thread)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
            load_error.append(exc)

    loader = threading.Thread(target=load, name="heatmap-model-loader", daemon=True)
    loader.start()
    with open_slide(slide_path, user_mpp=user_mpp) as slide:
        grid = TileGrid.for_slide(slide, predictor.card, level=level, tile_px=tile_px, stride_fraction=stride_fraction, use_mpp=use_mpp)
        masker = TissueMasker()
        thumb, mask = thumbnail_and_mask(slide, masker, predictor.cache)
        run = HeatmapRun(predictor, masker=masker, min_tissue=min_tissue, readers=readers)
        loader.join()
        if load_error:
            raise load_error[0]
        if not run.select_tiles(slide, grid, mask)[0].size:
            raise InvalidInputError(
                f"No tissue found in '{Path(slide_path).name}': none of its {grid.n_tiles} tiles has {min_tissue:.0%} tissue or more.",
                "Check the tissue mask preview; lower the minimum tissue fraction if the tissue is very pale.",
                path=str(slide_path),
            )

        def on_wait(place: int) -> None:
            if cancelled is not None and cancelled():
                raise Cancelled("cancelled while waiting for an inference slot")
            say(status, wait_message(place))

        with inference_slot(on_wait=on_wait):  # one global limit on heavy inference (HISTODASH_MAX_CONCURRENT_INFERENCE)
            result = run.run(slide, grid, mask=mask, progress=progress, status=status, cancelled=cancelled)
        params = frozen(result.params, level=level, tile_px=tile_px, stride_fraction=stride_fraction, user_mpp=user_mpp, use_mpp=use_mpp,
                        mpp_source=slide.info.mpp_source)
    # wall time: open + thumbnail/mask + tiles (the model load included)
    result = replace(result, params=params, timings=frozen(result.timings, wall_s=time.perf_counter() - t_start))
    return result, thumb


def run_job(params: dict, ctx) -> dict:
    """Job entry point (``engine.jobs``): compute a heatmap and write its exports into ``ctx.workdir``.

    ``params``: ``slide_path`` (required), ``model_id``, ``models_dir``, ``level``, ``tile_px``,
    ``stride_fraction``, ``min_tissue``, ``batch_size``, ``user_mpp``, ``use_mpp``, ``readers``, ``out_dir``.
    """
    keys = ("model_id", "models_dir", "level", "tile_px", "stride_fraction", "min_tissue", "batch_size", "user_mpp", "use_mpp", "readers")
    kwargs = {k: params[k] for k in keys if params.get(k) is not None}
    slide_path = params.get("slide_path")
    if not slide_path:
        raise InvalidInputError("The heatmap job needs a 'slide_path'.")
    out_dir = Path(params.get("out_dir") or ctx.workdir)
    ctx.log(f"heatmap of {loggable_name(Path(slide_path).name)} with model {kwargs.get('model_id') or '(default)'}")
    kept = keep_slide(slide_path, Path(ctx.workdir) / KEPT_DIR)
    if kept is not None:
        ctx.log("the uploaded slide is kept with the job (its heatmap opens after the session's workspace is swept)")
        slide_path = kept
    try:
        result, thumb = compute_heatmap(slide_path, progress=ctx.progress, status=ctx.status, cancelled=ctx.cancelled, **kwargs)
    except BaseException as exc:
        if kept is not None:  # no heatmap to open later: the job keeps no copy of the upload
            with contextlib.suppress(OSError):
                kept.unlink()
        if isinstance(exc, Cancelled):
            ctx.log("cancelled; finished tiles are cached and a re-run resumes from them")
        raise
    paths = result.save(out_dir, thumbnail=thumb)
    (out_dir / "thumbnail.png").write_bytes(png_bytes(thumb))
    summary = result.summary()
    ctx.metric(**{k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    ctx.log(f"{result.n_tiles} tiles ({int(result.cached.sum())} from cache) in {result.timings['wall_s']:.1f} s")
    return {"out_dir": str(out_dir), "files": {k: str(v) for k, v in paths.items()}, "summary": summary, "n_tiles": result.n_tiles,
            "slide_path": str(slide_path), "slide_kept": kept is not None,
            "n_cached": int(result.cached.sum()), "seconds": result.timings["wall_s"]}
