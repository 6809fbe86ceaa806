"""The heavy work of a cohort: score chunks of tiles and take their feature vectors, wherever it runs.

A :class:`TileWorker` loads its model(s) once and then scores :class:`ChunkJob` s — a slide path (on a
filesystem every node mounts at the same place), the pyramid level and read size, and the level-0
positions of up to a few hundred tiles. It returns the tiles' class probabilities and their feature
vectors (the input of the model's last dense layer: its penultimate layer), never pixels. Both come from
the one forward pass every consumer uses (:meth:`engine.forward.ModelRunner.forward`, through the
predictor): calibrated probabilities, and the card's per-tile ``in_domain``, ``domain_score`` and
``uncertainty`` when it has a detector / dropout. The same
class runs in-process (:class:`engine.cohort.executor.LocalExecutor`) and as a Ray actor
(:mod:`engine.cohort.ray_executor`), so both backends compute with one code path.

Models travel as :class:`ModelSpec`: the card and either the registry folder (this machine) or the
weights file's bytes (shipped through Ray's object store to nodes that do not have the head's registry;
checked against the card's sha256 before loading, in Keras safe mode).
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import IncompatibleModelError
from engine.forward import EXTRA_FIELDS


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load a registered model anywhere."""

    card: dict
    folder: str | None = None

    @classmethod
    def from_card(cls, card) -> ModelSpec:
        return cls(card.to_dict(), str(card.folder) if card.folder is not None else None)

    @property
    def id(self) -> str:
        return str(self.card["id"])

    @property
    def sha256(self) -> str:
        return str(self.card["weights_sha256"])

    def files(self) -> dict[str, bytes]:
        """The model folder's files, to ship to a worker: the weights and everything the card names beside them
        (out-of-domain detector, stain reference), a few MB."""
        return {p.name: p.read_bytes() for p in sorted(Path(self.folder).iterdir()) if p.is_file()}


@dataclass
class ChunkJob:
    """Tiles ``start:end`` of one slide's tissue tiles (level-0 top-left ``x``, ``y``), read at ``level`` as ``read_px``."""

    id: str
    slide: int
    start: int
    end: int
    path: str
    level: int
    read_px: int
    x: np.ndarray
    y: np.ndarray

    @property
    def n(self) -> int:
        return int(self.end - self.start)


@dataclass
class ChunkResult:
    probabilities: np.ndarray  # (n, n_classes) float32, calibrated (the card's temperature)
    embeddings: np.ndarray  # (n, dim) float16
    cpu_s: float = 0.0
    wall_s: float = 0.0
    node: dict = field(default_factory=dict)
    #: per-tile extras of the forward pass (``in_domain``, ``domain_score``, ``uncertainty``), only those the model gives
    extras: dict = field(default_factory=dict)

    def row(self, i: int) -> dict:
        """Tile ``i`` as a prediction cache value (what :meth:`engine.forward.ForwardOutput.row` gives)."""
        out = {"probabilities": [float(v) for v in self.probabilities[i]], "domain_score": None, "in_domain": None, "uncertainty": None}
        for name, values in self.extras.items():
            out[name] = bool(values[i]) if name == "in_domain" else float(values[i])
        return out


def feature_output(model):
    """The model's penultimate-layer tensor (the input of its last dense layer) and the name of the layer making it."""
    k = _keras()
    dense = None
    for layer in reversed(model.layers):
        if isinstance(layer, k.layers.Dense):
            dense = layer
            break
    if dense is None:
        raise IncompatibleModelError(f"Model '{model.name}' has no dense output layer, so it has no penultimate-layer features.")
    tensor = dense.input
    producer = getattr(getattr(tensor, "_keras_history", None), "operation", None)
    return tensor, getattr(producer, "name", dense.name + ".input")


def _keras():
    from engine.runtime import keras

    return keras()


def _load_card(spec: ModelSpec, weights: dict[str, bytes] | None):
    """The spec's card with its folder (a temporary one holding the shipped files, :meth:`ModelSpec.files`)."""
    from engine.registry import ModelCard

    if weights is None and spec.folder and (Path(spec.folder) / spec.card["weights_file"]).exists():
        return ModelCard.from_dict(spec.card, folder=Path(spec.folder))
    if weights is None:
        raise IncompatibleModelError(f"Model '{spec.id}' is not on this node and its weights were not shipped.")
    folder = Path(tempfile.mkdtemp(prefix=f"histodash-model-{spec.id}-"))
    for name, data in weights.items():
        (folder / Path(name).name).write_bytes(data)
    return ModelCard.from_dict(spec.card, folder=folder)


