"""The one data set type every loader returns, and the registry that dispatches to loaders.

Every loader (FERPlus, RAF-DB, AffectNet, class folders) produces a :class:`FERDataset`
whose labels are canonical :class:`~ferlib.emotions.Emotion` values, so that everything
downstream (cache, training, open-set splits, metrics) is written once and never needs to
know which data set it is looking at.
"""

from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ferlib.emotions import Emotion
from ferlib.io import hash_strings

from .decode import decode_rgb
from .errors import DataError

#: Split names every loader accepts (a loader may refuse one its data set lacks).
SPLITS: tuple[str, ...] = ("train", "valid", "test")


@dataclass(eq=False)
class FERDataset(Dataset):
    """A list of face images with canonical emotion labels.

    The data set only holds paths and labels; images are decoded lazily by
    :meth:`__getitem__` (handy for notebooks) or, for training, once and for all by
    :func:`ferlib.data.cache.build_cache`. Treat instances as immutable: the fingerprint is
    computed once and cached.

    ``groups`` (optional): the subject of each sample, for data sets with several images
    per person; a validation split carved from such a set must hold out whole subjects.

    ``eq=False`` because element-wise numpy comparison makes dataclass equality
    meaningless (and ambiguous) for array fields; identity equality is what we want.
    """

    name: str
    split: str
    root: Path
    paths: list[Path]
    labels: np.ndarray
    classes: tuple[Emotion, ...]
    votes: np.ndarray | None = None
    groups: np.ndarray | None = None
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # Normalise types once so that every consumer can rely on them.
        self.root = Path(self.root)
        self.paths = [Path(p) for p in self.paths]
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.classes = tuple(sorted(Emotion(int(c)) for c in self.classes))
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        if not self.classes:
            raise ValueError("a data set needs at least one class")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"duplicate classes: {self.classes}")
        stray = set(np.unique(self.labels).tolist()) - {int(c) for c in self.classes}
        if stray:
            # A label outside ``classes`` would be silently mis-encoded by a LabelMap.
            raise ValueError(f"labels {sorted(stray)} are not in classes {self.classes}")
        if self.votes is not None:
            self.votes = np.asarray(self.votes, dtype=np.int64)
            if self.votes.shape != (len(self.labels), 10):
                raise ValueError(f"votes must have shape (N, 10), got {self.votes.shape}")
        if self.groups is not None:
            self.groups = np.asarray(self.groups, dtype=str).reshape(-1)
            if len(self.groups) != len(self.labels):
                raise ValueError(f"{len(self.groups)} groups but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        """Decode image ``i`` at its stored size: ``(uint8 3xHxW RGB, canonical label, i)``.

        The index is returned so that predictions can always be aligned by sample rather
        than by position in a (possibly shuffled) loader: the open-set reference code's
        misalignment bug is impossible when every output carries its index.
        """
        i = int(i)
        if i < 0:
            i += len(self)
        path = self.paths[i]
        try:
            array = decode_rgb(path)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file name
            raise DataError(path, f"cannot decode image ({exc})") from exc
        image = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        return image, int(self.labels[i]), i

    def relpaths(self) -> list[str]:
        """Paths relative to :attr:`root`, posix style: stable across machines and OSes."""
        out = []
        for p in self.paths:
            try:
                out.append(p.relative_to(self.root).as_posix())
            except ValueError:  # not under root: never from a loader, maybe from a hand-made set
                out.append(Path(os.path.relpath(p, self.root)).as_posix())
        return out

    def fingerprint(self) -> str:
        """Cheap content hash: name, split, then relpath, file size and label per sample.

        Reading file sizes (not contents) keeps it fast on 30k-file data sets while still
        catching the common ways a data set changes (files added, removed, replaced by a
        different encoding, relabelled). Used as a cache key and recorded in manifests.
        """
        if self._fingerprint is None:
            self._fingerprint = hash_strings(self._fingerprint_items())
        return self._fingerprint

    def _fingerprint_items(self) -> Iterable[str]:
        yield self.name
        yield self.split
        groups = [None] * len(self) if self.groups is None else self.groups.tolist()
        for rel, path, label, group in zip(self.relpaths(), self.paths, self.labels.tolist(), groups):
            try:
                size = path.stat().st_size
            except OSError as exc:
                raise DataError(path, f"image vanished or unreadable ({exc})") from exc
            # the subject takes part only when known, so sets without one keep their keys
            yield f"{rel}\t{size}\t{label}" + ("" if group is None else f"\t{group}")

    def counts(self) -> dict[Emotion, int]:
        """Samples per class, every class of :attr:`classes` present (zero included)."""
        bins = np.bincount(self.labels, minlength=len(Emotion))
        return {c: int(bins[int(c)]) for c in self.classes}

    def subset(self, indices: Sequence[int] | np.ndarray, classes: Iterable[Emotion] | None = None) -> FERDataset:
        """A new data set with the given rows (same name, split and root; same classes
        unless ``classes`` is given)."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        return FERDataset(
            name=self.name,
            split=self.split,
            root=self.root,
            paths=[self.paths[i] for i in idx.tolist()],
            labels=self.labels[idx],
            classes=self.classes if classes is None else tuple(classes),
            votes=None if self.votes is None else self.votes[idx],
            groups=None if self.groups is None else self.groups[idx],
        )

    def keep_classes(self, classes: Iterable[Emotion]) -> tuple[FERDataset, dict[Emotion, int]]:
        """Only the rows whose label is in ``classes``, and how many rows of each other
        class were left out.

        Run before decoding, so that a class the experiment does not use (contempt in a
        seven-class run, say) costs neither decoding time nor a failure later on.
        """
        keep = {Emotion(int(c)) for c in classes}
        dropped = {c: n for c, n in self.counts().items() if c not in keep and n > 0}
        if not dropped and set(self.classes) <= keep:
            return self, {}
        mask = np.isin(self.labels, [int(c) for c in keep])
        if not mask.any():
            found = sorted(c.label for c, n in self.counts().items() if n)
            raise DataError(
                self.root,
                f"{self.name}/{self.split}: no sample of the experiment's "
                f"classes {sorted(c.label for c in keep)}; found {found}",
            )
        return self.subset(mask, classes=[c for c in self.classes if c in keep]), dropped

    def __repr__(self) -> str:
        counts = ", ".join(f"{c.short}={n}" for c, n in self.counts().items())
        return f"FERDataset({self.name}/{self.split}, n={len(self)}, {counts}, root={self.root})"


