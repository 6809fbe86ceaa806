"""Keras 3 model builders for HistoDash, all with randomly initialised weights.

Nothing here downloads anything: every ``keras.applications`` backbone is built with
``weights=None``. Pretrained weights come into a model only from a file the user supplies
(a ``.keras`` model, or legacy Keras-2 HDF5 weights via :func:`load_legacy_h5_by_name`).

Input convention (all architectures)
------------------------------------
A model takes **float RGB in 0..255**, shape ``(N, input_px, input_px, 3)``, and carries its own
preprocessing as ordinary built-in layers (``Rescaling``, a frozen 1×1 ``Conv2D`` for the Caffe
channel swap, or the backbone's own built-in layers). There are no ``Lambda`` layers and no
custom objects, so every model saved as ``.keras`` loads with
``keras.models.load_model(path, safe_mode=True)``.

Output convention
-----------------
``n_classes == 1`` (or ``binary=True``): one sigmoid unit, the probability of the positive
class. ``n_classes >= 2``: a softmax over the classes, in the order of the model card's
``classes`` list.

Registry
--------
:data:`ARCHITECTURES` maps a name to its builder; :data:`DEFAULT_INPUT_PX` gives each one's
natural input size. :func:`build_model` dispatches on the name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
from keras import layers

from engine.errors import IncompatibleModelError, InvalidInputError
from engine.training.config import ENSEMBLE_ARCHITECTURES, MAX_MEMBERS

# ImageNet channel means of the Caffe convention (BGR order), used by ResNet50's preprocess_input.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

DEFAULT_INPUT_PX: dict[str, int] = {
    "small_cnn": 96,  # REFERENCE.md §4 (PatchCamelyon 96 px)
    "lung_cnn": 144,  # the project's first LC25000 model
    "lung_cnn_ms": 144,  # the project's default LC25000 model: lung_cnn with multi-scale pooled features
    "resnet50_head": 512,  # REFERENCE.md §1 (512 px tiles)
    "inceptionv3_head": 299,  # REFERENCE.md §3 (299 px tiles)
    "efficientnetb0_head": 224,  # REFERENCE.md §4 comparison
}

# keras.applications minimum input sizes (no top).
_MIN_INPUT_PX = {"resnet50_head": 32, "inceptionv3_head": 75, "efficientnetb0_head": 32}


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------


def _head(x, n_classes: int, binary: bool = False, name: str = "predictions"):
    """One sigmoid unit for a binary task, otherwise a softmax over ``n_classes``."""
    if n_classes < 1:
        raise InvalidInputError(f"n_classes must be >= 1, got {n_classes}.")
    if n_classes == 1 or binary:
        if binary and n_classes not in (1, 2):
            raise InvalidInputError(f"binary=True needs n_classes 1 or 2, got {n_classes}.")
        return layers.Dense(1, activation="sigmoid", name=name, dtype="float32")(x)
    return layers.Dense(n_classes, activation="softmax", name=name, dtype="float32")(x)


def _preprocess(x, mode: str):
    """Map float RGB 0..255 to what the network expects, using only safe built-in layers.

    ``rescale``: x/255 → 0..1. ``tf``: x/127.5 − 1 → −1..1 (Inception convention).
    ``caffe``: RGB→BGR and ImageNet mean subtraction (ResNet50 convention), as a frozen 1×1 conv.
    ``none``: unchanged (for backbones that preprocess themselves, e.g. EfficientNet).
    """
    if mode == "rescale":
        return layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    if mode == "tf":
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(x)
    if mode == "caffe":
        kernel = np.zeros((1, 1, 3, 3), dtype="float32")
        for out_c, in_c in enumerate((2, 1, 0)):  # output BGR from input RGB
            kernel[0, 0, in_c, out_c] = 1.0
        bias = -np.asarray(_CAFFE_MEAN_BGR, dtype="float32")
        conv = layers.Conv2D(
            3,
            1,
            name="caffe_preprocess",
            trainable=False,
            kernel_initializer=keras.initializers.Constant(kernel),
            bias_initializer=keras.initializers.Constant(bias),
        )
        return conv(x)
    if mode == "none":
        return x
    raise InvalidInputError(f"Unknown preprocessing {mode!r}; use rescale, tf, caffe or none.")


def _check_px(architecture: str, input_px: int) -> None:
    if not isinstance(input_px, (int, np.integer)) or input_px < 1:
        raise InvalidInputError(f"input_px must be a positive integer, got {input_px!r}.")
    minimum = _MIN_INPUT_PX.get(architecture, 16)
    if input_px < minimum:
        raise InvalidInputError(f"{architecture} needs input_px >= {minimum}, got {input_px}.")


def _conv_bn(x, filters: int, name: str, *, strides: int = 1, separable: bool = False, bn_momentum: float = 0.99):
    if separable:
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_sepconv")(x)
    else:
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


# --------------------------------------------------------------------------------------------
# architectures
# --------------------------------------------------------------------------------------------


def build_small_cnn(input_px: int, n_classes: int, *, dropout: float = 0.5, binary: bool = False, dense_units: int = 1024, **_):
    """REFERENCE.md §4: three 3×3 conv blocks (32/64/128) with BN + max-pool → GAP → dense 1024 → dropout → head."""
    inputs = keras.Input((input_px, input_px, 3), name="image")
    x = _preprocess(inputs, "rescale")
    for i, filters in enumerate((32, 64, 128), start=1):
        x = _conv_bn(x, filters, f"block{i}")
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(dense_units, activation="relu", name="fc")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, _head(x, n_classes, binary), name="small_cnn")


def _lung_trunk(x, w: int, prefix: str = ""):
    """The convolutions of the lung CNNs on rescaled input: strided stem, two plain and two depthwise-separable blocks; returns blocks 2, 3 and 4's outputs.

    ``prefix`` starts every layer name (an ensemble's members: ``m1_``, ``m2_``, …).
    """
    bn = {"bn_momentum": 0.9}  # faster-tracking BN statistics for short CPU runs
    x = _conv_bn(x, w, f"{prefix}stem", strides=2, **bn)
    x = _conv_bn(x, w, f"{prefix}block1a", **bn)
    x = layers.MaxPooling2D(2, name=f"{prefix}block1_pool")(x)
    x = _conv_bn(x, 2 * w, f"{prefix}block2a", **bn)
    b2 = _conv_bn(x, 2 * w, f"{prefix}block2b", **bn)
    x = layers.MaxPooling2D(2, name=f"{prefix}block2_pool")(b2)
    x = _conv_bn(x, 4 * w, f"{prefix}block3a", separable=True, **bn)
    b3 = _conv_bn(x, 4 * w, f"{prefix}block3b", separable=True, **bn)
    x = layers.MaxPooling2D(2, name=f"{prefix}block3_pool")(b3)
    x = _conv_bn(x, 8 * w, f"{prefix}block4a", separable=True, **bn)
    b4 = _conv_bn(x, 8 * w, f"{prefix}block4b", separable=True, **bn)
    return b2, b3, b4


def build_lung_cnn(input_px: int, n_classes: int, *, dropout: float = 0.3, binary: bool = False, width: int = 32, members: int = 1, **_):
    """The first default LC25000 model: a compact VGG-style CNN, ~0.2 M parameters at width 32.

    Strided 3×3 stem → two plain conv blocks → two depthwise-separable blocks (each block: two
    conv+BN+ReLU, then 2×2 max-pool except after the last) → global average pooling → dropout →
    head. BatchNorm momentum 0.9 so the inference statistics keep up during short, high-learning-rate
    runs. Cheap enough to train on two CPU cores at 128–160 px (~28 s an epoch of 3.6 k tiles at 144 px).
    ``members > 1``: the ensemble of that many such networks (:func:`merge_members`).
    """
    return _lung_model(input_px, n_classes, dropout=dropout, binary=binary, width=width, members=members, depths=(4,), name="lung_cnn")


def build_lung_cnn_ms(input_px: int, n_classes: int, *, dropout: float = 0.3, binary: bool = False, width: int = 32, members: int = 1, **_):
    """:func:`build_lung_cnn` whose penultimate features pool three depths: GAP of blocks 2, 3 and 4, concatenated.

    Same convolutions (~0.2 M parameters); the head sees ``2w + 4w + 8w`` features (448 at width 32)
    instead of ``8w``. The mid-level averages keep texture and cell-scale statistics that the last
    block, trained only to tell three classes apart, discards — which is what lets the out-of-domain
    detector (:mod:`engine.domain`, on these features) recognise tissue unlike the training tiles.
    ``members > 1``: the ensemble of that many such networks (:func:`merge_members`).
    """
    return _lung_model(input_px, n_classes, dropout=dropout, binary=binary, width=width, members=members, depths=(2, 3, 4), name="lung_cnn_ms")


def _lung_model(input_px: int, n_classes: int, *, dropout: float, binary: bool, width: int, members: int, depths: tuple[int, ...], name: str):
    """One lung CNN, or (``members > 1``) an ensemble of them in one flat graph.

    An ensemble's members are whole networks side by side (layer names ``m1_…``, ``m2_…``) on the
    shared input; their pooled features are concatenated into one ``features`` layer, then one dropout
    and one head. With the head :func:`merge_members` writes (the members' own heads stacked and
    divided by ``members``), the ensemble's logits are the mean of the members' logits, and everything
    that works on a single network's penultimate features — test-time augmentation, the
    out-of-domain detector (one covariance per member and depth), Monte Carlo dropout — works unchanged.
    """
    if not 1 <= int(members) <= MAX_MEMBERS:
        raise InvalidInputError(f"members must be between 1 and {MAX_MEMBERS}, got {members!r}.")
    inputs = keras.Input((input_px, input_px, 3), name="image")
    x = _preprocess(inputs, "rescale")
    pooled = []
    for prefix in [""] if members == 1 else [f"m{k}_" for k in range(1, int(members) + 1)]:
        blocks = dict(zip((2, 3, 4), _lung_trunk(x, width, prefix)))
        pooled += [layers.GlobalAveragePooling2D(name=f"{prefix}gap{d}" if len(depths) > 1 else f"{prefix}gap")(blocks[d]) for d in depths]
    x = layers.Concatenate(name="features")(pooled) if len(pooled) > 1 else pooled[0]
    x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, _head(x, n_classes, binary), name=name if members == 1 else f"{name}_x{members}")


def member_prefix(model) -> list[str]:
    """The layer-name prefixes of an ensemble's members (``["m1_", "m2_"]``), or ``[]`` for a single network."""
    import re

    return sorted({m.group(1) for layer in getattr(model, "layers", []) if (m := re.match(r"^(m\d+_)", layer.name))}, key=lambda p: int(p[1:-1]))


def merge_members(ensemble: keras.Model, members: list[keras.Model]) -> keras.Model:
    """Write trained single networks into an ensemble built with ``members=len(members)``; returns the ensemble.

    Every layer of member ``k`` goes to the ensemble's layer ``m{k}_<name>``; the head becomes the
    members' heads stacked, weights and bias divided by the number of members, so the ensemble's
    logits are the mean of the members' logits (its softmax: their normalised geometric mean).
    """
    n = len(members)
    head = ensemble.layers[-1]
    slots = len(member_prefix(ensemble))
    if slots != n:
        raise IncompatibleModelError(f"The {n} trained networks do not fit the ensemble '{ensemble.name}' of {slots}.")
    weights, biases = [], []
    for k, member in enumerate(members, start=1):
        for layer in member.layers:
            values = layer.get_weights()
            if layer is member.layers[-1]:
                weights.append(values[0])
                biases.append(values[1])
            elif values:
                ensemble.get_layer(f"m{k}_{layer.name}").set_weights(values)
    if sum(w.shape[0] for w in weights) != head.get_weights()[0].shape[0]:
        raise IncompatibleModelError(f"The {n} trained networks do not fit the ensemble '{ensemble.name}' (their feature sizes differ).")
    head.set_weights([np.concatenate(weights, axis=0) / n, np.mean(biases, axis=0)])
    return ensemble


def build_resnet50_head(
    input_px: int,
    n_classes: int,
    *,
    dropout: float = 0.5,
    binary: bool = False,
    preprocessing: str = "caffe",
    freeze_backbone: bool = False,
    **_,
):
    """REFERENCE.md §1: ResNet50 (no top, any input size) → GAP → dropout 0.5 → head.

    The backbone is nested as one layer named ``resnet50``. ``preprocessing`` defaults to the
    Caffe convention of ``keras.applications.resnet50.preprocess_input`` (built as a frozen 1×1 conv).
    """
    inputs = keras.Input((input_px, input_px, 3), name="image")
    x = _preprocess(inputs, preprocessing)
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(input_px, input_px, 3), pooling=None, name="resnet50")
    backbone.trainable = not freeze_backbone
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, _head(x, n_classes, binary), name="resnet50_head")


