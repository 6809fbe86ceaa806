"""Stain-space colour augmentation for training, and a re-stainer that makes "another lab's" copy of a tile.

Two different mechanisms, on purpose: the model is *trained* with one (:func:`hed_jitter`) and
*tested* with the other (:func:`restain`), so a good score on the re-stained copy is not just the
training jitter seen again.

**HED jitter** (Tellez et al. 2019, "Quantifying the effects of data augmentation and stain colour
normalization in convolutional neural networks for computational pathology", Med. Image Anal. 58):
each tile is decomposed by colour deconvolution (Ruifrok & Johnston 2001, the fixed H&E-DAB
matrix of ``skimage.color.rgb2hed``) into haematoxylin, eosin and DAB densities ``s``; each channel
becomes ``s * a + b`` with ``a ~ U(1 - sigma, 1 + sigma)`` and ``b ~ U(-bias, bias)`` drawn per tile
and channel; then back to RGB. Tellez's "HED-light" is sigma = bias = 0.05, "HED-strong" 0.2. Densities
are optical densities in natural-log units (``-ln(I / 255)``, as ``skimage.color.rgb2hed`` computed them
before version 0.16, which Tellez et al. used; newer skimage divides by ``-ln(1e-6)``, which would make the
same bias 14 times stronger). Runs inside
``tf.data`` (:func:`hed_jitter`) with TensorFlow ops; :func:`hed_jitter_numpy` is the same
arithmetic in NumPy (the test oracle).

**Re-staining** (:func:`restain`): Macenko re-staining (:mod:`engine.stain`) of a tile to the stain
vectors and 99th-percentile concentrations *measured on real H&E images from other labs*
(:data:`LAB_PROFILES`), with the concentrations scaled by a seeded factor per tile. The tile's own
stain vectors are estimated per tile (Macenko), its concentrations recomputed by non-negative least
squares and recombined with the profile's vectors: the colour model is per-tile and data-driven,
unlike the fixed-matrix HED jitter. Tiles Macenko cannot decompose (too little tissue) come back
unchanged.

No TensorFlow is imported at module level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: skimage.color.rgb_from_hed (Ruifrok & Johnston 2001): rows are the H, E and DAB optical-density vectors.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
#: skimage.color.hed_from_rgb, its inverse.
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
#: intensities are floored at this fraction of 255 before the logarithm
MIN_INTENSITY = 1.0 / 255.0


@dataclass(frozen=True)
class LabProfile:
    """Target of a re-staining: unit stain vectors (rows H, E; columns R, G, B OD) and 99th-percentile concentrations."""

    name: str
    stains: tuple[tuple[float, float, float], tuple[float, float, float]]
    max_concentrations: tuple[float, float]
    source: str

    @property
    def stain_matrix(self) -> np.ndarray:
        """``(3, 2)`` matrix, columns H and E (the layout of :mod:`engine.stain`)."""
        return np.asarray(self.stains, dtype=np.float64).T


#: Measured with ``MacenkoNormalizer().fit`` (engine.stain, default parameters) on real H&E images of
#: three labs, none of them LC25000 (see shared/data/README.md for the files): a 512 px region of each
#: slide at level 0, and whole SCCNet tiles.
LAB_PROFILES: tuple[LabProfile, ...] = (
    LabProfile("sccnet-reference", ((0.5085, 0.7494, 0.4242), (0.0626, 0.8224, 0.5654)), (2.366, 1.0576),
               "SCCNet Norm_tile.jpg (BioInforCore-BCI/SCCNet, oral SCC lymph-node study)"),
    LabProfile("cmu-skin", ((0.7139, 0.6240, 0.3177), (0.0291, 0.9349, 0.3536)), (3.9258, 2.5328),
               "CMU-1-Small-Region.svs, region (800, 1200) 512 px (OpenSlide test data, skin)"),
    LabProfile("tcga-hnsc", ((0.3241, 0.8201, 0.4715), (-0.0504, 0.9113, 0.4085)), (1.7138, 0.8025),
               "TCGA-CR-7395-01A-01-TS1.svs, region (1800, 1500) 512 px (TCGA-HNSC frozen section)"),
    LabProfile("sccnet-met2", ((0.4899, 0.7577, 0.4312), (0.0776, 0.9654, 0.2491)), (2.9047, 1.7004),
               "SCCNet met2_x_512_y_10240.jpg"),
)

#: Concentrations are multiplied by a factor drawn per tile from U(1 - s, 1 + s) (lighter/darker staining).
RESTAIN_CONCENTRATION_SPREAD = 0.15

RESTAIN_DESCRIPTION = (
    "Macenko re-staining (engine.stain_augment.restain): each tile's own stain vectors are estimated (Macenko), its "
    "concentrations recomputed by NNLS, scaled by a per-tile factor U(0.85, 1.15) and recombined with the stain vectors and "
    "99th-percentile concentrations measured on real H&E images of other labs, in turn: "
    + "; ".join(f"{p.name} ({p.source})" for p in LAB_PROFILES)
    + ". A different mechanism from the training augmentation (fixed-matrix HED jitter)."
)


def restain(rgb: np.ndarray, index: int, *, seed: int = 0, profiles: tuple[LabProfile, ...] = LAB_PROFILES) -> np.ndarray:
    """A re-stained copy of one uint8 RGB tile: profile ``index % len(profiles)``, concentration factor seeded by ``(seed, index)``."""
    from engine.stain import MacenkoNormalizer

    profile = profiles[index % len(profiles)]
    rng = np.random.default_rng([seed, index])
    factor = rng.uniform(1 - RESTAIN_CONCENTRATION_SPREAD, 1 + RESTAIN_CONCENTRATION_SPREAD, 2)
    normalizer = MacenkoNormalizer()
    normalizer.stain_matrix_ = profile.stain_matrix
    normalizer.max_concentrations_ = np.asarray(profile.max_concentrations, dtype=np.float64) * factor
    return normalizer.transform(rgb)


# ----------------------------------------------------------------------------- HED jitter


def perturbed_stains(noise: np.ndarray) -> np.ndarray:
    """``RGB_FROM_HED`` with ``noise`` (3, 3) added to its rows, each row then taken in absolute value and renormalised."""
    m = np.abs(RGB_FROM_HED + np.asarray(noise, dtype=np.float64))
    return m / np.linalg.norm(m, axis=1, keepdims=True) * np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)


def hed_jitter_numpy(rgb: np.ndarray, scale: np.ndarray, shift: np.ndarray, vector_noise: np.ndarray | None = None) -> np.ndarray:
    """HED jitter of one tile with given per-channel ``scale`` (a), ``shift`` (b) and stain-vector noise; float RGB 0..255 out.

    The same arithmetic as :func:`hed_jitter`, for tests and for looking at the augmentation.
    """
    x = np.maximum(np.asarray(rgb, dtype=np.float64) / 255.0, MIN_INTENSITY)
    hed = -np.log(x) @ HED_FROM_RGB
    hed = hed * np.asarray(scale, dtype=np.float64) + np.asarray(shift, dtype=np.float64)
    stains = RGB_FROM_HED if vector_noise is None else perturbed_stains(vector_noise)
    out = np.exp(-(hed @ stains))
    return np.clip(out, 0.0, 1.0) * 255.0


def hed_jitter(tf, img, sigma: float, bias: float, vector: float = 0.0):
    """TensorFlow HED jitter of one ``(H, W, 3)`` tile (uint8 or float 0..255) → float32 0..255.

    Args:
        tf: the TensorFlow module (imported lazily by the caller).
        img: the tile.
        sigma: scale spread: ``a ~ U(1 - sigma, 1 + sigma)`` per stain channel.
        bias: shift spread: ``b ~ U(-bias, bias)`` per stain channel (natural-log optical density).
        vector: s.d. of Gaussian noise added to each component of the stain vectors the densities are
            recombined with (:func:`perturbed_stains`): the stains' hues vary, not only their amounts.
    """
    x = tf.maximum(tf.cast(img, tf.float32) / 255.0, MIN_INTENSITY)
    hed = tf.tensordot(-tf.math.log(x), tf.constant(HED_FROM_RGB, tf.float32), axes=1)
    a = tf.random.uniform([3], 1.0 - sigma, 1.0 + sigma)
    b = tf.random.uniform([3], -bias, bias)
    hed = hed * a + b
    stains = tf.constant(RGB_FROM_HED, tf.float32)
    if vector:
        norms = tf.norm(stains, axis=1, keepdims=True)
        m = tf.abs(stains + tf.random.normal([3, 3], stddev=vector))
        stains = m / tf.norm(m, axis=1, keepdims=True) * norms
    out = tf.exp(-tf.tensordot(hed, stains, axes=1))
    return tf.clip_by_value(out, 0.0, 1.0) * 255.0
