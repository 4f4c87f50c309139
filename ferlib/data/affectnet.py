"""AffectNet in the "seed 002" folder layout used by the open-set FER literature.

Layout::

    root/Training_Labeled/<0..7>/<image>
    root/Validation/<0..7>/<image>

AffectNet's own test set is not public, so its Validation set serves as the *test* split
(every paper does this). It therefore cannot also be the validation split: ``split="valid"``
raises :class:`~ferlib.data.errors.MissingSplitError`, and
:func:`ferlib.data.prepare.load_splits` carves a validation split from training data
instead, so that no model is selected on the split that is reported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ferlib.emotions import Emotion

from .base import FERDataset, check_num_classes, check_root, check_split
from .classmap import ClassTarget, resolve_class_map
from .errors import DataError, MissingSplitError
from .folders import scan_class_folders

#: AffectNet folder id -> canonical emotion.
AFFECTNET_TO_EMOTION: dict[int, Emotion] = {
    0: Emotion.NEUTRAL,
    1: Emotion.HAPPINESS,
    2: Emotion.SADNESS,
    3: Emotion.SURPRISE,
    4: Emotion.FEAR,
    5: Emotion.DISGUST,
    6: Emotion.ANGER,
    7: Emotion.CONTEMPT,
}

#: AffectNet's non-expression categories (None, Uncertain, Non-Face). Present in the
#: full release, never used for FER; skipped when found rather than rejected.
AFFECTNET_NON_EXPRESSION: frozenset[int] = frozenset({8, 9, 10})

#: Split name -> folder. No "valid": see the module docstring.
SPLIT_DIRS: dict[str, str] = {
    "train": "Training_Labeled",
    "test": "Validation",
}

#: Labels a class map may name: the folder ids.
LABELS: tuple[str, ...] = tuple(str(i) for i in range(11))


def load_affectnet(
    root: str | os.PathLike,
    split: str,
    num_classes: int = 7,
    class_map: Mapping[str, ClassTarget] | None = None,
) -> FERDataset:
    """Load AffectNet ``train`` (Training_Labeled) or ``test`` (Validation).

    ``num_classes=7`` skips the contempt folder (``7``); ``8`` keeps it. ``class_map``
    overrides folder ids (``{"7": "drop"}``, ``{"7": "anger"}``; see
    :mod:`ferlib.data.classmap`). A folder whose name is not an AffectNet id raises
    :class:`DataError` naming it; ``split="valid"`` raises :class:`MissingSplitError`.
    """
    root_path = check_root(root)
    if split == "valid":
        raise MissingSplitError(
            root_path / "Validation",
            "AffectNet has no validation split of its own: its Validation folder is the test "
            "split; a validation split is carved from Training_Labeled",
        )
    check_split(split, root_path, allowed=tuple(SPLIT_DIRS))
    classes = check_num_classes(num_classes, root_path)
    keep = set(classes)
    overrides = resolve_class_map(class_map, root_path, known=LABELS)

    def folder_emotion(folder: Path) -> Emotion | None:
        if folder.name in overrides:
            emotion = overrides[folder.name]
            return emotion if emotion in keep else None
        try:
            folder_id = int(folder.name)
        except ValueError:
            folder_id = -1
        if folder_id in AFFECTNET_NON_EXPRESSION:
            return None
        if folder_id not in AFFECTNET_TO_EMOTION:
            raise DataError(
                folder,
                f"folder {folder.name!r} is not an AffectNet expression id (0..7)",
            )
        emotion = AFFECTNET_TO_EMOTION[folder_id]
        return emotion if emotion in keep else None

    split_dir = root_path / SPLIT_DIRS[split]
    paths, labels, _ = scan_class_folders(split_dir, folder_emotion)
    if not paths:
        raise DataError(split_dir, "no images found")
    return FERDataset(
        name="affectnet",
        split=split,
        root=root_path,
        paths=paths,
        labels=np.asarray(labels, dtype=np.int64),
        classes=classes,
    )
