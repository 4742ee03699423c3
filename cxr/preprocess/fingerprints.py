"""Perceptual fingerprints, and near-duplicate images grouped by them.

The same film exported twice by two collections is rarely byte-equal: resized, re-windowed,
re-compressed or cropped by a few pixels, it escapes the exact-duplicate check (a hash of
the decoded pixels), and when one copy lands in train and the other in test the test score
is inflated. A fingerprint is a 256-bit DCT hash (pHash) of the image as the model sees it
(after CLAHE and resizing, which undo most windowing differences): its 16x16 lowest
spatial frequencies, each above or below their median. Two images whose fingerprints differ in
at most `max_distance` bits are near-duplicates; groups are the connected components of
that relation, and cxr.preprocess.shards keeps each group inside one split.
"""

from __future__ import annotations

import numpy as np
from scipy import fft
from skimage import transform

from cxr.preprocess.components import Components

# The DCT runs on a 32 x 32 thumbnail and keeps its 16 x 16 lowest frequencies: fine detail
# (noise, compression) lives in the frequencies it drops. pHash's usual 8 x 8 (64 bits) does
# not separate chest X-rays, which all share one layout: on 40 real ones, distinct images
# came as close as 8 bits while resized or re-windowed copies were up to 12 apart; with
# 16 x 16, distinct images were at least 74 of 256 bits apart and such copies at most 24.
THUMBNAIL_SIDE = 32
KEPT_FREQUENCIES = 16
FINGERPRINT_BITS = KEPT_FREQUENCIES ** 2
WORDS = FINGERPRINT_BITS // 64
# Rows of the distance matrix computed at once: 128 x n x 4 uint64 words (86 MB at n = 21,000).
BLOCK_ROWS = 128


def perceptual_hash(gray8: np.ndarray) -> str:
    """The fingerprint of a 2-D image, as 64 hex digits."""
    thumbnail = transform.resize(gray8.astype(np.float32), (THUMBNAIL_SIDE, THUMBNAIL_SIDE),
                                 anti_aliasing=True, preserve_range=True)
    low = fft.dctn(thumbnail, norm="ortho")[:KEPT_FREQUENCIES, :KEPT_FREQUENCIES].ravel()
    # The median of the AC terms: the DC term (mean brightness) would skew it.
    bits = low > np.median(low[1:])
    return f"{int(''.join('1' if b else '0' for b in bits), 2):0{len(bits) // 4}x}"


def hamming_distance(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def as_words(fingerprints: list[str]) -> np.ndarray:
    """(n, WORDS) uint64: each fingerprint's bits, 64 at a time."""
    words = np.zeros((len(fingerprints), WORDS), dtype=np.uint64)
    for row, text in enumerate(fingerprints):
        words[row] = [int(text[16 * w:16 * (w + 1)], 16) for w in range(WORDS)]
    return words


def bit_distances(block: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Bits differing between each row of `block` and each row of `words`: (len(block), len(words))."""
    return np.bitwise_count(block[:, None, :] ^ words[None, :, :]).sum(axis=2, dtype=np.int64)


def near_duplicate_groups(fingerprints: list[str], max_distance: int) -> list[int]:
    """A group number per fingerprint: connected components of "differ in <= max_distance bits".

    All pairs are compared (n^2 XORs and popcounts, in blocks of rows). A group's number is
    the index of its first member.
    """
    words = as_words(fingerprints)
    groups = Components()
    for start in range(0, len(words), BLOCK_ROWS):
        block = words[start:start + BLOCK_ROWS]
        distances = bit_distances(block, words)
        for i, j in zip(*np.nonzero(distances <= max_distance)):
            groups.join(start + int(i), int(j))
    return [groups.root(i) for i in range(len(words))]


def nearest_distances(queries: list[str], references: list[str]) -> np.ndarray:
    """For each query fingerprint, the smallest distance to any reference (more than all bits when none)."""
    if not references:
        return np.full(len(queries), FINGERPRINT_BITS + 1)
    words, reference = as_words(queries), as_words(references)
    nearest = np.empty(len(words), dtype=np.int64)
    for start in range(0, len(words), BLOCK_ROWS):
        block = words[start:start + BLOCK_ROWS]
        nearest[start:start + len(block)] = bit_distances(block, reference).min(axis=1)
    return nearest