class TileWorker:
    """Scores chunks with one scoring model and one feature model (the same model: one forward pass).

    Args:
        score: the scoring model; features: the feature model (default: ``score``).
        score_weights, feature_weights: the model folders' files shipped (Ray), or None to read the registry folder.
        batch_size: tiles per forward pass; decode_workers: threads reading and resizing tiles
            (the next batch is read while the current one is in the model).
        threads: TensorFlow's intra-op threads (a Ray actor: its CPU share, so that several actors on one node do not
            each start a thread per core); None leaves TensorFlow's default. Only before TensorFlow's first use in the process.
    """

    def __init__(self, score: ModelSpec, features: ModelSpec | None = None, score_weights: dict[str, bytes] | None = None,
                 feature_weights: dict[str, bytes] | None = None, *, batch_size: int = 32, decode_workers: int = 2, threads: int | None = None):
        from engine.predict import TilePredictor
        from engine.registry import load_model_for_card

        if threads:
            from engine.runtime import tensorflow

            tf = tensorflow()
            try:
                tf.config.threading.set_intra_op_parallelism_threads(int(threads))
                tf.config.threading.set_inter_op_parallelism_threads(max(2, int(threads)))
            except RuntimeError:  # TensorFlow already ran something in this process: keep its pools
                pass

        features = features or score
        self.same = features.sha256 == score.sha256
        card = _load_card(score, score_weights)
        self.predictor = TilePredictor(card, cache=False, batch_size=batch_size)  # its forward pass scores (engine.forward)
        model = self.predictor.model
        self.fmodel = None  # a second network only for a separate feature model, or a model whose features the runner cannot split off
        if self.same:
            tensor, self.feature_layer = feature_output(model)
            if self.predictor.runner.head is None:
                self.fmodel = _keras().Model(model.inputs, tensor)
            self.feature_predictor = self.predictor
        else:
            fcard = _load_card(features, feature_weights)
            fm = load_model_for_card(fcard)
            ftensor, self.feature_layer = feature_output(fm)
            self.fmodel = _keras().Model(fm.inputs, ftensor)
            self.feature_predictor = TilePredictor(fcard, cache=False, batch_size=batch_size)
        self.n_classes = len(card.classes)
        self.batch_size = int(batch_size)
        self.pool = ThreadPoolExecutor(max(1, int(decode_workers)), thread_name_prefix="cohort-decode")
        self._slide = None
        self._lock = threading.Lock()

    def describe(self) -> dict:
        """Where this worker runs: host, pid and (under Ray) node id and assigned resources."""
        info = {"host": socket.gethostname(), "pid": os.getpid(), "feature_layer": self.feature_layer}
        try:
            import sys

            if "ray" in sys.modules:
                import ray

                if ray.is_initialized():
                    ctx = ray.get_runtime_context()
                    info.update(node_id=ctx.get_node_id(), resources=sorted(ctx.get_assigned_resources()))
        except Exception:  # noqa: BLE001 - informative only
            pass
        return info

    def _open(self, path: str):
        from engine.slides import open_slide

        if self._slide is None or str(self._slide.path) != path:
            if self._slide is not None:
                self._slide.close()
            self._slide = open_slide(path)
        return self._slide

    def score(self, job: ChunkJob) -> ChunkResult:
        """Probabilities and feature vectors of the chunk's tiles (read from the slide here)."""
        t0, c0 = time.perf_counter(), time.process_time()
        with self._lock:
            slide = self._open(job.path)
            size = (job.read_px, job.read_px)

            def read(i: int):
                rgb = slide.read_region((int(job.x[i]), int(job.y[i])), job.level, size)
                a = self.predictor.prepare(rgb).tensor
                return a, (None if self.same else self.feature_predictor.prepare(rgb).tensor)

            n = len(job.x)
            batches = [range(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size)]
            probs, feats, extras = [], [], {}
            ahead = [self.pool.submit(read, i) for i in batches[0]] if batches else []
            try:
                for b in range(len(batches)):
                    current = [f.result() for f in ahead]
                    ahead = [self.pool.submit(read, i) for i in batches[b + 1]] if b + 1 < len(batches) else []
                    out = self.predictor.forward_batch(np.stack([c[0] for c in current]))
                    if self.fmodel is None:
                        f = out.features
                    else:
                        xf = np.stack([c[1] if c[1] is not None else c[0] for c in current]).astype(np.float32)
                        f = self.fmodel.predict_on_batch(xf)
                    probs.append(out.probabilities.astype(np.float32))
                    feats.append(np.asarray(f, np.float32).reshape(len(current), -1))
                    for name in EXTRA_FIELDS:
                        values = getattr(out, name)
                        if values is not None:
                            extras.setdefault(name, []).append(np.asarray(values))
            finally:  # never leave a reader inside the slide (closing it under a read crashes OpenSlide)
                for fut in ahead:
                    fut.cancel()
                wait(ahead)
        dim = feats[0].shape[1] if feats else 0
        return ChunkResult(
            probabilities=np.concatenate(probs) if probs else np.zeros((0, self.n_classes), np.float32),
            embeddings=(np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)).astype(np.float16),
            cpu_s=time.process_time() - c0, wall_s=time.perf_counter() - t0,
            extras={name: np.concatenate(parts) for name, parts in extras.items() if len(parts) == len(batches)},
        )

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self._slide is not None:
            self._slide.close()
            self._slide = None
