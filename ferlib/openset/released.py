"""The paper's detector as its released code runs it: one network, no cycle training.

Zhang et al. (AAAI 2024) describe cycle training of two networks (:mod:`ferlib.openset.cycle`),
but their released code trains **one** fresh network on the evaluation set with the close-set
model's pseudo labels and the attention-consistency loss of EAC, and flags as open the samples
whose pseudo label it fits worst. This module is that method, beside the cycle version, so that
the two can be compared on the same pseudo labels (the paper's ``Ours`` column is this one's
recipe; METHODS.md part 1, "Detector training" and "Score"):

* one network from scratch (or ``pretrained``), fc to the close classes;
* loss ``CE(f(view 1), pseudo) + lam * MSE(CAM(view 1), flip(CAM(view 2)))`` with view 2 the
  mirror of view 1 (:class:`ferlib.losses.CamFlipConsistency`), ``lam`` 6 (the reference uses
  6-8);
* Adam, lr 1e-4, weight decay 1e-4, ExponentialLR(0.9) per epoch, 30 epochs, batch 128;
* the papers' augmentation (:class:`ferlib.data.augment.AugmentConfig` at its defaults): with
  p = 0.5 a horizontal flip or additive Gaussian noise, then RandomErasing (p = 0.5, scale
  0.02-0.25);
* the last epoch is kept (there is no validation split on the evaluation set);
* score = per-sample cross-entropy against the pseudo label, higher = more likely open.

One defect of the released code is fixed: it computes the per-sample loss with the training
augmentation on (random flips, noise and erasing, and the network in train mode), so a
sample's score depends on the draw. Here the loss is computed in eval mode with deterministic
transforms (:meth:`CycleDetector.per_sample_loss`), the kit's only way of scoring.

Training is one call of the kit's single loop (:func:`ferlib.train.fit`) with a checkpoint
folder ``<out_dir>/net``, so a killed detector resumes at the epoch it had reached and a
finished one is not trained again. The method is transductive: it scores the samples it
trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ferlib.losses import CamFlipConsistency
from ferlib.openset.base import NetworkConfig
from ferlib.openset.cycle import CycleDetector
from ferlib.openset.data import OpenSetData
from ferlib.train import TensorData, fit


@dataclass
class ReleasedConfig(NetworkConfig):
    """The released code's settings (METHODS.md part 1, "Detector training"): ``lam`` 6 (its
    range is 6-8), 30 epochs, batch 128, Adam with lr 1e-4 and weight decay 1e-4,
    ExponentialLR with ``lr_gamma`` 0.9. The network (``arch``, ``pretrained``; the
    reference uses a VGGFace2 ResNet-50) and the stage-level settings are
    :class:`NetworkConfig`'s."""

    lam: float = 6.0
    epochs: int = 30
    lr: float = 1e-4
    lr_gamma: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128

    def __post_init__(self) -> None:
        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        def integer(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        checks = {
            "lam": (number(self.lam) and self.lam >= 0, "a finite number >= 0 (0 drops the consistency loss)"),
            "epochs": (integer(self.epochs) and self.epochs >= 1, "an integer >= 1"),
            "lr": (number(self.lr) and self.lr > 0, "a finite number > 0"),
            "lr_gamma": (number(self.lr_gamma) and 0 < self.lr_gamma <= 1, "in (0, 1]"),
            "weight_decay": (number(self.weight_decay) and self.weight_decay >= 0, "a finite number >= 0"),
            "batch_size": (integer(self.batch_size) and self.batch_size >= 2, "an integer >= 2 (BatchNorm)"),
        }
        for name, (ok, need) in checks.items():
            if not ok:
                raise ValueError(f"ReleasedConfig.{name} must be {need}, got {getattr(self, name)!r}")


class ReleasedDetector(CycleDetector):
    """One network trained on the pseudo labels with the consistency loss; ``score`` = its
    per-sample loss (higher = open).

    It reuses :class:`CycleDetector`'s network construction, training settings, eval-mode
    per-sample loss and transductive ``score``. After :meth:`fit`, ``history_`` holds the
    training loop's per-epoch metrics (resumed epochs included), ``snapshot_losses_`` the one
    snapshot's per-sample loss (1 x samples) and ``features_`` the network's pooled features
    (for embedding plots).
    """

    name = "released"
    config_cls = ReleasedConfig

    def fit(self, data: OpenSetData) -> ReleasedDetector:
        c = self.cfg
        self._check_images(data)
        out = Path(c.out_dir) if c.out_dir else None
        net = self._network(0, data.num_classes)
        targets = data.pseudo
        result = fit(
            net,
            TensorData(data.images, torch.as_tensor(targets.copy())),
            None,  # no validation split on the evaluation set: the last epoch is kept
            c.train_config(epochs=c.epochs, seed=c.seed, schedule="exponential", lr_gamma=c.lr_gamma),
            CamFlipConsistency(c.lam),
            None if out is None else out / "net",
            desc="released detector",
        )
        self.history_ = result.history
        loss, self.features_ = self.per_sample_loss(net, data.images, targets)
        self.snapshot_losses_ = loss[None]
        self.scores_ = loss
        self.n_scored_ = len(data)
        self._write_record(out, n_snapshots=1, epochs_trained=len(result.history))
        return self
