"""Duplicate images within and across a data set's splits, and dropping them from evaluation.

Why: FER2013, and so FERPlus, holds byte-identical images inside and across its splits (the
FERPlus numbers are in docs/RESULTS.md, section "Duplicate images in FERPlus"). A test image
that is a copy of a training image is a free nearest neighbour for a transductive open-set
detector (and a memorised answer for the close-set model); a test image that is also a
validation image lets the rows a setting is chosen on leak into the rows it is reported on.

Two kinds of duplicate:

- **exact**: the same decoded pixels. The digest is BLAKE2b over the image's shape and its
  8-bit pixel values after decoding (:mod:`ferlib.data.decode`), a gray image stored with
  three equal channels counting as gray. File bytes would miss a copy saved with another
  PNG compression level or format; the path would miss every copy.
- **near**: the same photo re-encoded, brightened or contrast-stretched, which changes pixels
  but not the picture. A 64-bit DCT perceptual hash (pHash: the gray image area-resized to
  32 x 32, its 2-D DCT-II, the 8 x 8 lowest frequencies, each bit "coefficient above the
  median of the 63 non-DC ones") ignores a uniform brightness shift (only the DC term moves)
  and a contrast scale (the order of the coefficients stays), and moves a few bits under
  JPEG-like noise. Two images are near duplicates when their hashes differ in at most
  :data:`NEAR_THRESHOLD` bits.

:data:`NEAR_THRESHOLD` was measured on FERPlus's 35,262 images of the seven classes (every
pair of hashes; ``python -m ferlib.data.duplicates ../shared/data/ferplus --histogram
--show-pairs outputs/duplicates`` prints the distribution and writes side-by-side PNGs of
sample pairs at each distance). Each hash sets 32 of its 64 bits (the median splits the 63
non-DC coefficients; the DC bit is set for any image brighter than black), so distances are
even. Pairs whose pixels differ, looked at side by side: at distance 2 and 4 every pair
sampled was the same photo (8 of 8 and 32 of 32: a re-save, a brightness or contrast change,
a watermark added, a shift of a pixel or two); at 6, 29 of 32 (the other three: different
people in the same pose and framing); at 8, 13 of 32; at 10, 1 of 8; at 12 and 14 none. The
number of pairs grows steeply from 8 on (569, 1,202, 1,544, 2,908, 12,488, 63,510 pairs at
2, 4, ..., 12): the tail of the unrelated faces, whose distances peak near 30. So the
threshold is 6, the last distance where the pairs are still mostly the same photo (about 95%
of the pairs at 2-6 together). By default near copies are only reported: the evaluation
option drops exact copies, which are certain; ``dedupe='near'`` drops near copies as well
(about one in twenty of them a different photo).

Dropping for evaluation (:func:`dedupe_evaluation` and :func:`dedupe_open_rows`, used by
:func:`ferlib.data.prepare.load_splits` under ``data_options={'dedupe': ...}``): no training
row the model trains on is dropped; a test row is dropped when its pixels are those of a
training row (any class), or of an earlier test row (a group inside the test split keeps its
first row); a validation row when they are those of a training row or of a test row, or of
an earlier validation row; an open-class training row (in the open-set protocol an
evaluation row, never trained on) when they are those of a close training row or of an
earlier open-class training row. The reported set (the test split) wins over the tuning set
(the validation split) because it is the set results are compared on; the tuning set gives
up the shared image, so settings are never chosen on a reported image. Each picture is then
evaluated once, and none is also a training image.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations_with_replacement
from pathlib import Path
from typing import Any

import numpy as np

#: side of the gray image the perceptual hash is computed on
PHASH_SIDE = 32
#: the hash keeps the ``PHASH_BLOCK x PHASH_BLOCK`` lowest DCT frequencies: 64 bits
PHASH_BLOCK = 8
#: largest Hamming distance between two perceptual hashes that still means "the same photo"
#: (measured on FERPlus; module docstring)
NEAR_THRESHOLD = 6
#: pixel values hashed at once (a float64 work array of 64 MiB)
CHUNK_VALUES = 1 << 23
#: the order split pairs are reported in
SPLIT_ORDER: tuple[str, ...] = ("train", "valid", "test")


# ----------------------------------------------------------------------------- hashes
def canonical_pixels(image: Any) -> np.ndarray:
    """One image as uint8 ``(C, H, W)``, ``C`` 1 for gray (three equal channels are gray).

    Takes ``(H, W)``, ``(H, W, 3)`` (as decoded) or ``(C, H, W)`` with ``C`` 1 or 3 (a cache
    row); raises ``ValueError`` for anything else, a non-uint8 array included."""
    array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8 pixel values, got {array.dtype}")
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[-1] == 3 and array.shape[0] not in (1, 3):
        array = array.transpose(2, 0, 1)
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise ValueError(f"an image must be (H, W), (H, W, 3) or (C, H, W) with C 1 or 3, got {array.shape}")
    if array.shape[0] == 3 and (array[0] == array[1]).all() and (array[0] == array[2]).all():
        array = array[:1]
    return np.ascontiguousarray(array)


def pixel_digest(image: Any) -> bytes:
    """16-byte BLAKE2b of an image's shape and decoded pixels (:func:`canonical_pixels`)."""
    pixels = canonical_pixels(image)
    h = hashlib.blake2b(digest_size=16)
    h.update("x".join(map(str, pixels.shape)).encode())
    h.update(pixels.tobytes())
    return h.digest()


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of area resizing: each output pixel averages the input pixels
    its cell covers, weighted by the overlap (rows sum to one)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    pixel = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, pixel + 1) - np.maximum(lo, pixel), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: ``D @ x`` is the DCT of the vector ``x``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


