"""``proser``: PROSER (Zhou, Ye, Zhan, "Learning Placeholders for Open-Set Recognition",
CVPR 2021), the ``PROS`` baseline of the paper's tables (METHODS.md part 1).

What it does, in the kit's terms:

1. **Start from the close-set classifier.** A copy of stage 01's network (its ``best.pt``,
   rebuilt as stage 01 recorded it; ``OpenSetData.close_set``) gets a dummy classifier
   beside the K close-class logits: head ``dummy`` (:mod:`ferlib.models.dummy`), whose
   ``logits`` stay the K close-class logits and whose ``extras["dummy_logits"]`` hold the
   ``dummies`` extra outputs (their maximum is the dummy class). Stage 01's head must be
   ``linear``, the head PROSER extends.
2. **Fine-tune with placeholders** through the one loop (:func:`ferlib.train.fit`) with the
   ``proser`` objective (:mod:`ferlib.losses.proser`): cross-entropy on K+1 logits, the
   dummy ranked second once the true class is masked (classifier placeholders), and
   manifold mixtures of two samples of different classes labelled dummy (data
   placeholders). It trains on stage 01's own training rows only: never on an evaluation
   image, and without any pseudo label, so its scores are the same under every protocol.
   Like the official code, the last epoch is kept (no selection).
3. **Calibrate** (paper Sec. 3.4; not in the official code, which scores with bias 0): a
   bias ``b`` added to the dummy logit, chosen on stage 01's validation split (close
   samples only) so that a share ``known_share`` (95%) of it is classified as known, i.e.
   its top class among ``[z, d + b]`` is a close class (:func:`calibrate_bias`).
4. **Score** every evaluation row with the calibrated dummy-class probability
   ``softmax([z, d + b])[K] = sigmoid(d + b - logsumexp(z))``: higher = more likely open,
   the registry's convention (:mod:`ferlib.openset.base`). ``b`` moves every score the
   same way, so AUROC and FPR@TPR95 do not depend on it; it sets the decision rule, whose
   share of evaluation rows classified known is recorded (``detector.json``).

Reference code defects not reproduced: it scores with temperature 1024 and ``p(dummy) -
max p(known)`` and reports ``max(AUROC, 1 - AUROC)`` (a detector that ranks backwards
scores as well as one that ranks right); its mixup pairs same-class samples too.

Parameters (:class:`ProserConfig`) and where each value comes from: the official code
(``proser_unknown_detection.py``): ``epochs = 10`` (``FineTune_MAX_EPOCH``), ``lr = 1e-3``
(``args.lr * 0.01``), SGD with momentum 0.9 (the kit's SGD is Nesterov's) and weight decay
``5e-4``, constant learning rate, batch 128, ``dummies = 1`` (``dummynumber``), ``lamb0 =
1``, ``lamb1 = 1``, ``lamb2 = 0.01``, ``alpha = 1``, the mixup before the trunk's last stage;
the paper: ``known_share = 0.95``. The kit's choices: its training augmentation
(:class:`~ferlib.data.augment.AugmentConfig`), each batch used whole for every term (see
:mod:`ferlib.losses.proser`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit, logsumexp

from ferlib.io import write_json
from ferlib.losses.proser import ProserPlaceholders
from ferlib.models import build_model, load_pretrained
from ferlib.openset.base import Detector, NetworkConfig
from ferlib.openset.data import OpenSetData
from ferlib.train import OPTIMIZERS, TensorData, TrainConfig, fit, predict


@dataclass
class ProserConfig(NetworkConfig):
    """PROSER's settings (values and sources in the module docstring).

    The network is stage 01's as built (``OpenSetData.close_set``): ``arch`` and ``stem``
    are not used, and ``pretrained`` must stay None (the starting weights are stage 01's).
    """

    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    dummies: int = 1
    lamb0: float = 1.0
    lamb1: float = 1.0
    lamb2: float = 0.01
    alpha: float = 1.0
    mix_at: int = -1
    known_share: float = 0.95

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if isinstance(self.dummies, bool) or not isinstance(self.dummies, int) or self.dummies < 1:
            raise ValueError(f"dummies must be an integer >= 1, got {self.dummies!r}")
        if not (isinstance(self.known_share, (int, float)) and 0 < self.known_share <= 1):
            raise ValueError(f"known_share must be in (0, 1], got {self.known_share!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        TrainConfig(lr=self.lr, weight_decay=self.weight_decay, batch_size=self.batch_size)  # the loop's checks
        if self.pretrained is not None:
            raise ValueError(
                "proser fine-tunes stage 01's close-set network (its best.pt); pretrained is not used, leave it None"
            )
        self.objective()  # the loss weights' own checks

    def objective(self) -> ProserPlaceholders:
        return ProserPlaceholders(self.lamb0, self.lamb1, self.lamb2, self.alpha, self.mix_at)


def known_margin(logits: torch.Tensor | np.ndarray, dummy_logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """``max_k z_k - max_d dummy_d`` per row (float64): a row is classified known under the
    dummy bias ``b`` when its margin is at least ``b``."""
    z = np.asarray(logits, dtype=np.float64)
    d = np.asarray(dummy_logits, dtype=np.float64).reshape(len(z), -1)
    return z.max(axis=1) - d.max(axis=1)


def calibrate_bias(margin: np.ndarray, known_share: float) -> float:
    """The largest bias ``b`` for the dummy logit under which at least ``known_share`` of the
    rows are classified known (``margin >= b``): the ``ceil(known_share * n)``-th largest
    margin. With distinct margins exactly that many rows are known."""
    margin = np.sort(np.asarray(margin, dtype=np.float64))[::-1]
    if not len(margin):
        raise ValueError("calibration needs at least one validation sample")
    if not 0 < known_share <= 1:
        raise ValueError(f"known_share must be in (0, 1], got {known_share!r}")
    k = min(len(margin), max(1, math.ceil(known_share * len(margin) - 1e-9)))
    return float(margin[k - 1])


def dummy_probability(
    logits: torch.Tensor | np.ndarray, dummy_logits: torch.Tensor | np.ndarray, bias: float = 0.0
) -> np.ndarray:
    """The dummy class's softmax probability among ``[z, max dummy + bias]`` (float64):
    ``sigmoid(max dummy + bias - logsumexp(z))``; higher = more likely open."""
    z = np.asarray(logits, dtype=np.float64)
    d = np.asarray(dummy_logits, dtype=np.float64).reshape(len(z), -1).max(axis=1)
    return expit(d + bias - logsumexp(z, axis=1))


class ProserDetector(Detector):
    """PROSER fine-tuned from stage 01's network; ``score`` = calibrated dummy probability.

    After :meth:`fit`: ``bias_`` (the calibrated dummy bias), ``val_known_share_`` (share of
    the validation split classified known: ``known_share`` or just above), ``val_acc_`` (the
    fine-tuned network's close-class accuracy there), ``eval_known_share_`` (share of the
    evaluation rows classified known; no label read) and ``features_`` (pooled features of
    the evaluation rows, for embedding plots).
    """

    name = "proser"
    needs_images = True  # scored, never trained on
    needs_close_set = True
    trains_networks = True
    config_cls = ProserConfig

    def _network(self, data: OpenSetData):
        """A copy of stage 01's network with a dummy classifier (freshly initialised)."""
        c, close = self.cfg, data.close_set
        model = close.model
        if model.head != "linear":
            raise ValueError(
                f"proser adds its dummy classifier to a linear classifier; stage 01's network has head "
                f"{model.head!r} (train stage 01 with head='linear')"
            )
        if data.images.shape[-1] != model.input_size:
            raise ValueError(
                f"evaluation images are {data.images.shape[-1]} px but stage 01's network takes {model.input_size} px"
            )
        torch.manual_seed(c.seed)
        net = build_model(
            replace(model, head="dummy", head_params={"dummies": c.dummies}, pretrained=None), verbose=False
        )
        if model.pretrained is None:
            raise ValueError("OpenSetData.close_set.model names no weights (pretrained): nothing to fine-tune")
        report = load_pretrained(net, model.pretrained, verbose=c.progress)
        fresh = sorted(k for k in report.missing if not k.startswith("head.dummy."))
        if fresh or report.mismatched:
            raise ValueError(
                f"{model.pretrained} does not hold stage 01's {model.arch}/{model.head} network as recorded "
                f"(missing {fresh}, mismatched {report.mismatched})"
            )
        return net

    def fit(self, data: OpenSetData) -> ProserDetector:
        c, close = self.cfg, data.close_set
        if close is None:
            raise ValueError(
                "proser fine-tunes stage 01's close-set network on its training rows: OpenSetData.close_set is None"
            )
        if data.images is None:
            raise ValueError("proser scores the evaluation images; OpenSetData.images is None")
        out = Path(c.out_dir) if c.out_dir else None
        net = self._network(data)
        tcfg = c.train_config(epochs=c.epochs, optimizer=c.optimizer, schedule="constant", seed=c.seed)
        train = TensorData(close.train_images, torch.as_tensor(np.asarray(close.train_targets)))
        result = fit(net, train, None, tcfg, c.objective(), None if out is None else out / "finetune", desc="proser")
        kw = {"device": c.device, "progress": False, "channels_last": c.channels_last, "amp": c.amp}
        val = predict(net, close.val_images, **kw)
        margin = known_margin(val.logits, val.extras["dummy_logits"])
        self.bias_ = calibrate_bias(margin, c.known_share)
        self.val_known_share_ = float((margin >= self.bias_).mean())
        val_targets = np.asarray(close.val_targets)
        self.val_acc_ = float((val.logits.argmax(1).numpy() == val_targets).mean())
        pred = predict(net, data.images, **kw)
        dummy = pred.extras["dummy_logits"]
        self.scores_ = dummy_probability(pred.logits, dummy, self.bias_)
        self.eval_known_share_ = float((known_margin(pred.logits, dummy) >= self.bias_).mean())
        self.features_ = pred.features.numpy()
        self.n_scored_ = len(data)
        if out is not None:
            write_json(
                out / "detector.json",
                {
                    "config": asdict(c),
                    "bias": self.bias_,
                    "val_known_share": self.val_known_share_,
                    "val_acc": self.val_acc_,
                    "eval_known_share": self.eval_known_share_,
                    "n_train": len(train),
                    "n_val": len(val_targets),
                    "final_train_loss": float(result.history["train_loss"].iloc[-1]),
                },
            )
        return self

    def embedding_features(self) -> np.ndarray | None:
        """Pooled features of the evaluation rows from the fine-tuned network (None before fit)."""
        return getattr(self, "features_", None)

    def score(self, data: OpenSetData) -> np.ndarray:
        if not hasattr(self, "scores_"):
            raise RuntimeError("call fit(data) first: proser scores the evaluation rows it was fitted with")
        if len(data) != self.n_scored_:
            raise ValueError(f"fitted on {self.n_scored_} evaluation rows, asked to score {len(data)}")
        return self.scores_
