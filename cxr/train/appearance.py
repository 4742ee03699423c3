"""Appearance augmentation: training images made to look as if another hospital took them.

Hospitals differ in exposure and detector response (gamma, contrast, brightness), in
sharpness (blur, resolution) and in noise; in the public COVID collections those
differences are confounded with the class, and a model learns them instead of the lungs
(DeGrave et al. 2021). Randomising them in training takes that signal away: a replica of
the scratch CNN moved its held-out-source AUC most with this lever (issue 17).

Stateless, as cxr.train.geometric: every draw is a stateless random op of the batch's `key`
(a shape-[2] integer tensor), so a batch augments the same way whichever tf.data call runs
it. Gamma, contrast, brightness and noise are drawn per image; blur and resolution loss per
batch (one kernel, one size), which keeps them single TensorFlow ops. Works on float32
(n, H, W, 1) batches in [0, 255], the training pipeline's model input, and returns the same.
"""

from __future__ import annotations

import math

from cxr.config import AugmentConfig

FULL_SCALE = 255.0
# Each step draws from its own fold of the key, so a step's draws stay the same whichever
# other steps are on.
RESOLUTION, BLUR, GAMMA, CONTRAST, BRIGHTNESS, NOISE_LEVEL, NOISE = range(7)


def augmented(tf, images, key, augment: AugmentConfig):
    """images: float32 (n, H, W, 1) in [0, 255]; each strength of 0 leaves its step out."""
    return _augment(tf, key, images / FULL_SCALE, augment) * FULL_SCALE


def _augment(tf, key, x, augment: AugmentConfig):
    """x: float32 (n, H, W, 1) in [0, 1]."""
    n = tf.shape(x)[0]

    def fold(step: int):
        return tf.random.experimental.stateless_fold_in(key, step)

    def uniform(step: int, shape, low, high):
        return tf.random.stateless_uniform(shape, fold(step), low, high)

    def per_image(step: int, low, high):
        return uniform(step, [n, 1, 1, 1], low, high)

    if augment.resolution:
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        keep = uniform(RESOLUTION, [], 1.0 - augment.resolution, 1.0)
        small = tf.cast(tf.math.maximum(tf.round(tf.cast(tf.stack([height, width]), tf.float32) * keep), 1.0),
                        tf.int32)
        x = tf.image.resize(tf.image.resize(x, small, method="area"), [height, width], method="bilinear")
    if augment.blur:
        x = _gaussian_blur(tf, x, uniform(BLUR, [], 0.0, augment.blur), radius=math.ceil(3 * augment.blur))
    x = tf.clip_by_value(x, 0.0, 1.0)
    if augment.gamma:
        x = tf.pow(x + 1e-6, tf.exp(per_image(GAMMA, -augment.gamma, augment.gamma)))
    if augment.contrast:
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        x = (x - mean) * per_image(CONTRAST, 1.0 - augment.contrast, 1.0 + augment.contrast) + mean
    if augment.brightness:
        x = x + per_image(BRIGHTNESS, -augment.brightness, augment.brightness)
    if augment.noise:
        x = x + tf.random.stateless_normal(tf.shape(x), fold(NOISE)) * per_image(NOISE_LEVEL, 0.0, augment.noise)
    return tf.clip_by_value(x, 0.0, 1.0)


def _gaussian_blur(tf, x, sigma, radius: int):
    """A separable Gaussian of standard deviation `sigma` pixels (a tensor; near 0: none).

    The kernel's reach is fixed (`radius`, three times the largest sigma) so that one graph
    serves every drawn sigma.
    """
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-0.5 * tf.square(offsets / tf.maximum(sigma, 1e-3)))
    weights = weights / tf.reduce_sum(weights)
    padded = tf.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC")
    rows = tf.nn.conv2d(padded, tf.reshape(weights, [-1, 1, 1, 1]), strides=1, padding="VALID")
    return tf.nn.conv2d(rows, tf.reshape(weights, [1, -1, 1, 1]), strides=1, padding="VALID")