def build_inceptionv3_head(
    input_px: int,
    n_classes: int,
    *,
    dropout: float = 0.5,
    binary: bool = False,
    freeze_backbone: bool = True,
    bottleneck_units: int = 256,
    **_,
):
    """REFERENCE.md §3: InceptionV3 feature extractor (optionally frozen) → GAP → small classifier.

    Bottleneck head: dense ``bottleneck_units`` (ReLU) → dropout → head. Input scaled to −1..1 as
    Inception expects. Minimum input 75 px. The backbone is nested as one layer ``inception_v3``.
    """
    inputs = keras.Input((input_px, input_px, 3), name="image")
    x = _preprocess(inputs, "tf")
    backbone = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(input_px, input_px, 3), name="inception_v3")
    backbone.trainable = not freeze_backbone
    x = backbone(x, training=False) if freeze_backbone else backbone(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(bottleneck_units, activation="relu", name="bottleneck")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, _head(x, n_classes, binary), name="inceptionv3_head")


def build_efficientnetb0_head(
    input_px: int,
    n_classes: int,
    *,
    dropout: float = 0.5,
    binary: bool = False,
    freeze_backbone: bool = False,
    dense_units: int = 1024,
    **_,
):
    """REFERENCE.md §4: EfficientNetB0 (no top) → GAP → dense 1024 → dropout 0.5 → head.

    EfficientNetB0 takes 0..255 input and rescales itself with its own built-in layers.
    The backbone is nested as one layer ``efficientnetb0``.
    """
    inputs = keras.Input((input_px, input_px, 3), name="image")
    backbone = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(input_px, input_px, 3), name="efficientnetb0")
    backbone.trainable = not freeze_backbone
    x = backbone(inputs, training=False) if freeze_backbone else backbone(inputs)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(dense_units, activation="relu", name="fc")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, _head(x, n_classes, binary), name="efficientnetb0_head")


ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {
    "small_cnn": build_small_cnn,
    "lung_cnn": build_lung_cnn,
    "lung_cnn_ms": build_lung_cnn_ms,
    "resnet50_head": build_resnet50_head,
    "inceptionv3_head": build_inceptionv3_head,
    "efficientnetb0_head": build_efficientnetb0_head,
}