_DCT = _dct_matrix(PHASH_SIDE)[:PHASH_BLOCK]


def phash(images: Any) -> np.ndarray:
    """64-bit DCT perceptual hashes (uint64) of a batch of equally sized images
    ``(N, C, H, W)`` uint8 (a cache's layout); colour images are hashed in gray (channel mean).
    """
    batch = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images)
    if batch.ndim != 4 or batch.shape[1] not in (1, 3):
        raise ValueError(f"phash expects (N, C, H, W) with C 1 or 3, got {batch.shape}")
    ry = _DCT @ _area_matrix(batch.shape[2], PHASH_SIDE)  # resize, then the 8 lowest frequencies
    rx = _DCT @ _area_matrix(batch.shape[3], PHASH_SIDE)
    out = np.empty(len(batch), dtype=np.uint64)
    chunk = max(1, CHUNK_VALUES // int(np.prod(batch.shape[1:])))
    for start in range(0, len(batch), chunk):
        gray = batch[start : start + chunk].astype(np.float64).mean(axis=1)
        block = (ry @ gray @ rx.T).reshape(len(gray), -1)
        median = np.median(block[:, 1:], axis=1, keepdims=True)  # the DC term only says how bright
        bits = np.packbits(block > median, axis=1)  # (n, 8) bytes, most significant bit first
        out[start : start + len(gray)] = bits.view(">u8").reshape(-1)
    return out


@dataclass
class ImageHashes:
    """Exact digests (``S16`` bytes) and perceptual hashes (uint64) of one split's rows."""

    digests: np.ndarray
    phashes: np.ndarray

    def __len__(self) -> int:
        return len(self.digests)

    def subset(self, rows: np.ndarray) -> ImageHashes:
        """The hashes of ``rows`` (positions), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return ImageHashes(self.digests[rows], self.phashes[rows])


def hash_images(images: Any, perceptual: bool = True) -> ImageHashes:
    """:class:`ImageHashes` of ``images``: a ``(N, C, H, W)`` uint8 array or tensor (a cache's
    ``images``), or a sequence of single images of any shapes (:func:`canonical_pixels`).
    ``perceptual=False`` skips the perceptual hashes (all zero), for exact copies only."""
    if hasattr(images, "shape") and len(images.shape) == 4:
        images = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images)
        digests = np.asarray([pixel_digest(images[i]) for i in range(len(images))], dtype="S16")
        if not perceptual or not len(images):
            return ImageHashes(digests, np.zeros(len(images), dtype=np.uint64))
        return ImageHashes(digests, phash(images))
    pixels = [canonical_pixels(image) for image in images]
    digests = np.asarray([pixel_digest(p) for p in pixels], dtype="S16")
    hashes = np.zeros(len(pixels), dtype=np.uint64)
    if not perceptual:
        return ImageHashes(digests, hashes)
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, p in enumerate(pixels):
        by_shape[p.shape[1:]].append(i)
    for rows in by_shape.values():  # phash works on equally sized batches (gray and colour mixed)
        hashes[rows] = phash(_gray_batch(pixels, rows))
    return ImageHashes(digests, hashes)


def _gray_batch(pixels: Sequence[np.ndarray], rows: Sequence[int]) -> np.ndarray:
    """Rows ``rows`` of ``pixels`` as one ``(n, 3, H, W)`` batch (gray repeated), so that
    :func:`phash`'s channel mean is the same for gray and colour images."""
    return np.stack([np.broadcast_to(pixels[i], (3, *pixels[i].shape[1:])) for i in rows])


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit differences between uint64 hashes ``a`` and ``b`` (broadcast), as uint8."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).astype(np.uint8)
    return _POPCOUNT8[np.ascontiguousarray(x)[..., None].view(np.uint8)].sum(axis=-1, dtype=np.uint8)


def near_pairs(hashes: np.ndarray, threshold: int, chunk: int = 1024) -> np.ndarray:
    """Every pair ``(i, j)``, ``i < j``, of ``hashes`` at most ``threshold`` bits apart, as an
    ``(M, 2)`` int64 array (brute force in chunks: 36k hashes take a few seconds)."""
    h = np.asarray(hashes, dtype=np.uint64)
    found = []
    for start in range(0, len(h), chunk):
        d = hamming(h[start : start + chunk, None], h[None, :])
        i, j = np.nonzero(d <= threshold)
        i = i + start
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(found).astype(np.int64) if found else np.zeros((0, 2), dtype=np.int64)


def distance_histogram(hashes: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, nearest)``: how many unordered pairs of ``hashes`` lie at each Hamming
    distance 0..64, and each hash's distance to its nearest other hash (for choosing
    :data:`NEAR_THRESHOLD`)."""
    h = np.asarray(hashes, dtype=np.uint64)
    counts = np.zeros(65, dtype=np.int64)
    nearest = np.full(len(h), 64, dtype=np.int64)
    for start in range(0, len(h), chunk):
        d = hamming(h[start : start + chunk, None], h[None, :]).astype(np.int64)
        rows = np.arange(start, min(start + chunk, len(h)))
        upper = rows[:, None] < np.arange(len(h))[None, :]
        counts += np.bincount(d[upper], minlength=65)
        d[np.arange(len(rows)), rows] = 65
        nearest[rows] = d.min(axis=1)
    return counts, nearest


# ----------------------------------------------------------------------------- groups and report
@dataclass
class DuplicateGroup:
    """Rows that are copies of one another: ``members`` ``(split, row)`` pairs in split order
    then row order, ``labels`` their labels (``-1`` where unknown)."""

    kind: str
    members: list[tuple[str, int]]
    labels: list[int]

    @property
    def splits(self) -> set[str]:
        return {s for s, _ in self.members}

    @property
    def conflict(self) -> bool:
        """Same picture, different labels (unknown labels left out)."""
        return len({label for label in self.labels if label >= 0}) > 1


@dataclass
class PairCount:
    """Duplicates between two splits ``a`` and ``b`` (``a == b``: inside one split).

    - ``rows_a`` / ``rows_b``: rows of ``a`` with a copy in ``b`` and of ``b`` with a copy in
      ``a``; inside one split, the rows with another copy in it (both equal).
    - ``groups``: groups holding rows of both (inside one split: two or more of its rows).
    - ``extra``: inside one split, the rows collapsing its groups to one row each removes
      (``rows_a - groups``); across splits, 0.
    - ``conflicts``: those groups whose rows in ``a`` and ``b`` carry different labels.
    """

    a: str
    b: str
    rows_a: int = 0
    rows_b: int = 0
    groups: int = 0
    extra: int = 0
    conflicts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class DuplicateReport:
    """Exact and near duplicate groups of a data set's splits, counted per split pair.

    ``exact`` / ``near``: counts per split pair (:class:`PairCount`); the near counts are
    those beyond the exact copies (see :func:`_near_counts`). ``by_class``: for each pair of
    different splits ``"a-b"`` and each label of ``b``, ``[rows of b with an exact copy in a,
    of which with a copy of the same label, rows of b]``.
    """

    sizes: dict[str, int]
    threshold: int | None
    exact_groups: list[DuplicateGroup]
    near_groups: list[DuplicateGroup]
    exact: list[PairCount]
    near: list[PairCount]
    by_class: dict[str, dict[int, list[int]]] = field(default_factory=dict)

    @property
    def conflicts(self) -> list[DuplicateGroup]:
        """Exact groups whose rows carry different labels (same pixels, different labels)."""
        return [g for g in self.exact_groups if g.conflict]

    def pair(self, a: str, b: str, kind: str = "exact") -> PairCount:
        """The count for splits ``a`` and ``b`` (either order)."""
        for count in self.exact if kind == "exact" else self.near:
            if {count.a, count.b} == {a, b} and (a == b) == (count.a == count.b):
                return count if count.a == a else _swapped(count)
        raise KeyError(f"no split pair {a}-{b}; splits: {', '.join(self.sizes)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (groups as ``[[split, row, label], ...]``)."""
        return {
            "sizes": self.sizes,
            "near_threshold": self.threshold,
            "exact": [c.to_dict() for c in self.exact],
            "near": [c.to_dict() for c in self.near],
            "by_class": {pair: {str(k): v for k, v in rows.items()} for pair, rows in self.by_class.items()},
            "n_exact_groups": len(self.exact_groups),
            "n_near_groups": len(self.near_groups),
            "conflicts": [[[s, r, lab] for (s, r), lab in zip(g.members, g.labels)] for g in self.conflicts],
        }


