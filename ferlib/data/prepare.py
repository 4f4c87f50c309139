"""Data preparation for the pipeline: load a data set's splits, decode them once, apply the
open-set protocol, and choose the validation rows.

Every stage of :mod:`ferlib.stages` starts from :func:`load_splits`, so what it decides
(which rows are trained on, which select the model, which are tested, which classes take
part) is decided once, here, for the notebooks and the runner alike.

Validation is never the test split. A data set with a validation split of its own
(FERPlus, the synthetic set, class folders with ``valid/``) uses it. One without (RAF-DB,
AffectNet, whose Validation folder is the reported test split, and the subject-split
sets) gets one carved from its training split: stratified by class, or by whole subject
when the loader knows each image's subject, seeded by the run's ``seed`` and sized by
``val_fraction``. Only an *absent* split falls back to carving
(:class:`~ferlib.data.errors.MissingSplitError`); a broken one raises.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ferlib.emotions import Emotion, parse_emotion
from ferlib.io import hash_strings

from .base import SPLITS, FERDataset, check_num_classes, check_options, load_dataset, loader_options
from .cache import ImageCache, build_cache
from .classmap import ClassTarget, class_map_key, resolve_class_map
from .errors import DataError, MissingSplitError
from .splits import LabelMap, OpenSetSplit, carve_validation, openset_split

#: Where each data set is looked for when the caller gives no ``data_root``.
DEFAULT_ROOTS: dict[str, str] = {
    "synthetic": "data/synthetic",
    "ferplus": "data/ferplus",
    "rafdb": "data/raf-basic",
    "affectnet": "data/AffectNet",
    "folders": "data/folders",
    "subjects": "data/subjects",
}


@dataclass
class Splits:
    """Decoded splits of one data set, the open-set protocol over them, and the rows each
    role uses.

    - ``train``: the whole training split (open-class rows included: they join the
      evaluation set, see :class:`~ferlib.data.splits.OpenSetSplit`).
    - ``train_rows``: rows of ``train`` the close-set model trains on: the protocol's
      close-class rows minus any carved for validation.
    - ``valid``: the validation images, every row usable for model selection after
      :func:`close_rows`; the data set's own split, or rows carved from ``train``.
    - ``validation_source``: says which, in words, for logs, results and manifests.
    - ``fingerprint``: a hash of the decoded data (each cache's content key, which covers
      paths, sizes, labels and subjects) and of every loading choice (``num_classes``,
      ``class_map``, ``data_options``). The carve is not in it: it is fixed by
      ``val_fraction`` and ``seed``, which callers key on as parameters.
    - ``dropped``: samples left out per ``"<split>/<class>"`` because their class is not
      one of the experiment's (logged when loading).
    """

    train: ImageCache
    valid: ImageCache
    test: ImageCache
    split: OpenSetSplit
    fingerprint: str
    train_rows: np.ndarray
    validation_source: str
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def label_map(self) -> LabelMap:
        return self.split.label_map

    def training(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows of train, targets 0..K-1)`` the close-set model is trained on."""
        return self.train_rows, self.label_map.encode(self.train.labels.numpy()[self.train_rows])

    def validation(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows of valid, targets)`` of its close-class samples (model selection)."""
        return close_rows(self.valid, self.label_map)


def parse_open_class(open_class: Emotion | str | int | None) -> Emotion | None:
    """The open class, or ``None`` for the close-set setting (``None``, ``"none"``, ``""``)."""
    if open_class is None or str(open_class).lower() in ("none", "", "null"):
        return None
    return parse_emotion(open_class)


def close_rows(cache: ImageCache, label_map: LabelMap) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``cache`` whose class is one of ``label_map``'s, and their targets."""
    targets = label_map.encode(cache.labels.numpy())
    rows = np.flatnonzero(targets >= 0)
    return rows, targets[rows]


def loader_name(dataset: str) -> str:
    """The registry name the data set ``dataset`` loads with (the synthetic set is written
    in the class-folder layout and read by the ``folders`` loader)."""
    return "folders" if dataset == "synthetic" else dataset


