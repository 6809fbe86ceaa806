"""``python -m engine heatmap SLIDE``: score a whole slide tile by tile and write the five result files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.cli.common import ConsoleProgress, add_model_arguments, number
from engine.heatmap import compute_heatmap
from engine.tissue import DEFAULT_MIN_TISSUE


def add_tiling_arguments(p: argparse.ArgumentParser) -> None:
    """The model, tiling and run options shared by ``heatmap`` and ``cohort-scores``."""
    add_model_arguments(p)
    p.add_argument("--level", type=number(int, low=0, what="pyramid level"), default=None, help="pyramid level to tile when the µm/px is unknown (default 0)")
    p.add_argument("--tile-px", type=number(int, low=8, high=8192, what="tile side in px"), default=None, help="tile side at --level (default: the model's input size)")
    p.add_argument("--stride", type=number(low=0, high=4, low_open=True, what="stride, a fraction of the tile"), default=1.0, help="stride as a fraction of the tile (1 = no overlap)")
    p.add_argument("--min-tissue", type=number(low=0, high=1, what="tissue fraction"), default=DEFAULT_MIN_TISSUE, help="minimum tissue fraction of a scored tile")
    p.add_argument("--mpp", type=number(low=0.01, high=100, what="µm/px"), default=None, help="level-0 µm/px when the slide does not say")
    p.add_argument("--ignore-mpp", action="store_true", help="tile by --level even when µm/px are known")
    p.add_argument("--batch-size", type=number(int, low=1, high=4096, what="batch size"), default=32)
    p.add_argument("--readers", type=number(int, low=1, high=64, what="reader threads"), default=1, help="tile reader threads")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the tile cache")
    p.add_argument("-q", "--quiet", action="store_true")


def tiling_kwargs(args: argparse.Namespace) -> dict:
    """:func:`engine.heatmap.compute_heatmap` keyword arguments from :func:`add_tiling_arguments` options."""
    return {
        "model_id": args.model, "models_dir": args.models_dir, "level": args.level, "tile_px": args.tile_px,
        "stride_fraction": args.stride, "min_tissue": args.min_tissue, "user_mpp": args.mpp, "use_mpp": not args.ignore_mpp,
        "batch_size": args.batch_size, "cache": not args.no_cache, "readers": args.readers,
    }


def _cmd_heatmap(args: argparse.Namespace) -> int:
    out = Path(args.out or (Path(args.slide).stem + "_heatmap"))
    console = ConsoleProgress(quiet=args.quiet)
    result, thumb = compute_heatmap(args.slide, progress=console.progress, status=console.status, **tiling_kwargs(args))
    result.save(out, thumbnail=thumb)
    s = result.summary()
    for warning in (result.params.get("normalization_warning"), s.get("out_of_domain_warning")):  # said even with --quiet
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    if not args.quiet:
        print(
            f"\n{result.slide_name}: {result.n_tiles} tissue tiles of {result.grid.n_tiles} ({int(result.cached.sum())} cached) "
            f"in {result.timings['wall_s']:.1f} s; mean score {s['mean_score'] if s['mean_score'] is None else round(s['mean_score'], 4)}; wrote {out}/",
            file=sys.stderr,
        )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("heatmap", help="score a whole slide tile by tile and write tiles.csv, heatmap.png, tiles.geojson, summary.json")
    p.add_argument("slide", metavar="SLIDE", help="slide file (any OpenSlide format, or a plain image)")
    p.add_argument("--out", default=None, help="output folder (default: <slide>_heatmap)")
    add_tiling_arguments(p)
    p.set_defaults(func=_cmd_heatmap)
