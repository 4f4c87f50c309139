"""``erd``: ensembles with regularized disagreement (Tifrea, Stavarache, Yang, "Semi-supervised
novelty detection using ensembles with regularized disagreement", UAI 2022; arXiv 2012.05825).

The idea. Train several networks on the labelled close training set *plus* the unlabeled
evaluation set, every evaluation row given one arbitrary close label ``c_j``, a different one
per network. A close evaluation row looks like the labelled rows of its true class, so before
a network memorises the arbitrary label it keeps predicting that class, and every network
agrees; an open row has no labelled counterpart, the arbitrary label is fitted early, and the
networks, each fitted to another label, disagree. Early stopping on held-out labelled close
rows is what stops the networks before they also fit ``c_j`` on the close evaluation rows
(the "regularized" disagreement). The open score is the networks' disagreement.

What it does, in the kit's terms:

1. **Members.** ``members`` networks; member ``j`` gets the arbitrary label ``c_j =
   perm[j mod K]``, ``perm`` a seeded permutation of the K close classes (distinct labels as
   long as ``members <= K``; beyond that labels repeat, and two members with one label add no
   disagreement).
2. **Start.** ``init="close_set"`` (default): every member starts from stage 01's network
   (``OpenSetData.close_set``: its ``best.pt``, rebuilt as stage 01 recorded it; ``arch``,
   ``stem`` and ``pretrained`` are not used). ``init="scratch"``: a fresh ``arch`` network per
   member, seeded ``seed + 1000 j`` (from ``pretrained`` weights when given). The paper starts
   its members from pretrained weights.
3. **Train** through the one loop (:func:`ferlib.train.fit`, cross-entropy, the kit's
   augmentation, constant learning rate) on stage 01's training rows (``close_set``) plus the
   evaluation rows of the other folds (below), those labelled ``c_j``, for at most
   ``epochs`` epochs. **Early stopping**: with the close validation rows (``close_set``'s
   validation split, never an evaluation row) each member keeps its epoch of highest
   validation accuracy, the epoch at which ERD stops (validation accuracy would drop from
   there on as the arbitrary label is memorised); the loop runs the remaining epochs of the
   budget anyway, so the budget should stay small. Without a close set (an ``OpenSetData``
   built by hand with ``train_images`` and ``train_targets``, ``init="scratch"``) there is no
   validation split and the last of the ``epochs`` is kept.
4. **Score** = the paper's ensemble disagreement, the average over member pairs of the
   total-variation distance between their softmax outputs (:func:`average_pairwise_tv`):
   0 when all members agree, 1 when every pair puts its mass on different classes; higher =
   more likely open, the registry's convention (:mod:`ferlib.openset.base`).

**Cross-fitting** (``folds``). ERD as published is transductive: the networks are scored on
the very evaluation rows they were trained on with the arbitrary label (``folds=1``, kept for
comparison). A network may memorise its rows instead of generalising, so with ``folds >= 2``
(default 2) the evaluation rows are split in seeded folds
(:func:`ferlib.openset.binary_head.fold_assignment`) and, for each fold, ``members`` networks
train on the close rows plus the *other* folds' evaluation rows and score that fold only: no
row is scored by a network that trained on it (``trained_rows_`` / ``scored_rows_`` record
this per network). Cost: ``folds * members`` trainings.

Checkpoints: one folder per network under ``out_dir`` (``fold<f>_member<j>``), so a killed
detector resumes at the network it was training; ``detector.json`` records each network's
label, kept epoch and validation accuracy. No pseudo label, close-set output or evaluation
label is read, so the scores are the same under every protocol.

Choices the kit makes (not the paper's): ``members = 3``, ``epochs = 5``, Adam at ``lr =
1e-3`` with a constant schedule and weight decay ``1e-4``, the kit's augmentation, the
labelled and arbitrarily labelled rows simply pooled (no re-weighting), ties in validation
accuracy keeping the earlier epoch (the loop's selection).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ferlib.io import write_json
from ferlib.models import ModelConfig, build_model, load_pretrained
from ferlib.openset.base import Detector, NetworkConfig
from ferlib.openset.binary_head import fold_assignment
from ferlib.openset.data import OpenSetData
from ferlib.train import OPTIMIZERS, EpochInfo, TensorData, TrainConfig, fit, predict

__all__ = ["ErdConfig", "ErdDetector", "average_pairwise_tv", "arbitrary_labels"]

#: where the members start: stage 01's network, or a fresh network per member
INITS = ("close_set", "scratch")


def _positive_int(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


@dataclass
class ErdConfig(NetworkConfig):
    """ERD's settings (what each does and where it comes from: the module docstring).

    ``members``: networks per fold (>= 2, disagreement needs pairs); ``folds``: 1 = the
    published transductive ERD, >= 2 = cross-fitted; ``epochs``: the training budget per
    network, the best epoch on the close validation rows kept; ``init``: ``"close_set"``
    (stage 01's network; ``pretrained`` must stay None) or ``"scratch"`` (``arch``, ``stem``,
    ``pretrained``); ``optimizer``: the loop's ``adam`` or ``sgd``.
    """

    members: int = 3
    folds: int = 2
    epochs: int = 5
    init: str = "close_set"
    optimizer: str = "adam"

    def __post_init__(self) -> None:
        _positive_int("members", self.members, 2)
        _positive_int("folds", self.folds, 1)
        _positive_int("epochs", self.epochs, 1)
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        _positive_int("batch_size", self.batch_size, 2)
        TrainConfig(lr=self.lr, weight_decay=self.weight_decay)  # the loop's own checks, naming the field
        if self.init == "close_set" and self.pretrained is not None:
            raise ValueError(
                "init='close_set' starts every member from stage 01's network (its best.pt); pretrained is "
                "not used, leave it None (or use init='scratch')"
            )


def arbitrary_labels(members: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Member ``j``'s arbitrary label: ``perm[j mod K]``, ``perm`` a seeded permutation of the
    ``K = num_classes`` close classes (all distinct when ``members <= K``)."""
    perm = np.random.default_rng(seed).permutation(num_classes)
    return perm[np.arange(members) % num_classes]


