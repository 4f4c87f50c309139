"""The paper's detector: attention-consistency training on pseudo labels with cycle training.

Open-set detection as noisy-label detection (Zhang et al., AAAI 2024; METHODS.md part 1):
fresh networks are trained *on the evaluation set* with the close-set model's pseudo labels
and the CAM flip-consistency loss. Samples whose pseudo label the networks cannot fit
(large loss) are flagged as open. The method is transductive: it scores the very samples
it trained on.

Cycle training (paper Fig. 3; the authors never released it) is implemented as follows,
every unpublished choice being a :class:`CycleConfig` field:

1. Two networks A and B start from different seeds (or from given weights).
2. Training runs in ``cycles`` learning-rate cycles of ``epochs_per_cycle`` epochs, cosine
   from ``lr`` down to ``lr_min`` (a cyclical learning rate, SGDR style). In the first
   cycle both networks see every sample.
3. At the end of each cycle each network is snapshotted: its per-sample loss against the
   pseudo labels is computed in eval mode with deterministic transforms.
4. Each network then picks the ``select_ratio`` fraction of samples with the smallest mean
   snapshot loss so far (per pseudo class when ``class_balanced``) and hands them to its
   *peer* as the clean set for the next cycle (co-teaching's cross update).
5. The open score is the per-sample loss averaged over every snapshot of both networks.

Switches for the ablation: ``lam=0`` drops the consistency loss; ``cycle_training=False``
trains one network on all samples (snapshots still averaged).

Each cycle is one call of the kit's single training loop (:func:`ferlib.train.fit`), with
its own checkpoint folder, so a killed detector resumes at the cycle it was in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ferlib.io import write_json
from ferlib.losses import CamFlipConsistency
from ferlib.models import ModelConfig, build_model
from ferlib.openset.base import Detector, NetworkConfig
from ferlib.openset.data import OpenSetData
from ferlib.train import TensorData, TrainConfig, fit, predict


@dataclass
class CycleConfig(NetworkConfig):
    """Every choice the paper leaves open, with the default we use and report."""

    cycles: int = 3
    epochs_per_cycle: int = 4
    select_ratio: float = 0.5
    class_balanced: bool = True
    lam: float = 5.0
    cycle_training: bool = True
    lr_min: float = 1e-5

    def __post_init__(self) -> None:
        if not 0 < self.select_ratio <= 1:
            raise ValueError(f"select_ratio must be in (0, 1], got {self.select_ratio}")
        if self.cycles < 1 or self.epochs_per_cycle < 1:
            raise ValueError("cycles and epochs_per_cycle must be at least 1")


def small_loss_selection(loss: np.ndarray, labels: np.ndarray, ratio: float, class_balanced: bool) -> np.ndarray:
    """Rows judged clean: the ``ratio`` fraction with the smallest loss.

    Class-balanced selection keeps that fraction *within every pseudo class*, so a class
    that the open samples flood (e.g. Surprise faces pseudo-labelled Fear) cannot be
    selected wholesale just because the network learnt its majority pattern.
    """
    if not class_balanced:
        k = max(1, int(round(ratio * len(loss))))
        return np.sort(np.argsort(loss, kind="stable")[:k])
    keep = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        k = max(1, int(round(ratio * len(rows))))
        keep.append(rows[np.argsort(loss[rows], kind="stable")[:k]])
    return np.sort(np.concatenate(keep))


class CycleDetector(Detector):
    """Attention-consistency cycle training; ``score`` = mean snapshot loss (higher = open).

    After :meth:`fit`, ``snapshot_losses_`` holds every snapshot's per-sample loss
    (snapshots x samples), ``features_`` the pooled features of the last snapshot of the
    first network (for embedding plots) and ``selected_`` the clean sets handed over.
    """

    name = "cycle"
    needs_images = True
    reads_pseudo_labels = True
    trains_networks = True
    config_cls = CycleConfig

    def _network(self, index: int, num_classes: int):
        torch.manual_seed(self.cfg.seed + 1000 * index)
        mcfg = ModelConfig(
            arch=self.cfg.arch,
            num_classes=num_classes,
            input_size=self.cfg.input_size,
            stem=self.cfg.stem,
            pretrained=self.cfg.pretrained,
        )
        return build_model(mcfg, verbose=index == 0 and self.cfg.progress)

    def _train_cfg(self, cycle: int, net: int) -> TrainConfig:
        c = self.cfg
        return c.train_config(
            epochs=c.epochs_per_cycle,
            lr_min=c.lr_min,
            schedule="cyclic",
            cycle_epochs=c.epochs_per_cycle,
            seed=c.seed + 100 * cycle + net,
        )

    def _check_images(self, data: OpenSetData) -> None:
        """The evaluation images must be there, at the configured input size."""
        if data.images is None:
            raise ValueError(f"the {self.name} detector trains on the evaluation images; OpenSetData.images is None")
        if data.images.shape[-1] != self.cfg.input_size:
            raise ValueError(
                f"images are {data.images.shape[-1]} px but "
                f"{type(self.cfg).__name__}.input_size is {self.cfg.input_size}"
            )

    def _write_record(self, out: Path | None, **facts) -> None:
        """``detector.json`` in the checkpoint folder: the configuration and ``facts``."""
        if out is not None:
            write_json(out / "detector.json", {"config": asdict(self.cfg), **facts})

    def per_sample_loss(self, net, images: torch.Tensor, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cross-entropy of each sample against its pseudo label, eval mode, no augmentation."""
        pred = predict(
            net, images, device=self.cfg.device, progress=False, channels_last=self.cfg.channels_last, amp=self.cfg.amp
        )
        loss = F.cross_entropy(pred.logits, torch.tensor(np.asarray(targets), dtype=torch.long), reduction="none")
        return loss.numpy(), pred.features.numpy()

    def fit(self, data: OpenSetData) -> CycleDetector:
        c = self.cfg
        self._check_images(data)
        targets = data.pseudo
        n, k = len(data), data.num_classes
        out = Path(c.out_dir) if c.out_dir else None
        n_nets = 2 if c.cycle_training else 1
        nets = [self._network(j, k) for j in range(n_nets)]
        selected = [np.arange(n) for _ in range(n_nets)]
        losses: list[list[np.ndarray]] = [[] for _ in range(n_nets)]
        self.selected_: list[dict] = []
        objective = CamFlipConsistency(c.lam)
        full = TensorData(data.images, torch.as_tensor(targets.copy()))
        for cycle in range(c.cycles):
            for j, net in enumerate(nets):
                cell = None if out is None else out / f"net{j}_cycle{cycle}"
                fit(
                    net,
                    full.subset(selected[j]),
                    None,
                    self._train_cfg(cycle, j),
                    objective,
                    cell,
                    desc=f"detector net {j} cycle {cycle + 1}/{c.cycles}",
                )
                loss, feats = self.per_sample_loss(net, data.images, targets)
                losses[j].append(loss)
                if j == 0:
                    self.features_ = feats
            if c.cycle_training:
                mean_loss = [np.mean(per_net, axis=0) for per_net in losses]
                # cross update: each network's clean set comes from its peer's judgement
                selected = [
                    small_loss_selection(mean_loss[1 - j], targets, c.select_ratio, c.class_balanced)
                    for j in range(n_nets)
                ]
                # row positions only: the detector sees no label (is_open is not in its view)
                self.selected_.append(
                    {"cycle": cycle + 1, "sizes": [len(s) for s in selected], "rows": [s.tolist() for s in selected]}
                )
        self.snapshot_losses_ = np.stack([snap for per_net in losses for snap in per_net])
        self.scores_ = self.snapshot_losses_.mean(axis=0)
        self.n_scored_ = n
        self._write_record(
            out,
            n_snapshots=len(self.snapshot_losses_),
            selection=[{k: v for k, v in s.items() if k != "rows"} for s in self.selected_],
        )
        return self

    def embedding_features(self) -> np.ndarray | None:
        """Pooled features of the first network's last snapshot (None before :meth:`fit`)."""
        return getattr(self, "features_", None)

    def score(self, data: OpenSetData) -> np.ndarray:
        """The transductive score of the samples fitted on (mean snapshot loss)."""
        if not hasattr(self, "scores_"):
            raise RuntimeError(f"call fit(data) first: the {self.name} detector scores the samples it trained on")
        if len(data) != self.n_scored_:
            raise ValueError(
                f"fitted on {self.n_scored_} samples, asked to score {len(data)}: "
                "the method is transductive, score the data it was fitted on"
            )
        return self.scores_