def _swapped(c: PairCount) -> PairCount:
    return PairCount(c.b, c.a, c.rows_b, c.rows_a, c.groups, c.extra, c.conflicts)


def _ordered(splits: Iterable[str]) -> list[str]:
    names = list(splits)
    return sorted(names, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))


def _components(edges: np.ndarray) -> list[np.ndarray]:
    """Connected components (node ids, ascending) of the graph given by its ``(M, 2)`` edges;
    only nodes that have an edge appear (union-find with path halving)."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if not len(edges):
        return []
    nodes, compact = np.unique(edges, return_inverse=True)
    compact = compact.reshape(-1, 2)
    parent = np.arange(len(nodes))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in compact.tolist():
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.asarray([root(i) for i in range(len(nodes))])
    order = np.argsort(roots, kind="stable")
    cuts = np.flatnonzero(np.diff(roots[order])) + 1
    return [nodes[np.sort(part)] for part in np.split(order, cuts)]


def _labels_differ(labels: np.ndarray) -> bool:
    return len({int(x) for x in labels if x >= 0}) > 1


def _count_pairs(splits: list[str], where: np.ndarray, labels: np.ndarray, groups: list[np.ndarray]) -> list[PairCount]:
    """Per split pair counts of exact ``groups`` (arrays of positions into the concatenated
    rows, whose split index is ``where`` and label ``labels``)."""
    counts = {(a, b): PairCount(a, b) for a, b in combinations_with_replacement(splits, 2)}
    for group in groups:
        split_of = where[group]
        for (a, b), c in counts.items():
            in_a, in_b = split_of == splits.index(a), split_of == splits.index(b)
            if a == b:
                if in_a.sum() < 2:
                    continue
                c.rows_a += int(in_a.sum())
                c.rows_b = c.rows_a
                c.extra += int(in_a.sum()) - 1
            elif not (in_a.any() and in_b.any()):
                continue
            else:
                c.rows_a += int(in_a.sum())
                c.rows_b += int(in_b.sum())
            c.groups += 1
            c.conflicts += int(_labels_differ(labels[group[in_a | in_b]]))
    return list(counts.values())


def _near_counts(
    splits: list[str], where: np.ndarray, labels: np.ndarray, picture: np.ndarray, pairs: np.ndarray
) -> list[PairCount]:
    """Per split pair counts of near duplicates *beyond* the exact ones (``pairs``: row pairs
    within the threshold whose pixels differ; ``picture``: each row's exact-copy class).

    Across splits ``a`` and ``b``: ``rows_b`` the rows of ``b`` with a near copy in ``a`` and
    no exact copy there (and ``rows_a`` the other way); ``groups`` / ``conflicts`` the
    connected sets of such rows and those with different labels. Inside one split: distinct
    pictures (exact copies counted once) with a near copy in it (``rows_a``), their connected
    groups, and ``extra`` = pictures - groups, the rows collapsing them would remove on top
    of the exact collapse."""
    out = []
    w0, w1 = where[pairs[:, 0]], where[pairs[:, 1]]
    for a, b in combinations_with_replacement(splits, 2):
        ia, ib = splits.index(a), splits.index(b)
        c = PairCount(a, b)
        if a == b:
            edges = picture[pairs[(w0 == ia) & (w1 == ia)]]
            comps = _components(edges)
            c.rows_a = c.rows_b = int(sum(len(g) for g in comps))
            c.groups = len(comps)
            c.extra = c.rows_a - c.groups
            rows_of = where == ia
            c.conflicts = sum(_labels_differ(labels[rows_of & np.isin(picture, g)]) for g in comps)
        else:
            sel = ((w0 == ia) & (w1 == ib)) | ((w0 == ib) & (w1 == ia))
            first_in_a = w0[sel] == ia
            ra = np.where(first_in_a, pairs[sel, 0], pairs[sel, 1])
            rb = np.where(first_in_a, pairs[sel, 1], pairs[sel, 0])
            new_b = ~np.isin(picture[rb], picture[where == ia])  # no exact copy of it in a
            new_a = ~np.isin(picture[ra], picture[where == ib])
            c.rows_a, c.rows_b = len(np.unique(ra[new_a])), len(np.unique(rb[new_b]))
            comps = _components(np.stack([ra, rb], axis=1)[new_a & new_b])
            c.groups = len(comps)
            c.conflicts = sum(_labels_differ(labels[g]) for g in comps)
        out.append(c)
    return out


def find_duplicates(
    images: Mapping[str, Any] | None = None,
    labels: Mapping[str, Any] | None = None,
    near_threshold: int | None = NEAR_THRESHOLD,
    hashes: Mapping[str, ImageHashes] | None = None,
) -> DuplicateReport:
    """Exact and near duplicate groups of the splits in ``images`` (split name -> a cache's
    ``(N, C, H, W)`` uint8 images, or a sequence of single images), counted per split pair.

    ``labels`` (split -> one label per row, optional) marks label conflicts: groups whose
    copies carry different labels. ``near_threshold``: the largest Hamming distance between
    perceptual hashes that counts as a near duplicate (``None``: exact duplicates only).
    ``hashes``: :func:`hash_images` of each split, when already computed (then ``images`` is
    not read).
    """
    if hashes is None:
        if images is None:
            raise ValueError("find_duplicates needs images or their hashes")
        hashes = {split: hash_images(rows) for split, rows in images.items()}
    if near_threshold is not None and not 0 <= int(near_threshold) <= 64:
        raise ValueError(f"near_threshold must be in 0..64 bits, got {near_threshold}")
    splits = _ordered(hashes)
    sizes = {s: len(hashes[s]) for s in splits}
    where = np.concatenate([np.full(sizes[s], k, dtype=np.int64) for k, s in enumerate(splits)])
    offsets = dict(zip(splits, np.cumsum([0] + [sizes[s] for s in splits])[:-1].tolist()))
    lab = np.full(len(where), -1, dtype=np.int64)
    for s in splits:
        if labels is not None and s in labels:
            values = np.asarray(labels[s].detach().cpu() if hasattr(labels[s], "detach") else labels[s]).reshape(-1)
            if len(values) != sizes[s]:
                raise ValueError(f"split {s!r}: {len(values)} labels for {sizes[s]} images")
            lab[offsets[s] : offsets[s] + sizes[s]] = values
    digests = np.concatenate([hashes[s].digests for s in splits]) if splits else np.zeros(0, dtype="S16")
    _, inverse = np.unique(digests, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    cuts = np.flatnonzero(np.diff(inverse[order])) + 1
    exact = [g for g in np.split(order, cuts) if len(g) > 1] if len(order) else []

    def group(kind: str, rows: np.ndarray) -> DuplicateGroup:
        rows = np.sort(rows)
        members = [(splits[where[r]], int(r - offsets[splits[where[r]]])) for r in rows.tolist()]
        return DuplicateGroup(kind, members, [int(x) for x in lab[rows]])

    near: list[np.ndarray] = []
    near_counts: list[PairCount] = []
    if near_threshold is not None:
        phashes = np.concatenate([hashes[s].phashes for s in splits])
        pairs = near_pairs(phashes, int(near_threshold))
        pairs = pairs[inverse[pairs[:, 0]] != inverse[pairs[:, 1]]]  # pixels differ: not an exact copy
        # a near group: two or more different pictures, each with all its exact copies
        near = [np.flatnonzero(np.isin(inverse, pictures)) for pictures in _components(inverse[pairs])]
        near_counts = _near_counts(splits, where, lab, inverse, pairs)
    by_class: dict[str, dict[int, list[int]]] = {}
    for ia, a in enumerate(splits):
        for b in splits[ia + 1 :]:
            table: dict[int, list[int]] = {int(k): [0, 0, 0] for k in np.unique(lab[where == splits.index(b)])}
            for k in table:
                table[k][2] = int(((where == splits.index(b)) & (lab == k)).sum())
            for g in exact:
                in_a = g[where[g] == splits.index(a)]
                if not len(in_a):
                    continue
                for r in g[where[g] == splits.index(b)].tolist():
                    table[int(lab[r])][0] += 1
                    table[int(lab[r])][1] += int(lab[r] in set(lab[in_a].tolist()))
            by_class[f"{a}-{b}"] = table
    return DuplicateReport(
        sizes=sizes,
        threshold=None if near_threshold is None else int(near_threshold),
        exact_groups=[group("exact", g) for g in exact],
        near_groups=[group("near", g) for g in near],
        exact=_count_pairs(splits, where, lab, exact),
        near=near_counts,
        by_class=by_class,
    )


def format_report(report: DuplicateReport, class_names: Mapping[int, str] | None = None) -> str:
    """The report as plain-text tables (what the command prints)."""
    names = dict(class_names or {})
    sizes = ", ".join(f"{s} {n}" for s, n in report.sizes.items())
    lines = [f"rows: {sizes}", ""]
    kinds = [("exact (same decoded pixels)", report.exact)]
    if report.threshold is not None:
        kinds.append((f"near, beyond the exact copies (pHash distance <= {report.threshold})", report.near))
    for title, counts in kinds:
        lines += [title, f"{'pair':<13}{'rows a':>8}{'rows b':>8}{'groups':>8}{'extra':>7}{'label conflicts':>17}"]
        for c in counts:
            lines.append(f"{c.a + '-' + c.b:<13}{c.rows_a:>8}{c.rows_b:>8}{c.groups:>8}{c.extra:>7}{c.conflicts:>17}")
        lines.append("")
    for pair, table in report.by_class.items():
        a, b = pair.split("-")
        lines.append(f"{b} rows with an exact copy in {a}, per {b} label (copies of the same label / all):")
        for k, (n, same, total) in sorted(table.items()):
            lines.append(f"  {names.get(k, str(k)):<10} {n:>5} of {total:>5} ({same} of the same label)")
        lines.append("")
    conflicts = report.conflicts
    lines.append(f"exact groups: {len(report.exact_groups)}, of which {len(conflicts)} with different labels")
    if report.threshold is not None:
        lines.append(f"near groups (pixels differ): {len(report.near_groups)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- evaluation rows
#: the ``dedupe`` data option's modes: nothing dropped, exact copies dropped, exact and near
#: copies (perceptual hash within :data:`NEAR_THRESHOLD`) dropped
DEDUPE_MODES: tuple[str, ...] = ("off", "exact", "near")
#: why :func:`dedupe_evaluation` dropped a row, in the order the reasons are tried
DROP_REASONS: tuple[str, ...] = ("train", "test", "repeat", "near-train", "near-test", "near-repeat")


#: the evaluation rows :func:`dedupe_evaluation` and :func:`dedupe_open_rows` look at: the
#: test split, the validation split, and the open class's training rows (rows of the training
#: split that the close-set model never trains on and the open-set protocol evaluates)
EVALUATION_PARTS: dict[str, str] = {
    "test": "test",
    "valid": "valid",
    "open_train": "the open class's training rows",
}


@dataclass
class Dedupe:
    """Which evaluation rows :func:`dedupe_evaluation` (and :func:`dedupe_open_rows`) keep.

    ``keep[part]``: boolean mask over the rows of one part of :data:`EVALUATION_PARTS`
    (``"test"``, ``"valid"``, ``"open_train"``: positions in the open-set split's
    ``eval_train_index``); ``reasons[part]``: per row, why it was dropped
    (:data:`DROP_REASONS`: ``"train"`` a copy of a training row, for ``open_train`` of a close
    training row; ``"test"`` of a test row; ``"repeat"`` of an earlier kept row of its own
    part; ``"near-..."`` the same for near copies), ``""`` for a kept row.
    """

    mode: str
    keep: dict[str, np.ndarray]
    reasons: dict[str, np.ndarray]
    threshold: int | None = None

    def kept_rows(self, part: str) -> np.ndarray:
        """Rows of ``part`` kept, ascending (what the deduplicated part holds, in order)."""
        return np.flatnonzero(self.keep[part]).astype(np.int64)

    def remap(self, part: str) -> np.ndarray:
        """Old row -> row in the deduplicated part, ``-1`` for a dropped row."""
        keep = self.keep[part]
        out = np.full(len(keep), -1, dtype=np.int64)
        out[keep] = np.arange(int(keep.sum()))
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        """Per part: ``before``, ``kept``, ``dropped`` and ``dropped_<reason>`` for each of
        :data:`DROP_REASONS` (``before == kept + dropped``; the reasons add up to ``dropped``)."""
        out = {}
        for part, keep in self.keep.items():
            entry = {"before": len(keep), "kept": int(keep.sum()), "dropped": int((~keep).sum())}
            for reason in DROP_REASONS:
                entry[f"dropped_{reason}"] = int((self.reasons[part] == reason).sum())
            out[part] = entry
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-able record for manifests and results: the mode, the threshold and the counts."""
        return {"mode": self.mode, "near_threshold": self.threshold, **self.counts()}

    def describe(self, dataset: str = "data") -> str:
        """One log line with the counts."""
        words = {
            "train": "copies of training rows",
            "test": "copies of test rows",
            "repeat": "repeats",
            "near-train": "near copies of training rows",
            "near-test": "near copies of test rows",
            "near-repeat": "near repeats",
        }
        parts = []
        for part, c in self.counts().items():
            shown = [r for r in DROP_REASONS if c[f"dropped_{r}"] or r in ("train", "repeat")]
            why = [f"{c[f'dropped_{r}']} {words[r]}" for r in shown]
            if part == "open_train":
                why = [w.replace("training rows", "close training rows") for w in why]
            name = EVALUATION_PARTS.get(part, part)
            parts.append(f"{name} {c['before']} -> {c['kept']} rows (dropped {c['dropped']}: {', '.join(why)})")
        how = "exact copies" if self.mode == "exact" else f"exact and near copies (pHash <= {self.threshold})"
        return f"{dataset}: duplicate evaluation rows dropped (data_options dedupe={self.mode!r}, {how}): " + "; ".join(
            parts
        )


def _near_any(rows: np.ndarray, others: np.ndarray, threshold: int, chunk: int = 1024) -> np.ndarray:
    """For each hash of ``rows``, whether some hash of ``others`` is within ``threshold`` bits."""
    out = np.zeros(len(rows), dtype=bool)
    if not len(others):
        return out
    for start in range(0, len(rows), chunk):
        d = hamming(rows[start : start + chunk, None], others[None, :])
        out[start : start + chunk] = (d <= threshold).any(axis=1)
    return out


def _check_mode(mode: str) -> None:
    if mode not in DEDUPE_MODES[1:]:
        raise ValueError(f"dedupe mode must be one of {', '.join(map(repr, DEDUPE_MODES[1:]))}, got {mode!r}")


def _drop_reasons(
    rows: ImageHashes, train: ImageHashes, before: ImageHashes | None, near: bool, threshold: int
) -> np.ndarray:
    """Why each of ``rows`` goes (``""``: kept): a copy of a ``train`` row, of a ``before`` row
    (reason ``"test"``), of an earlier kept row of ``rows``; near copies after exact ones."""
    n = len(rows)
    why = np.full(n, "", dtype=object)
    seen_train = set(train.digests.tolist())
    earlier = set() if before is None else set(before.digests.tolist())
    none = np.zeros(n, dtype=bool)
    near_train = _near_any(rows.phashes, train.phashes, threshold) if near else none
    near_before = _near_any(rows.phashes, before.phashes, threshold) if near and before is not None else none
    within: dict[int, list[int]] = defaultdict(list)  # row -> earlier rows near it
    if near:
        for i, j in near_pairs(rows.phashes, threshold).tolist():
            within[j].append(i)
    kept: set[bytes] = set()
    for i, d in enumerate(rows.digests.tolist()):
        if d in seen_train:
            why[i] = "train"
        elif d in earlier:
            why[i] = "test"
        elif d in kept:
            why[i] = "repeat"
        elif near_train[i]:
            why[i] = "near-train"
        elif near_before[i]:
            why[i] = "near-test"
        elif any(why[k] == "" for k in within.get(i, ())):
            why[i] = "near-repeat"
        else:
            kept.add(d)
    return why.astype(str)


def dedupe_evaluation(
    train: ImageHashes,
    test: ImageHashes,
    valid: ImageHashes | None = None,
    mode: str = "exact",
    threshold: int = NEAR_THRESHOLD,
) -> Dedupe:
    """The test and validation rows to keep, from the hashes (:func:`hash_images`) of the
    training, test and (own) validation rows. Training rows are never dropped.

    ``mode="exact"``: a test row goes when its pixels are a training row's (any class: the
    open class's training rows are evaluated too) or an earlier kept test row's; a validation
    row when they are a training row's, a test row's or an earlier kept validation row's (the
    module docstring says why the test split wins). ``"near"``: the same, a copy also being a
    perceptual hash within ``threshold`` bits; inside a split a row goes when it is near an
    earlier *kept* row, so no two kept rows are near each other (a chain of near copies keeps
    its first row and every row far enough from the kept ones).
    """
    _check_mode(mode)
    near = mode == "near"
    keep: dict[str, np.ndarray] = {}
    reasons: dict[str, np.ndarray] = {}
    for part, rows, before in (("test", test, None), ("valid", valid, test)):
        if rows is not None:
            reasons[part] = _drop_reasons(rows, train, before, near, threshold)
            keep[part] = reasons[part] == ""
    return Dedupe(mode, keep, reasons, threshold if near else None)


def dedupe_open_rows(result: Dedupe, open_rows: ImageHashes, close_train: ImageHashes) -> Dedupe:
    """``result`` with the open class's training rows added as part ``"open_train"``: such a
    row is an evaluation row (never trained on), so it goes when it is a copy of a close
    training row (the model's training data, a free nearest neighbour with the wrong answer)
    or of an earlier kept open-class training row, under ``result``'s mode. No training row
    the model trains on is dropped; the test rows that copied an open-class training row are
    already gone (:func:`dedupe_evaluation`), so the evaluation set holds each picture once."""
    reasons = _drop_reasons(open_rows, close_train, None, result.mode == "near", result.threshold or NEAR_THRESHOLD)
    result.reasons["open_train"] = reasons
    result.keep["open_train"] = reasons == ""
    return result


# ----------------------------------------------------------------------------- command
def format_open_classes(
    result: Dedupe, hashes: Mapping[str, ImageHashes], labels: Mapping[str, Any], names: Mapping[int, str]
) -> str:
    """Per open class, the open-set evaluation set (the test split and the open class's
    training rows) on the whole splits and after ``result`` and :func:`dedupe_open_rows`, as
    :func:`ferlib.data.prepare.load_splits` builds it."""
    train, test = np.asarray(labels["train"]), np.asarray(labels["test"])
    keep_test = result.keep["test"]
    lines = [
        "open class: evaluation rows whole -> deduplicated; open rows whole -> deduplicated; "
        "open-class training rows dropped (copies of close training rows / repeats)"
    ]
    for k in sorted(set(train.tolist())):
        rows, close = np.flatnonzero(train == k), np.flatnonzero(train != k)
        part = Dedupe(result.mode, {}, {}, result.threshold)
        dedupe_open_rows(part, hashes["train"].subset(rows), hashes["train"].subset(close))
        c = part.counts()["open_train"]
        before, after = len(test) + len(rows), int(keep_test.sum()) + c["kept"]
        open_before = int((test == k).sum()) + len(rows)
        open_after = int(((test == k) & keep_test).sum()) + c["kept"]
        why = f"{c['dropped_train'] + c['dropped_near-train']} / {c['dropped_repeat'] + c['dropped_near-repeat']}"
        lines.append(
            f"  {names.get(k, str(k)):<10} {before:>6} -> {after:>6}; {open_before:>6} -> {open_after:>6}; "
            f"{c['dropped']} ({why})"
        )
    return "\n".join(lines)


def _load_split_images(dataset: str, root: Path, num_classes: int) -> tuple[dict, dict, dict, dict]:
    """Each split's decoded images (at their own size), labels, relative paths, and the
    class names; the rows the pipeline uses (the loader's, the experiment's classes)."""
    from PIL import Image

    from ferlib.emotions import Emotion

    from .base import SPLITS, check_num_classes, load_dataset
    from .decode import to_8bit
    from .errors import DataError, MissingSplitError
    from .prepare import dataset_options, loader_name

    experiment = check_num_classes(num_classes, root)
    options = dataset_options(dataset, root, num_classes)
    images, labels, paths = {}, {}, {}
    for split in SPLITS:
        try:
            ds = load_dataset(loader_name(dataset), root, split, **options)
        except MissingSplitError:
            continue
        ds, _ = ds.keep_classes(experiment)
        decoded = []
        for path in ds.paths:
            try:
                with Image.open(path) as im:
                    im.load()
                    decoded.append(np.asarray(to_8bit(im)))
            except Exception as exc:  # noqa: BLE001 - re-raised with the file name
                raise DataError(path, f"cannot decode image ({exc})") from exc
        images[split], labels[split], paths[split] = decoded, ds.labels, ds.relpaths()
    return images, labels, paths, {int(e): e.label for e in Emotion}


def _save_pairs(folder: Path, images: dict, paths: dict, hashes: dict, per_distance: int, max_distance: int) -> None:
    """Side-by-side PNGs of up to ``per_distance`` pairs at each distance 1..``max_distance``
    (pixels differ), seeded, for inspecting where "same photo" stops."""
    from PIL import Image

    splits = _ordered(hashes)
    flat = [(s, i) for s in splits for i in range(len(hashes[s]))]
    ph = np.concatenate([hashes[s].phashes for s in splits])
    dg = np.concatenate([hashes[s].digests for s in splits])
    pairs = near_pairs(ph, max_distance)
    pairs = pairs[dg[pairs[:, 0]] != dg[pairs[:, 1]]]
    d = hamming(ph[pairs[:, 0]], ph[pairs[:, 1]])
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for dist in range(1, max_distance + 1):
        at = np.flatnonzero(d == dist)
        for k in rng.permutation(at)[:per_distance].tolist():
            (sa, ia), (sb, ib) = flat[pairs[k, 0]], flat[pairs[k, 1]]
            a, b = (canonical_pixels(images[s][i]) for s, i in ((sa, ia), (sb, ib)))
            if a.shape != b.shape:
                continue
            side = np.concatenate([a, np.full((a.shape[0], a.shape[1], 4), 255, np.uint8), b], axis=2)
            side = side[0] if side.shape[0] == 1 else side.transpose(1, 2, 0)
            name = f"d{dist:02d}_{sa}-{Path(paths[sa][ia]).stem}_{sb}-{Path(paths[sb][ib]).stem}.png"
            Image.fromarray(side).resize((side.shape[1] * 3, side.shape[0] * 3), Image.NEAREST).save(folder / name)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ferlib.data.duplicates ROOT``: print a data set's duplicate report."""
    p = argparse.ArgumentParser(
        prog="python -m ferlib.data.duplicates",
        description="Exact and near duplicate images within and across a data set's splits.",
    )
    p.add_argument("root", help="data set root (FERPlus: the folder holding FER2013Train/Valid/Test)")
    p.add_argument("--dataset", default="ferplus", help="loader name (default ferplus)")
    p.add_argument("--num-classes", type=int, default=7, help="7 (contempt dropped, as the pipeline) or 8")
    p.add_argument("--threshold", type=int, default=NEAR_THRESHOLD, help="near-duplicate pHash distance")
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.add_argument("--histogram", action="store_true", help="print the distribution of pHash distances")
    p.add_argument("--show-pairs", metavar="DIR", help="write side-by-side PNGs of sample pairs per distance")
    p.add_argument("--max-distance", type=int, default=12, help="largest distance --show-pairs samples")
    args = p.parse_args(argv)

    from .errors import DataError

    root = Path(args.root)
    try:
        images, labels, paths, names = _load_split_images(args.dataset, root, args.num_classes)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    hashes = {split: hash_images(rows) for split, rows in images.items()}
    report = find_duplicates(labels=labels, near_threshold=args.threshold, hashes=hashes)
    print(f"{args.dataset} at {root} ({args.num_classes} classes)")
    print(format_report(report, names))
    conflicts = report.conflicts
    if conflicts:
        print("\nlabel conflicts (same pixels, different labels), first 10:")
        for g in conflicts[:10]:
            print("  " + ", ".join(f"{paths[s][r]} {names.get(lab, lab)}" for (s, r), lab in zip(g.members, g.labels)))
    if "train" in hashes and "test" in hashes:
        for mode in DEDUPE_MODES[1:]:
            dropped = dedupe_evaluation(hashes["train"], hashes["test"], hashes.get("valid"), mode=mode)
            print("\n" + dropped.describe(args.dataset))
            if mode == "exact":
                for part in ("test", "valid"):
                    if part in dropped.keep:
                        lab, keep = np.asarray(labels[part]), dropped.keep[part]
                        per = [
                            f"{names.get(k, k)} {int((~keep[lab == k]).sum())} of {int((lab == k).sum())}"
                            for k in sorted(set(lab.tolist()))
                        ]
                        print(f"{part} rows dropped per label: " + ", ".join(per))
                print(format_open_classes(dropped, hashes, labels, names))
    if args.histogram:
        all_hashes = np.concatenate([hashes[s].phashes for s in _ordered(hashes)])
        counts, nearest = distance_histogram(all_hashes)
        print("\npHash distance (always even): pairs at it / images whose nearest other image is at it")
        for d in range(0, 25, 2):
            print(f"  {d:>2} {counts[d]:>12} {int((nearest == d).sum()):>7}")
    if args.show_pairs:
        _save_pairs(Path(args.show_pairs), images, paths, hashes, 6, args.max_distance)
        print(f"\nsample pairs written to {args.show_pairs}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