def average_pairwise_tv(probs: np.ndarray) -> np.ndarray:
    """ERD's disagreement of an ensemble, per row: the mean over member pairs ``a < b`` of the
    total-variation distance ``0.5 * sum_k |p_a,k - p_b,k|``. ``probs``: ``(N, members, K)``
    softmax outputs; returns ``(N,)`` in [0, 1], float64."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 3 or p.shape[1] < 2:
        raise ValueError(f"probs must be (rows, members >= 2, classes), got shape {p.shape}")
    a, b = np.triu_indices(p.shape[1], k=1)
    return 0.5 * np.abs(p[:, a] - p[:, b]).sum(axis=2).mean(axis=1)


class _KeepBest:
    """A :func:`fit` callback keeping the weights of the epoch of highest validation accuracy
    in memory (the loop keeps them on disk only when it has a checkpoint folder)."""

    def __init__(self) -> None:
        self.acc, self.state = -1.0, None

    def __call__(self, info: EpochInfo) -> None:
        acc = info.row.get("val_acc")
        if acc is not None and acc > self.acc:  # strictly better, as the loop selects
            self.acc = acc
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in info.model.state_dict().items()}


class ErdDetector(Detector):
    """Ensembles with regularized disagreement; ``score`` = mean pairwise total variation.

    After :meth:`fit`: ``labels_`` (each member's arbitrary label), ``fold_`` (each evaluation
    row's fold), ``probs_`` (``(N, members, K)``: each row's softmax under the members that
    scored it), ``trained_rows_`` and ``scored_rows_`` (``{(fold, member): evaluation rows}``:
    those the network trained on with its arbitrary label, and those it scored),
    ``best_epochs_`` and ``val_acc_`` (``(folds, members)``: the kept epoch and its
    validation accuracy; NaN without validation rows).
    """

    name = "erd"
    needs_images = True
    needs_close_set = True
    trains_networks = True
    config_cls = ErdConfig

    # ------------------------------------------------------------------ inputs
    def _labelled(self, data: OpenSetData) -> tuple[TensorData, TensorData | None, int]:
        """The labelled close rows to train on, the validation rows (or None) and K."""
        close = data.close_set
        if close is not None:
            train = TensorData(close.train_images, torch.as_tensor(np.asarray(close.train_targets)))
            val = None
            if len(close.val_targets):
                val = TensorData(close.val_images, torch.as_tensor(np.asarray(close.val_targets)))
            return train, val, close.model.num_classes
        if self.cfg.init == "close_set":
            raise ValueError(
                "erd with init='close_set' starts from stage 01's network: OpenSetData.close_set is None "
                "(or use init='scratch' with OpenSetData.train_images)"
            )
        if data.train_images is None:
            raise ValueError("erd trains on labelled close rows: OpenSetData.close_set and train_images are None")
        return TensorData(data.train_images, torch.as_tensor(np.asarray(data.train_targets))), None, data.num_classes

    def _network(self, data: OpenSetData, member: int, num_classes: int):
        """Member ``member``'s starting network (see the module docstring, step 2)."""
        c = self.cfg
        torch.manual_seed(c.seed + 1000 * member)
        if c.init == "scratch":
            mcfg = ModelConfig(c.arch, num_classes, c.input_size, stem=c.stem, pretrained=c.pretrained)
            return build_model(mcfg, verbose=False)
        model = data.close_set.model
        if model.pretrained is None:
            raise ValueError("OpenSetData.close_set.model names no weights (pretrained): nothing to start from")
        net = build_model(replace(model, pretrained=None), verbose=False)
        report = load_pretrained(net, model.pretrained, verbose=False)
        if report.missing or report.mismatched:
            raise ValueError(
                f"{model.pretrained} does not hold stage 01's {model.arch}/{model.head} network as recorded "
                f"(missing {report.missing}, mismatched {report.mismatched})"
            )
        return net

    def _train_config(self, fold: int, member: int) -> TrainConfig:
        c = self.cfg
        return c.train_config(
            epochs=c.epochs, optimizer=c.optimizer, schedule="constant", seed=c.seed + 100 * fold + member
        )

    # ------------------------------------------------------------------ fit / score
    def fit(self, data: OpenSetData) -> ErdDetector:
        c = self.cfg
        if data.images is None:
            raise ValueError("erd trains on and scores the evaluation images; OpenSetData.images is None")
        size = data.close_set.model.input_size if c.init == "close_set" and data.close_set else c.input_size
        if data.images.shape[-1] != size:
            raise ValueError(f"evaluation images are {data.images.shape[-1]} px but erd's networks take {size} px")
        labelled, val, k = self._labelled(data)
        n = len(data)
        if n < c.folds:
            raise ValueError(f"folds={c.folds} needs at least as many evaluation rows, got {n}")
        out = Path(c.out_dir) if c.out_dir else None
        self.labels_ = arbitrary_labels(c.members, k, c.seed)
        self.fold_ = fold_assignment(n, c.folds, c.seed) if c.folds > 1 else np.zeros(n, dtype=np.int64)
        self.probs_ = np.full((n, c.members, k), np.nan)
        self.trained_rows_: dict[tuple[int, int], np.ndarray] = {}
        self.scored_rows_: dict[tuple[int, int], np.ndarray] = {}
        self.best_epochs_ = np.zeros((c.folds, c.members), dtype=np.int64)
        self.val_acc_ = np.full((c.folds, c.members), np.nan)
        kw = {"device": c.device, "progress": False, "channels_last": c.channels_last, "amp": c.amp}
        for f in range(c.folds):
            scored = np.flatnonzero(self.fold_ == f)
            trained = scored if c.folds == 1 else np.flatnonzero(self.fold_ != f)  # folds=1: transductive
            images = torch.cat([labelled.images, data.images[torch.as_tensor(trained)]])
            for j, label in enumerate(self.labels_):
                arbitrary = torch.full((len(trained),), int(label), dtype=torch.long)
                train = TensorData(images, torch.cat([labelled.targets, arbitrary]))
                net = self._network(data, j, k)
                keep = _KeepBest()  # without a folder the loop keeps the last epoch: keep the best here
                result = fit(
                    net,
                    train,
                    val,
                    self._train_config(f, j),
                    None,
                    None if out is None else out / f"fold{f}_member{j}",
                    callbacks=[keep] if out is None else [],
                    desc=f"erd fold {f + 1}/{c.folds} member {j + 1}/{c.members} (label {int(label)})",
                )
                if out is None and keep.state is not None:  # with a folder the loop reloaded best.pt
                    net.load_state_dict(keep.state)
                self.best_epochs_[f, j] = result.best_epoch
                if val is not None:
                    self.val_acc_[f, j] = float(result.history["val_acc"].iloc[result.best_epoch - 1])
                logits = predict(net, data.images[torch.as_tensor(scored)], **kw).logits
                self.probs_[scored, j] = torch.softmax(logits.double(), dim=1).numpy()
                self.trained_rows_[(f, j)], self.scored_rows_[(f, j)] = trained, scored
        self.scores_ = average_pairwise_tv(self.probs_)
        self.n_scored_ = n
        if out is not None:
            write_json(
                out / "detector.json",
                {
                    "config": asdict(c),
                    "labels": self.labels_.tolist(),
                    "fold_sizes": np.bincount(self.fold_, minlength=c.folds).tolist(),
                    "best_epochs": self.best_epochs_.tolist(),
                    "val_acc": [[None if np.isnan(a) else float(a) for a in row] for row in self.val_acc_],
                    "n_labelled": len(labelled),
                    "n_val": 0 if val is None else len(val),
                },
            )
        return self

    def score(self, data: OpenSetData) -> np.ndarray:
        if not hasattr(self, "scores_"):
            raise RuntimeError("call fit(data) first: erd scores the evaluation rows it was fitted with")
        if len(data) != self.n_scored_:
            raise ValueError(f"fitted on {self.n_scored_} evaluation rows, asked to score {len(data)}")
        return self.scores_
