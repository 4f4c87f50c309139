"""The detector contract, and the settings shared by detectors that train networks.

Contract (pytorch-ood style): ``fit(data) -> self``, then ``score(data) -> ndarray`` with
one value per evaluation row, **higher = more likely open**. Metrics flip the sign
themselves when the close set is the positive class.

A detector also says, as class attributes, what it reads and what it is. Stage 03 and the
registry act on these instead of on detector names, so a new detector is one file plus
one registry line and no stage code changes:

* ``needs_images`` / ``needs_train_images``: the stage decodes the evaluation images /
  the close-set training images only when a selected detector asks for them;
* ``needs_close_set``: it fine-tunes stage 01's close-set network on stage 01's own
  training rows and validation split (``OpenSetData.close_set``), which the stage loads
  only then;
* ``reads_model_outputs``: it reads the close-set model's logits or features, which the
  protocol changes (the reference protocol hands open training rows another image's
  outputs);
* ``reads_extras``: ``{extra: head}``, the close-set model's per-sample extras it reads
  (``OpenSetData.extras``) and the stage 01 head that produces each; such a detector needs
  that head, so it is not among stage 03's defaults, and it fails with a ``ValueError``
  naming the head when the extra is missing (:meth:`Detector.model_extra`);
* ``reads_reference``: it reads the held-out close reference rows
  (``OpenSetData.reference_features``), e.g. to estimate the open share;
* ``reads_pseudo_labels``: it reads the pseudo labels (the protocol changes them too);
  a detector that reads neither gives the same scores under every protocol, so stage 03
  fits it once and reuses it for every protocol;
* ``trains_networks``: it trains networks, so stage 03 gives it a checkpoint folder keyed
  by everything that determines its result (see :mod:`ferlib.openset.keys`);
* ``config_cls``: the dataclass of its parameters (built as ``cls(config_cls(**params))``),
  or ``None`` when it takes its parameters as keyword arguments (``cls(**params)``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ferlib.openset.data import OpenSetData

if TYPE_CHECKING:
    from ferlib.train import TrainConfig


@dataclass
class NetworkConfig:
    """Settings shared by the detectors that train networks on the evaluation images.

    The stage-level settings ``input_size``, ``stem``, ``seed``, ``device``, ``amp`` and
    ``progress`` are filled in from stage 03's own arguments by the registry
    (:func:`ferlib.openset.registry.resolve_params`); ``out_dir`` is set by stage 03 to the
    detector's keyed checkpoint folder. ``device``, ``progress`` and ``out_dir`` do not
    change the result and are left out of the result key.
    """

    arch: str = "resnet18"
    input_size: int = 48
    stem: str = "auto"  # see ferlib.models.ModelConfig: "imagenet" is ~4x cheaper at 48 px
    pretrained: str | None = None  # state-dict path (face weights or the close-set model); None = scratch
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    seed: int = 0
    device: str = "cpu"
    channels_last: bool = True
    amp: bool = False
    progress: bool = True
    out_dir: str | None = None  # checkpoints, so that a killed detector resumes

    def train_config(self, **schedule: Any) -> TrainConfig:
        """The training loop's settings from these shared fields, the papers' augmentation
        (flip-or-noise, then random erasing) and ``schedule`` (epochs, seed, optimizer and the
        learning-rate schedule, which differ between detectors): one place for every detector
        that trains a network."""
        from ferlib.data.augment import AugmentConfig
        from ferlib.train import TrainConfig

        return TrainConfig(
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            device=self.device,
            augment=AugmentConfig(),
            channels_last=self.channels_last,
            amp=self.amp,
            progress=self.progress,
            **schedule,
        )


class Detector(ABC):
    """Base class: subclasses set ``name`` and the capability attributes below and implement
    :meth:`score` (and :meth:`fit` when they need training data)."""

    name: ClassVar[str] = "detector"
    #: reads the evaluation images (OpenSetData.images): cycle and contrast train on them
    needs_images: ClassVar[bool] = False
    #: needs the close-set training images (OpenSetData.train_images)
    needs_train_images: ClassVar[bool] = False
    #: needs stage 01's network, training rows and validation split (OpenSetData.close_set)
    needs_close_set: ClassVar[bool] = False
    #: reads the close-set model's logits / features (changed by the protocol)
    reads_model_outputs: ClassVar[bool] = False
    #: the close-set model's per-sample extras it reads -> the head that produces each
    #: (changed by the protocol, like the logits; set reads_model_outputs too)
    reads_extras: ClassVar[Mapping[str, str]] = MappingProxyType({})
    #: reads the held-out close reference rows (OpenSetData.reference_features)
    reads_reference: ClassVar[bool] = False
    #: reads the pseudo labels (changed by the protocol)
    reads_pseudo_labels: ClassVar[bool] = False
    #: trains networks: stage 03 hands it a keyed checkpoint folder (``out_dir``)
    trains_networks: ClassVar[bool] = False
    #: dataclass of its parameters, or None when it takes keyword arguments
    config_cls: ClassVar[type | None] = None

    @classmethod
    def depends_on_protocol(cls) -> bool:
        """Whether its scores can change with the protocol: only through the pseudo labels
        and the close-set outputs, which are all the protocol changes."""
        return cls.reads_pseudo_labels or cls.reads_model_outputs

    def requires_reference(self) -> bool:
        """Whether these settings cannot score without the held-out close reference rows
        (stage 03 then computes them first: the close-set model's outputs on the validation
        split); :attr:`reads_reference` says only that the detector may read them."""
        return False

    def fit(self, data: OpenSetData) -> Detector:
        return self

    def model_extra(self, data: OpenSetData, name: str) -> np.ndarray:
        """``data.extras[name]`` (one entry per row), or a ``ValueError`` naming the stage 01
        head that produces it (from :attr:`reads_extras`) when the close-set model had none."""
        if name not in data.extras:
            head = self.reads_extras.get(name, "?")
            have = sorted(data.extras) or "none"
            raise ValueError(
                f"detector {self.name!r} needs the close-set model's per-sample {name!r} (head {head!r} "
                f"in stage 01, then stage 02 again); this run's model gave extras: {have}"
            )
        return np.asarray(data.extras[name])

    @abstractmethod
    def score(self, data: OpenSetData) -> np.ndarray:
        """One score per evaluation row; higher = more likely open."""

    def fit_score(self, data: OpenSetData) -> np.ndarray:
        return self.fit(data).score(data)

    def embedding_features(self) -> np.ndarray | None:
        """Per-row features the detector learnt (for embedding plots), after :meth:`fit`;
        ``None`` for detectors that learn none."""
        return None

    def __init__(self, cfg: Any = None) -> None:
        """A detector with a :attr:`config_cls` takes one config (its defaults when None);
        one that takes keyword arguments defines its own ``__init__``."""
        if self.config_cls is None:
            if cfg is not None:
                raise TypeError(f"detector {self.name!r} takes no config")
            return
        self.cfg = cfg if cfg is not None else self.config_cls()

    def __repr__(self) -> str:
        cfg = getattr(self, "cfg", None)
        return f"{type(self).__name__}({'' if cfg is None else cfg})"
