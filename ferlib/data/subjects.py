"""Posed-expression data sets without an official split, split by subject.

CK+, JAFFE, KDEF and Oulu-CASIA ship (or are usually arranged as) one folder per class::

    root/<class>/<image>          e.g. root/anger/S010_004_00000019.png

with several images of every person. Splitting such a set image by image puts frames of
one person on both sides, and accuracy then measures recognition of the person, not of
the expression. This loader splits *by subject*: the subject of each image comes from its
file name through a regular expression (:data:`SUBJECT_PATTERNS`, or your own), and whole
subjects go to ``train`` or ``test``, either

- grouped k-fold: ``folds=k`` (k >= 2) and ``fold`` in ``0..k-1``: the test split is the
  ``fold``-th of k groups of subjects of about equal size; over all folds every image is a
  test image exactly once (the usual 10-fold protocol of CK+), or
- held-out fraction: ``folds=0`` (default): about ``test_fraction`` of the images, whole
  subjects drawn at random, are the test split.

Both draw subjects with ``split_seed``, not with the run's seed, so that runs with
different training seeds are evaluated on the same people. ``split="valid"`` raises
:class:`~ferlib.data.errors.MissingSplitError`: :func:`ferlib.data.prepare.load_splits`
carves validation from the training subjects, grouped by subject too (the returned
data set carries each image's subject in ``groups``).

The open-set evaluation set of such a set takes its open rows from the *test subjects*
only, by default (``open_from_test_subjects=True``; :func:`open_rows_from_test_subjects`).
The paper's protocol adds the open class's training images, but on a set split by subject
those show people whose other expressions the close-set model trained on, beside close
images of people it never saw: a detector can then separate seen from unseen people instead
of the expression (with a close-set model near chance, transductive detectors do exactly
that). ``data_options={'open_from_test_subjects': False}`` restores the paper's protocol.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ferlib.emotions import Emotion

from .base import FERDataset, check_root, check_split
from .classmap import ClassTarget
from .errors import DataError, MissingSplitError
from .folders import drop_untrained, folder_emotions, scan_folders, warn_empty_folders
from .splits import carve_groups

#: Subject patterns for the common posed sets (regular expressions searched in the file
#: name; group 1 is the subject).
SUBJECT_PATTERNS: dict[str, str] = {
    # CK+: S005_001_00000011.png -> S005 (subject, sequence, frame)
    "ck+": r"^(S\d+)_",
    # KDEF: AF01ANS.JPG -> F01 (session A/B, sex F/M, id, expression, view); both sessions
    # are the same person, so the session letter is not part of the subject
    "kdef": r"^[AB]([FM]\d{2})[A-Z]{2}",
    # JAFFE: KA.AN1.39.tiff -> KA (poser's initials, expression + take, image number)
    "jaffe": r"^([A-Z]{2})\.[A-Z]{2}\d",
    # Oulu-CASIA frames renamed with the subject first: P001_anger_000.jpeg -> P001
    "oulu": r"^(P\d{3})(?!\d)",
}


def _compile(pattern: str, where: Path) -> re.Pattern[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise DataError(where, f"subject_pattern {pattern!r} is not a regular expression ({exc})") from None
    if compiled.groups < 1:
        raise DataError(where, f"subject_pattern {pattern!r} needs a group around the subject, e.g. r'^(S\\d+)_'")
    return compiled


def subjects_of(names: list[str], subject_pattern: str, where: Path) -> list[str]:
    """The subject of each file name under ``subject_pattern``: a key of
    :data:`SUBJECT_PATTERNS`, ``"auto"`` (the first preset that matches every name) or a
    regular expression whose first group is the subject. A name it does not match raises
    :class:`DataError` naming the file: guessing a subject would leak people across splits.
    """
    presets = ", ".join(SUBJECT_PATTERNS)
    if subject_pattern == "auto":
        for preset in SUBJECT_PATTERNS.values():
            compiled = re.compile(preset)
            if all(compiled.search(n) for n in names):
                return [compiled.search(n).group(1) for n in names]
        raise DataError(
            where,
            f"no subject pattern ({presets}) matches every file name "
            f"(first: {names[0]!r}); pass data_options={{'subject_pattern': "
            f"r'<regex with the subject in group 1>'}}",
        )
    compiled = _compile(SUBJECT_PATTERNS.get(subject_pattern, subject_pattern), where)
    out = []
    for name in names:
        match = compiled.search(name)
        if match is None or not match.group(1):
            raise DataError(
                where / name,
                f"subject_pattern {subject_pattern!r} finds no subject "
                f"in this file name (presets: {presets}, or 'auto')",
            )
        out.append(match.group(1))
    return out


def fold_of_subjects(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold ``0..folds-1`` of every sample; all samples of a subject share one fold.

    Subjects are shuffled with ``seed``, then placed largest first into the fold with the
    fewest samples so far (folds of about equal size, like scikit-learn's GroupKFold,
    but seeded).
    """
    names, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    if folds > len(names):
        raise ValueError(f"folds={folds} but only {len(names)} subjects")
    shuffled = np.random.default_rng([seed, 7]).permutation(len(names))
    order = shuffled[np.argsort(-sizes[shuffled], kind="stable")]
    fill = np.zeros(folds, dtype=np.int64)
    subject_fold = np.zeros(len(names), dtype=np.int64)
    for k in order.tolist():
        target = int(np.argmin(fill))
        subject_fold[k] = target
        fill[target] += sizes[k]
    return subject_fold[inverse]


