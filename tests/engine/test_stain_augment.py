"""Stain augmentation (HED jitter, TensorFlow vs NumPy) and the re-stainer used for the stain-robustness test."""

from __future__ import annotations

import numpy as np
import pytest

from engine.imageio import read_image
from engine.stain_augment import HED_FROM_RGB, LAB_PROFILES, RGB_FROM_HED, hed_jitter, hed_jitter_numpy, perturbed_stains, restain
from tests.conftest import shared_path


def _tile(seed=0, size=64):
    rng = np.random.default_rng(seed)
    base = np.array([180, 110, 190])
    return np.clip(base + rng.integers(-60, 60, (size, size, 3)), 0, 255).astype(np.uint8)


def test_hed_matrices_are_skimages():
    skimage = pytest.importorskip("skimage.color")
    assert np.allclose(RGB_FROM_HED, skimage.rgb_from_hed) and np.allclose(HED_FROM_RGB, skimage.hed_from_rgb)


def test_identity_parameters_give_the_tile_back():
    tile = _tile()
    out = hed_jitter_numpy(tile, np.ones(3), np.zeros(3))
    assert np.abs(out - tile).max() < 1e-6


def test_tensorflow_jitter_matches_the_numpy_oracle():
    from engine.runtime import tensorflow

    tf = tensorflow()
    tile = _tile(1)
    tf.random.set_seed(7)
    out = hed_jitter(tf, tf.constant(tile), 0.2, 0.1, 0.0).numpy()
    tf.random.set_seed(7)  # the same draws, replayed: a then b
    a = tf.random.uniform([3], 0.8, 1.2).numpy()
    b = tf.random.uniform([3], -0.1, 0.1).numpy()
    ref = hed_jitter_numpy(tile, a, b)
    assert np.abs(out - ref).max() < 0.05
    assert np.abs(out - tile).mean() > 1  # it did change the tile
    outs = [hed_jitter(tf, tf.constant(tile), 0.1, 0.05, 0.2).numpy() for _ in range(3)]
    assert all(o.shape == tile.shape and 0 <= o.min() and o.max() <= 255 for o in outs)
    assert np.abs(outs[0] - outs[1]).mean() > 0.5  # random per call


def test_stain_vector_noise_keeps_row_norms():
    m = perturbed_stains(np.random.default_rng(0).normal(0, 0.3, (3, 3)))
    assert np.allclose(np.linalg.norm(m, axis=1), np.linalg.norm(RGB_FROM_HED, axis=1)) and (m >= 0).all()


def test_restain_is_deterministic_changes_colour_and_leaves_background_tiles():
    tile = read_image(next((shared_path("lc25000-lung-224") / "images").glob("lungaca*.jpeg")))
    a, b = restain(tile, 0, seed=1), restain(tile, 0, seed=1)
    assert np.array_equal(a, b) and a.shape == tile.shape and a.dtype == np.uint8
    outs = [restain(tile, i, seed=1) for i in range(len(LAB_PROFILES))]
    assert all(np.abs(o.astype(int) - tile).mean() > 5 for o in outs)  # each profile recolours the tile
    assert np.abs(outs[1].astype(int) - outs[2]).mean() > 5  # and the profiles differ
    white = np.full((64, 64, 3), 245, np.uint8)
    assert np.array_equal(restain(white, 0), white)  # too little tissue: unchanged
