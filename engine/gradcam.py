"""Saliency maps for tile models: Grad-CAM, Grad-CAM++ and integrated gradients.

>>> from engine.gradcam import Explainer
>>> explainer = Explainer.from_registry()                 # the default model
>>> [layer.path for layer in explainer.conv_layers()][-3:]  # selectable feature maps
>>> result = explainer.explain(rgb)                        # Grad-CAM, last conv map, predicted class
>>> png = result.overlay_png(rgb, cmap="viridis", opacity=0.45)

Methods (REFERENCE.md §5)
-------------------------
* ``gradcam`` (Selvaraju et al., 2017): channel weights = spatial mean of the target's gradient
  with respect to a convolutional feature map; map = ReLU(Σ_k w_k A_k).
* ``gradcam++`` (Chattopadhay et al., 2018): pixel-wise weights α = g² / (2g² + Σ A·g³) of the
  exponentiated target, channel weights Σ α·ReLU(g).
* ``integrated-gradients`` (Sundararajan et al., 2017): (x − x₀)·mean gradient along the straight
  path from a baseline x₀ (black by default, ``white`` = glass) to the tile, midpoint Riemann
  sum of ``ig_steps`` steps; map = Σ_channels |attribution|, scaled by its 99.5th percentile.

Every map is upsampled (bilinear) to the tile's own H×W and lies in [0, 1]: Grad-CAM maps are
divided by their maximum (a map with no positive evidence is all zeros and says so in ``note``).

Layers
------
The convolutional feature maps are found by walking the model graph, recursing into backbones
nested as one layer (``resnet50``, ``inception_v3``, ``efficientnetb0``): every layer with a 4-D
output after the first convolution, except padding/dropout/reshaping layers and the nested models
themselves. Each is named by its path, e.g. ``resnet50/conv5_block3_out``; a unique leaf name works
too. The default is the last of them that is not a pooling layer — the last convolutional feature
map before the classifier head.

In an **ensemble** (:func:`engine.architectures.merge_members`: members ``m1_…``, ``m2_…`` side by
side, logits averaged) a layer stands for that layer in every member: the members' feature maps at
that depth are taken together as one map with all their channels (Grad-CAM's Σ_k w_k A_k runs over
every member's channels, with the gradient of the ensemble's target), so the map explains the
ensemble's decision, not one member's.

Target
------
``target=None`` explains the **predicted class** (arg-max of the class probabilities, a single
sigmoid unit read as ``[1-p, p]``). ``target="score"`` explains the model card's score, the
positive classes' probabilities summed (e.g. p(aca) + p(scc) for the lung model); any class name
explains that class. Gradients are taken of the target's **log-odds**, computed from the
pre-activation logits when the model ends in a softmax/sigmoid ``Dense`` or ``Activation``
(log Σ_T e^z − log Σ_¬T e^z), so a confident prediction (p ≈ 1) does not saturate the gradient;
otherwise from the probabilities. ``result.score`` is the target's probability.

Nested backbones
----------------
``keras.Model(model.inputs, [inner_layer.output, model.output])`` fails for a layer inside a
nested backbone (Keras 3: "not connected to inputs"). The model is instead split at the backbone:
the part before it, a feature model on the backbone's own input returning (target map, backbone
output), and the head after it, all run inside one ``GradientTape`` (see ../shared/NOTES.md).

Keras is imported lazily (:mod:`engine.runtime`): importing this module is cheap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import render
from engine.cache import ResultCache, make_key, shared_cache
from engine.errors import HistoDashError, IncompatibleModelError, InvalidInputError
from engine.imageio import check_tile_array, pixel_hash, read_image, resize_tile
from engine.predict import probabilities_from_output
from engine.registry import ModelCard, Registry, load_model_for_card

log = logging.getLogger(__name__)

METHODS = ("gradcam", "gradcam++", "integrated-gradients")
METHOD_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "integrated-gradients": "Integrated gradients"}
COLORMAPS = ("viridis", "magma", "inferno", "plasma", "cividis", "turbo", "jet")
PREDICTED = "predicted"
SCORE = "score"
CACHE_VERSION = "gradcam/v1"

# Layers with a 4-D output that are never offered as a target: they move or drop pixels but
# compute no features.
_SKIP_KINDS = {
    "InputLayer", "ZeroPadding2D", "Cropping2D", "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
    "Reshape", "Permute", "Rescaling", "Normalization", "Resizing", "CenterCrop", "ActivityRegularization",
}
_CONV_KINDS = {"Conv2D", "SeparableConv2D", "DepthwiseConv2D", "Conv2DTranspose", "Conv3D"}
_POOL_KINDS = {"MaxPooling2D", "AveragePooling2D", "UpSampling2D"}


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ConvLayer:
    """A selectable feature map: ``path`` (``"resnet50/conv5_block3_out"``), layer kind and output shape (h, w, channels)."""

    path: str
    kind: str
    shape: tuple

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def label(self) -> str:
        h, w, c = (s if s is not None else "?" for s in self.shape)
        return f"{self.path} ({self.kind}, {h}×{w}×{c})"


@dataclass(frozen=True, eq=False)
class SaliencyResult:
    """One saliency map of one tile.

    Attributes:
        map: ``(H, W) float32`` in [0, 1], the tile's own size (read-only array).
        score: probability of ``target_class`` (for ``"score"``: the positive classes summed).
        target_class: the explained class name, or ``"score"``.
        layer: the feature map's path (None for integrated gradients).
        method: one of :data:`METHODS`.
        model_id: the model's id.
        predicted_class: arg-max class of the model on this tile.
        probabilities: all class probabilities, in the card's class order.
        cached: whether the map came from the cache.
        note: a remark for the user (e.g. "no positive evidence"), or "".
        in_domain: whether the tile looks like the model's training tiles (None: the model has no detector).
        domain_score: the out-of-domain score (:mod:`engine.domain`), or None.
        uncertainty: MC-dropout s.d. of the score (:mod:`engine.forward`), or None.
        normalization_warning: set when the tile was normalised otherwise than the card prescribes.
    """

    map: np.ndarray
    score: float
    target_class: str
    layer: str | None
    method: str
    model_id: str = "model"
    predicted_class: str = ""
    probabilities: tuple[float, ...] = ()
    cached: bool = False
    note: str = ""
    seconds: float = 0.0
    in_domain: bool | None = None
    domain_score: float | None = None
    uncertainty: float | None = None
    normalization_warning: str | None = None

    @property
    def method_label(self) -> str:
        return METHOD_LABELS.get(self.method, self.method)

    def map_rgb(self, cmap: str = "viridis") -> np.ndarray:
        """The map coloured with ``cmap`` as ``(H, W, 3) uint8``."""
        return colorize(self.map, cmap)

    def overlay(self, rgb: np.ndarray, *, cmap: str = "viridis", opacity: float = 0.45) -> np.ndarray:
        """The coloured map blended over the tile ``rgb`` (same H×W) with ``opacity`` in [0, 1]."""
        return overlay(rgb, self.map, cmap=cmap, opacity=opacity)

    def overlay_png(self, rgb: np.ndarray, *, cmap: str = "viridis", opacity: float = 0.45) -> bytes:
        return render.png_bytes(self.overlay(rgb, cmap=cmap, opacity=opacity))

    def map_png(self, cmap: str = "viridis") -> bytes:
        return render.png_bytes(self.map_rgb(cmap))

    def summary(self) -> str:
        where = f" at {self.layer}" if self.layer else ""
        domain = "" if self.in_domain is None else ("; in domain" if self.in_domain else "; OUT OF DOMAIN: the tile looks unlike the training tiles")
        return f"{self.method_label}{where} for {self.target_class} (p = {self.score:.3f}; predicted {self.predicted_class}{domain})"


@dataclass(frozen=True, eq=False)
class Attribution:
    """Integrated-gradients attributions of one tile, before they become a map (:meth:`Explainer.integrated_gradients`).

    Attributes:
        values: ``(input_px, input_px, 3) float64``, signed, per input pixel and channel (read-only).
            Completeness: their sum is (up to the Riemann sum's error) the explained log-odds at the
            tile minus that at the baseline.
        target_class: the explained class name, or ``"score"``.
        probabilities: the model's class probabilities on the tile, in the card's class order.
        baseline: ``"black"`` or ``"white"``.
    """

    values: np.ndarray
    target_class: str
    probabilities: tuple[float, ...]
    baseline: str

    def saliency(self) -> tuple[np.ndarray, str]:
        """The map the pages show: Σ_channels |values| scaled by its 99.5th percentile, clipped to [0, 1]; and a note."""
        amount = np.abs(self.values).sum(axis=-1)
        top = float(np.percentile(amount, 99.5))
        if top <= 0 or not np.isfinite(top):
            return np.zeros_like(amount, dtype=np.float32), "The attributions are all zero."
        return np.clip(amount / top, 0.0, 1.0).astype(np.float32), ""


# ----------------------------------------------------------------------------- rendering


def colorize(saliency: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """A map in [0, 1] → ``(H, W, 3) uint8`` RGB through a colour map (:func:`engine.render.colorize`)."""
    return render.colorize(saliency, cmap)


def overlay(rgb: np.ndarray, saliency: np.ndarray, *, cmap: str = "viridis", opacity: float = 0.45) -> np.ndarray:
    """``(1 − opacity)·tile + opacity·colour(map)`` as ``uint8``; the map must have the tile's H×W."""
    if not 0.0 <= float(opacity) <= 1.0:
        raise InvalidInputError(f"Opacity must be between 0 and 1, not {opacity}.")
    rgb = np.asarray(rgb)
    if rgb.shape[:2] != np.shape(saliency):
        raise InvalidInputError(f"The map is {np.shape(saliency)} but the tile is {rgb.shape[:2]}: they must have the same size.")
    return render.blend(rgb, render.colorize(saliency, cmap), float(opacity))


def upsample(saliency: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``(height, width)`` (pixel-centre aligned), clipped to [0, 1]."""
    from PIL import Image

    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.shape != (height, width):
        saliency = np.asarray(Image.fromarray(saliency).resize((width, height), Image.BILINEAR), dtype=np.float32)
    return np.clip(saliency, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- input checks


def check_tile(rgb: np.ndarray, name: str = "tile") -> np.ndarray:
    """An ``(H, W, 3) uint8`` tile of a usable size, or :class:`InvalidInputError` saying what is wrong.

    The bounds are the tile bounds of :mod:`engine.imageio` (:func:`engine.imageio.check_tile_array`): an
    array handed in directly meets the same ones as a tile read from a file.
    """
    return check_tile_array(rgb, name)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise InvalidInputError(f"Unknown saliency method '{method}'.", f"Use one of: {', '.join(METHODS)}.")
    return method


# ----------------------------------------------------------------------------- graph walking


def _kind(layer) -> str:
    return type(layer).__name__


def _is_model(layer) -> bool:
    from engine.runtime import keras

    return isinstance(layer, keras().Model)


def _output_shape(layer):
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):  # called several times, or never built
        return None
    return tuple(shape)


def _walk(model, prefix: str, seen_conv: list[bool]) -> list[ConvLayer]:
    out: list[ConvLayer] = []
    for layer in model.layers:
        if _is_model(layer):
            out.extend(_walk(layer, f"{prefix}{layer.name}/", seen_conv))
            continue
        kind = _kind(layer)
        if kind in _CONV_KINDS:
            seen_conv[0] = True
        if not seen_conv[0] or kind in _SKIP_KINDS:
            continue
        shape = _output_shape(layer)
        if shape is None or len(shape) != 4:
            continue
        out.append(ConvLayer(f"{prefix}{layer.name}", kind, tuple(shape[1:])))
    return out


def find_conv_layers(model) -> list[ConvLayer]:
    """Every selectable convolutional feature map of ``model``, in graph order (see the module docstring)."""
    return _walk(model, "", [False])


def default_conv_layer(layers: Sequence[ConvLayer]) -> ConvLayer:
    """The last feature map that is not a pooling layer (the last if all are)."""
    for layer in reversed(layers):
        if layer.kind not in _POOL_KINDS:
            return layer
    return layers[-1]


def member_layers(model, name: str) -> list[str]:
    """``name`` and the same layer of every other ensemble member (``m2_block4b_relu`` → ``m1_…``, ``m2_…``); just ``[name]`` otherwise."""
    from engine.architectures import member_prefix

    prefixes = member_prefix(model)
    own = next((p for p in prefixes if name.startswith(p)), None)
    if own is None:
        return [name]
    rest = name[len(own):]
    others = [p + rest for p in prefixes]
    return others if all(_has_layer(model, n) for n in others) else [name]


def _has_layer(model, name: str) -> bool:
    try:
        model.get_layer(name)
    except ValueError:
        return False
    return True


def _weighted_map(a: np.ndarray, g: np.ndarray, plus: bool) -> np.ndarray:
    """Σ_k w_k A_k of one feature map ``a`` (h, w, K) with the target's gradient ``g``: Grad-CAM (plain) or Grad-CAM++ weights."""
    if plus:
        g2, g3 = g**2, g**3
        denom = 2.0 * g2 + a.sum(axis=(0, 1), keepdims=True) * g3
        alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=np.abs(denom) > 1e-30)
        weights = (alpha * np.maximum(g, 0.0)).sum(axis=(0, 1))  # (K,)
    else:
        weights = g.mean(axis=(0, 1))  # (K,)
    return (a * weights).sum(axis=-1)


def _single_call_node(layer, model_name: str):
    nodes = getattr(layer, "_inbound_nodes", [])
    if len(nodes) != 1:
        raise IncompatibleModelError(
            f"The nested model '{layer.name}' inside '{model_name}' is used {len(nodes)} times, so its feature maps are ambiguous.",
            "Grad-CAM needs each backbone called exactly once; use integrated gradients instead.",
        )
    return nodes[0]


def _logit_head(model):
    """``(tensor, kind, layer)`` for the pre-activation of a final softmax/sigmoid, or None.

    ``kind`` is ``"dense"`` (tensor = the Dense layer's input; logits = tensor·W + b) or
    ``"activation"`` (tensor = the logits themselves).
    """
    from engine.runtime import keras

    k = keras()
    last = model.layers[-1] if model.layers else None
    if last is None or _is_model(last):
        return None
    act = getattr(last, "activation", None)
    act_name = getattr(act, "__name__", "")
    if act_name not in ("softmax", "sigmoid"):
        return None
    nodes = getattr(last, "_inbound_nodes", [])
    if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
        return None
    if isinstance(last, k.layers.Dense) and not getattr(last, "lora_enabled", False):
        return nodes[0].input_tensors[0], "dense", last, act_name
    if isinstance(last, k.layers.Activation):
        return nodes[0].input_tensors[0], "activation", last, act_name
    return None


class _TapModel:
    """``x → (feature map, head tensor, probabilities)`` for one target layer path (None: no feature map).

    Built from ordinary functional sub-models; for a layer inside a nested backbone the outer model
    is split at the backbone (see the module docstring). Calls run with ``training=False``.
    """

    def __init__(self, model, path: str | None):
        from engine.runtime import keras

        k = keras()
        self.logit = _logit_head(model)
        head_tensor = [self.logit[0]] if self.logit else []
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs  # a single tensor: no structure warning
        self.parts = []
        self.tapped = [path] if path else []  # the feature maps returned (full paths)
        if path is None:
            self.parts.append(("flat", k.Model(inputs, [*head_tensor, model.outputs[0]])))
            return
        names = path.split("/")
        if len(names) == 1:
            self.tapped = member_layers(model, names[0])  # an ensemble: this layer of every member
            self.parts.append(("flat", k.Model(inputs, [*(model.get_layer(name).output for name in self.tapped), *head_tensor, model.outputs[0]])))
            return
        # Split: outer model before the backbone → backbone tapped at the inner path → head after it.
        backbone = model.get_layer(names[0])
        node = _single_call_node(backbone, model.name)
        try:
            pre = k.Model(inputs, node.input_tensors[0]) if node.input_tensors[0] is not model.inputs[0] else None
            post = k.Model(node.output_tensors[0], [*head_tensor, model.outputs[0]])
        except ValueError as exc:
            raise IncompatibleModelError(
                f"'{model.name}' cannot be split at its nested model '{backbone.name}' ({exc}).",
                "Grad-CAM supports backbones whose output alone feeds the classifier head; use integrated gradients instead.",
            ) from exc
        self.pre, self.inner, self.post = pre, _TapModel(backbone, "/".join(names[1:])), post
        self.parts = None

    def __call__(self, x):
        """``(feature maps or None, head tensor or None, model output)``; the maps are a list (one per ensemble member, else one)."""
        if self.parts is not None:
            outs = self.parts[0][1](x, training=False)
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
            feat = [outs.pop(0) for _ in self.tapped] if self.tapped else None
            head = outs.pop(0) if self.logit else None
            return feat, head, outs[0]
        a = self.pre(x, training=False) if self.pre is not None else x
        feat, _, b = self.inner(a)
        outs = self.post(b, training=False)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        head = outs.pop(0) if self.logit else None
        return feat, head, outs[0]


# ----------------------------------------------------------------------------- the explainer


class Explainer:
    """Saliency maps of one Keras tile model.

    Args:
        model: a Keras model taking ``(N, px, px, 3)`` float RGB in 0..255.
        classes: class names in output order (default ``class_0``…; a single sigmoid unit → 2 classes).
        positive_classes: the classes summed into the ``"score"`` target (default: the last class).
        input_px: the model's tile size (default: from ``model.input_shape``).
        model_id: shown in results.
        weights_sha256: identifies the weights in cache keys; without it nothing is cached.
        cache: a :class:`ResultCache`, None for the shared one, ``False`` for none.
        ig_steps: integration steps of integrated gradients.
        ig_baseline: ``"black"`` (all 0) or ``"white"`` (all 255, the colour of glass).
    """

    def __init__(
        self,
        model,
        *,
        classes: Sequence[str] | None = None,
        positive_classes: Sequence[str] = (),
        input_px: int | None = None,
        model_id: str = "model",
        weights_sha256: str | None = None,
        cache: ResultCache | None | bool = False,
        ig_steps: int = 32,
        ig_baseline: str = "black",
        runner=None,
        normalizer=None,
        normalization_warning: str | None = None,
    ):
        self.model = model
        self.runner = runner  # engine.forward.ModelRunner: calibrated probabilities, in_domain, uncertainty (None: the model's own output)
        self.normalizer = normalizer  # applied to the tile before resizing, as at prediction
        self.normalization_warning = normalization_warning
        shape = model.input_shape
        if isinstance(shape, list) or len(shape) != 4 or shape[-1] != 3:
            raise IncompatibleModelError(f"Model '{model_id}' takes input {shape}; saliency maps need one (px, px, 3) RGB input.")
        self.input_px = int(input_px or shape[1] or 0)
        if self.input_px < 8:
            raise IncompatibleModelError(f"Model '{model_id}' has no fixed input size; give input_px.")
        if len(getattr(model, "outputs", None) or []) != 1:
            raise IncompatibleModelError(f"Model '{model_id}' has {len(getattr(model, 'outputs', None) or [])} outputs; saliency maps need exactly one (the class probabilities).")
        units = model.output_shape[-1]
        if classes is None:
            classes = [f"class_{i}" for i in range(max(int(units), 2))]
        self.classes = tuple(classes)
        if units not in (len(self.classes), 1):
            raise IncompatibleModelError(f"Model '{model_id}' outputs {units} values for {len(self.classes)} classes.")
        self.units = int(units)
        unknown = set(positive_classes) - set(self.classes)
        if unknown:
            raise InvalidInputError(f"Positive classes {sorted(unknown)} are not among {list(self.classes)}.")
        self.positive_indices = tuple(self.classes.index(c) for c in positive_classes) or (len(self.classes) - 1,)
        self.model_id = model_id
        self.weights_sha256 = weights_sha256
        self.cache = (shared_cache() if cache is None else (cache or None)) if weights_sha256 else None
        self.ig_steps = int(ig_steps)
        if self.ig_steps < 2:
            raise InvalidInputError("ig_steps must be at least 2.")
        if ig_baseline not in ("black", "white"):
            raise InvalidInputError(f"Unknown baseline '{ig_baseline}'; use black or white.")
        self.ig_baseline = ig_baseline
        self._layers: list[ConvLayer] | None = None
        self._taps: dict[str | None, _TapModel] = {}

    @classmethod
    def from_card(cls, card: ModelCard, model=None, *, cache: ResultCache | None | bool = None, normalization: str | None = "card", **kwargs) -> Explainer:
        """The explainer of a registered model: its calibration, out-of-domain flag and stain normalisation
        (``normalization``: ``"card"`` by default, or ``none``/``macenko``/``vahadane`` with a warning)."""
        from engine.forward import ModelRunner
        from engine.normalization import resolve

        model = model if model is not None else load_model_for_card(card)
        normalizer, warning = resolve(card, normalization)
        return cls(
            model,
            runner=ModelRunner.from_card(card, model),
            normalizer=normalizer,
            normalization_warning=warning,
            classes=card.classes,
            positive_classes=card.positive_classes,
            input_px=card.input_px,
            model_id=card.id,
            weights_sha256=card.weights_sha256,
            cache=cache,
            **kwargs,
        )

    @classmethod
    def from_registry(cls, model_id: str | None = None, *, registry: Registry | None = None, **kwargs) -> Explainer:
        return cls.from_card((registry or Registry()).get(model_id), **kwargs)

    # -- layers and targets

    def conv_layers(self) -> list[ConvLayer]:
        """The selectable feature maps (see :func:`find_conv_layers`)."""
        if self._layers is None:
            self._layers = find_conv_layers(self.model)
        return list(self._layers)

    def default_layer(self) -> ConvLayer:
        layers = self.conv_layers()
        if not layers:
            raise IncompatibleModelError(
                f"Model '{self.model_id}' has no convolutional layer (no layer with a 4-D feature-map output), so Grad-CAM cannot be computed.",
                "Use integrated gradients, which needs no convolutional layer.",
            )
        return default_conv_layer(layers)

    def resolve_layer(self, layer: str | None) -> ConvLayer:
        """A layer path or unique leaf name → :class:`ConvLayer` (None: the default)."""
        if layer is None or layer == "":
            return self.default_layer()
        layers = self.conv_layers()
        if not layers:
            self.default_layer()  # raises: no conv layer
        matches = [c for c in layers if c.path == layer] or [c for c in layers if c.name == layer]
        if len(matches) == 1:
            return matches[0]
        names = [c.path for c in layers]
        shown = ", ".join(names[-8:]) + (f" (and {len(names) - 8} more)" if len(names) > 8 else "")
        if matches:
            raise InvalidInputError(f"Layer name '{layer}' is ambiguous in model '{self.model_id}'.", f"Give its full path: {', '.join(c.path for c in matches)}.")
        raise InvalidInputError(f"Model '{self.model_id}' has no convolutional layer named '{layer}'.", f"Choose one of: {shown}. (`python -m engine gradcam --list-layers` lists them all.)")

    def targets(self) -> list[str]:
        """Accepted ``target`` values: ``"predicted"``, ``"score"`` and the class names."""
        return [PREDICTED, SCORE, *self.classes]

    def _target_indices(self, target: str | None, probs: np.ndarray) -> tuple[str, tuple[int, ...]]:
        if target in (None, "", PREDICTED):
            i = int(np.argmax(probs))
            return self.classes[i], (i,)
        if target == SCORE:
            return SCORE, self.positive_indices
        if target in self.classes:
            return target, (self.classes.index(target),)
        raise InvalidInputError(f"Model '{self.model_id}' has no class '{target}'.", f"Use one of: {', '.join(self.targets())}.")

    # -- computation

    def _tap(self, path: str | None) -> _TapModel:
        if path not in self._taps:
            self._taps[path] = _TapModel(self.model, path)
        return self._taps[path]

    def _log_odds(self, tap: _TapModel, head, output, indices: tuple[int, ...]):
        """Log-odds of the target classes from logits where available (see module docstring); ``(N,)``."""
        from engine.runtime import keras

        ops = keras().ops
        if tap.logit is not None:
            _, kind, layer, act = tap.logit
            z = head
            if kind == "dense":
                z = ops.matmul(head, layer.kernel)
                if layer.use_bias:
                    z = z + layer.bias
            z = ops.cast(z, "float32")
            if act == "sigmoid" or self.units == 1:
                z = z[:, 0]  # log-odds of the positive (second) class
                return z if indices == (1,) else -z
            mask = np.zeros(self.units, dtype=bool)
            mask[list(indices)] = True
            if mask.all():
                return ops.sum(z * 0.0, axis=1)
            pos = ops.logsumexp(ops.take(z, np.flatnonzero(mask), axis=1), axis=1)
            neg = ops.logsumexp(ops.take(z, np.flatnonzero(~mask), axis=1), axis=1)
            return pos - neg
        p = ops.cast(output, "float32")
        if self.units == 1:
            p = p[:, 0] if indices == (1,) else 1.0 - p[:, 0]
        else:
            p = ops.sum(ops.take(p, list(indices), axis=1), axis=1)
        p = ops.clip(p, 1e-7, 1.0 - 1e-7)
        return ops.log(p) - ops.log(1.0 - p)

    def _gradcam(self, x: np.ndarray, path: str, target: str | None, plus: bool):
        from engine.runtime import tensorflow

        tf = tensorflow()
        tap = self._tap(path)
        xt = tf.constant(x[None])
        with tf.GradientTape() as tape:
            tape.watch(xt)  # records every op downstream of the input, trainable weights or not
            feats, head, output = tap(xt)  # feats: [(1, h, w, K)] (one per ensemble member); output (1, units)
            probs = probabilities_from_output(output.numpy(), len(self.classes))[0]
            target_name, indices = self._target_indices(target, probs)
            s = self._log_odds(tap, head, output, indices)
        grads = tape.gradient(s, feats)
        if any(g is None for g in grads):
            raise IncompatibleModelError(f"Model '{self.model_id}': the output does not depend on layer '{path}'.", "Choose another layer.")
        # an ensemble's map: its members' weighted maps at the same depth summed before the ReLU (the ensemble's
        # logit is the sum of theirs, each member's share of the gradient goes through its own layer)
        maps = [f.numpy()[0].astype(np.float64) for f in feats]  # (h, w, K) each
        cam = np.maximum(sum(_weighted_map(a, g.numpy()[0].astype(np.float64), plus) for a, g in zip(maps, grads)), 0.0)  # (h, w)
        top = float(cam.max())
        note = ""
        if not np.isfinite(top) or top <= 1e-12 * max(1.0, max(float(np.abs(a).max()) for a in maps)):
            cam, note = np.zeros_like(cam), "No positive evidence for this class at this layer: the map is empty."
        else:
            cam = cam / top
        if len(tap.tapped) > 1:
            note = "; ".join(filter(None, [note, f"the model is an ensemble of {len(tap.tapped)} networks: the map takes this layer of "
                                                 f"every member together ({', '.join(tap.tapped)})"]))
        return cam.astype(np.float32), probs, target_name, note

    def integrated_gradients(self, image, *, target: str | None = None, name: str = "tile") -> Attribution:
        """Signed integrated-gradients attributions of one tile at the model's input size (the numbers behind its map).

        Args:
            image: ``(H, W, 3) uint8`` RGB array, a path or raw bytes of a tile; resized to ``input_px`` as for :meth:`explain`.
            target: ``None``/``"predicted"`` (default), ``"score"`` or a class name.
            name: the tile's name in error messages.
        """
        rgb = check_tile(image if isinstance(image, np.ndarray) else read_image(image, name=name), name)
        return self._attribution(resize_tile(rgb, self.input_px).astype(np.float32), target)

    def _attribution(self, x: np.ndarray, target: str | None, batch: int = 16) -> Attribution:
        from engine.runtime import tensorflow

        tf = tensorflow()
        tap = self._tap(None)
        _, _, output = tap(tf.constant(x[None]))
        probs = probabilities_from_output(output.numpy(), len(self.classes))[0]
        target_name, indices = self._target_indices(target, probs)
        baseline = np.full_like(x, 255.0 if self.ig_baseline == "white" else 0.0)
        alphas = (np.arange(self.ig_steps, dtype=np.float32) + 0.5) / self.ig_steps  # midpoint rule
        total = np.zeros_like(x, dtype=np.float64)
        for start in range(0, len(alphas), batch):
            a = alphas[start : start + batch, None, None, None]
            xs = tf.constant((baseline[None] + a * (x - baseline)[None]).astype(np.float32))
            with tf.GradientTape() as tape:
                tape.watch(xs)
                _, head, out = tap(xs)
                s = self._log_odds(tap, head, out, indices)
            total += tape.gradient(s, xs).numpy().astype(np.float64).sum(axis=0)
        values = (x - baseline) * total / self.ig_steps  # (px, px, 3)
        values.setflags(write=False)
        return Attribution(values, target_name, tuple(float(p) for p in probs), self.ig_baseline)

    def _integrated_gradients(self, x: np.ndarray, target: str | None):
        attribution = self._attribution(x, target)
        saliency, note = attribution.saliency()
        return saliency, np.asarray(attribution.probabilities), attribution.target_class, note

    def explain(self, image, *, method: str = "gradcam", layer: str | None = None, target: str | None = None, name: str = "tile") -> SaliencyResult:
        """Saliency map of one tile.

        Args:
            image: ``(H, W, 3) uint8`` RGB array, a path or raw bytes of a JPEG/PNG/TIFF tile.
            method: ``"gradcam"`` (default), ``"gradcam++"`` or ``"integrated-gradients"``.
            layer: feature map path or unique name (Grad-CAM methods; default: the last conv map).
            target: ``None``/``"predicted"`` (default), ``"score"`` or a class name.
            name: the tile's name in error messages.

        Returns:
            A :class:`SaliencyResult` whose map has the tile's H×W.
        """
        start = time.perf_counter()
        check_method(method)
        if isinstance(image, (str, Path)) and name == "tile":
            name = Path(image).name
        rgb = check_tile(image if isinstance(image, np.ndarray) else read_image(image, name=name), name)
        if target not in (None, "", PREDICTED, SCORE) and target not in self.classes:
            self._target_indices(target, np.zeros(len(self.classes)))  # raises with the list of classes
        conv = self.resolve_layer(layer) if method != "integrated-gradients" else None
        path = conv.path if conv else None
        key = None
        if self.cache is not None:
            params = {"input_px": self.input_px, "resize": "pil-bilinear", "normalizer": self.normalizer.cache_key() if self.normalizer is not None else None,
                      "runner": self._runner_key()}
            if method == "integrated-gradients":
                params.update(steps=self.ig_steps, baseline=self.ig_baseline)
            key = make_key(CACHE_VERSION, self.weights_sha256, method, path, target or PREDICTED, pixel_hash(rgb), params)
            hit = self.cache.get(key)
            if hit is not None:
                return self._result(rgb, hit, cached=True, start=start)
        tile = self.normalizer.transform_with_info(rgb).image if self.normalizer is not None else rgb
        x = resize_tile(tile, self.input_px).astype(np.float32)
        try:
            if method == "integrated-gradients":
                raw, probs, target_name, note = self._integrated_gradients(x, target)
            else:
                raw, probs, target_name, note = self._gradcam(x, path, target, plus=method == "gradcam++")
        except HistoDashError:
            raise
        except (ValueError, TypeError) as exc:  # a graph Keras cannot split or differentiate
            log.exception("saliency failed for model %s", self.model_id)
            raise IncompatibleModelError(f"Model '{self.model_id}' does not support {METHOD_LABELS[method]} at '{path}' ({type(exc).__name__}: {str(exc)[:200]}).") from exc
        extras = {}
        if self.runner is not None:  # the same forward pass as prediction: calibrated probabilities and the domain / uncertainty flags
            out = self.runner.forward(x[None])
            probs = out.probabilities[0]
            extras = {k: v for k, v in out.row(0).items() if k != "probabilities"}
            if self.runner.tta > 1:
                note = "; ".join(filter(None, [note, f"the score averages the tile's {self.runner.tta} rotations (the card's test-time "
                                                     "augmentation); the map explains the tile as shown"]))
        target_indices = self._target_indices(target, probs)[1]
        value = {
            **extras,
            "raw": raw,
            "score": float(sum(probs[i] for i in target_indices)),
            "target": target_name,
            "layer": path,
            "method": method,
            "predicted": self.classes[int(np.argmax(probs))],
            "probabilities": [float(p) for p in probs],
            "note": note,
        }
        if key is not None:
            self.cache.set(key, value)
        return self._result(rgb, value, cached=False, start=start)

    def _result(self, rgb: np.ndarray, value: dict, *, cached: bool, start: float) -> SaliencyResult:
        saliency = upsample(value["raw"], rgb.shape[0], rgb.shape[1])
        saliency.setflags(write=False)
        return SaliencyResult(
            map=saliency,
            score=value["score"],
            target_class=value["target"],
            layer=value["layer"],
            method=value["method"],
            model_id=self.model_id,
            predicted_class=value["predicted"],
            probabilities=tuple(value["probabilities"]),
            cached=cached,
            note=value["note"],
            seconds=time.perf_counter() - start,
            in_domain=value.get("in_domain"),
            domain_score=value.get("domain_score"),
            uncertainty=value.get("uncertainty"),
            normalization_warning=self.normalization_warning,
        )

    def _runner_key(self):
        r = self.runner
        if r is None:
            return None
        return {"temperature": r.temperature, "detector": None if r.detector is None else [r.detector.threshold, r.detector.transform, r.detector.dim],
                "mc": None if r._masks is None else list(r._masks.shape), "tta": r.tta}


def explain(image, *, model_id: str | None = None, method: str = "gradcam", layer: str | None = None, target: str | None = None, registry: Registry | None = None, cache: ResultCache | None | bool = None) -> SaliencyResult:
    """One-call form: saliency map of ``image`` with a registered model (default: the configured default)."""
    return Explainer.from_registry(model_id, registry=registry, cache=cache).explain(image, method=method, layer=layer, target=target)


__all__ = [
    "COLORMAPS", "METHODS", "Attribution", "ConvLayer", "Explainer", "SaliencyResult", "check_tile", "colorize", "default_conv_layer",
    "explain", "find_conv_layers", "overlay", "upsample",
]
