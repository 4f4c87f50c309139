"""Generic class-folder layout: ``root/<split>/<folder>/<image>``.

Unlike ``torchvision.datasets.ImageFolder`` the class of a folder comes from an explicit
map (or from parsing the folder's name as an emotion), never from the folders'
alphabetical order: ``ImageFolder`` would silently give "anger" target 0 in one data set
and "neutral" target 0 in another.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ferlib.emotions import Emotion, parse_emotion

from .base import IMAGE_EXTENSIONS, FERDataset, check_root, check_split
from .errors import DataError


def scan_class_folders(
    split_dir: Path, folder_emotion: Callable[[Path], Emotion | None]
) -> tuple[list[Path], list[int], set[Emotion]]:
    """Images of every class folder under ``split_dir``, sorted by relative path.

    ``folder_emotion(folder)`` maps a folder to its emotion, returns ``None`` to skip the
    folder deliberately, or raises :class:`DataError`. Hidden entries and loose files in
    ``split_dir`` are ignored, as are non-image files inside class folders (thumbnails,
    notes): only :data:`~ferlib.data.base.IMAGE_EXTENSIONS` count. Returns paths, labels
    and the set of emotions of the folders that were mapped.
    """
    if not split_dir.is_dir():
        raise DataError(split_dir, "split folder not found")
    paths: list[Path] = []
    labels: list[int] = []
    used: set[Emotion] = set()
    with os.scandir(split_dir) as it:
        folders = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    for folder in folders:
        folder_path = split_dir / folder
        emotion = folder_emotion(folder_path)
        if emotion is None:
            continue
        used.add(emotion)
        with os.scandir(folder_path) as it:
            names = sorted(
                e.name
                for e in it
                if e.is_file()
                and not e.name.startswith(".")
                and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            )
        paths.extend(folder_path / n for n in names)
        labels.extend([int(emotion)] * len(names))
    return paths, labels, used


def load_folders(
    root: str | os.PathLike,
    split: str,
    class_map: Mapping[str, Emotion | str | int | None] | None = None,
    name: str = "folders",
) -> FERDataset:
    """Load ``root/<split>/<folder>/<image>`` with an explicit folder -> emotion map.

    - ``class_map=None``: every folder name is parsed with
      :func:`ferlib.emotions.parse_emotion` (``happiness``, ``Happy``, ``sad``...); a name
      that is not an emotion raises :class:`DataError` naming the folder.
    - ``class_map`` given: folder names are looked up exactly; values are emotions (or
      names / canonical ints). Map a folder to ``None`` to skip it on purpose; a folder
      absent from the map raises :class:`DataError` (never drop data silently).
    - ``classes`` of the result: the values of ``class_map`` when given (so train and test
      agree even if one split lacks a class), else the emotions of the folders found.
    - Images: ``.png .jpg .jpeg .bmp`` in any case.
    """
    root_path = check_root(root)
    check_split(split, root_path)
    split_dir = root_path / split

    resolved: dict[str, Emotion | None] | None = None
    if class_map is not None:
        resolved = {}
        for folder, value in class_map.items():
            try:
                resolved[folder] = None if value is None else parse_emotion(value)
            except ValueError as exc:
                raise DataError(root_path, f"class_map[{folder!r}]: {exc}") from None

    def folder_emotion(folder: Path) -> Emotion | None:
        if resolved is not None:
            if folder.name not in resolved:
                raise DataError(
                    folder,
                    f"folder {folder.name!r} is not in class_map "
                    f"(known: {', '.join(sorted(resolved))}); map it to None to skip it",
                )
            return resolved[folder.name]
        try:
            return parse_emotion(folder.name)
        except ValueError as exc:
            raise DataError(
                folder, f"folder name {folder.name!r} is not an emotion: {exc}") from None

    paths, labels, used = scan_class_folders(split_dir, folder_emotion)
    if not paths:
        raise DataError(split_dir, "no images found")
    if resolved is not None:
        classes = tuple(sorted({e for e in resolved.values() if e is not None}))
    else:
        classes = tuple(sorted(used))
    return FERDataset(
        name=name,
        split=split,
        root=root_path,
        paths=paths,
        labels=np.asarray(labels, dtype=np.int64),
        classes=classes,
    )


def load_synthetic(root: str | os.PathLike, split: str, **options) -> FERDataset:
    """The synthetic generator writes the class-folder layout with emotion folder names:
    read it with :func:`load_folders`, only the data set's name differs."""
    options.setdefault("name", "synthetic")
    return load_folders(root, split, **options)
