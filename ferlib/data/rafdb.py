"""RAF-DB (basic emotions): the official aligned 100x100 faces.

Layout::

    root/EmoLabel/list_patition_label.txt   lines "train_00001.jpg 5" (sic: "patition")
    root/Image/aligned/train_00001_aligned.jpg

Labels on disk are 1-based in RAF-DB's own order (see :data:`RAFDB_TO_EMOTION`), which
differs from both FERPlus and AffectNet: the explicit table below is the only place it
is encoded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ferlib.emotions import Emotion

from .base import FERDataset, check_root, check_split, list_files
from .classmap import ClassTarget, resolve_class_map
from .errors import DataError, MissingSplitError

#: RAF-DB label on disk (1-based) -> canonical emotion.
RAFDB_TO_EMOTION: dict[int, Emotion] = {
    1: Emotion.SURPRISE,
    2: Emotion.FEAR,
    3: Emotion.DISGUST,
    4: Emotion.HAPPINESS,
    5: Emotion.SADNESS,
    6: Emotion.ANGER,
    7: Emotion.NEUTRAL,
}

LABEL_FILE = "EmoLabel/list_patition_label.txt"

#: Labels a class map may name: RAF-DB's ids as written in the label file.
LABELS: tuple[str, ...] = tuple(str(i) for i in RAFDB_TO_EMOTION)


def load_rafdb(
    root: str | os.PathLike,
    split: str,
    aligned: bool = True,
    class_map: Mapping[str, ClassTarget] | None = None,
) -> FERDataset:
    """Load the RAF-DB ``train`` or ``test`` split (selected by image-name prefix).

    RAF-DB has no validation split: ``split="valid"`` raises :class:`MissingSplitError`;
    :func:`ferlib.data.prepare.load_splits` then carves one from training data (selecting
    on the test split is the reference code's defect we avoid).

    ``aligned=True`` reads ``Image/aligned/<stem>_aligned.jpg`` (what the literature
    uses); ``aligned=False`` reads ``Image/original/<name>``. ``class_map`` overrides the
    meaning of RAF-DB's label ids ``"1"``..``"7"`` (``{"7": "drop"}``; see
    :mod:`ferlib.data.classmap`).
    """
    root_path = check_root(root)
    if split == "valid":
        raise MissingSplitError(
            root_path,
            "RAF-DB has no 'valid' split (only 'train' and 'test'); "
            "carve a validation set from 'train' with ferlib.data.splits.carve_validation",
        )
    check_split(split, root_path, allowed=("train", "test"))
    label_emotion: dict[int, Emotion | None] = dict(RAFDB_TO_EMOTION)
    for key, emotion in resolve_class_map(class_map, root_path, known=LABELS).items():
        label_emotion[int(key)] = emotion

    label_file = root_path / LABEL_FILE
    if not label_file.is_file():
        raise DataError(label_file, "RAF-DB label file not found")
    image_dir = root_path / "Image" / ("aligned" if aligned else "original")
    if not image_dir.is_dir():
        raise DataError(image_dir, "RAF-DB image folder not found")
    on_disk = list_files(image_dir)

    paths: list[Path] = []
    labels: list[int] = []
    prefix = f"{split}_"
    with open(label_file, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue  # blank line
            if len(parts) != 2:
                raise DataError(label_file, f"expected '<image name> <label>', got {line.rstrip()!r}", line_no)
            name, raw = parts
            try:
                value = int(raw)
            except ValueError:
                raise DataError(label_file, f"label must be an integer, got {raw!r}", line_no) from None
            if value not in RAFDB_TO_EMOTION:
                raise DataError(label_file, f"label {value} out of range (RAF-DB labels are 1..7)", line_no)
            if not (name.startswith("train_") or name.startswith("test_")):
                raise DataError(
                    label_file,
                    f"image name {name!r} starts with neither 'train_' nor 'test_'",
                    line_no,
                )
            if not name.startswith(prefix) or label_emotion[value] is None:
                continue
            file_name = f"{Path(name).stem}_aligned{Path(name).suffix}" if aligned else name
            if file_name not in on_disk:
                raise DataError(label_file, f"labelled image {file_name!r} not found in {image_dir}", line_no)
            paths.append(on_disk[file_name])
            labels.append(int(label_emotion[value]))

    if not paths:
        raise DataError(label_file, f"no images for split {split!r}")
    return FERDataset(
        name="rafdb",
        split=split,
        root=root_path,
        paths=paths,
        labels=np.asarray(labels, dtype=np.int64),
        classes=tuple(sorted({e for e in label_emotion.values() if e is not None})),
    )
