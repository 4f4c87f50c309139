"""What open-set detectors see, and the two evaluation protocols.

``honest`` (default): every evaluation sample carries the close-set model's output for
*that very image* (index-aligned pseudo labels).

``reference``: reproduces the released code's defect on purpose. Its pseudo-label loader
over the training split shuffled and the outputs were then read by position, so each open
training image received the logits and pseudo label of a random other training image
(METHODS.md, "Pseudo labels"). We model that loader exactly: a seeded permutation of the
whole training split, the image at position ``t`` receiving the outputs of ``perm[t]``.
The test rows are untouched. Every table and figure names the protocol it used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from ferlib.models.base import ModelConfig

PROTOCOLS = ("honest", "reference")

#: columns of the pseudo-label table, one row per evaluation sample
TABLE_COLUMNS = ["index", "path", "label", "target", "pseudo", "is_open", "origin", "source_index"]

#: the only table columns a detector sees (:meth:`OpenSetData.detector_view`)
VIEW_COLUMNS = ["index", "pseudo"]

#: feature spaces a detector can read (:meth:`OpenSetData.in_feature_space`)
FEATURE_SPACES = ("penultimate", "pyramid")


@dataclass
class CloseSet:
    """Stage 01's close-set training as it ran, for detectors that fine-tune its network
    (``Detector.needs_close_set``): the network (``model``: stage 01's architecture and head
    as recorded in its ``results.json``, ``pretrained`` = its ``best.pt``), the training rows
    it trained on and the validation rows it selected on (close classes only; uint8 images,
    majority-vote targets 0..K-1). No evaluation image is among them, and the protocol
    changes none of it.
    """

    model: ModelConfig
    train_images: torch.Tensor
    train_targets: np.ndarray
    val_images: torch.Tensor
    val_targets: np.ndarray

    def __post_init__(self) -> None:
        for split in ("train", "val"):
            images, targets = getattr(self, f"{split}_images"), getattr(self, f"{split}_targets")
            if len(images) != len(targets):
                raise ValueError(f"close set: {len(images)} {split} images but {len(targets)} targets")


@dataclass
class OpenSetData:
    """Everything a detector may use, aligned row by row with ``table``.

    ``logits``/``features`` are the close-set model's outputs for each evaluation row;
    ``train_*`` are its outputs on the close-set training rows (for Mahalanobis and kNN);
    ``images`` are the evaluation images (uint8) for detectors that train a network.
    ``extras`` are the close-set model's per-sample extras (``uncertainty`` (N,),
    ``branch_logits`` (N, branches, K), ...; stage 02's ``eval_extra_<name>``), aligned with
    the rows like ``logits``; empty when its head has none; ``extras["pyramid"]`` is every
    trunk stage's pooled output (stage 02's ``pyramid``). ``train_extras``: the same for the
    close training rows, aligned with ``train_features``. ``close_set``: stage 01's
    network and its training and validation rows (:class:`CloseSet`), handed only to
    detectors that ask for it. ``reference_features`` (and ``reference_extras``, aligned with
    it): the close-set model's outputs on held-out *close* rows it never trained on (the
    validation split's close rows), a sample of what an unseen close image looks like, for
    estimating the open share (:mod:`ferlib.openset.share`); ``None`` when stage 02 saved no
    tuning outputs. Labels of the evaluation rows never enter it.
    """

    table: pd.DataFrame
    logits: np.ndarray
    features: np.ndarray
    train_features: np.ndarray
    train_targets: np.ndarray
    images: torch.Tensor | None = None
    train_images: torch.Tensor | None = None  # close-set training images (uint8), same rows as train_features
    protocol: str = "honest"
    class_names: tuple[str, ...] = ()
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    close_set: CloseSet | None = None
    train_extras: dict[str, np.ndarray] = field(default_factory=dict)  # same rows as train_features
    reference_features: np.ndarray | None = None
    reference_extras: dict[str, np.ndarray] = field(default_factory=dict)  # same rows as reference_features

    def __post_init__(self) -> None:
        n = len(self.table)
        for name in ("logits", "features"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, table has {n}")
        for name, value in self.extras.items():
            if len(value) != n:
                raise ValueError(f"extras[{name!r}] has {len(value)} rows, table has {n}")
        for name, value in self.train_extras.items():
            if len(value) != len(self.train_features):
                raise ValueError(
                    f"train_extras[{name!r}] has {len(value)} rows, train_features {len(self.train_features)}"
                )
        if self.reference_extras and self.reference_features is None:
            raise ValueError("reference_extras without reference_features")
        for name, value in self.reference_extras.items():
            if len(value) != len(self.reference_features):
                raise ValueError(
                    f"reference_extras[{name!r}] has {len(value)} rows, "
                    f"reference_features {len(self.reference_features)}"
                )
        if self.images is not None and len(self.images) != n:
            raise ValueError(f"images has {len(self.images)} rows, table has {n}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")

    def __len__(self) -> int:
        return len(self.table)

    @property
    def pseudo(self) -> np.ndarray:
        return self.table["pseudo"].to_numpy(dtype=np.int64)

    @property
    def is_open(self) -> np.ndarray:
        if "is_open" not in self.table.columns:
            raise KeyError(
                "is_open is not in this table: a detector's view of the evaluation set carries "
                "no label (OpenSetData.detector_view)"
            )
        return self.table["is_open"].to_numpy(dtype=bool)

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    def subset(self, mask: np.ndarray) -> OpenSetData:
        """Rows where ``mask`` is true (e.g. ``origin == 'test'``), re-indexed from 0."""
        mask = np.asarray(mask)
        rows = np.flatnonzero(mask) if mask.dtype == bool else mask
        table = self.table.iloc[rows].reset_index(drop=True)
        table["index"] = np.arange(len(table))
        return replace(
            self,
            table=table,
            logits=self.logits[rows],
            features=self.features[rows],
            images=None if self.images is None else self.images[torch.as_tensor(rows)],
            extras={k: v[rows] for k, v in self.extras.items()},
        )

    def in_feature_space(self, space: str) -> OpenSetData:
        """The same rows with ``features`` and ``train_features`` taken from feature space
        ``space`` (:data:`FEATURE_SPACES`): ``"penultimate"``, the head's pooled features
        (this object unchanged), or ``"pyramid"``, every trunk stage's pooled output
        (``extras["pyramid"]``, which stage 02 saves with ``pyramid=True``). Logits stay the
        classifier's, so a detector that reads both sees them as they were."""
        if space not in FEATURE_SPACES:
            raise ValueError(f"unknown feature space {space!r}; choose one of {list(FEATURE_SPACES)}")
        if space == "penultimate":
            return self
        held = {"evaluation": self.extras, "training": self.train_extras}
        if self.reference_features is not None:
            held["reference"] = self.reference_extras
        missing = [where for where, arrays in held.items() if space not in arrays]
        if missing:
            raise ValueError(
                f"feature space {space!r}: stage 02 saved no {space} features for the {' and '.join(missing)} rows; "
                f"re-run stage 02 (predict_pseudo_labels) with {space}=True"
            )
        reference = None if self.reference_features is None else self.reference_extras[space]
        return replace(
            self, features=self.extras[space], train_features=self.train_extras[space], reference_features=reference
        )

    def detector_view(self) -> OpenSetData:
        """The evaluation set as a detector may see it: the table keeps only ``index`` and
        ``pseudo``; images, close-set outputs and training data are shared, not copied.

        Why. ``label``, ``target`` and ``is_open`` are the answer; ``origin`` and
        ``source_index`` give it away too (every evaluation row from the training split is
        open), and ``path`` often names the class folder. A detector that reads any of them
        would score well for the wrong reason, so stage 03 hands detectors this view,
        after the protocol and the subset were applied to the full data. Row order is kept
        (scores are matched back by position).
        """
        return replace(self, table=self.table[VIEW_COLUMNS].copy())


