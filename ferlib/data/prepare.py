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

Duplicate images are dropped from the evaluation rows here too (``data_options={'dedupe':
...}``, :func:`dedupe_mode`): test and validation rows whose pixels are a training row's, a
validation row that is a test row, the open class's training rows (evaluated, never trained
on) that copy a close training row, and repeats inside each (one row kept). FER2013's images
(FERPlus) hold hundreds of such copies, free nearest neighbours for a transductive detector,
so open-set runs on them drop the copies by default (:mod:`ferlib.data.duplicates`). No
training row is dropped: the training split and the close rows the model trains on stay.

The training targets are decided here too (:func:`training_labels`): the majority vote, or
for data sets with annotator votes (FERPlus) one of Microsoft's label modes, and optional
label noise (:mod:`ferlib.data.noise`) on the training and validation rows. The test
split's labels are never changed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ferlib.distributed import runs_main_first
from ferlib.emotions import Emotion, parse_emotion
from ferlib.io import hash_strings

from .base import SPLITS, FERDataset, check_num_classes, check_options, load_dataset, loader_options
from .cache import ImageCache, build_cache
from .classmap import ClassTarget, class_map_key, resolve_class_map
from .duplicates import DEDUPE_MODES, Dedupe, ImageHashes, dedupe_evaluation, dedupe_open_rows, hash_images
from .errors import DataError, MissingSplitError
from .ferplus import emotion_votes
from .noise import TRAIN_STREAM, VALID_STREAM, LabelNoise, add_label_noise, pair_names, resolve_pairs
from .splits import LabelMap, OpenSetSplit, carve_validation, openset_split, restrict_to_test_rows, tuning_index
from .subjects import OPEN_FROM_TEST_SUBJECTS, open_rows_from_test_subjects

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
    - ``valid_carved``: ``valid`` was carved from ``train`` (the data set has no validation
      split); its open-class rows then are open-class training rows, part of the reported
      evaluation set, so there is no tuning set (:meth:`tuning_rows`).
    - ``dedupe``: what the ``dedupe`` data option dropped from ``test``, ``valid`` and the
      open class's training rows (``split.eval_train_index``)
      (:meth:`~ferlib.data.duplicates.Dedupe.summary`: mode, counts per part), ``None`` when
      it is off. ``test`` and ``valid`` hold the kept rows only (their ``source_index`` still
      names the loader's rows); ``train`` is whole; the fingerprint covers the mode.
    """

    train: ImageCache
    valid: ImageCache
    test: ImageCache
    split: OpenSetSplit
    fingerprint: str
    train_rows: np.ndarray
    validation_source: str
    dropped: dict[str, int] = field(default_factory=dict)
    train_votes: np.ndarray | None = None
    valid_votes: np.ndarray | None = None
    valid_carved: bool = False
    dedupe: dict[str, Any] | None = None

    @property
    def label_map(self) -> LabelMap:
        return self.split.label_map

    def class_votes(self, split: str, rows: np.ndarray) -> np.ndarray | None:
        """Annotator votes of ``rows`` of ``split`` ("train" or "valid") for the model's
        classes, ``(len(rows), K)`` counts in target order; ``None`` without votes. Votes for
        any other class (contempt in a seven-class run, the open class) are not counted."""
        votes = self.train_votes if split == "train" else self.valid_votes
        if votes is None:
            return None
        return votes[np.asarray(rows, dtype=np.int64)][:, [int(c) for c in self.label_map.classes]]

    def training(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows of train, targets 0..K-1)`` the close-set model is trained on."""
        return self.train_rows, self.label_map.encode(self.train.labels.numpy()[self.train_rows])

    def validation(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows of valid, targets)`` of its close-class samples (model selection)."""
        return close_rows(self.valid, self.label_map)

    def tuning_rows(self) -> np.ndarray:
        """Rows of ``valid`` forming the tuning evaluation set (stage 03's
        ``eval_subset="tuning"``): the validation split's close-class rows plus its
        open-class rows (:func:`~ferlib.data.splits.tuning_index`). It shares no row with the
        reported evaluation set (the test split and the open class's training rows).

        Refused when the validation split was carved from the training split: its open-class
        rows are then open-class training rows, which the reported evaluation set holds.
        """
        if self.valid_carved:
            raise ValueError(
                "no tuning set: this data set has no validation split of its own, and the open-class rows "
                "of a validation split carved from training are open-class training images, which belong "
                "to the reported evaluation set; tune on the synthetic set or on a data set with a "
                "validation split (FERPlus, class folders with valid/)"
            )
        return tuning_index(self.valid.labels.numpy(), self.split)


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


#: Data sets of FER2013's images, whose splits share byte-identical images: their open-set
#: runs drop duplicate evaluation rows unless ``data_options={'dedupe': False}``.
DEDUPED_DATASETS: tuple[str, ...] = ("ferplus",)
#: Data options :func:`load_splits` applies itself, across splits (never passed to a loader).
SPLIT_OPTIONS: tuple[str, ...] = ("dedupe", "max_train")
#: seed of the ``max_train`` draw: fixed, so every run seed and method trains on the same rows
MAX_TRAIN_SEED = 0


def max_train_option(data_options: Mapping[str, Any] | None, where: str | os.PathLike) -> int | None:
    """The ``max_train`` data option: a positive number of training rows, or None (every row).
    A bad value raises :class:`DataError` naming ``where``."""
    value = (data_options or {}).get("max_train")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(where, f"data_options['max_train'] must be a positive number of training images, got {value!r}")
    return value


def stratified_subset(rows: np.ndarray, labels: np.ndarray, n: int, seed: int = MAX_TRAIN_SEED) -> np.ndarray:
    """At most ``n`` of ``rows`` (sorted), each class keeping its share (largest remainders get
    the rounding, every class present keeps at least one row), drawn with ``seed``. ``labels``:
    one per row of ``rows``. All of ``rows`` when ``n`` >= their number."""
    rows, labels = np.asarray(rows), np.asarray(labels)
    if n >= len(rows):
        return np.sort(rows)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / len(rows)
    take = np.maximum(np.floor(exact).astype(int), 1)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    for k in order[: max(0, n - int(take.sum()))]:
        take[k] += 1
    rng = np.random.default_rng(seed)
    kept = [rng.choice(rows[labels == c], min(t, cnt), replace=False) for c, t, cnt in zip(classes, take, counts)]
    return np.sort(np.concatenate(kept)).astype(np.int64)


def dedupe_mode(
    dataset: str,
    open_class: Emotion | str | int | None,
    data_options: Mapping[str, Any] | None = None,
    where: str | os.PathLike | None = None,
) -> str:
    """The ``dedupe`` data option as one of ``"off"``, ``"exact"``, ``"near"``.

    ``True`` means ``"exact"`` (drop exact copies), ``False`` ``"off"``; ``"near"`` also drops
    near copies (:data:`~ferlib.data.duplicates.NEAR_THRESHOLD`). Not given: ``"exact"`` for
    an open-set run (``open_class`` set) on a data set of :data:`DEDUPED_DATASETS`, else
    ``"off"``. The close-set setting keeps every test row by default: there the test split is
    the literature's close-set benchmark (accuracies are compared with published ones on the
    whole split), and there is no open-set evaluation set to protect; ``dedupe=True`` drops
    the copies there too. A bad value raises :class:`DataError` naming ``where``.
    """
    value = (data_options or {}).get("dedupe")
    if value is None:
        open_set = parse_open_class(open_class) is not None  # NEUTRAL is 0: test for None
        return "exact" if loader_name(dataset) in DEDUPED_DATASETS and open_set else "off"
    if value is True or value is False:
        return "exact" if value else "off"
    if isinstance(value, str) and value in DEDUPE_MODES:
        return value
    raise DataError(
        where or f"data set {dataset!r}",
        f"data_options['dedupe'] must be True, False or one of {', '.join(map(repr, DEDUPE_MODES))}, got {value!r}",
    )


def effective_data_options(
    dataset: str, open_class: Emotion | str | int | None, data_options: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """``data_options`` with the ``dedupe`` default written in where the data set has one (an
    open-set FERPlus run: ``{'dedupe': True}``), so that a run's recorded parameters, and the
    runner's stage keys hashed from them, say whether duplicates were dropped; otherwise
    ``data_options`` unchanged. A subject-split set's ``open_from_test_subjects`` default is
    written in the same way (which rows are evaluated is part of a run's key)."""
    if loader_name(dataset) == "subjects" and OPEN_FROM_TEST_SUBJECTS not in (data_options or {}):
        data_options = {**(data_options or {}), OPEN_FROM_TEST_SUBJECTS: True}
    if data_options is not None and "dedupe" in data_options:
        return dict(data_options)
    if dedupe_mode(dataset, open_class, data_options) == "off":
        return None if data_options is None else dict(data_options)
    return {**(data_options or {}), "dedupe": True}


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

    ``data_options`` go through as given, less the options :func:`load_splits` applies
    itself (:data:`SPLIT_OPTIONS`: ``dedupe``, whose value is checked here); ``class_map`` and
    ``num_classes`` are added when the loader takes them. An option the loader does not take,
    a ``class_map`` value that is neither an emotion nor "drop", or ``class_map`` given both
    ways, raises :class:`DataError` naming the loader's options; nothing is read from disk, so
    a driver's up-front check can call this before any work.
    """
    name = loader_name(dataset)
    options = {k: v for k, v in (data_options or {}).items() if k not in SPLIT_OPTIONS}
    dedupe_mode(dataset, None, data_options, root)  # the value checked; the default needs the open class
    max_train_option(data_options, root)
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
    try:
        check_options(name, options, root)
    except DataError as exc:  # the options every data set takes, named too
        raise DataError(root, f"{exc.problem}; and for every data set: {', '.join(SPLIT_OPTIONS)}") from None
    return options


def _options_key(options: Mapping[str, Any]) -> str:
    items = [f"{k}={options[k]!r}" for k in sorted(options) if k != "class_map"]
    return "options:" + ",".join(items) + ";" + class_map_key(options.get("class_map"))


@runs_main_first  # under torchrun rank 0 decodes/writes the caches first, the others reuse them
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
      ``{"folds": 10, "fold": 3}`` for ``subjects``). Unknown keys fail at once. One option
      every data set takes, applied here across splits: ``dedupe`` (:func:`dedupe_mode`;
      on by default for open-set runs on FERPlus) drops duplicate test and validation rows
      right after decoding (:func:`_drop_duplicates`) and duplicate open-class training rows
      from the evaluation set (:func:`_drop_open_duplicates`), so every stage and detector
      sees the same rows; the counts are printed and kept in ``Splits.dedupe``. And
      ``max_train``: train on at most that many of the training rows, each class keeping its
      share, drawn with a fixed seed (:func:`stratified_subset`), so every run seed and method
      trains on the same rows: the small-data regime. Validation and evaluation rows are kept.
    - ``val_fraction``, ``seed``: the validation carve for data sets without a validation
      split (see the module docstring); ignored when the data set has one.
    - ``memmap``: keep each split's uint8 cache in a memory-mapped file under ``cache_dir``
      (:func:`~ferlib.data.cache.build_cache`); the same tensors, for sets larger than memory.

    The synthetic default writes itself under ``data_root`` on first use, then goes
    through the same class-folder loader as a user's data.
    """
    root = Path(data_root or DEFAULT_ROOTS.get(dataset, f"data/{dataset}"))
    if dataset == "synthetic":
        from .synthetic import ensure_synthetic

        ensure_synthetic(root, seed=synthetic_seed)  # an existing set (any size) is used as it is
    name = loader_name(dataset)
    options = dataset_options(dataset, root, num_classes, class_map, data_options)
    dedupe = dedupe_mode(dataset, open_class, data_options, root)
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
    dropped_duplicates, train_hashes = _drop_duplicates(caches, dedupe)
    # per-emotion vote counts of each cache row (a row the cache could not decode has none)
    votes = {
        split: emotion_votes(ds.votes, options.get("class_map"))[caches[split].source_index]
        for split, ds in datasets.items()
        if ds is not None and ds.votes is not None
    }
    train, test = caches["train"], caches["test"]
    present = set(train.labels.tolist()) | set(test.labels.tolist())
    classes = tuple(e for e in experiment if int(e) in present)
    split = openset_split(train.labels.numpy(), test.labels.numpy(), classes, parse_open_class(open_class))
    if open_rows_from_test_subjects(datasets["train"], options):  # open rows of unseen people only
        split = _test_subjects_only(split, dataset, root)
    if dropped_duplicates is not None:
        split = _drop_open_duplicates(split, dropped_duplicates, train_hashes)
        print(dropped_duplicates.describe(dataset), flush=True)

    if "valid" in caches:
        valid = caches["valid"]
        valid_votes = votes.get("valid")
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
        valid_votes = votes["train"][held[is_close]] if "train" in votes else None
        train_rows = np.setdiff1d(split.train_index, held).astype(np.int64)
        how = "whole subjects" if groups is not None else "stratified by class"
        source = (
            f"{val_fraction:.0%} of the training split carved ({how}, seed {seed}; "
            f"{len(valid)} close-class images): the data set has no validation split"
        )
    print(f"{dataset}: validation = {source}", flush=True)
    max_train = max_train_option(data_options, root)
    if max_train is not None and max_train < len(train_rows):
        before = len(train_rows)
        train_rows = stratified_subset(train_rows, train.labels.numpy()[train_rows], max_train)
        print(f"{dataset}: training on {len(train_rows)} of {before} images (max_train={max_train})", flush=True)

    fingerprint = hash_strings(
        [
            train.fingerprint,
            test.fingerprint,
            caches["valid"].fingerprint if "valid" in caches else "valid:carved",
            f"num_classes={num_classes}",
            _options_key(options),
            # only when on, so the fingerprints of sets that never drop a row stay as they were
            *([] if dropped_duplicates is None else [_dedupe_key(dropped_duplicates)]),
            *([f"open_rows={split.open_rows}"] if split.open_rows != "test+train" else []),
            *([f"max_train={max_train}"] if max_train is not None else []),
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
        train_votes=votes.get("train"),
        valid_votes=valid_votes,
        valid_carved="valid" not in caches,
        dedupe=None if dropped_duplicates is None else dropped_duplicates.summary(),
    )


def _drop_duplicates(caches: dict[str, ImageCache], mode: str) -> tuple[Dedupe | None, ImageHashes | None]:
    """Replace ``caches["test"]`` and ``caches["valid"]`` (when the data set has its own) by
    their rows that :func:`~ferlib.data.duplicates.dedupe_evaluation` keeps; ``caches["train"]``
    is never changed. Returns what was dropped and the training rows' hashes (for
    :func:`_drop_open_duplicates`); ``(None, None)`` when ``mode`` is ``"off"``.

    The rows are compared as decoded into the caches, at the run's ``input_size``: exact
    copies stay exact at any size, and at the data's own size (48 px for FERPlus) the pixels
    are the decoded file's. A validation split carved from training later is not
    deduplicated (its rows are training rows)."""
    if mode == "off":
        return None, None
    hashes = {split: hash_images(cache.images, perceptual=mode == "near") for split, cache in caches.items()}
    result = dedupe_evaluation(hashes["train"], hashes["test"], hashes.get("valid"), mode=mode)
    for split in result.keep:
        if not result.keep[split].all():
            caches[split] = caches[split].subset(result.kept_rows(split))
    return result, hashes["train"]


def _drop_open_duplicates(split: OpenSetSplit, result: Dedupe, train: ImageHashes) -> OpenSetSplit:
    """``split`` without the open class's training rows that copy a close training row or an
    earlier one of them (:func:`~ferlib.data.duplicates.dedupe_open_rows`, recorded in
    ``result``): they are evaluation rows. The training split and the close rows the model
    trains on (``train_index``) are unchanged."""
    rows = split.eval_train_index
    if split.open_class is None or not len(rows):
        return split
    dedupe_open_rows(result, train.subset(rows), train.subset(split.train_index))
    keep = result.keep["open_train"]
    if keep.all():
        return split
    n_test = len(split.eval_test_index)
    labels = np.concatenate([split.eval_labels[:n_test], split.eval_labels[n_test:][keep]])
    return replace(split, eval_train_index=rows[keep], eval_labels=labels)


def _dedupe_key(result: Dedupe) -> str:
    """The fingerprint's word for a deduplication: its mode and, for near copies, the threshold."""
    return f"dedupe={result.mode}" + (f"<={result.threshold}" if result.threshold is not None else "")


def _test_subjects_only(split: OpenSetSplit, dataset: str, root: Path) -> OpenSetSplit:
    """The evaluation set of a subject-split data set with its open rows from the test subjects
    only (:func:`~ferlib.data.subjects.open_rows_from_test_subjects` says why); logged, and
    refused when the test subjects hold no image of the open class (nothing to detect)."""
    if split.open_class is None:
        return restrict_to_test_rows(split)
    left_out = len(split.eval_train_index)
    split = restrict_to_test_rows(split)
    if not split.eval_is_open.any():
        raise DataError(
            root,
            f"the test subjects have no {split.open_class.label} image, so the evaluation set would hold no "
            "open row: choose another fold or split_seed, or a larger test_fraction; data_options="
            "{'open_from_test_subjects': False} adds the open class's images of training subjects, which a "
            "detector can tell apart by the person instead of the expression",
        )
    print(
        f"{dataset}: evaluation set = the test subjects' images ({int(split.eval_is_open.sum())} open); "
        f"{left_out} {split.open_class.label} image(s) of training subjects left out "
        "(data_options={'open_from_test_subjects': False} keeps them)",
        flush=True,
    )
    return split


# ----------------------------------------------------------------------------- labels
#: How the training targets come from annotator votes (FERPlus's training modes, Barsoum et
#: al. 2016): ``majority`` one-hot of the top vote; ``probability`` a label drawn from the
#: vote distribution, redrawn every time the image is used (the training loop draws it, as
#: Microsoft's reader redraws per minibatch in ``FERPlusReader._process_target``);
#: ``crossentropy`` the vote distribution itself as the soft target. The distribution is the
#: row's votes for the model's classes, renormalised: votes for unknown, not-a-face, a dropped
#: class (contempt in a seven-class run) or the open class are removed.
#:
#: Where Microsoft's code (``src/ferplus.py``, ``_process_data``) differs, on purpose: it also
#: zeroes single votes as outliers and, for these two modes, keeps at most the three top
#: emotions covering 75% of the votes, discarding rows where they hold half or less; its
#: ``majority`` drops rows without a strict majority. Here every row the loader keeps is
#: trained on in every mode (so the modes compare on the same images) and ``majority`` is the
#: loader's first-max vote. Its fourth mode, ``multi_target`` (loss ``-log max_k t_k p_k`` over
#: the emotions with 30% of the votes or more, in ``src/train.py``), is not offered.
LABEL_MODES: tuple[str, ...] = ("majority", "probability", "crossentropy")
#: Data sets whose loader returns annotator votes (``FERDataset.votes``): the only ones
#: where a label mode other than ``majority`` or ``annotator`` noise means anything. Add a
#: name here when a loader learns to return votes.
VOTED_DATASETS: tuple[str, ...] = ("ferplus",)


def check_labels(
    dataset: str, label_mode: str = "majority", label_noise: Mapping[str, Any] | LabelNoise | None = None
) -> LabelNoise | None:
    """Check stage 01's label parameters before any file is read; the noise as a config.

    Raises ``ValueError`` for an unknown mode, a bad ``label_noise`` (kind, rate outside
    ``[0, 1)``, unknown key), a mode or noise kind that needs votes on a data set without
    them (naming the data set), and noise combined with a soft mode: noise corrupts the hard
    labels, while the soft modes read the votes themselves (``annotator`` noise is the hard
    counterpart of ``probability`` drawn once).
    """
    noise = _label_settings(label_mode, label_noise)
    if loader_name(dataset) not in VOTED_DATASETS:
        _refuse_without_votes(dataset, label_mode, noise)
    return noise


def _label_settings(label_mode: str, label_noise: Mapping[str, Any] | LabelNoise | None) -> LabelNoise | None:
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}")
    noise = LabelNoise.from_params(label_noise)
    if noise is not None and label_mode != "majority":
        raise ValueError(f"label_noise corrupts majority labels; it cannot be combined with label_mode={label_mode!r}")
    return noise


def _needs_votes(label_mode: str, noise: LabelNoise | None) -> bool:
    return label_mode != "majority" or (noise is not None and noise.kind == "annotator")


def _refuse_without_votes(dataset: str, label_mode: str, noise: LabelNoise | None) -> None:
    """Raise, naming the data set, when the label settings need votes (it has none)."""
    if label_mode != "majority":
        raise ValueError(
            f"label_mode={label_mode!r} needs annotator votes, which data set {dataset!r} has not "
            f"(data sets with votes: {', '.join(VOTED_DATASETS)}); use label_mode='majority'"
        )
    if _needs_votes(label_mode, noise):
        raise ValueError(
            f"label_noise kind 'annotator' draws from annotator votes, which data set {dataset!r} has not "
            f"(data sets with votes: {', '.join(VOTED_DATASETS)}); use 'symmetric' or 'pair'"
        )


@dataclass
class TrainingLabels:
    """The targets stage 01 trains and selects on, and what they were made from.

    - ``train_rows`` / ``val_rows``: rows of ``Splits.train`` / ``Splits.valid``
      (as :meth:`Splits.training` and :meth:`Splits.validation`).
    - ``train_targets`` / ``val_targets``: hard targets as trained on / selected on; noisy
      under ``label_noise`` (validation only with ``LabelNoise.validation``).
    - ``train_clean`` / ``val_clean``: the majority-vote targets; ``*_flipped``: where they
      differ.
    - ``train_soft``: ``(N, K)`` float32 vote distributions over the model's classes for the
      ``probability`` and ``crossentropy`` modes, else ``None``. Validation and test always
      use the majority vote, as Microsoft's FERPlus code does.
    """

    train_rows: np.ndarray
    train_targets: np.ndarray
    train_clean: np.ndarray
    train_flipped: np.ndarray
    val_rows: np.ndarray
    val_targets: np.ndarray
    val_clean: np.ndarray
    val_flipped: np.ndarray
    label_mode: str = "majority"
    train_soft: np.ndarray | None = None
    noise: LabelNoise | None = None
    pairs: dict[str, str] | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-able record for results and manifests: mode, noise settings and the
        measured noise rates (share of targets that differ from the majority vote)."""
        noise = None
        if self.noise is not None:
            noise = {
                **self.noise.config(),
                "pairs_used": self.pairs,
                "measured_rate_train": float(self.train_flipped.mean()) if len(self.train_flipped) else 0.0,
                "n_flipped_train": int(self.train_flipped.sum()),
                "measured_rate_val": float(self.val_flipped.mean()) if len(self.val_flipped) else 0.0,
                "n_flipped_val": int(self.val_flipped.sum()),
            }
        return {"label_mode": self.label_mode, "label_noise": noise}


def vote_distribution(class_votes: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Rows of ``class_votes`` normalised to sum to one (float32); a row without a vote for
    the model's classes gets the one-hot of its ``fallback`` target (none on FERPlus, whose
    majority class always holds a vote)."""
    votes = np.asarray(class_votes, dtype=np.float64)
    total = votes.sum(axis=1, keepdims=True)
    out = np.divide(votes, total, out=np.zeros_like(votes), where=total > 0)
    empty = total[:, 0] <= 0
    out[empty] = np.eye(votes.shape[1])[np.asarray(fallback)[empty]]
    return out.astype(np.float32)


def _share(flipped: np.ndarray) -> str:
    return f"{int(flipped.sum())} of {len(flipped)} ({flipped.mean() if len(flipped) else 0.0:.4f})"


def _describe_noise(noise: LabelNoise, pairs: dict[str, str] | None, train: np.ndarray, val: np.ndarray) -> str:
    """One log line: the noise asked for and the measured rates against the majority vote."""
    asked = f"rate {noise.rate:g}" if noise.rate is not None else "drawn annotator votes"
    asked += f", seed {noise.seed}" + (f", pairs {pairs}" if pairs else "")
    valid = _share(val) if noise.validation else "kept clean"
    return (
        f"label noise {noise.kind} ({asked}): training targets differing from the majority vote "
        f"{_share(train)}; validation {valid}; test labels clean"
    )


def training_labels(
    s: Splits,
    label_mode: str = "majority",
    label_noise: Mapping[str, Any] | LabelNoise | None = None,
    dataset: str = "the data set",
) -> TrainingLabels:
    """The training and validation targets of ``s`` under a label mode and label noise.

    Noise goes on the training rows and, with ``LabelNoise.validation``, on the validation
    rows (an independent draw of the same seed); never on the test split, which this
    function does not touch. ``pair`` partners come from the training rows' votes when
    there are votes (and are applied to the validation rows as well). Raises ``DataError``
    naming the data set (``dataset``, for the message) when a mode or noise kind needs votes
    the splits lack.
    """
    noise = _label_settings(label_mode, label_noise)
    train_rows, train_clean = s.training()
    val_rows, val_clean = s.validation()
    k = s.label_map.num_classes
    classes = s.label_map.classes
    train_votes = s.class_votes("train", train_rows)
    val_votes = s.class_votes("valid", val_rows)
    lacking = train_votes is None or (noise is not None and noise.validation and val_votes is None)
    if _needs_votes(label_mode, noise) and lacking:
        try:
            _refuse_without_votes(dataset, label_mode, noise)
        except ValueError as exc:
            raise DataError(dataset, str(exc)) from None

    soft = None if label_mode == "majority" else vote_distribution(train_votes, train_clean)
    train_targets, train_flipped = train_clean, np.zeros(len(train_clean), dtype=bool)
    val_targets, val_flipped = val_clean, np.zeros(len(val_clean), dtype=bool)
    pairs = None
    if noise is not None:
        partner = resolve_pairs(noise, classes, train_clean, train_votes) if noise.kind == "pair" else None
        pairs = pair_names(partner, classes) if partner is not None else None
        noisy = add_label_noise(train_clean, k, noise, class_votes=train_votes, partner=partner, stream=TRAIN_STREAM)
        train_targets, train_flipped = noisy.targets, noisy.flipped
        if noise.validation:
            noisy_val = add_label_noise(
                val_clean, k, noise, class_votes=val_votes, partner=partner, stream=VALID_STREAM
            )
            val_targets, val_flipped = noisy_val.targets, noisy_val.flipped
        print(_describe_noise(noise, pairs, train_flipped, val_flipped), flush=True)
    return TrainingLabels(
        train_rows=train_rows,
        train_targets=train_targets,
        train_clean=train_clean,
        train_flipped=train_flipped,
        val_rows=val_rows,
        val_targets=val_targets,
        val_clean=val_clean,
        val_flipped=val_flipped,
        label_mode=label_mode,
        train_soft=soft,
        noise=noise,
        pairs=pairs,
    )


__all__ = [
    "DEDUPED_DATASETS",
    "DEFAULT_ROOTS",
    "LABEL_MODES",
    "SPLIT_OPTIONS",
    "VOTED_DATASETS",
    "Splits",
    "TrainingLabels",
    "check_labels",
    "training_labels",
    "vote_distribution",
    "close_rows",
    "dataset_options",
    "dedupe_mode",
    "effective_data_options",
    "load_splits",
    "loader_name",
    "parse_open_class",
]
