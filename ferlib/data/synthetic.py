"""Deterministic synthetic face-expression data set: ferkit's embedded default data.

The README's first command and CI need a data set that exists on a fresh machine with no
download. This module draws one from a seed: small grayscale cartoon faces whose
*identity* varies (face size and aspect, skin tone, background, hair, feature placement,
position, rotation, lighting) and whose *expression* comes from a handful of FACS-like
action units (AUs). Each of the seven :data:`~ferlib.emotions.BASIC7` emotions is a
prototype vector of AU intensities; a sample is::

    aus = clip(intensity * prototype[emotion] + au_jitter * N(0, 1), 0, 1)
    intensity ~ U(cfg.intensity)      # one draw per sample, shared by its AUs

then rendered at ``2x`` with :mod:`PIL.ImageDraw`, rotated, down-sampled with a box
filter (anti-aliased edges), shaded with a lighting gradient and given Gaussian pixel
noise. The jitter also switches on small amounts of AUs outside the prototype, so classes
overlap the way real expressions do: neutral versus low-intensity sadness, fear versus
surprise (both raise the brows, widen the eyes and open the mouth; fear adds AU4 and the
AU20 lip stretch), anger versus disgust (both lower the brows).

Prototype table (intensity at full expression; ``.`` = 0)::

    emotion    AU1  AU2  AU4  AU5  AU6  AU7  AU9 AU10 AU12 AU15 AU20 AU23 AU24 AU25 AU26
    neutral     .    .    .    .    .    .    .    .    .    .    .    .    .    .    .
    happiness   .    .    .    .   0.9  0.2   .    .   1.0   .    .    .    .   0.5   .
    surprise   1.0  1.0   .   0.9   .    .    .    .    .    .    .    .    .   0.6  0.9
    sadness    1.0   .   0.6   .    .   0.3   .    .    .   1.0   .    .    .    .    .
    anger       .    .   1.0  0.5   .   0.7   .    .    .    .    .   0.6  0.9   .    .
    disgust     .    .   0.5   .    .   0.4  1.0  0.9   .   0.5   .    .    .   0.3   .
    fear       1.0  0.7  0.7  1.0   .    .    .    .    .    .   1.0   .    .   0.6  0.5

    i.e. happiness = AU6+AU12(+AU25), sadness = AU1+AU4+AU15, surprise = AU1+AU2+AU5+AU26,
    fear = AU1+AU2+AU4+AU5+AU20+AU26, anger = AU4+AU5+AU7+AU23+AU24,
    disgust = AU9+AU10+AU15(+AU4), neutral = none.

How each AU is drawn:

* AU1 inner brow raiser / AU2 outer brow raiser: lift the inner / outer brow ends.
* AU4 brow lowerer: lowers (mostly the inner ends of) the brows, pulls them together and
  draws vertical furrows between them.
* AU5 upper lid raiser / AU7 lid tightener / AU6 cheek raiser: eye openness
  (``0.55 + 0.5 AU5 - 0.35 AU7 - 0.3 AU6``); AU6 also draws a crease under each eye and
  cheek folds.
* AU9 nose wrinkler: wrinkles across the nose bridge, raised and flared nostrils.
* AU10 upper lip raiser: lifts the middle of the upper lip (snarl), nasolabial folds.
* AU12 lip corner puller / AU15 lip corner depressor: mouth corners up / down.
* AU20 lip stretcher: widens the mouth, thins the lips.
* AU23 lip tightener / AU24 lip presser: narrow, thin, closed mouth (a hard line).
* AU25 lips part / AU26 jaw drop (AU27 folded in): mouth opening.

Sizes: each split's total is spread over the seven classes by ``class_shares``, FERPlus's
training-split shares by default (36% neutral, 27% happiness, 13% surprise, 13% sadness,
9% anger, 0.7% disgust, 2% fear; every class gets at least one sample), so that errors
and an open class's pseudo labels flow towards the large classes as they do on FERPlus;
``class_shares=None`` gives balanced splits. Samples are shuffled within a split.

Determinism: every split draws from its own ``numpy.random.Generator`` (PCG64) seeded by
``SeedSequence([salt, seed, split code])``, so a split depends only on the seed, its own
size and the rendering settings (``n_train`` does not change the test images). Given the
same Pillow version the arrays are byte-identical on any machine; ``synthetic.json``
records a hash of the arrays (not of the PNG bytes, which depend on the zlib build).

On disk (:func:`write_synthetic`), the generic class-folder layout::

    root/synthetic.json
    root/<split>/<emotion label>/<split>_<00000>.png   # split in train, valid, test

(``<emotion label>`` is :attr:`Emotion.label`, e.g. ``happiness``; the index runs over
the whole split; only classes with at least one image get a folder.)

CLI::

    python -m ferlib.data.synthetic --root data/synthetic --seed 0 [--n-train 2100 ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ferlib.data.errors import DataError
from ferlib.emotions import BASIC7, Emotion
from ferlib.io import hash_strings, write_json

__all__ = [
    "AU_NAMES",
    "FERPLUS_TRAIN_COUNTS",
    "FERPLUS_TRAIN_SHARES",
    "GENERATOR_VERSION",
    "PROTOTYPES",
    "SPLITS",
    "SyntheticConfig",
    "class_counts",
    "content_hash",
    "ensure_synthetic",
    "generate_images",
    "main",
    "preview_grid",
    "render_face",
    "save_preview",
    "write_synthetic",
]

#: Bumped whenever the rendering changes, so an old data set on disk is not mistaken for
#: a new one with the same config.
GENERATOR_VERSION = 2  # 2: FERPlus class shares by default

SPLITS: tuple[str, ...] = ("train", "valid", "test")
_SPLIT_CODE = {"train": 0, "valid": 1, "test": 2}
_SALT = 0xFE5_7A7  # keeps these streams apart from other users of the same seed
_SUPERSAMPLE = 2
_META = "synthetic.json"

AU_NAMES: tuple[str, ...] = (
    "AU1",
    "AU2",
    "AU4",
    "AU5",
    "AU6",
    "AU7",
    "AU9",
    "AU10",
    "AU12",
    "AU15",
    "AU20",
    "AU23",
    "AU24",
    "AU25",
    "AU26",
)
_AU = {name: i for i, name in enumerate(AU_NAMES)}

#: Emotion -> AU intensities at full expression (see the module docstring's table).
PROTOTYPES: dict[Emotion, dict[str, float]] = {
    Emotion.NEUTRAL: {},
    Emotion.HAPPINESS: {"AU6": 0.9, "AU7": 0.2, "AU12": 1.0, "AU25": 0.5},
    Emotion.SURPRISE: {"AU1": 1.0, "AU2": 1.0, "AU5": 0.9, "AU25": 0.6, "AU26": 0.9},
    Emotion.SADNESS: {"AU1": 1.0, "AU4": 0.6, "AU7": 0.3, "AU15": 1.0},
    Emotion.ANGER: {"AU4": 1.0, "AU5": 0.5, "AU7": 0.7, "AU23": 0.6, "AU24": 0.9},
    Emotion.DISGUST: {"AU4": 0.5, "AU7": 0.4, "AU9": 1.0, "AU10": 0.9, "AU15": 0.5, "AU25": 0.3},
    Emotion.FEAR: {"AU1": 1.0, "AU2": 0.7, "AU4": 0.7, "AU5": 1.0, "AU20": 1.0, "AU25": 0.6, "AU26": 0.5},
}


#: Majority-vote class counts of FERPlus's training split in ``BASIC7`` order (neutral,
#: happiness, surprise, sadness, anger, disgust, fear; contempt, unknown and no-face rows
#: dropped): 10295, 7526, 3557, 3530, 2463, 191, 655 of 28,217. A property of the data
#: set, recomputed from the real files by tests/test_synthetic.py when FERPlus is present.
FERPLUS_TRAIN_COUNTS: tuple[int, ...] = (10295, 7526, 3557, 3530, 2463, 191, 655)
#: the default class shares of the synthetic set
FERPLUS_TRAIN_SHARES: tuple[float, ...] = tuple(round(c / sum(FERPLUS_TRAIN_COUNTS), 6) for c in FERPLUS_TRAIN_COUNTS)


def _prototype_matrix() -> np.ndarray:
    """(len(BASIC7), len(AU_NAMES)) prototype intensities, rows in ``BASIC7`` order."""
    mat = np.zeros((len(BASIC7), len(AU_NAMES)), dtype=np.float64)
    for row, emotion in enumerate(BASIC7):
        for au, value in PROTOTYPES[emotion].items():
            mat[row, _AU[au]] = value
    return mat


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that determines the synthetic data set (it is a pure function of this).

    ``n_train`` / ``n_valid`` / ``n_test`` are per-split totals, spread over the seven
    classes by ``class_shares`` (see :func:`class_counts`). The default shares are FERPlus's
    (:data:`FERPLUS_TRAIN_SHARES`): real FER data is dominated by neutral and happy faces,
    and that imbalance, not only how alike two expressions look, decides where a model's
    errors and an open class's pseudo labels go (on FERPlus most of them go to neutral).
    A balanced set taught the opposite lesson; ``class_shares=None`` still gives one.
    ``intensity`` bounds the per-sample expression intensity, ``au_jitter`` is the
    standard deviation of the per-AU Gaussian jitter (in AU units, 0..1) and
    ``pixel_noise`` the standard deviation of the pixel noise in grey levels.
    """

    n_train: int = 2100
    n_valid: int = 350
    n_test: int = 700
    image_size: int = 48
    seed: int = 0
    intensity: tuple[float, float] = (0.3, 1.0)
    au_jitter: float = 0.15
    pixel_noise: float = 4.0
    class_shares: tuple[float, ...] | None = FERPLUS_TRAIN_SHARES  # None: balanced

    def __post_init__(self) -> None:
        for name in ("n_train", "n_valid", "n_test", "image_size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"SyntheticConfig.{name} must be an integer, got {value!r}")
            if value < 0:
                raise ValueError(f"SyntheticConfig.{name} must be >= 0, got {value}")
        if self.image_size < 16:
            raise ValueError(f"SyntheticConfig.image_size must be >= 16, got {self.image_size}")
        try:
            lo, hi = (float(v) for v in self.intensity)
        except (TypeError, ValueError):
            raise ValueError(f"SyntheticConfig.intensity must be a (low, high) pair, got {self.intensity!r}") from None
        if not 0.0 <= lo <= hi:
            raise ValueError(f"SyntheticConfig.intensity needs 0 <= low <= high, got {(lo, hi)}")
        object.__setattr__(self, "intensity", (lo, hi))  # lists from JSON -> tuple
        for name in ("au_jitter", "pixel_noise"):
            value = float(getattr(self, name))
            if not value >= 0.0:  # also rejects NaN
                raise ValueError(f"SyntheticConfig.{name} must be >= 0, got {value}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "class_shares", _check_shares(self.class_shares))

    def split_size(self, split: str) -> int:
        if split not in _SPLIT_CODE:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return int(getattr(self, f"n_{split}"))

    def to_dict(self) -> dict:
        """JSON-ready dict (what ``synthetic.json`` stores under ``"config"``)."""
        d = asdict(self)
        d["intensity"] = list(self.intensity)
        d["class_shares"] = None if self.class_shares is None else list(self.class_shares)
        for name in ("n_train", "n_valid", "n_test", "image_size", "seed"):
            d[name] = int(d[name])
        return d

    @classmethod
    def from_dict(cls, data: Mapping) -> SyntheticConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown SyntheticConfig fields: {sorted(unknown)}")
        kwargs = dict(data)
        if "intensity" in kwargs:
            kwargs["intensity"] = tuple(kwargs["intensity"])
        if kwargs.get("class_shares") is not None:
            kwargs["class_shares"] = tuple(kwargs["class_shares"])
        return cls(**kwargs)


def class_counts(n: int, shares: Sequence[float] | None = None) -> dict[Emotion, int]:
    """How a split total of ``n`` is spread over ``BASIC7``.

    ``shares=None``: balanced, the first ``n % 7`` classes in ``BASIC7`` order get one
    extra sample. Otherwise largest-remainder rounding of ``n * share`` (ties to the
    earlier class), after giving every class one sample when ``n >= 7``: a class with no
    test image has no accuracy and no folder, and FERPlus's disgust share (0.7%) would
    round to zero in small sets.
    """
    n = int(n)
    if shares is None:
        base, extra = divmod(n, len(BASIC7))
        return {e: base + (1 if i < extra else 0) for i, e in enumerate(BASIC7)}
    w = np.asarray(_check_shares(shares), dtype=np.float64)  # not None here
    floor = 1 if n >= len(BASIC7) else 0
    rest = n - floor * len(BASIC7)
    exact = rest * w
    counts = np.floor(exact).astype(np.int64)
    order = sorted(range(len(w)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: rest - int(counts.sum())]:
        counts[i] += 1
    return {e: int(c) + floor for e, c in zip(BASIC7, counts)}


def _check_shares(shares: Sequence[float] | None) -> tuple[float, ...] | None:
    """``shares`` normalised to sum 1 (``None``, balanced, stays ``None``); a clear
    ValueError for the wrong length or a negative / all-zero share."""
    if shares is None:
        return None
    try:
        values = [float(v) for v in shares]
    except (TypeError, ValueError):
        raise ValueError(f"SyntheticConfig.class_shares must be {len(BASIC7)} numbers, got {shares!r}") from None
    if len(values) != len(BASIC7) or not all(math.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0:
        raise ValueError(
            f"SyntheticConfig.class_shares must be {len(BASIC7)} non-negative numbers (one per class in "
            f"{[e.label for e in BASIC7]} order) with a positive sum, got {shares!r}"
        )
    total = sum(values)
    return tuple(round(v / total, 6) for v in values)


# --------------------------------------------------------------------------- identity

# Per-sample identity parameters, drawn as one uniform matrix so the stream layout is
# fixed: name -> (low, high). Lengths are fractions of the image (``S``), face radii
# (``rx``, ``ry``) or degrees as noted.
_IDENTITY: tuple[tuple[str, float, float], ...] = (
    ("rx", 0.28, 0.34),  # face half-width / S
    ("aspect", 1.12, 1.32),  # ry / rx
    ("cx", -0.045, 0.045),  # face centre offset / S
    ("cy", -0.02, 0.06),
    ("angle", -10.0, 10.0),  # in-plane rotation, degrees
    ("skin", 95.0, 230.0),  # skin grey level
    ("bg_gap", 40.0, 120.0),  # |background - skin|
    ("bg_sign", 0.0, 1.0),  # < 0.5: darker background
    ("ink", 75.0, 140.0),  # skin - feature ink level
    ("hair", 0.0, 1.0),  # < 0.3: no hair; else hair tone
    ("hair_line", 0.55, 0.85),  # hairline height / ry above centre
    ("eye_x", 0.34, 0.44),  # eye centre |x| / rx
    ("eye_y", -0.20, -0.08),  # eye centre y / ry
    ("eye_w", 0.14, 0.19),  # eye half-width / rx
    ("brow_gap", 0.17, 0.24),  # brow height above the eye / ry
    ("brow_t", 0.10, 0.16),  # brow thickness / rx
    ("nose_y", 0.18, 0.28),  # nostril height / ry
    ("mouth_y", 0.46, 0.58),  # mouth line height / ry
    ("mouth_w", 0.30, 0.40),  # mouth half-width / rx
    ("lip_t", 0.035, 0.06),  # lip thickness / ry
    ("light", 0.0, 22.0),  # lighting gradient amplitude (grey levels)
    ("light_dir", 0.0, 2 * math.pi),
)
_ID = {name: i for i, (name, _, _) in enumerate(_IDENTITY)}


def _draw_identities(rng: np.random.Generator, n: int) -> np.ndarray:
    u = rng.random((n, len(_IDENTITY)))
    lo = np.array([lo for _, lo, _ in _IDENTITY])
    hi = np.array([hi for _, _, hi in _IDENTITY])
    return lo + u * (hi - lo)


def _default_identity() -> np.ndarray:
    """A middle-of-the-range, upright, centred identity (for :func:`render_face`)."""
    ident = np.array([(lo + hi) / 2 for _, lo, hi in _IDENTITY])
    for name, value in (
        ("cx", 0.0),
        ("cy", 0.02),
        ("angle", 0.0),
        ("skin", 190.0),
        ("bg_sign", 0.2),
        ("hair", 0.5),
        ("light", 0.0),
    ):
        ident[_ID[name]] = value
    return ident


# --------------------------------------------------------------------------- rendering


def _bezier(p0, mid, p2, n: int = 9) -> list[tuple[float, float]]:
    """Quadratic curve from ``p0`` to ``p2`` passing through ``mid`` at t = 0.5."""
    cx = 2 * mid[0] - (p0[0] + p2[0]) / 2
    cy = 2 * mid[1] - (p0[1] + p2[1]) / 2
    t = np.linspace(0.0, 1.0, n)
    a, b, c = (1 - t) ** 2, 2 * (1 - t) * t, t**2
    xs = a * p0[0] + b * cx + c * p2[0]
    ys = a * p0[1] + b * cy + c * p2[1]
    return list(zip(xs.tolist(), ys.tolist()))


def _mix(a: float, b: float, alpha: float) -> int:
    """Grey level ``a`` blended towards ``b`` by ``alpha`` in [0, 1]."""
    alpha = min(max(alpha, 0.0), 1.0)
    return int(round(a + (b - a) * alpha))


def _render(au: np.ndarray, ident: np.ndarray, size: int) -> Image.Image:
    """Draw one face (mode ``"L"``, ``size`` x ``size``) before lighting and noise."""
    H = size * _SUPERSAMPLE
    g = {name: float(ident[i]) for name, i in _ID.items()}
    a = {name: float(au[i]) for name, i in _AU.items()}

    skin = g["skin"]
    bg = skin - g["bg_gap"] if g["bg_sign"] < 0.5 else skin + g["bg_gap"]
    if not 8.0 <= bg <= 247.0:  # flip to the side that has room
        bg = skin + g["bg_gap"] if bg < 8.0 else skin - g["bg_gap"]
    bg = min(max(bg, 0.0), 255.0)
    ink = max(skin - g["ink"], 0.0)
    skin_i, ink_i = int(round(skin)), int(round(ink))

    rx = g["rx"] * H
    ry = rx * g["aspect"]
    cx = H / 2 + g["cx"] * H
    cy = H / 2 + g["cy"] * H

    def P(x: float, y: float) -> tuple[float, float]:  # face units -> pixels
        return (cx + x * rx, cy + y * ry)

    img = Image.new("L", (H, H), int(round(bg)))
    d = ImageDraw.Draw(img)

    # neck, hair, face
    neck = _mix(skin, ink, 0.18)
    d.rectangle([cx - 0.36 * rx, cy + 0.6 * ry, cx + 0.36 * rx, H + 2], fill=neck)
    if g["hair"] >= 0.3:
        hair_tone = int(round(15 + (g["hair"] - 0.3) / 0.7 * 200))
        if abs(hair_tone - skin) < 35:
            hair_tone = max(hair_tone - 70, 0) if skin > 110 else min(hair_tone + 70, 255)
        top = cy - ry * 1.06
        d.ellipse([cx - rx * 1.08, top, cx + rx * 1.08, cy + ry * 0.55], fill=hair_tone)
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=skin_i)
    if g["hair"] >= 0.3:
        # fringe: a chord of the face ellipse down to the hairline
        hl = g["hair_line"]
        d.chord([cx - rx, cy - ry, cx + rx, cy - ry + 2 * ry * (1 - hl)], 180, 360, fill=hair_tone)

    # ---- eyes
    ex, ey, ew = g["eye_x"], g["eye_y"], g["eye_w"]
    openness = 0.55 + 0.5 * a["AU5"] - 0.35 * a["AU7"] - 0.3 * a["AU6"]
    openness = min(max(openness, 0.06), 1.15)
    ew_px = ew * rx
    eh_px = ew_px * 0.75 * openness
    sclera = int(min(max(skin + 35, 205), 250))
    line_w = max(1, int(round(0.9 * _SUPERSAMPLE)))
    for side in (-1, 1):
        ecx, ecy = P(side * ex, ey)
        d.ellipse([ecx - ew_px, ecy - eh_px, ecx + ew_px, ecy + eh_px], fill=sclera, outline=ink_i, width=line_w)
        pr = ew_px * 0.5
        ph = min(pr, eh_px)
        d.ellipse([ecx - pr, ecy - ph, ecx + pr, ecy + ph], fill=int(round(ink * 0.5)))
        # upper lid line, heavier when the lid is tightened
        lid_w = max(1, int(round((0.8 + 1.2 * a["AU7"]) * _SUPERSAMPLE)))
        d.arc([ecx - ew_px, ecy - eh_px, ecx + ew_px, ecy + eh_px], 190, 350, fill=ink_i, width=lid_w)
        if a["AU6"] > 0.05:  # cheek raiser: crease below the eye
            col = _mix(skin, ink, 0.9 * a["AU6"])
            d.arc(
                [ecx - ew_px * 1.1, ecy - eh_px + ew_px * 0.35, ecx + ew_px * 1.1, ecy + eh_px + ew_px * 0.75],
                20,
                160,
                fill=col,
                width=line_w,
            )

    # ---- brows
    by = ey - g["brow_gap"]
    bt = max(1, int(round(g["brow_t"] * rx)))
    inner_dy = -0.20 * a["AU1"] + 0.15 * a["AU4"]
    outer_dy = -0.20 * a["AU2"] + 0.04 * a["AU4"] + 0.03 * a["AU1"]
    mid_dy = 0.5 * (inner_dy + outer_dy) - 0.04 - 0.04 * a["AU2"]
    inner_x = ex - ew * 1.15 - 0.10 * a["AU4"]
    outer_x = ex + ew * 1.25
    for side in (-1, 1):
        pts = [
            P(side * inner_x, by + inner_dy),
            P(side * (inner_x + outer_x) / 2, by + mid_dy),
            P(side * outer_x, by + outer_dy),
        ]
        d.line(pts, fill=ink_i, width=bt, joint="curve")
    furrow = min(max(1.3 * a["AU4"] - 0.25, 0.0), 1.0)
    if furrow > 0.0:
        col = _mix(skin, ink, 0.8 * furrow)
        for side in (-1, 1):
            x = side * 0.07
            d.line([P(x, by + inner_dy - 0.02), P(x * 0.8, by + inner_dy + 0.14)], fill=col, width=line_w)

    # ---- nose
    ny = g["nose_y"] - 0.06 * a["AU9"] - 0.02 * a["AU10"]
    nw = 0.045 + 0.025 * a["AU9"]
    for side in (-1, 1):
        nx, nyy = P(side * (0.08 + 0.03 * a["AU9"]), ny)
        r = nw * rx
        d.ellipse([nx - r, nyy - r * 0.6, nx + r, nyy + r * 0.6], fill=_mix(skin, ink, 0.7))
    d.line([P(-0.02, ey + 0.05), P(-0.06, ny - 0.04)], fill=_mix(skin, ink, 0.35), width=line_w)
    if a["AU9"] > 0.05:  # wrinkles across the bridge
        col = _mix(skin, ink, 1.0 * a["AU9"])
        for k in range(3):
            y = ey + 0.02 + 0.07 * k
            d.arc([*P(-0.13, y - 0.03), *P(0.13, y + 0.05)], 200, 340, fill=col, width=line_w)

    # ---- mouth
    my = g["mouth_y"]
    mw = g["mouth_w"] * (
        1 + 0.25 * a["AU20"] + 0.12 * a["AU12"] - 0.18 * a["AU23"] - 0.10 * a["AU24"] - 0.22 * a["AU26"]
    )
    corner_dy = -0.16 * a["AU12"] + 0.14 * a["AU15"] + 0.03 * a["AU20"]
    upper_dy = -0.08 * a["AU10"]
    press = max(a["AU24"], 0.7 * a["AU23"])
    opening = (0.06 * a["AU25"] + 0.24 * a["AU26"] + 0.04 * a["AU10"]) * (1 - 0.9 * press)
    lip = g["lip_t"] * (1 - 0.85 * press) * (1 - 0.4 * a["AU20"])
    left, right = (-mw, my + corner_dy), (mw, my + corner_dy)
    upper = my + upper_dy - 0.3 * opening  # an open mouth parts both lips (rounder O)
    lower = upper + opening
    up_in = _bezier(P(*left), P(0, upper), P(*right))
    lo_in = _bezier(P(*left), P(0, lower), P(*right))
    up_out = _bezier(P(*left), P(0, upper - lip), P(*right))
    lo_out = _bezier(P(*left), P(0, lower + 1.3 * lip), P(*right))
    # nasolabial folds (smile, snarl)
    fold = max(a["AU9"], a["AU10"], 0.6 * a["AU12"], 0.4 * a["AU6"])
    if fold > 0.05:
        col = _mix(skin, ink, 0.45 * fold)
        for side in (-1, 1):
            d.line(
                _bezier(
                    P(side * 0.17, ny - 0.03),
                    P(side * (0.2 + 0.6 * mw), 0.5 * (ny + my)),
                    P(side * (mw + 0.05), my + corner_dy - 0.02),
                    n=6,
                ),
                fill=col,
                width=line_w,
                joint="curve",
            )
    d.polygon(up_out + lo_out[::-1], fill=_mix(skin, ink, 0.35))
    if opening > 0.01:
        d.polygon(up_in + lo_in[::-1], fill=int(round(ink * 0.35)))
        teeth = min(a["AU12"] + a["AU10"], 1.0) * 0.55 * opening
        if teeth > 0.01:
            t_in = _bezier(P(left[0] * 0.8, left[1]), P(0, upper + teeth), P(right[0] * 0.8, right[1]))
            d.polygon(up_in[1:-1] + t_in[::-1], fill=sclera)
    d.line(up_in, fill=ink_i, width=line_w, joint="curve")
    if opening > 0.01:
        d.line(lo_in, fill=ink_i, width=line_w, joint="curve")

    if g["angle"] != 0.0:
        img = img.rotate(g["angle"], resample=Image.Resampling.BILINEAR, center=(cx, cy), fillcolor=int(round(bg)))
    return img.resize((size, size), Image.Resampling.BOX)


def _finish(img: Image.Image, ident: np.ndarray, noise: np.ndarray, pixel_noise: float) -> np.ndarray:
    """Lighting gradient + pixel noise, rounded to uint8."""
    size = img.size[0]
    arr = np.asarray(img, dtype=np.float32)
    amp = float(ident[_ID["light"]])
    if amp > 0.0:
        theta = float(ident[_ID["light_dir"]])
        ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
        arr = arr + amp * (math.cos(theta) * ramp[None, :] + math.sin(theta) * ramp[:, None])
    if pixel_noise > 0.0:
        arr = arr + np.float32(pixel_noise) * noise
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def render_face(
    aus: Mapping[str, float] | Sequence[float] | np.ndarray | None = None,
    size: int = 48,
    identity: np.ndarray | None = None,
    pixel_noise: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Render one face as a uint8 ``(size, size)`` array, e.g. to show what an AU does.

    ``aus`` is a mapping such as ``{"AU12": 1.0}`` or a vector in :data:`AU_NAMES`
    order; ``identity`` defaults to a centred, upright middle-of-the-range face.
    """
    vec = np.zeros(len(AU_NAMES))
    if isinstance(aus, Mapping):
        for name, value in aus.items():
            if name not in _AU:
                raise ValueError(f"unknown action unit {name!r}; expected one of {AU_NAMES}")
            vec[_AU[name]] = float(value)
    elif aus is not None:
        vec = np.asarray(aus, dtype=np.float64)
        if vec.shape != (len(AU_NAMES),):
            raise ValueError(f"aus must have {len(AU_NAMES)} values ({AU_NAMES})")
    ident = _default_identity() if identity is None else np.asarray(identity, dtype=np.float64)
    noise = np.random.default_rng(seed).standard_normal((size, size), dtype=np.float32)
    return _finish(_render(np.clip(vec, 0, 1), ident, size), ident, noise, pixel_noise)


# --------------------------------------------------------------------------- generation


def _split_rng(cfg: SyntheticConfig, split: str) -> np.random.Generator:
    ss = np.random.SeedSequence([_SALT, int(cfg.seed), _SPLIT_CODE[split]])
    return np.random.Generator(np.random.PCG64(ss))


def _generate_split(cfg: SyntheticConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    n = cfg.split_size(split)
    size = cfg.image_size
    rng = _split_rng(cfg, split)
    # fixed order of draws: labels, intensities, AU jitter, identities, then per-image noise
    counts = class_counts(n, cfg.class_shares).values()
    rows = np.concatenate([np.full(c, i, dtype=np.int64) for i, c in enumerate(counts)])
    rows = rows[rng.permutation(n)]
    lo, hi = cfg.intensity
    intensity = rng.uniform(lo, hi, n)
    jitter = rng.standard_normal((n, len(AU_NAMES)))
    aus = np.clip(intensity[:, None] * _prototype_matrix()[rows] + cfg.au_jitter * jitter, 0.0, 1.0)
    idents = _draw_identities(rng, n)
    images = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        noise = rng.standard_normal((size, size), dtype=np.float32)
        images[i] = _finish(_render(aus[i], idents[i], size), idents[i], noise, cfg.pixel_noise)
    labels = np.array([int(BASIC7[r]) for r in rows], dtype=np.int64)
    return images, labels


def generate_images(cfg: SyntheticConfig = SyntheticConfig()) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (uint8 images (N, S, S), canonical int64 labels (N,))}`` for train,
    valid and test. A pure function of ``cfg``."""
    return {split: _generate_split(cfg, split) for split in SPLITS}


def content_hash(data: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """Short stable hash over the generated arrays (shapes, pixels and labels)."""
    items = []
    for split in sorted(data):
        images, labels = data[split]
        items.append(
            f"{split}:{images.shape}:{images.dtype}:"
            f"{hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()}:"
            f"{hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest()}"
        )
    return hash_strings(items)


# --------------------------------------------------------------------------- on disk


def _meta_for(cfg: SyntheticConfig) -> dict:
    return {"generator": "ferlib.data.synthetic", "version": GENERATOR_VERSION, "config": cfg.to_dict()}


def _read_meta(path: Path) -> dict | None:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _same(meta: dict | None, cfg: SyntheticConfig) -> bool:
    if meta is None:
        return False
    want = _meta_for(cfg)
    return all(meta.get(k) == v for k, v in want.items())


def write_synthetic(root: str | os.PathLike, cfg: SyntheticConfig = SyntheticConfig(), overwrite: bool = False) -> Path:
    """Write the data set under ``root`` (class-folder layout) and return ``root``.

    Idempotent: if ``root/synthetic.json`` already records this config (and generator
    version) nothing is touched. A different config raises
    :class:`~ferlib.data.errors.DataError` (a ``ValueError``) naming the file unless
    ``overwrite=True``. A non-empty ``root`` without ``synthetic.json`` is never
    overwritten. Images are written into a temporary directory next to ``root`` that is
    renamed into place at the end, so a killed generation leaves no half data set.
    """
    root = Path(root)
    meta_path = root / _META
    if _same(_read_meta(meta_path), cfg):
        return root
    if root.exists():
        if not root.is_dir():
            raise DataError(root, "exists and is not a directory")
        if meta_path.exists():
            if not overwrite:
                old = _read_meta(meta_path)
                old_desc = (
                    json.dumps({"version": old.get("version"), **(old.get("config") or {})}) if old else "unreadable"
                )
                want = json.dumps({"version": GENERATOR_VERSION, **cfg.to_dict()})
                raise DataError(
                    meta_path,
                    f"holds a synthetic data set with a different config ({old_desc}); "
                    f"wanted {want}. Pass overwrite=True (CLI: --overwrite) or choose "
                    "another root.",
                )
        elif any(root.iterdir()):
            raise DataError(
                root, f"directory is not empty and has no {_META}; refusing to write a synthetic data set over it"
            )

    data = generate_images(cfg)
    parent = root.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{root.name}.tmp-"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the data set is not
        counts: dict[str, dict[str, int]] = {}
        for split, (images, labels) in data.items():
            counts[split] = {}
            for e in BASIC7:
                k = int((labels == int(e)).sum())
                if k:
                    (tmp / split / e.label).mkdir(parents=True)
                    counts[split][e.label] = k
            for i, (img, lab) in enumerate(zip(images, labels)):
                Image.fromarray(img).save(tmp / split / Emotion(int(lab)).label / f"{split}_{i:05d}.png")
        meta = {
            **_meta_for(cfg),
            "content_hash": content_hash(data),
            "image_mode": "L",
            "layout": "<split>/<emotion label>/<split>_<index>.png",
            "counts": counts,
        }
        write_json(tmp / _META, meta)  # last: its presence marks a complete set
        os.chmod(tmp / _META, 0o644)
        _swap_into_place(tmp, root, cfg)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_synthetic(root: str | os.PathLike, seed: int = 0) -> Path:
    """The synthetic set under ``root``, for the stages: written with the default config
    (and ``seed``) on first use; an existing set of this generator version is used as it is,
    whatever its size; a set written by an older generator version is rewritten from its own
    recorded config (new fields take their defaults), so that pulling a new kit never leaves
    a newcomer's demo on data the rest of the kit (tests, docs) no longer describes."""
    root = Path(root)
    meta = _read_meta(root / _META)
    if meta is None:
        return write_synthetic(root, SyntheticConfig(seed=seed))
    if meta.get("version") == GENERATOR_VERSION:
        return root
    cfg = SyntheticConfig.from_dict(meta.get("config") or {"seed": seed})
    print(
        f"{root / _META}: written by synthetic generator version {meta.get('version')}; "
        f"rewriting it with version {GENERATOR_VERSION} and its own config"
    )
    return write_synthetic(root, cfg, overwrite=True)


def _swap_into_place(tmp: Path, root: Path, cfg: SyntheticConfig) -> None:
    old = None
    if root.exists():
        old = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.old-"))
        os.rmdir(old)
        os.replace(root, old)
    try:
        os.replace(tmp, root)
    except OSError:
        # someone else finished the same data set first: keep theirs if it matches
        if _same(_read_meta(root / _META), cfg):
            return
        if old is not None and not root.exists():
            os.replace(old, root)
            old = None
        raise
    finally:
        if old is not None and old.exists():
            shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- preview


def preview_grid(cfg: SyntheticConfig = SyntheticConfig(), per_class: int = 8, pad: int = 2) -> np.ndarray:
    """uint8 grid: one row per ``BASIC7`` class (in order), ``per_class`` faces each.

    Drawn from a ``7 * per_class`` train split with ``cfg``'s seed and settings (so it
    shows the same distribution, not the very images of the full train split).
    """
    images, labels = _generate_split(replace(cfg, n_train=len(BASIC7) * per_class), "train")
    s = cfg.image_size
    rows, cols = len(BASIC7), per_class
    grid = np.full((rows * (s + pad) + pad, cols * (s + pad) + pad), 255, dtype=np.uint8)
    for r, e in enumerate(BASIC7):
        idx = np.flatnonzero(labels == int(e))[:per_class]
        for c, i in enumerate(idx):
            y, x = pad + r * (s + pad), pad + c * (s + pad)
            grid[y : y + s, x : x + s] = images[i]
    return grid


def save_preview(
    path: str | os.PathLike, cfg: SyntheticConfig = SyntheticConfig(), per_class: int = 8, scale: int = 2
) -> Path:
    """Write :func:`preview_grid` as a PNG (enlarged ``scale`` times, nearest neighbour)."""
    grid = Image.fromarray(preview_grid(cfg, per_class))
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    defaults = SyntheticConfig()
    p = argparse.ArgumentParser(
        prog="python -m ferlib.data.synthetic",
        description="Write ferkit's deterministic synthetic face-expression data set.",
    )
    p.add_argument("--root", type=Path, default=Path("data/synthetic"), help="output directory (default: %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--n-train", type=int, default=defaults.n_train)
    p.add_argument("--n-valid", type=int, default=defaults.n_valid)
    p.add_argument("--n-test", type=int, default=defaults.n_test)
    p.add_argument("--image-size", type=int, default=defaults.image_size)
    p.add_argument("--intensity", type=float, nargs=2, default=list(defaults.intensity), metavar=("LOW", "HIGH"))
    p.add_argument("--au-jitter", type=float, default=defaults.au_jitter)
    p.add_argument("--pixel-noise", type=float, default=defaults.pixel_noise)
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing synthetic data set with a different config"
    )
    p.add_argument("--preview", type=Path, default=None, help="also write a 7 x 8 preview grid PNG here")
    args = p.parse_args(argv)
    try:
        cfg = SyntheticConfig(
            n_train=args.n_train,
            n_valid=args.n_valid,
            n_test=args.n_test,
            image_size=args.image_size,
            seed=args.seed,
            intensity=tuple(args.intensity),
            au_jitter=args.au_jitter,
            pixel_noise=args.pixel_noise,
        )
        t0 = time.perf_counter()
        root = write_synthetic(args.root, cfg, overwrite=args.overwrite)
        seconds = time.perf_counter() - t0
        if args.preview is not None:
            save_preview(args.preview, cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = json.loads((root / _META).read_text(encoding="utf-8"))
    print(
        f"{root}: {sum(sum(c.values()) for c in meta['counts'].values())} images, "
        f"content hash {meta['content_hash']} ({seconds:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