def reference_donors(source_index: np.ndarray, n_train: int, seed: int = 0) -> np.ndarray:
    """Rows of the whole training split (``n_train`` rows, dataset order) whose outputs the
    reference protocol hands to the training-split rows ``source_index``: the loader's
    seeded permutation, row ``t`` receiving the outputs of ``perm[t]`` (:func:`apply_protocol`).
    Studies of the protocol (``tools/memorisation.py``) read the donors from here, so the
    permutation has one implementation."""
    perm = np.random.default_rng(seed).permutation(n_train)
    return perm[np.asarray(source_index, dtype=np.int64)]


def apply_protocol(
    data: OpenSetData,
    protocol: str,
    all_train_logits: np.ndarray | None = None,
    all_train_features: np.ndarray | None = None,
    seed: int = 0,
    all_train_extras: Mapping[str, np.ndarray] | None = None,
) -> OpenSetData:
    """Return ``data`` under ``protocol``; ``honest`` returns it unchanged.

    ``all_train_*`` are the close-set model's outputs on the *whole* training split (every
    class, in dataset order), which the reference loader drew its misaligned outputs from;
    ``all_train_extras`` holds its per-sample extras, which a training row takes from the
    same donor as its logits (every key of ``data.extras`` must be there).
    """
    if protocol == "honest":
        return replace(data, protocol="honest")
    if protocol != "reference":
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if all_train_logits is None or all_train_features is None:
        raise ValueError("the reference protocol needs the close-set outputs on the whole training split")
    table = data.table.copy()
    rows = np.flatnonzero(table["origin"].to_numpy() == "train")
    donors = reference_donors(table["source_index"].to_numpy()[rows], len(all_train_logits), seed)
    logits, features = data.logits.copy(), data.features.copy()
    logits[rows] = all_train_logits[donors]
    features[rows] = all_train_features[donors]
    table.loc[rows, "pseudo"] = all_train_logits[donors].argmax(1)
    missing = sorted(set(data.extras) - set(all_train_extras or {}))
    if missing:
        raise ValueError(
            f"the reference protocol needs the close-set extras {missing} on the whole training split "
            "(all_train_extras), to hand each training row its donor's"
        )
    extras = {}
    for name, value in data.extras.items():
        extras[name] = value.copy()
        extras[name][rows] = all_train_extras[name][donors]
    return replace(data, table=table, logits=logits, features=features, extras=extras, protocol="reference")
