"""``python -m engine predict PATH…``: predict tiles (files or folders) with a registered model, CSV out."""

from __future__ import annotations

import argparse
import sys

from engine.cli.common import ConsoleProgress, add_model_arguments, number
from engine.errors import InvalidInputError
from engine.exports import safe_csv
from engine.imageio import read_image
from engine.limits import inference_slot, wait_message
from engine.predict import TilePredictor, collect_tile_paths
from engine.registry import Registry


def _cmd_predict(args: argparse.Namespace) -> int:
    paths = collect_tile_paths(args.paths)
    if not paths:
        raise InvalidInputError("No tiles found in the given paths.", "Give JPEG/PNG/TIFF files or folders that contain them.")
    normalizer = args.normalization or "card"  # the model card's normalisation unless the user asks for another
    if args.normalize or args.reference:
        from engine.stain import get_normalizer

        reference = read_image(args.reference) if args.reference else None
        normalizer = get_normalizer(args.method, reference)
    predictor = TilePredictor.from_registry(
        args.model, registry=Registry(args.models_dir) if args.models_dir else None, normalizer=normalizer,
        cache=False if args.no_cache else None, batch_size=args.batch_size,
    )

    if predictor.normalization_warning:  # said even with --quiet: the scores may be wrong
        print(f"warning: {predictor.normalization_warning}", file=sys.stderr)
    console = ConsoleProgress(quiet=args.quiet, always_status=True)
    with inference_slot(on_wait=lambda place: console.status(wait_message(place))):  # one global limit (HISTODASH_MAX_CONCURRENT_INFERENCE)
        result = predictor.predict_paths(paths, progress=console.progress)
    frame = result.to_frame()
    safe_csv(frame, args.out or sys.stdout)  # tile names are user text: escaped for spreadsheets
    if not args.quiet:
        rate = len(paths) / result.seconds if result.seconds else float("inf")
        print(
            f"\n{predictor.card.id}: {len(paths)} tiles in {result.seconds:.1f} s ({rate:.1f}/s), "
            f"{result.n_cached} from cache, {result.n_errors} unreadable" + (f"; wrote {args.out}" if args.out else ""),
            file=sys.stderr,
        )
    if result.domain_warning:
        print(f"warning: {result.domain_warning}", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict tiles (files or folders) with a registered model")
    p.add_argument("paths", nargs="+", metavar="PATH", help="tile files or folders of tiles")
    add_model_arguments(p)
    p.add_argument("--normalization", default=None, choices=["card", "none", "macenko", "vahadane"],
                   help="stain normalisation (default: what the model card prescribes, with its bundled reference; "
                        "anything else is announced on stderr)")
    p.add_argument("--normalize", action="store_true", help="stain-normalise with --method (and --reference) instead of the card's setting")
    p.add_argument("--method", default="macenko", choices=["macenko", "vahadane"], help="stain normalisation method for --normalize")
    p.add_argument("--reference", default=None, help="reference tile for --normalize (default: published Macenko target)")
    p.add_argument("--out", default=None, help="CSV file to write (default: stdout)")
    p.add_argument("--batch-size", type=number(int, low=1, high=4096, what="batch size"), default=32)
    p.add_argument("--no-cache", action="store_true", help="do not read or write the inference cache")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_predict)
