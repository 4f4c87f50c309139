"""Generic class-folder layout: ``root/<split>/<folder>/<image>``.

Unlike ``torchvision.datasets.ImageFolder`` the class of a folder comes from an explicit
map (or from parsing the folder's name as an emotion), never from the folders'
alphabetical order: ``ImageFolder`` would silently give "anger" target 0 in one data set
and "neutral" target 0 in another.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ferlib.emotions import Emotion, parse_emotion

from .base import FERDataset, check_root, check_split
from .classmap import ClassTarget, resolve_class_map
from .decode import IMAGE_EXTENSIONS
from .errors import DataError, MissingSplitError

#: Files an operating system drops into folders; never images, never worth an error.
OS_CLUTTER: frozenset[str] = frozenset({"thumbs.db", "desktop.ini"})


class EmptyClassWarning(UserWarning):
    """A class folder holds no image, or a class has no training image, so the class is
    left out of the data set's classes (and its rows, if any, out of the split).

    Kept silently, such a class would become an output the model never trains, whose test
    rows it can only get wrong. A category of its own, so it can be filtered or turned into
    an error with :mod:`warnings` filters."""


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


@dataclass
class FolderScan:
    """What :func:`scan_folders` found under one split folder.

    ``paths`` and ``labels``: every image, sorted by relative path. ``found``: the emotions
    of the folders that were mapped (empty ones included); ``present``: those with at least
    one image; ``empty``: the mapped folders without an image, by emotion.
    """

    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    found: set[Emotion] = field(default_factory=set)
    present: set[Emotion] = field(default_factory=set)
    empty: dict[Emotion, list[Path]] = field(default_factory=dict)


def scan_folders(split_dir: Path, folder_emotion: Callable[[Path], Emotion | None]) -> FolderScan:
    """Images of every class folder under ``split_dir``, sorted by relative path, with the
    emotions found and the empty class folders.

    ``folder_emotion(folder)`` maps a folder to its emotion, returns ``None`` to skip the
    folder deliberately, or raises :class:`DataError`. Hidden entries and loose files in
    ``split_dir`` are ignored; inside class folders only
    :data:`~ferlib.data.decode.IMAGE_EXTENSIONS` count (see :func:`list_images`). A missing
    ``split_dir`` raises :class:`MissingSplitError` (the split does not exist).
    """
    if not split_dir.is_dir():
        raise MissingSplitError(split_dir, "split folder not found")
    scan = FolderScan()
    with os.scandir(split_dir) as it:
        folders = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    for folder in folders:
        folder_path = split_dir / folder
        emotion = folder_emotion(folder_path)
        if emotion is None:
            continue
        scan.found.add(emotion)
        names = list_images(folder_path)
        if not names:
            scan.empty.setdefault(emotion, []).append(folder_path)
            continue
        scan.present.add(emotion)
        scan.paths.extend(folder_path / n for n in names)
        scan.labels.extend([int(emotion)] * len(names))
    return scan


def scan_class_folders(
    split_dir: Path, folder_emotion: Callable[[Path], Emotion | None]
) -> tuple[list[Path], list[int], set[Emotion]]:
    """``(paths, labels, emotions of the folders that were mapped)`` of
    :func:`scan_folders`, for loaders that take their classes from elsewhere (AffectNet)."""
    scan = scan_folders(split_dir, folder_emotion)
    return scan.paths, scan.labels, scan.found


def warn_empty_folders(scan: FolderScan, kept: Iterable[Emotion], what: str) -> None:
    """One :class:`EmptyClassWarning` per empty class folder of a class with no image in
    ``scan`` (an empty folder beside a full one of the same class loses nothing).

    ``kept``: the classes that stay all the same (they have training images elsewhere);
    ``what``: the data set and split, for the message."""
    kept = set(kept)
    for emotion in sorted(set(scan.empty) - scan.present):
        outcome = (
            f"{what} has no {emotion.label} image (the class stays: the training split has some)"
            if emotion in kept
            else f"class {emotion.label} is left out of {what}'s classes"
        )
        for folder in scan.empty[emotion]:
            warnings.warn(
                f"{folder}: class folder ({emotion.label}) holds no image; {outcome}",
                EmptyClassWarning,
                stacklevel=3,
            )


def drop_untrained(
    paths: list[Path], labels: np.ndarray, classes: Iterable[Emotion], why: Callable[[Emotion], str]
) -> np.ndarray:
    """Row mask of the ``labels`` in ``classes``, with an :class:`EmptyClassWarning` per
    folder whose rows are left out (``why(emotion)``: the reason, for the message).

    Such rows are images of a class without training images: kept, they would be test rows
    the model can only get wrong (and, in a ``FERDataset``, labels outside ``classes``)."""
    keep = np.isin(labels, [int(c) for c in classes])
    left_out: dict[tuple[Path, int], int] = {}
    for i in np.flatnonzero(~keep).tolist():
        key = (paths[i].parent, int(labels[i]))
        left_out[key] = left_out.get(key, 0) + 1
    for (folder, label), n in sorted(left_out.items()):
        emotion = Emotion(label)
        warnings.warn(
            f"{folder}: {n} {emotion.label} image(s) left out: {why(emotion)}",
            EmptyClassWarning,
            stacklevel=3,
        )
    return keep


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
    - ``classes`` of the result: the classes with an image in the *training* split
      (``root/train``), the same for every split, so that train, validation and test agree
      even if one split lacks a class. A class without a training image (its folder empty,
      or absent from ``root/train``) is left out with an :class:`EmptyClassWarning` naming
      the folder, and so are its images in the other splits: the model would have an
      output it never trained, and test rows it can only get wrong. Without a ``train``
      split: the classes with an image in this split plus every value of ``class_map``
      whose folder is absent (an empty folder still drops its class).
    - Images: :data:`~ferlib.data.decode.IMAGE_EXTENSIONS` in any case.
    - A missing ``root/<split>`` raises :class:`MissingSplitError`.
    """
    root_path = check_root(root)
    check_split(split, root_path)
    split_dir = root_path / split
    folder_emotion, mapped = folder_emotions(class_map, root_path)
    scan = scan_folders(split_dir, folder_emotion)
    train_dir = root_path / "train"
    if split == "train":
        classes = scan.present
    elif train_dir.is_dir():  # the training split decides the classes of every split
        classes = scan_folders(train_dir, folder_emotion).present
    else:  # nothing to train on here: this split's classes (mapped ones without a folder too)
        classes = scan.present | (mapped - scan.found)
    warn_empty_folders(scan, classes, f"{name}/{split}")
    labels = np.asarray(scan.labels, dtype=np.int64)
    keep = drop_untrained(
        scan.paths,
        labels,
        classes,
        lambda emotion: f"{train_dir} has no {emotion.label} image, so the class is not one of {name}'s",
    )
    paths = [p for p, k in zip(scan.paths, keep.tolist()) if k]
    if not paths:
        what = "no images found" if not scan.paths else "no images of a class the training split has"
        raise DataError(split_dir, what)
    return FERDataset(
        name=name,
        split=split,
        root=root_path,
        paths=paths,
        labels=labels[keep],
        classes=tuple(sorted(classes)),
    )


def load_synthetic(
    root: str | os.PathLike,
    split: str,
    class_map: Mapping[str, ClassTarget] | None = None,
) -> FERDataset:
    """The synthetic generator writes the class-folder layout with emotion folder names:
    read it with :func:`load_folders`, only the data set's name differs."""
    return load_folders(root, split, class_map=class_map, name="synthetic")
