"""Synthetic and real label noise on training targets, reproducible by seed.

A noisy-label benchmark (RUL, ensembles) needs the *same* corrupted labels for every
method and every initialisation seed it compares, and it needs to know afterwards which
samples were corrupted (to ask whether a method's uncertainty finds them). So noise here is
a data option with its own ``seed`` (independent of the run's seed: an ensemble whose members
differ by seed still sees one set of noisy labels), and :func:`add_label_noise` returns the
``flipped`` mask beside the noisy targets.

Kinds (:class:`LabelNoise`):

- ``symmetric``: exactly ``round(rate * N)`` rows, drawn uniformly without replacement, each
  moved to one of the *other* ``K - 1`` classes uniformly (never to its own class).
- ``pair``: the same number of rows, each moved to its class's partner (the class it is
  most confused with). The rows are drawn among the classes that have a partner. Partners:

  1. ``pairs`` given by the user (``{"fear": "surprise", ...}``): those, and only those
     classes are flipped;
  2. else, for a data set with annotator votes (FERPlus), from the votes of the training
     rows: for each majority class, the other model class that receives the most votes
     on its rows (:func:`vote_pairs`);
  3. else a fixed FER confusion ranking measured once on FERPlus's training split
     (:data:`FERPLUS_CONFUSION`): the first class of the ranking that is a model class.
     It is documented data, not a guess, and keeps pair noise usable on RAF-DB or AffectNet
     without votes; pass ``pairs`` to use another.
- ``annotator`` (data sets with votes only): every row takes the label of one of its
  annotators, one vote drawn at random among the votes for the model's classes (votes for
  dropped classes such as contempt, unknown, not-a-face or the open class are no label the
  model could learn, so they are not drawn). This is real human disagreement; its rate is
  not chosen but measured (the share of rows whose drawn vote differs from the majority)
  and there is no ``rate`` parameter. A row can always draw: its majority class is a model
  class and holds at least one vote.

Targets are the contiguous model targets ``0..K-1`` (:class:`~ferlib.data.splits.LabelMap`).
The test split never gets noise (:mod:`ferlib.data.prepare` applies it to the training and,
with ``validation=True``, the validation rows only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ferlib.emotions import Emotion, parse_emotion

NOISE_KINDS: tuple[str, ...] = ("symmetric", "pair", "annotator")
#: kinds that draw from annotator votes
VOTE_KINDS: tuple[str, ...] = ("annotator",)

#: For each emotion, the other emotions ranked by the votes they receive on images whose
#: majority is that emotion: FERPlus training split, 8 classes (28,385 images), measured with
#: ``ferlib.data.noise.vote_confusion`` on the raw votes. The default partner of ``pair``
#: noise on data without votes is the first emotion of the ranking that is a model class.
#: Vote counts (for the record): neutral -> sadness 12047, happiness 3378; happiness ->
#: neutral 3257, surprise 1933; surprise -> fear 3371, neutral 2150; sadness -> neutral
#: 5660, anger 1095; anger -> neutral 1922, surprise 1482; disgust -> anger 228, neutral
#: 199; fear -> surprise 1072, sadness 517; contempt -> neutral 254, sadness 111.
FERPLUS_CONFUSION: dict[Emotion, tuple[Emotion, ...]] = {
    Emotion.NEUTRAL: (
        Emotion.SADNESS,
        Emotion.HAPPINESS,
        Emotion.ANGER,
        Emotion.CONTEMPT,
        Emotion.SURPRISE,
        Emotion.DISGUST,
        Emotion.FEAR,
    ),
    Emotion.HAPPINESS: (
        Emotion.NEUTRAL,
        Emotion.SURPRISE,
        Emotion.ANGER,
        Emotion.SADNESS,
        Emotion.CONTEMPT,
        Emotion.FEAR,
        Emotion.DISGUST,
    ),
    Emotion.SURPRISE: (
        Emotion.FEAR,
        Emotion.NEUTRAL,
        Emotion.HAPPINESS,
        Emotion.ANGER,
        Emotion.SADNESS,
        Emotion.DISGUST,
        Emotion.CONTEMPT,
    ),
    Emotion.SADNESS: (
        Emotion.NEUTRAL,
        Emotion.ANGER,
        Emotion.FEAR,
        Emotion.DISGUST,
        Emotion.HAPPINESS,
        Emotion.CONTEMPT,
        Emotion.SURPRISE,
    ),
    Emotion.ANGER: (
        Emotion.NEUTRAL,
        Emotion.SURPRISE,
        Emotion.DISGUST,
        Emotion.SADNESS,
        Emotion.HAPPINESS,
        Emotion.FEAR,
        Emotion.CONTEMPT,
    ),
    Emotion.DISGUST: (
        Emotion.ANGER,
        Emotion.NEUTRAL,
        Emotion.SADNESS,
        Emotion.CONTEMPT,
        Emotion.SURPRISE,
        Emotion.HAPPINESS,
        Emotion.FEAR,
    ),
    Emotion.FEAR: (
        Emotion.SURPRISE,
        Emotion.SADNESS,
        Emotion.NEUTRAL,
        Emotion.ANGER,
        Emotion.DISGUST,
        Emotion.HAPPINESS,
        Emotion.CONTEMPT,
    ),
    Emotion.CONTEMPT: (
        Emotion.NEUTRAL,
        Emotion.SADNESS,
        Emotion.DISGUST,
        Emotion.ANGER,
        Emotion.HAPPINESS,
        Emotion.SURPRISE,
        Emotion.FEAR,
    ),
}

#: random streams of one seed: the training and the validation rows draw independently
TRAIN_STREAM, VALID_STREAM = 0, 1


@dataclass(frozen=True)
class LabelNoise:
    """What noise to put on the training targets (stage 01's ``label_noise`` dict).

    - ``kind``: one of :data:`NOISE_KINDS`.
    - ``rate``: share of rows flipped, in ``[0, 1)`` (``symmetric`` and ``pair``; required
      there); ``annotator`` takes none, its rate is measured.
    - ``seed``: the noise's own seed (not the run's), so runs that differ only by their
      seed train on the same noisy labels.
    - ``pairs``: ``pair`` only: emotion name -> emotion name, the partner of each class to
      flip; classes left out are never flipped. ``None``: from the votes, else
      :data:`FERPLUS_CONFUSION`.
    - ``validation``: put the same kind of noise (an independent draw) on the validation
      rows too. ``True`` by default: a researcher whose labels are noisy has a noisy
      validation split as well, and selecting the epoch on clean labels would hide part of
      the damage. ``False`` selects on clean labels (an oracle setting). The test split
      never gets noise.
    """

    kind: str
    rate: float | None = None
    seed: int = 0
    pairs: Mapping[str, str] | None = field(default=None, hash=False)
    validation: bool = True

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"label_noise kind must be one of {', '.join(NOISE_KINDS)}, got {self.kind!r}")
        if self.kind in VOTE_KINDS:
            if self.rate is not None:
                raise ValueError(
                    f"label_noise kind {self.kind!r} takes no rate: every row takes a drawn annotator "
                    "vote and the resulting noise rate is measured; leave 'rate' out"
                )
        else:
            rate = self.rate
            if rate is None:
                raise ValueError(f"label_noise kind {self.kind!r} needs a rate in [0, 1), e.g. 0.2")
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate):
                raise ValueError(f"label_noise rate must be a number in [0, 1), got {rate!r}")
            if not 0 <= rate < 1:
                raise ValueError(f"label_noise rate must lie in [0, 1) (a share of the training rows), got {rate!r}")
            object.__setattr__(self, "rate", float(rate))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"label_noise seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.validation, bool):
            raise ValueError(f"label_noise validation must be True or False, got {self.validation!r}")
        if self.pairs is not None:
            if self.kind != "pair":
                raise ValueError(f"label_noise pairs apply to kind 'pair' only, not {self.kind!r}")
            if not isinstance(self.pairs, Mapping) or not self.pairs:
                raise ValueError(
                    f"label_noise pairs must be a non-empty dict of emotion -> emotion, got {self.pairs!r}"
                )
            parsed = {}
            for source, target in self.pairs.items():
                try:
                    a, b = parse_emotion(source), parse_emotion(target)
                except (ValueError, KeyError) as exc:
                    raise ValueError(f"label_noise pairs {source!r}: {target!r}: {exc}") from None
                if a == b:
                    raise ValueError(f"label_noise pairs: {source!r} is paired with itself")
                parsed[a.label] = b.label
            object.__setattr__(self, "pairs", parsed)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | LabelNoise | None) -> LabelNoise | None:
        """The stage parameter (a dict, or ``None`` for clean labels) as a config; an
        unknown key raises, naming the accepted ones (a misspelt key must not be ignored)."""
        if params is None or isinstance(params, LabelNoise):
            return params
        if not isinstance(params, Mapping):
            raise ValueError(f"label_noise must be a dict such as {{'kind': 'symmetric', 'rate': 0.2}}, got {params!r}")
        accepted = ("kind", "rate", "seed", "pairs", "validation")
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ValueError(f"label_noise has no key {', '.join(map(repr, unknown))}; keys: {', '.join(accepted)}")
        if "kind" not in params:
            raise ValueError(f"label_noise needs a 'kind' ({', '.join(NOISE_KINDS)})")
        return cls(**dict(params))

    def config(self) -> dict[str, Any]:
        """JSON-able settings, for results and keys."""
        return {
            "kind": self.kind,
            "rate": self.rate,
            "seed": self.seed,
            "pairs": dict(self.pairs) if self.pairs is not None else None,
            "validation": self.validation,
        }


@dataclass
class NoisyTargets:
    """Noisy targets and which rows differ from the clean ones."""

    targets: np.ndarray  # int64 (N,)
    flipped: np.ndarray  # bool (N,)

    @property
    def rate(self) -> float:
        """Measured noise rate: share of rows whose target changed."""
        return float(self.flipped.mean()) if len(self.flipped) else 0.0


def vote_confusion(targets: np.ndarray, class_votes: np.ndarray) -> np.ndarray:
    """``(K, K)`` matrix: row ``c`` sums the votes of the rows whose target is ``c``, its
    diagonal set to zero (the votes that went to another class)."""
    targets = np.asarray(targets, dtype=np.int64)
    votes = np.asarray(class_votes, dtype=np.float64)
    k = votes.shape[1]
    out = np.zeros((k, k))
    np.add.at(out, targets, votes)
    np.fill_diagonal(out, 0.0)
    return out


def vote_pairs(targets: np.ndarray, class_votes: np.ndarray) -> np.ndarray:
    """Partner of each class from annotator votes: the other class receiving most votes on
    rows of that class (ties: the lower target); ``-1`` for a class whose rows carry no vote
    for another class (never flipped)."""
    confusion = vote_confusion(targets, class_votes)
    partner = confusion.argmax(axis=1)  # first maximum: the lower target on ties
    partner[confusion.max(axis=1) <= 0] = -1
    return partner.astype(np.int64)


def resolve_pairs(
    noise: LabelNoise,
    classes: Sequence[Emotion],
    targets: np.ndarray | None = None,
    class_votes: np.ndarray | None = None,
) -> np.ndarray:
    """Partner target of each of the model's ``classes`` (``-1``: no partner) for ``pair``
    noise: the user's ``pairs``, else the votes (``targets`` with ``class_votes``), else
    :data:`FERPLUS_CONFUSION`. A user pair naming a class the model does not have (the open
    class, say) raises, naming the model's classes."""
    classes = [parse_emotion(c) for c in classes]
    index = {c: i for i, c in enumerate(classes)}
    partner = np.full(len(classes), -1, dtype=np.int64)
    if noise.pairs is not None:
        for source, target in noise.pairs.items():
            a, b = parse_emotion(source), parse_emotion(target)
            missing = [e.label for e in (a, b) if e not in index]
            if missing:
                raise ValueError(
                    f"label_noise pairs name {', '.join(missing)}, not a class of this model "
                    f"({', '.join(c.label for c in classes)})"
                )
            partner[index[a]] = index[b]
        return partner
    if class_votes is not None:
        if targets is None:
            raise ValueError("vote pairs need the targets the votes belong to")
        return vote_pairs(targets, class_votes)
    for i, c in enumerate(classes):
        partner[i] = next((index[e] for e in FERPLUS_CONFUSION[c] if e in index), -1)
    return partner


