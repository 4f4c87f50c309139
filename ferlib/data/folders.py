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

from .base import FERDataset, check_root, check_split
from .classmap import ClassTarget, resolve_class_map
from .decode import IMAGE_EXTENSIONS
from .errors import DataError, MissingSplitError

#: Files an operating system drops into folders; never images, never worth an error.
OS_CLUTTER: frozenset[str] = frozenset({"thumbs.db", "desktop.ini"})


def list_images(folder: Path) -> list[str]:
    """Sorted names of the images in ``folder`` (hidden files and OS clutter ignored).

    Non-image files beside images (notes, thumbnails) are ignored. A folder that has
    files but not one with a supported extension raises :class:`DataError` naming the
    extensions found and those supported: "no images found" would hide that the data set
    is simply in a format (``.gif``, ``.heic``...) that has to be converted first.
    """
    with os.scandir(folder) as it:
        names = sorted(
            e.name for e in it if e.is_file() and not e.name.startswith(".") and e.name.lower() not in OS_CLUTTER
        )
    images = [n for n in names if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
    if names and not images:
        found = sorted({os.path.splitext(n)[1].lower() or "(no extension)" for n in names})
        raise DataError(
            folder,
            f"none of its {len(names)} file(s) has a supported image extension; found "
            f"{', '.join(found)}; supported: {', '.join(sorted(IMAGE_EXTENSIONS))} "
            f"(any case)",
        )
    return images


def scan_class_folders(
    split_dir: Path, folder_emotion: Callable[[Path], Emotion | None]
) -> tuple[list[Path], list[int], set[Emotion]]:
    """Images of every class folder under ``split_dir``, sorted by relative path.

    ``folder_emotion(folder)`` maps a folder to its emotion, returns ``None`` to skip the
    folder deliberately, or raises :class:`DataError`. Hidden entries and loose files in
    ``split_dir`` are ignored; inside class folders only
    :data:`~ferlib.data.decode.IMAGE_EXTENSIONS` count (see :func:`list_images`). Returns
    paths, labels and the set of emotions of the folders that were mapped. A missing
    ``split_dir`` raises :class:`MissingSplitError` (the split does not exist).
    """
    if not split_dir.is_dir():
        raise MissingSplitError(split_dir, "split folder not found")
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
        names = list_images(folder_path)
        paths.extend(folder_path / n for n in names)
        labels.extend([int(emotion)] * len(names))
    return paths, labels, used


def folder_emotions(
    class_map: Mapping[str, ClassTarget] | None, where: Path
) -> tuple[Callable[[Path], Emotion | None], set[Emotion]]:
    """``folder -> emotion`` for class-folder layouts, and the emotions ``class_map`` names.

    A folder named in ``class_map`` gets its value (``None`` / ``"drop"``: skipped);
    any other folder's name is parsed with :func:`ferlib.emotions.parse_emotion`
    (``happiness``, ``Happy``, ``sad``, ``contempt``...). A folder that is neither raises
    :class:`DataError` naming it: data is never dropped silently.
    """
    resolved = resolve_class_map(class_map, where)

    def folder_emotion(folder: Path) -> Emotion | None:
        if folder.name in resolved:
            return resolved[folder.name]
        try:
            return parse_emotion(folder.name)
        except ValueError as exc:
            if class_map is None:
                raise DataError(
                    folder,
                    f"folder name {folder.name!r} is not an emotion: {exc}; "
                    f"map it with class_map={{{folder.name!r}: '<emotion or drop>'}}",
                ) from None
            raise DataError(
                folder,
                f"folder {folder.name!r} is not in class_map (known: "
                f"{', '.join(sorted(resolved))}) and its name is not an emotion; "
                f"map it to an emotion, or to 'drop' to skip it",
            ) from None

    return folder_emotion, {e for e in resolved.values() if e is not None}


def load_folders(
    root: str | os.PathLike,
    split: str,
    class_map: Mapping[str, ClassTarget] | None = None,
    name: str = "folders",
) -> FERDataset:
    """Load ``root/<split>/<folder>/<image>`` with an explicit folder -> emotion map.

    - Folder names are parsed with :func:`ferlib.emotions.parse_emotion` (``happiness``,
      ``Happy``, ``sad``...) unless ``class_map`` names them (see
      :mod:`ferlib.data.classmap`): ``class_map={"0_neutral": "neutral", "extra":
      "drop"}``. A folder that is neither raises :class:`DataError` naming the folder.
    - ``classes`` of the result: the emotions of the folders found plus every value of
      ``class_map`` (so train and test agree even if one split lacks a class).
    - Images: :data:`~ferlib.data.decode.IMAGE_EXTENSIONS` in any case.
    - A missing ``root/<split>`` raises :class:`MissingSplitError`.
    """
    root_path = check_root(root)
    check_split(split, root_path)
    split_dir = root_path / split
    folder_emotion, mapped = folder_emotions(class_map, root_path)
    paths, labels, used = scan_class_folders(split_dir, folder_emotion)
    if not paths:
        raise DataError(split_dir, "no images found")
    return FERDataset(
        name=name,
        split=split,
        root=root_path,
        paths=paths,
        labels=np.asarray(labels, dtype=np.int64),
        classes=tuple(sorted(used | mapped)),
    )


def load_synthetic(
    root: str | os.PathLike,
    split: str,
    class_map: Mapping[str, ClassTarget] | None = None,
) -> FERDataset:
    """The synthetic generator writes the class-folder layout with emotion folder names:
    read it with :func:`load_folders`, only the data set's name differs."""
    return load_folders(root, split, class_map=class_map, name="synthetic")
