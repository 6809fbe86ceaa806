"""``python -m engine gradcam IMAGE --out overlay.png``: a saliency map of one tile (or ``--list-layers``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from engine.cli.common import add_model_arguments, number
from engine.errors import InvalidInputError
from engine.gradcam import COLORMAPS, METHODS, Explainer
from engine.imageio import read_image
from engine.registry import Registry


def _cmd_gradcam(args: argparse.Namespace) -> int:
    registry = Registry(args.models_dir) if args.models_dir else Registry()
    explainer = Explainer.from_card(registry.get(args.model), cache=False if args.no_cache else None, normalization=args.normalization)
    if explainer.normalization_warning:
        print(f"warning: {explainer.normalization_warning}", file=sys.stderr)
    if args.list_layers:
        layers = explainer.conv_layers()
        if not layers:
            explainer.default_layer()  # raises the clear error
        default = explainer.default_layer().path
        for c in layers:
            print(c.label() + ("  [default]" if c.path == default else ""))
        return 0
    if not args.image:
        raise InvalidInputError("No image given.", "Usage: python -m engine gradcam IMAGE --out overlay.png")
    if not args.out:
        raise InvalidInputError("No output file given.", "Add --out overlay.png.")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise InvalidInputError(f"'{out.name}' must be a .png file.")
    rgb = read_image(args.image)
    result = explainer.explain(rgb, method=args.method, layer=args.layer, target=args.target, name=Path(args.image).name)
    out.write_bytes(result.overlay_png(rgb, cmap=args.cmap, opacity=args.opacity))
    if args.array:
        np.save(args.array, result.map)
    if result.in_domain is False:
        print(f"warning: '{Path(args.image).name}' is out of domain for {explainer.model_id}: it looks unlike the tissue the model was trained on, "
              "so the map explains a score that may mean nothing here.", file=sys.stderr)
    if not args.quiet:
        extra = f"; map array {args.array}" if args.array else ""
        print(f"{explainer.model_id}: {result.summary()}; wrote {out}{extra}" + (f"\nnote: {result.note}" if result.note else ""), file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gradcam", help="saliency map (Grad-CAM, Grad-CAM++, integrated gradients) of one tile")
    p.add_argument("image", nargs="?", metavar="IMAGE", help="tile file (JPEG, PNG, TIFF)")
    add_model_arguments(p)
    p.add_argument("--method", default="gradcam", choices=METHODS)
    p.add_argument("--layer", default=None, help="feature map path or name (default: the last convolutional map; see --list-layers)")
    p.add_argument("--normalization", default="card", choices=["card", "none", "macenko", "vahadane"],
                   help="stain normalisation before the model (default: what the model card prescribes; anything else is announced on stderr)")
    p.add_argument("--class", dest="target", default=None, help="class to explain: a class name, 'score' (positive classes summed) or 'predicted' (default)")
    p.add_argument("--out", default=None, help="overlay PNG to write")
    p.add_argument("--array", default=None, help="also save the raw map (H×W float32 in [0, 1]) as .npy")
    p.add_argument("--cmap", default="viridis", choices=COLORMAPS)
    p.add_argument("--opacity", type=number(low=0, high=1, what="overlay opacity"), default=0.45)
    p.add_argument("--list-layers", action="store_true", help="list the model's selectable layers and exit")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the result cache")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_gradcam)
