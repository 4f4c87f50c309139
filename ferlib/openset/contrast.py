"""Transductive set contrast: which evaluation samples look unlike the close training set?

Why this exists. The paper turns open-set detection into noisy-label detection, assuming
the open samples' pseudo labels spread like symmetric noise. Under the honest (index-
aligned) protocol they do not: a held-out class maps mostly onto one or two close classes,
and since the open samples are most of the evaluation set, a network trained on the pseudo
labels fits them *best*; the loss score inverts (METHODS.md, "What we measured").

What does hold under the honest protocol is the other half of the transductive setting:
the evaluation set contains a population (the open class) that the close-set training data
lacks. This detector keeps the paper's machinery (fresh networks trained on the evaluation
images, the CAM flip-consistency loss, two networks each judging samples for the other)
but changes the question the networks answer: *evaluation set or close training set?*
Close test samples come from the training distribution, so a network cannot separate them
from training images and scores them near the prior; open samples have no counterpart in
training and score high.

Cross-fitting: the evaluation set is split in two halves; network A trains on half 1 (plus
as many close training images) and scores half 2, network B the reverse, so no sample is
scored by a network that saw it. Score = the network's "evaluation set" logit margin,
higher = more likely open. No evaluation label or pseudo label is used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ferlib.data.augment import AugmentConfig
from ferlib.io import write_json
from ferlib.losses import CamFlipConsistency
from ferlib.models import ModelConfig, build_model
from ferlib.openset.base import Detector, NetworkConfig
from ferlib.openset.data import OpenSetData
from ferlib.train import TensorData, TrainConfig, fit, predict


@dataclass
class ContrastConfig(NetworkConfig):
    """Settings of the cross-fitted discriminator (network settings in :class:`NetworkConfig`)."""

    epochs: int = 6
    lam: float = 1.0  # CAM flip-consistency weight (0 = plain cross-entropy)
    folds: int = 2

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2 (cross-fitting), got {self.folds}")


class ContrastDetector(Detector):
    """Cross-fitted evaluation-vs-training discriminator (see module docstring)."""

    name = "contrast"
    needs_images = True
    needs_train_images = True
    trains_networks = True
    config_cls = ContrastConfig

    def fit(self, data: OpenSetData) -> ContrastDetector:
        c = self.cfg
        if data.images is None or data.train_images is None:
            raise ValueError("the contrast detector needs OpenSetData.images and OpenSetData.train_images")
        n, m = len(data), len(data.train_images)
        rng = np.random.default_rng(c.seed)
        fold_of = rng.permutation(n) % c.folds
        train_perm = rng.permutation(m)
        scores = np.zeros(n, np.float32)
        out = Path(c.out_dir) if c.out_dir else None
        for f in range(c.folds):
            fit_rows, score_rows = np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)
            k = min(len(fit_rows), m)
            ref_rows = train_perm[(f * k) % m :][:k] if (f * k) % m + k <= m else train_perm[:k]
            images = torch.cat([data.images[torch.as_tensor(fit_rows)], data.train_images[torch.as_tensor(ref_rows)]])
            targets = torch.cat([torch.ones(len(fit_rows)), torch.zeros(len(ref_rows))]).long()
            torch.manual_seed(c.seed + 1000 * f)
            net = build_model(
                ModelConfig(c.arch, 2, c.input_size, stem=c.stem, pretrained=c.pretrained),
                verbose=f == 0 and c.progress,
            )
            tcfg = TrainConfig(
                epochs=c.epochs,
                batch_size=c.batch_size,
                lr=c.lr,
                weight_decay=c.weight_decay,
                seed=c.seed + f,
                device=c.device,
                augment=AugmentConfig(),
                channels_last=c.channels_last,
                amp=c.amp,
                progress=c.progress,
            )
            fit(
                net,
                TensorData(images, targets),
                None,
                tcfg,
                CamFlipConsistency(c.lam),
                None if out is None else out / f"fold{f}",
                desc=f"contrast fold {f + 1}/{c.folds}",
            )
            pred = predict(
                net,
                data.images[torch.as_tensor(score_rows)],
                device=c.device,
                progress=False,
                channels_last=c.channels_last,
                amp=c.amp,
            )
            scores[score_rows] = (pred.logits[:, 1] - pred.logits[:, 0]).numpy()
        self.scores_, self.n_scored_ = scores, n
        if out is not None:
            write_json(out / "detector.json", {"config": asdict(c)})
        return self

    def score(self, data: OpenSetData) -> np.ndarray:
        if not hasattr(self, "scores_"):
            raise RuntimeError("call fit(data) first: the contrast detector scores the data it was fitted on")
        if len(data) != self.n_scored_:
            raise ValueError(f"fitted on {self.n_scored_} samples, asked to score {len(data)}")
        return self.scores_