def pair_names(partner: np.ndarray, classes: Sequence[Emotion]) -> dict[str, str]:
    """``{class: partner}`` by emotion name (classes without partner left out), for logs."""
    names = [parse_emotion(c).label for c in classes]
    return {names[i]: names[j] for i, j in enumerate(np.asarray(partner).tolist()) if j >= 0}


def _generator(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _n_flips(rate: float, n: int) -> int:
    return int(round(rate * n))


def add_label_noise(
    targets: np.ndarray,
    num_classes: int,
    noise: LabelNoise,
    *,
    class_votes: np.ndarray | None = None,
    partner: np.ndarray | None = None,
    stream: int = TRAIN_STREAM,
) -> NoisyTargets:
    """Noisy copy of ``targets`` (contiguous ``0..num_classes-1``) and the flipped mask.

    - ``class_votes``: ``(N, num_classes)`` annotator votes per model class (``annotator``).
    - ``partner``: partner target per class (``pair``; :func:`resolve_pairs`).
    - ``stream``: which random stream of ``noise.seed`` to use (:data:`TRAIN_STREAM`,
      :data:`VALID_STREAM`), so the validation draw is independent of the training one.

    The input is not modified. Raises ``ValueError`` when the request cannot be met
    (``symmetric`` with one class, more ``pair`` flips than rows of paired classes,
    ``annotator`` without votes).
    """
    clean = np.asarray(targets, dtype=np.int64).reshape(-1)
    n = len(clean)
    if n and (clean.min() < 0 or clean.max() >= num_classes):
        raise ValueError(f"targets must lie in 0..{num_classes - 1}")
    rng = _generator(noise.seed, stream)
    noisy = clean.copy()

    if noise.kind == "symmetric":
        m = _n_flips(noise.rate, n)
        if m and num_classes < 2:
            raise ValueError("symmetric label noise needs at least two classes")
        rows = rng.choice(n, size=m, replace=False)
        # an offset in 1..K-1 moves each row to another class, each uniformly
        noisy[rows] = (clean[rows] + rng.integers(1, num_classes, size=m)) % num_classes
    elif noise.kind == "pair":
        if partner is None:
            raise ValueError("pair label noise needs the partner of each class (resolve_pairs)")
        partner = np.asarray(partner, dtype=np.int64)
        if partner.shape != (num_classes,):
            raise ValueError(f"partner must have one entry per class ({num_classes}), got shape {partner.shape}")
        eligible = np.flatnonzero(partner[clean] >= 0)
        m = _n_flips(noise.rate, n)
        if m > len(eligible):
            raise ValueError(
                f"pair label noise: {m} flips asked (rate {noise.rate} of {n} rows) but only {len(eligible)} rows "
                "belong to a class with a partner; lower the rate or pair more classes"
            )
        rows = rng.choice(eligible, size=m, replace=False)
        noisy[rows] = partner[clean[rows]]
    elif noise.kind == "annotator":
        if class_votes is None:
            raise ValueError("annotator label noise needs annotator votes (a data set such as ferplus)")
        votes = np.asarray(class_votes)
        if votes.shape != (n, num_classes):
            raise ValueError(f"class_votes must have shape ({n}, {num_classes}), got {votes.shape}")
        if votes.size and (votes.min() < 0 or not np.array_equal(votes, np.round(votes))):
            raise ValueError("class_votes must be vote counts (integers >= 0)")
        votes = votes.astype(np.int64)
        total = votes.sum(axis=1)
        has = total > 0  # a row without a vote for a model class keeps its label (cannot happen on FERPlus)
        # vote number r (0-based) of the row's votes for model classes, each vote equally likely;
        # integer arithmetic, so the last class is reached exactly and a class without votes never
        drawn = rng.integers(0, total[has])[:, None]
        noisy[has] = (np.cumsum(votes[has], axis=1) > drawn).argmax(axis=1)
    else:  # pragma: no cover - LabelNoise validates the kind
        raise ValueError(noise.kind)
    return NoisyTargets(noisy, noisy != clean)


__all__ = [
    "FERPLUS_CONFUSION",
    "NOISE_KINDS",
    "TRAIN_STREAM",
    "VALID_STREAM",
    "LabelNoise",
    "NoisyTargets",
    "add_label_noise",
    "pair_names",
    "resolve_pairs",
    "vote_confusion",
    "vote_pairs",
]
