"""Geometric augmentation: the source paper's small random rotations, shifts and zooms.

The same transforms as Keras's RandomRotation, RandomTranslation and RandomZoom (tf_keras
2.21, image_preprocessing.py: the same ranges, matrices and projective-transform op, applied
in that order), with one difference: every draw is a stateless random op of the batch's
`key` (a shape-[2] integer tensor) instead of a draw from a layer's own stateful generator.
A stateful generator shared by tf.data's parallel calls hands its draws to batches in the
order the calls happen to run, so one seed gave another run each time; a key per batch
(cxr.train.data.worker_dataset) makes the run exact and keeps the calls parallel.
tests/test_seeds.py checks each step against the Keras layer it replaces.

Works on float32 (n, H, W, 1) batches, the training pipeline's model input, and returns
the same. Sampling takes the nearest pixel and fills from the nearest edge pixel (why:
cxr.train.data.augmentation).
"""

from __future__ import annotations

import math

from cxr.config import AugmentConfig

# Each step draws from its own fold of the key, so a step's draws stay the same whichever
# other steps are on.
ROTATION, SHIFT_Y, SHIFT_X, ZOOM = range(4)


def augmented(tf, images, key, augment: AugmentConfig):
    """`images` (float32, (n, H, W, 1)) rotated, shifted and zoomed by draws from `key`, per
    image; a strength of 0 leaves its step out."""
    n = tf.shape(images)[0]

    def uniform(step: int, shape, low: float, high: float):
        return tf.random.stateless_uniform(shape, tf.random.experimental.stateless_fold_in(key, step), low, high)

    if augment.rotation:
        images = rotated(tf, images, uniform(ROTATION, [n], -augment.rotation * 2 * math.pi,
                                             augment.rotation * 2 * math.pi))
    if augment.shift:
        images = shifted(tf, images, uniform(SHIFT_Y, [n], -augment.shift, augment.shift),
                         uniform(SHIFT_X, [n], -augment.shift, augment.shift))
    if augment.zoom:
        images = zoomed(tf, images, uniform(ZOOM, [n], 1.0 - augment.zoom, 1.0 + augment.zoom))
    return images


def rotated(tf, images, angles):
    """Each image turned by its angle (radians, (n,)) about its centre."""
    height, width = _size(tf, images)
    cos, sin = tf.cos(angles), tf.sin(angles)
    x_offset = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
    y_offset = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
    zeros = tf.zeros_like(angles)
    return _transformed(tf, images, [cos, -sin, x_offset, sin, cos, y_offset, zeros, zeros])


def shifted(tf, images, down, right):
    """Each image moved by its fractions ((n,) each) of its height down and its width right."""
    height, width = _size(tf, images)
    ones, zeros = tf.ones_like(down), tf.zeros_like(down)
    return _transformed(tf, images, [ones, zeros, -right * width, zeros, ones, -down * height, zeros, zeros])


def zoomed(tf, images, factors):
    """Each image sampled from its factor ((n,)) times its own area about its centre: above 1
    shows more of it, smaller."""
    height, width = _size(tf, images)
    zeros = tf.zeros_like(factors)
    x_offset = (width - 1.0) / 2.0 * (1.0 - factors)
    y_offset = (height - 1.0) / 2.0 * (1.0 - factors)
    return _transformed(tf, images, [factors, zeros, x_offset, zeros, factors, y_offset, zeros, zeros])


def _size(tf, images):
    return tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)


def _transformed(tf, images, rows: list):
    """`rows` ([a0, a1, a2, b0, b1, b2, c0, c1], each (n,)) map an output pixel to the input
    point it samples, as tf.raw_ops.ImageProjectiveTransformV3 defines them."""
    out = tf.raw_ops.ImageProjectiveTransformV3(images=images, transforms=tf.stack(rows, axis=1),
                                                output_shape=tf.shape(images)[1:3], fill_value=0.0,
                                                fill_mode="NEAREST", interpolation="NEAREST")
    return tf.ensure_shape(out, images.shape)