def build_model(architecture: str, input_px: int | None = None, n_classes: int = 1, *, dropout: float | None = None, binary: bool = False, **kwargs) -> keras.Model:
    """Build ``architecture`` (a key of :data:`ARCHITECTURES`) with random weights.

    ``input_px`` defaults to :data:`DEFAULT_INPUT_PX`; ``dropout`` to the architecture's own
    default. Extra keyword arguments go to the builder (e.g. ``freeze_backbone=True``).
    """
    if architecture not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise InvalidInputError(f"Unknown architecture {architecture!r}. Known: {known}.")
    if input_px is None:
        input_px = DEFAULT_INPUT_PX[architecture]
    _check_px(architecture, int(input_px))
    if dropout is not None:
        kwargs["dropout"] = dropout
    if kwargs.get("members", 1) != 1 and architecture not in ENSEMBLE_ARCHITECTURES:
        raise InvalidInputError(f"{architecture} cannot be built as an ensemble; these can: {', '.join(ENSEMBLE_ARCHITECTURES)}.")
    return ARCHITECTURES[architecture](int(input_px), int(n_classes), binary=binary, **kwargs)


# --------------------------------------------------------------------------------------------
# legacy Keras-2 HDF5 weights
# --------------------------------------------------------------------------------------------


def _h5_layer_names(path: Path) -> list[str]:
    import h5py

    with h5py.File(path, "r") as f:
        group = f
        if "layer_names" not in f.attrs and "model_weights" in f:
            group = f["model_weights"]
        if "layer_names" not in group.attrs:
            raise IncompatibleModelError(
                f"{path.name} is an HDF5 file but not Keras weights (no 'layer_names' attribute).",
                path=str(path),
            )
        names = [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in group.attrs["layer_names"]]
        # keep only layers that actually carry weights
        out = []
        for n in names:
            wn = group[n].attrs.get("weight_names", []) if n in group else []
            if len(wn):
                out.append(n)
        return out