# --------------------------------------------------------------------------- helpers


def check_root(root: str | os.PathLike) -> Path:
    """Resolve ``root`` and fail with a :class:`DataError` naming it when it is missing.

    Resolving once here (rather than per image) gives absolute, resolved paths at the cost
    of one system call.
    """
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(path, "data set root does not exist or is not a directory")
    return path.resolve()


def check_split(split: str, root: Path, allowed: Sequence[str] = SPLITS) -> str:
    """Validate a split name early, with the accepted names in the message."""
    if split not in allowed:
        raise DataError(root, f"unknown split {split!r}; expected one of {', '.join(allowed)}")
    return split


def check_num_classes(num_classes: int, root: Path) -> tuple[Emotion, ...]:
    """7 -> the basic seven (contempt dropped, as open-set FER does); 8 -> all eight."""
    if num_classes == 7:
        return tuple(e for e in Emotion if e is not Emotion.CONTEMPT)
    if num_classes == 8:
        return tuple(Emotion)
    raise DataError(root, f"num_classes must be 7 or 8, got {num_classes!r}")


def list_files(directory: Path) -> dict[str, Path]:
    """Names of the regular files in ``directory`` (one ``scandir``, no per-file stat)."""
    with os.scandir(directory) as it:
        return {e.name: directory / e.name for e in it if e.is_file()}


# --------------------------------------------------------------------------- registry

#: name -> "module:function". Lazy so that ``base`` does not import the loaders (which
#: import ``base``) and so that a broken optional loader cannot break the others.
_LOADERS: dict[str, str | Callable[..., FERDataset]] = {
    "ferplus": "ferlib.data.ferplus:load_ferplus",
    "rafdb": "ferlib.data.rafdb:load_rafdb",
    "affectnet": "ferlib.data.affectnet:load_affectnet",
    "folders": "ferlib.data.folders:load_folders",
    "synthetic": "ferlib.data.folders:load_synthetic",
    "subjects": "ferlib.data.subjects:load_subjects",
}


def register_loader(name: str, loader: Callable[..., FERDataset] | str) -> None:
    """Add (or replace) a loader: a callable ``loader(root, split, **options)`` or a
    ``"module:function"`` string imported on first use.

    Declare every option as a keyword parameter: :func:`load_dataset` refuses an option
    the loader's signature does not name (a misspelt option must not be ignored)."""
    _LOADERS[name] = loader


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return sorted(_LOADERS)


def _resolve_loader(name: str, root: Any) -> Callable[..., FERDataset]:
    try:
        target = _LOADERS[name]
    except KeyError:
        raise DataError(root, f"unknown data set {name!r}; known: {', '.join(available_datasets())}") from None
    if callable(target):
        return target
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def loader_options(name: str) -> tuple[str, ...]:
    """The options (keyword parameters besides ``root`` and ``split``) loader ``name`` takes."""
    loader = _resolve_loader(name, name)
    params = inspect.signature(loader).parameters.values()
    return tuple(
        p.name
        for p in params
        if p.name not in ("root", "split") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )


def check_options(name: str, options: Mapping[str, Any], where: Any = None) -> None:
    """Fail at once, naming the accepted options, when ``options`` holds one that loader
    ``name`` does not take: a misspelt key (``fold`` for ``folds``) must never be ignored.

    A registered loader with a ``**kwargs`` catch-all cannot be checked here; its options
    pass through to it (the kit's own loaders declare every option)."""
    loader = _resolve_loader(name, where if where is not None else name)
    if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(loader).parameters.values()):
        return
    accepted = loader_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DataError(
            where if where is not None else name,
            f"data set {name!r} takes no option {', '.join(map(repr, unknown))}; its options "
            f"are: {', '.join(accepted) or '(none)'}",
        )


def load_dataset(name: str, root: str | os.PathLike, split: str, **options: Any) -> FERDataset:
    """Load split ``split`` of data set ``name`` found at ``root``.

    One entry point for notebooks and the run driver, whose parameters are plain strings.
    ``options`` go to the loader (e.g. ``num_classes=8`` for FERPlus, ``class_map=...``,
    ``folds=5`` for subjects); one the loader does not take raises :class:`DataError`
    naming the loader's options (see :func:`check_options`).
    """
    check_options(name, options, root)
    return _resolve_loader(name, root)(root, split, **options)