def load_subjects(
    root: str | os.PathLike,
    split: str,
    class_map: Mapping[str, ClassTarget] | None = None,
    subject_pattern: str = "auto",
    folds: int = 0,
    fold: int = 0,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    name: str = "subjects",
    open_from_test_subjects: bool = True,
) -> FERDataset:
    """Load ``train`` or ``test`` of ``root/<class>/<image>``, split by subject.

    - ``class_map``: folder name -> emotion or ``"drop"`` (as :func:`load_folders`).
    - ``subject_pattern``: ``"auto"``, a preset (``ck+``, ``kdef``, ``jaffe``, ``oulu``;
      see :data:`SUBJECT_PATTERNS`) or a regular expression with the subject in group 1.
    - ``folds`` >= 2 with ``fold`` in ``0..folds-1``: grouped k-fold; ``folds=0``: about
      ``test_fraction`` of the images, whole subjects, are the test split.
    - ``split_seed``: the draw of subjects (fixed across training seeds on purpose).
    - ``name``: the data set's name in fingerprints and tables (``"ckplus"``, say).
    - ``open_from_test_subjects``: read by :func:`~ferlib.data.prepare.load_splits`, not
      here: the open-set evaluation set takes its open rows from the test subjects only
      (default), or also the open class's images of training subjects (``False``: the
      paper's protocol, which lets a detector tell seen from unseen people; see the module
      docstring). It changes no loaded split.

    The result's ``groups`` holds each image's subject; its ``classes``, in both splits,
    are the classes with an image of a training subject. An empty class folder, or a class
    whose images all show test subjects, is left out with an
    :class:`~ferlib.data.folders.EmptyClassWarning` naming the folder (and the test split
    leaves out that class's images): the model would have an output it never trained.
    """
    root_path = check_root(root)
    if split == "valid":
        raise MissingSplitError(
            root_path, "a subject-split data set has no validation split; one is carved from the training subjects"
        )
    check_split(split, root_path, allowed=("train", "test"))
    if folds == 1 or folds < 0:
        raise DataError(root_path, f"folds must be 0 (held-out fraction) or >= 2, got {folds}")
    if folds and not 0 <= fold < folds:
        raise DataError(root_path, f"fold must be in 0..{folds - 1} for folds={folds}, got {fold}")
    if not folds and not 0.0 < test_fraction < 1.0:
        raise DataError(root_path, f"test_fraction must be in (0, 1), got {test_fraction}")
    if not isinstance(open_from_test_subjects, (bool, np.bool_)):
        raise DataError(root_path, f"open_from_test_subjects must be True or False, got {open_from_test_subjects!r}")

    folder_emotion, _ = folder_emotions(class_map, root_path)
    scan = scan_folders(root_path, folder_emotion)
    paths, labels = scan.paths, np.asarray(scan.labels, dtype=np.int64)
    if not paths:
        raise DataError(root_path, "no images found in its class folders")
    groups = np.asarray(subjects_of([p.name for p in paths], subject_pattern, root_path))
    if len(np.unique(groups)) < 2:
        raise DataError(
            root_path,
            f"only one subject ({groups[0]!r}) under subject_pattern {subject_pattern!r}: cannot split by subject",
        )
    if folds:
        try:
            is_test = fold_of_subjects(groups, folds, split_seed) == fold
        except ValueError as exc:
            raise DataError(root_path, str(exc)) from None
    else:
        is_test = np.zeros(len(groups), dtype=bool)
        is_test[carve_groups(groups, test_fraction, split_seed)[1]] = True
    # the training subjects decide the classes of both splits (same draw, same classes)
    classes = {Emotion(int(c)) for c in np.unique(labels[~is_test]).tolist()}
    warn_empty_folders(scan, classes, f"{name}/{split}")
    rows = np.flatnonzero(is_test if split == "test" else ~is_test)
    if split == "test":
        keep = drop_untrained(
            [paths[i] for i in rows.tolist()],
            labels[rows],
            classes,
            lambda emotion: f"every {emotion.label} image is of a test subject, so the class has no training image",
        )
        rows = rows[keep]
    return FERDataset(
        name=name,
        split=split,
        root=root_path,
        paths=[paths[i] for i in rows.tolist()],
        labels=labels[rows],
        classes=tuple(sorted(classes)),
        groups=groups[rows],
    )


#: the loader option that decides where the evaluation set's open rows come from
OPEN_FROM_TEST_SUBJECTS = "open_from_test_subjects"


def open_rows_from_test_subjects(train: FERDataset, options: Mapping[str, Any]) -> bool:
    """Whether the open-set evaluation set takes its open rows from the test subjects only.

    True for a data set whose loader knows each image's subject (``train.groups``), unless
    the loader options say ``open_from_test_subjects=False``; False for a data set without
    subjects (the paper's protocol: the open class's training images join the evaluation
    set). See the module docstring for why.
    """
    return train.groups is not None and bool(options.get(OPEN_FROM_TEST_SUBJECTS, True))