def load_legacy_h5_by_name(model: keras.Model, path: str | os.PathLike, *, skip_mismatch: bool = False) -> list[str]:
    """Load legacy Keras-2 HDF5 weights into ``model`` by layer name (``load_weights(by_name=True)``).

    This is how reference study 1 distributes its models. Returns the names of the layers that
    were loaded. Raises :class:`IncompatibleModelError` when the file is missing or not HDF5
    Keras weights, when no layer name matches, or when a matching layer's weights have a
    different count or shape (unless ``skip_mismatch``).
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise IncompatibleModelError(f"Weights file {path} does not exist.", path=str(path))
    if not h5py.is_hdf5(path):
        raise IncompatibleModelError(f"{path.name} is not an HDF5 file, so it cannot hold legacy Keras-2 weights.", path=str(path))
    try:
        file_layers = _h5_layer_names(path)
    except IncompatibleModelError:
        raise
    except Exception as exc:  # unreadable / damaged HDF5
        raise IncompatibleModelError(f"Cannot read {path.name} as Keras weights: {exc}", path=str(path)) from exc
    model_layers = {layer.name for layer in model.layers if layer.weights}
    matched = [n for n in file_layers if n in model_layers]
    if not matched:
        raise IncompatibleModelError(
            f"No layer of {path.name} matches the model {model.name!r} by name "
            f"(file has {', '.join(file_layers[:8]) or 'no weighted layers'}"
            f"{'…' if len(file_layers) > 8 else ''}; model has {', '.join(sorted(model_layers)[:8])}).",
            path=str(path),
        )
    # Keras takes the legacy by-name route only for names ending .h5/.hdf5, and reads *.weights.h5 as
    # its own Keras-3 format: any other name is loaded from a copy called weights.h5.
    tmpdir = None
    target = path
    if path.suffix.lower() not in (".h5", ".hdf5") or path.name.lower().endswith(".weights.h5"):
        tmpdir = tempfile.mkdtemp(prefix="histodash-h5-")
        target = Path(tmpdir) / "weights.h5"
        shutil.copyfile(path, target)
    try:
        model.load_weights(str(target), skip_mismatch=skip_mismatch, by_name=True)
    except (ValueError, KeyError, OSError) as exc:
        raise IncompatibleModelError(f"Weights in {path.name} do not fit the model {model.name!r}: {exc}", path=str(path)) from exc
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return matched