def dataset_options(
    dataset: str,
    root: str | os.PathLike,
    num_classes: int = 7,
    class_map: Mapping[str, ClassTarget] | None = None,
    data_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The options :func:`load_splits` passes to the loader, checked before anything is read.

    ``data_options`` go through as given; ``class_map`` and ``num_classes`` are added when
    the loader takes them. An option the loader does not take, a ``class_map`` value that
    is neither an emotion nor "drop", or ``class_map`` given both ways, raises
    :class:`DataError` naming the loader's options; nothing is read from disk, so a
    driver's up-front check can call this before any work.
    """
    name = loader_name(dataset)
    options = dict(data_options or {})
    accepted = loader_options(name)
    if class_map is not None:
        if "class_map" in options:
            raise DataError(root, "class_map given both as a parameter and in data_options; give it once")
        if "class_map" not in accepted:
            raise DataError(
                root, f"data set {dataset!r} takes no class_map; its options are: {', '.join(accepted) or '(none)'}"
            )
        resolve_class_map(class_map, root)  # values checked now; keys by the loader
        options["class_map"] = class_map
    if "num_classes" in accepted:
        options.setdefault("num_classes", num_classes)
    check_options(name, options, root)
    return options


def _options_key(options: Mapping[str, Any]) -> str:
    items = [f"{k}={options[k]!r}" for k in sorted(options) if k != "class_map"]
    return "options:" + ",".join(items) + ";" + class_map_key(options.get("class_map"))


def load_splits(
    dataset: str,
    data_root: str | None,
    open_class: Emotion | str | int | None,
    input_size: int,
    cache_dir: str | None = "outputs/cache",
    synthetic_seed: int = 0,
    num_classes: int = 7,
    class_map: Mapping[str, ClassTarget] | None = None,
    data_options: Mapping[str, Any] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    memmap: bool = False,
) -> Splits:
    """Load train/valid/test, decode each once into the uint8 cache, apply the protocol.

    - ``num_classes``: 7 (the basic seven) or 8 (with contempt): the experiment's classes.
      A sample of another class (a contempt folder in a seven-class run, a label a
      ``class_map`` maps elsewhere) is dropped *before decoding*, with a logged count.
    - ``class_map``: the data set's label names -> emotion or ``"drop"``
      (:mod:`ferlib.data.classmap`); ``data_options``: further loader options (e.g.
      ``{"folds": 10, "fold": 3}`` for ``subjects``). Unknown keys fail at once.
    - ``val_fraction``, ``seed``: the validation carve for data sets without a validation
      split (see the module docstring); ignored when the data set has one.
    - ``memmap``: keep each split's uint8 cache in a memory-mapped file under ``cache_dir``
      (:func:`~ferlib.data.cache.build_cache`); the same tensors, for sets larger than memory.

    The synthetic default writes itself under ``data_root`` on first use, then goes
    through the same class-folder loader as a user's data.
    """
    root = Path(data_root or DEFAULT_ROOTS.get(dataset, f"data/{dataset}"))
    if dataset == "synthetic":
        from .synthetic import SyntheticConfig, write_synthetic

        if not (root / "synthetic.json").exists():  # an existing set (any size) is used as it is
            write_synthetic(root, SyntheticConfig(seed=synthetic_seed))
    name = loader_name(dataset)
    options = dataset_options(dataset, root, num_classes, class_map, data_options)
    experiment = check_num_classes(num_classes, root)

    datasets: dict[str, FERDataset | None] = {}
    dropped: dict[str, int] = {}
    for split in SPLITS:
        try:
            ds = load_dataset(name, root, split, **options)
        except MissingSplitError:
            if split != "valid":
                raise
            datasets[split] = None  # absent: carved from train below
            continue
        ds, left_out = ds.keep_classes(experiment)
        for emotion, n in left_out.items():
            dropped[f"{split}/{emotion.label}"] = n
            print(
                f"{dataset}/{split}: dropped {n} {emotion.label} sample(s), not one of the "
                f"experiment's {len(experiment)} classes (num_classes={num_classes})",
                flush=True,
            )
        datasets[split] = ds

    cache_path = Path(cache_dir) if cache_dir else None
    caches = {
        split: build_cache(ds, input_size, cache_dir=cache_path, memmap=memmap)
        for split, ds in datasets.items()
        if ds is not None
    }
    train, test = caches["train"], caches["test"]
    present = set(train.labels.tolist()) | set(test.labels.tolist())
    classes = tuple(e for e in experiment if int(e) in present)
    split = openset_split(train.labels.numpy(), test.labels.numpy(), classes, parse_open_class(open_class))

    if "valid" in caches:
        valid = caches["valid"]
        train_rows = split.train_index
        source = f"the data set's own validation split ({len(valid)} images)"
    else:
        train_ds = datasets["train"]
        groups = None if train_ds.groups is None else train_ds.groups[train.source_index]
        # Carved over every class with one generator per class (or per subject draw), so
        # the rows held out do not depend on which class is open.
        _, held = carve_validation(train.labels.numpy(), val_fraction, seed, groups=groups)
        is_close = split.label_map.encode(train.labels.numpy()[held]) >= 0
        valid = train.subset(held[is_close])
        train_rows = np.setdiff1d(split.train_index, held).astype(np.int64)
        how = "whole subjects" if groups is not None else "stratified by class"
        source = (
            f"{val_fraction:.0%} of the training split carved ({how}, seed {seed}; "
            f"{len(valid)} close-class images): the data set has no validation split"
        )
    print(f"{dataset}: validation = {source}", flush=True)

    fingerprint = hash_strings(
        [
            train.fingerprint,
            test.fingerprint,
            caches["valid"].fingerprint if "valid" in caches else "valid:carved",
            f"num_classes={num_classes}",
            _options_key(options),
        ]
    )
    return Splits(
        train=train,
        valid=valid,
        test=test,
        split=split,
        fingerprint=fingerprint,
        train_rows=train_rows,
        validation_source=source,
        dropped=dropped,
    )


__all__ = [
    "DEFAULT_ROOTS",
    "Splits",
    "close_rows",
    "dataset_options",
    "load_splits",
    "loader_name",
    "parse_open_class",
]
