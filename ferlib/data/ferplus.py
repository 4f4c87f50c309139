"""FERPlus: FER2013 images with the FER+ crowd-sourced votes (Microsoft's layout).

Layout (as Microsoft's ``generate_training_data.py`` writes it)::

    root/FER2013Train/label.csv + PNGs
    root/FER2013Valid/label.csv + PNGs   (FER2013 PublicTest)
    root/FER2013Test/label.csv  + PNGs   (FER2013 PrivateTest)

Each ``label.csv`` row (no header): image name, face box ``"(0, 0, 48, 48)"``, then ten
vote counts in the order of :data:`VOTE_ORDER`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np

from ferlib.emotions import Emotion

from .base import FERDataset, check_num_classes, check_root, check_split, list_files
from .classmap import ClassTarget, resolve_class_map
from .errors import DataError, MissingSplitError

#: Split name -> folder under the FERPlus root.
SPLIT_DIRS: dict[str, str] = {
    "train": "FER2013Train",
    "valid": "FER2013Valid",
    "test": "FER2013Test",
}

#: Vote columns of ``label.csv``, in file order. The first eight are emotions, listed
#: here by name (not by position) so the mapping to :class:`Emotion` is explicit.
VOTE_ORDER: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)

#: Vote column -> canonical emotion; ``None`` for the two non-emotion columns.
VOTE_TO_EMOTION: tuple[Emotion | None, ...] = (
    Emotion.NEUTRAL,
    Emotion.HAPPINESS,
    Emotion.SURPRISE,
    Emotion.SADNESS,
    Emotion.ANGER,
    Emotion.DISGUST,
    Emotion.FEAR,
    Emotion.CONTEMPT,
    None,
    None,
)

#: Known upstream defect: ``fer2013new.csv`` names this file twice; ``label.csv`` keeps the
#: first row's votes (mostly neutral) while the PNG holds the second row's pixels, which
#: are not a face. Excluded by default so that it never enters an evaluation set.
DEFECTIVE: tuple[str, ...] = ("FER2013Test/fer0033120.png",)


def majority_vote(votes: np.ndarray) -> np.ndarray:
    """Index of the top vote per row; ties go to the FIRST maximum in :data:`VOTE_ORDER`.

    ``np.argmax`` semantics. Ties are common (about 5% of rows: 1,445 in train) and the
    choice matters for the counts: first-max reproduces the class counts published with
    the data (see the data README), so it is what "majority vote" means here. Microsoft's
    own ``majority`` mode differs (it drops rows without a strict majority).
    """
    return np.asarray(votes).argmax(axis=1)


def vote_columns(
    class_map: Mapping[str, ClassTarget] | None = None, where: str | os.PathLike = "ferplus"
) -> tuple[Emotion | None, ...]:
    """What each vote column of :data:`VOTE_ORDER` means, ``class_map`` applied as the
    loader applies it (``None``: not an emotion, or dropped)."""
    columns = list(VOTE_TO_EMOTION)
    for column, emotion in resolve_class_map(class_map, where, known=VOTE_ORDER).items():
        columns[VOTE_ORDER.index(column)] = emotion
    return tuple(columns)


def emotion_votes(votes: np.ndarray, class_map: Mapping[str, ClassTarget] | None = None) -> np.ndarray:
    """Raw ``(N, 10)`` vote counts as ``(N, len(Emotion))`` counts per canonical emotion.

    Columns that mean no emotion (``unknown``, ``NF``, or ``"drop"`` in ``class_map``) are
    left out; columns that a ``class_map`` sends to the same emotion add up. Soft labels and
    annotator noise read these, restricted to the model's classes (so contempt votes in a
    seven-class run, and the open class's votes, are gone and the rest renormalise).
    """
    votes = np.asarray(votes, dtype=np.int64)
    if votes.ndim != 2 or votes.shape[1] != len(VOTE_ORDER):
        raise ValueError(f"votes must have shape (N, {len(VOTE_ORDER)}), got {votes.shape}")
    out = np.zeros((len(votes), len(Emotion)), dtype=np.int64)
    for column, emotion in enumerate(vote_columns(class_map)):
        if emotion is not None:
            out[:, int(emotion)] += votes[:, column]
    return out


def load_ferplus(
    root: str | os.PathLike,
    split: str,
    num_classes: int = 7,
    exclude: Collection[str] = DEFECTIVE,
    class_map: Mapping[str, ClassTarget] | None = None,
) -> FERDataset:
    """Load one FERPlus split with majority-vote labels.

    - Rows whose top vote is ``unknown`` or ``NF`` (not a face) are dropped.
    - ``num_classes=7`` (open-set FER's protocol) also drops contempt-majority rows;
      ``num_classes=8`` keeps them.
    - ``exclude``: images to leave out, each either a root-relative posix path
      (``"FER2013Test/fer0033120.png"``) or a bare file name (FERPlus names are unique
      across splits). Defaults to the known defective image; pass ``()`` to keep it.
    - ``votes`` on the result holds the raw ten vote counts of every kept row, for
      soft-label or agreement-based work.
    - ``class_map`` overrides what a winning vote column means, keyed by the column names
      of :data:`VOTE_ORDER` (``{"contempt": "drop"}``, ``{"contempt": "disgust"}``); the
      majority vote itself is still taken over the ten raw columns.
    - A split whose folder is absent raises :class:`MissingSplitError`; a folder without
      its ``label.csv`` is a broken split and raises :class:`DataError`.

    Every row is validated: a malformed line, an image missing from the folder or an
    impossible vote (negative, or no vote at all) raises :class:`DataError` naming the
    file and line.
    """
    root_path = check_root(root)
    check_split(split, root_path)
    classes = check_num_classes(num_classes, root_path)
    keep_emotions = {int(c) for c in classes}
    column_emotion = vote_columns(class_map, root_path)

    split_dir = root_path / SPLIT_DIRS[split]
    label_file = split_dir / "label.csv"
    if not split_dir.is_dir():
        raise MissingSplitError(
            label_file, f"FERPlus label file not found: no folder {SPLIT_DIRS[split]} (split {split!r} absent)"
        )
    if not label_file.is_file():
        raise DataError(label_file, "FERPlus label file not found")
    on_disk = list_files(split_dir)
    excluded = set(exclude)

    paths: list[Path] = []
    labels: list[int] = []
    votes_kept: list[list[int]] = []
    with open(label_file, newline="", encoding="utf-8") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue  # blank line (e.g. trailing newline): nothing to label
            if len(row) != 12:
                raise DataError(
                    label_file,
                    f"expected 12 fields (name, box, 10 votes), got {len(row)}: {row!r}",
                    line_no,
                )
            name = row[0].strip()
            if not name:
                raise DataError(label_file, "empty image name", line_no)
            try:
                votes = [int(v) for v in row[2:]]
            except ValueError:
                raise DataError(label_file, f"vote counts must be integers, got {row[2:]!r}", line_no) from None
            if min(votes) < 0 or sum(votes) == 0:
                raise DataError(
                    label_file,
                    f"vote counts out of range (need >= 0 and at least one vote): {votes}",
                    line_no,
                )
            if name not in on_disk:
                raise DataError(label_file, f"labelled image {name!r} not found in {split_dir}", line_no)
            rel = f"{SPLIT_DIRS[split]}/{name}"
            if rel in excluded or name in excluded:
                continue
            top = column_emotion[votes.index(max(votes))]  # first max, as majority_vote
            if top is None or int(top) not in keep_emotions:
                continue  # unknown / not-a-face winner, or contempt with 7 classes
            paths.append(on_disk[name])
            labels.append(int(top))
            votes_kept.append(votes)

    if not paths:
        raise DataError(label_file, "no usable rows (every row dropped or file empty)")
    return FERDataset(
        name="ferplus",
        split=split,
        root=root_path,
        paths=paths,
        labels=np.asarray(labels, dtype=np.int64),
        classes=classes,
        votes=np.asarray(votes_kept, dtype=np.int64),
    )
