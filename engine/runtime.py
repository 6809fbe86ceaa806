"""TensorFlow / Keras runtime: imported lazily, once per process.

``import tensorflow`` costs seconds, so nothing imports it at module import time; call
:func:`keras` (or :func:`tensorflow`) where a model is really needed. On first use GPUs that
TensorFlow sees get memory growth enabled (so several processes can share one card) and are then
used automatically by Keras; without a GPU everything runs on the CPU.
"""

from __future__ import annotations

import functools
import logging
import os

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised
            pass
    return tf


@functools.lru_cache(maxsize=1)
def keras():
    tensorflow()
    import keras as _keras

    return _keras


def device_summary() -> dict:
    """Which device inference runs on: ``{"gpus": [...], "device": "GPU"|"CPU", "tensorflow": version}``."""
    tf = tensorflow()
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {"gpus": gpus, "device": "GPU" if gpus else "CPU", "tensorflow": tf.__version__, "keras": keras().__version__}
