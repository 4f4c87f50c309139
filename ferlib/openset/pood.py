"""The field's standard post-hoc detectors from its own library, pytorch-ood, behind the kit's contract.

One adapter, :class:`PoodDetector`: each subclass names one ``pytorch_ood.detector`` class,
its parameters (a dataclass, ``config_cls``) and how to build it; fitting, scoring and the
sign are done once, here. Every detector works from what stage 02 saved, never from a
network or the images:

* logits detectors (MSP, max logit, energy, entropy, GEN, KL matching) get the saved logits
  (``predict_logits``);
* feature detectors (kNN, Mahalanobis, RMD, ViM, fDBD, NNGuide, DICE, NCI, SHE) get the
  saved pooled features (``predict_features``);
* the activation-shaping detectors (ReAct, ASH, SCALE, VRA) act on the penultimate
  activations before the last layer. The library's ``predict_feature_maps`` takes them as
  ``B x D x 1 x 1`` maps: the pooled features *are* the penultimate layer of the kit's
  linear heads, which is where the ReAct, ASH and SCALE papers shape them for ResNets.

Fitting data: the close-set *training* rows (``OpenSetData.train_features`` and
``train_targets``), as the papers do; a detector that fits on training logits (OpenMax,
KL matching) gets them as ``W f + b`` of those features (below).

The last layer, recovered. ViM, fDBD, NNGuide, DICE, NCI, SHE, ReAct, ASH, SCALE, VRA,
OpenMax and KL matching need the classifier's weight ``W`` and bias ``b`` (or training
logits). The kit's ``linear`` and ``uncertainty`` heads give ``logits = W f + b`` with ``f``
the saved pooled features (for ``uncertainty``, ``W`` is the product of its affine layers
in eval mode; flip test-time augmentation averages both sides, which keeps the relation),
so :func:`recover_linear_head` solves for ``W, b`` by least squares on
the evaluation rows' (features, logits) pairs, which every :class:`OpenSetData` carries
(the close-set training rows' logits are not in it). This is exact, not an estimate,
when the features span their space (rank ``D``, at least ``D + 1`` rows): the residual is
float rounding. With fewer rows or dead feature units, ``W`` is only determined on the
features' span: the minimum-norm solution still reproduces every logit, but its columns
outside the span are zero, not the network's (a warning says so; fDBD's and ViM's
weight norms and ViM's origin ``-pinv(W) b`` can then differ from the network's). A head
whose logits are *not* affine in the pooled features (the ``branches`` head: each branch
has its own conv block) fails the residual check (``max_residual``, relative RMS) with a
``ValueError``: no detector then runs on a made-up layer. (Stage 02 could save ``W, b``
beside the outputs, or :class:`OpenSetData` carry the training rows' logits, which stage 02
already writes as ``all_train_logits``; the recovery would then be a check.)

Sign. pytorch-ood's scores are "higher = more outlying", the kit's are "higher = more
likely open" (:mod:`ferlib.openset.base`): the same direction, so the adapter multiplies
by :data:`SIGN` ``= +1`` in one place, and the tests check it on data where the open rows
are known.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ferlib.openset.base import Detector
from ferlib.openset.data import OpenSetData

#: pytorch-ood's score direction (higher = more outlying) times this = the kit's (higher = more open)
SIGN = 1.0

#: the relative RMS residual up to which logits count as affine in the features. Measured on the
#: kit's heads (512 features, 3000 rows): linear / uncertainty 4e-7 in float32 and 3e-3 to 5e-3
#: under bf16 autocast (stage 02 with amp); branches 0.4
MAX_RESIDUAL = 0.02


def _library():
    """``pytorch_ood.detector``, imported on first use (it imports torchvision: seconds)."""
    try:
        from pytorch_ood import detector
    except ModuleNotFoundError as exc:  # pragma: no cover - a dependency of the kit
        raise ModuleNotFoundError(
            "the pytorch-ood detectors need the pytorch-ood package (a dependency in pyproject.toml)"
        ) from exc
    return detector


# -- the last layer, recovered -------------------------------------------------------------------------------------


@dataclass
class LinearFit:
    """``logits = features @ weight.T + bias``, solved from (features, logits) pairs."""

    weight: np.ndarray  # (K, D)
    bias: np.ndarray  # (K,)
    residual: float  # relative RMS residual on the rows it was solved from
    rank: int  # rank of the centred features; == D when W is fully determined
    rows: int

    @property
    def identified(self) -> bool:
        return self.rank == self.weight.shape[1]

    def module(self) -> nn.Linear:
        """The recovered layer as a frozen ``nn.Linear`` (float32, CPU), which the library calls."""
        k, d = self.weight.shape
        layer = nn.Linear(d, k)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(self.weight))
            layer.bias.copy_(torch.from_numpy(self.bias))
        return layer.requires_grad_(False).eval()

    def logits(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, np.float64) @ self.weight.T + self.bias

    def residual_on(self, features: np.ndarray, logits: np.ndarray) -> float:
        return _relative_residual(self.logits(features) - np.asarray(logits, np.float64), logits)


def _relative_residual(residual: np.ndarray, logits: np.ndarray) -> float:
    """RMS of ``residual`` over the RMS of the logits about their column means."""
    logits = np.asarray(logits, np.float64)
    spread = float(np.sqrt(np.mean((logits - logits.mean(0)) ** 2)))
    err = float(np.sqrt(np.mean(residual**2)))
    if spread == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return err / spread


def recover_linear_head(features: np.ndarray, logits: np.ndarray, max_residual: float = MAX_RESIDUAL) -> LinearFit:
    """``W, b`` with ``logits = features @ W.T + b``, by least squares on centred rows.

    Raises ``ValueError`` when the logits are not affine in the features (relative RMS
    residual above ``max_residual``: a head that is not one linear layer on the pooled
    features) or when there are no features. Warns when ``W`` is not fully determined
    (see the module docstring).
    """
    f = np.asarray(features, np.float64)
    z = np.asarray(logits, np.float64)
    if f.ndim != 2 or f.shape[1] == 0:
        raise ValueError(
            f"no features to recover the last layer from (shape {f.shape}): the close-set model "
            "has no forward_all, so stage 02 saved no pooled features"
        )
    if len(f) != len(z) or len(f) < 2:
        raise ValueError(f"need matching rows of features and logits, got {len(f)} and {len(z)}")
    f_mean, z_mean = f.mean(0), z.mean(0)
    solution, _, rank, _ = np.linalg.lstsq(f - f_mean, z - z_mean, rcond=None)
    weight = solution.T
    bias = z_mean - weight @ f_mean
    fit = LinearFit(weight.astype(np.float32), bias.astype(np.float32), 0.0, int(rank), len(f))
    fit.residual = _relative_residual((f - f_mean) @ solution - (z - z_mean), z)
    if not fit.residual <= max_residual:
        raise ValueError(
            f"the logits are not an affine function of the pooled features (relative residual "
            f"{fit.residual:.3g} > max_residual={max_residual}): this detector needs the close-set "
            "model's last layer, which the kit recovers only for heads that are one linear layer "
            "on the pooled features (linear, uncertainty), not e.g. branches"
        )
    if not fit.identified:
        warnings.warn(
            f"the last layer is determined only on the features' span (rank {fit.rank} of "
            f"{f.shape[1]} dimensions from {len(f)} rows): logits are reproduced, but W's "
            "components outside that span are set to zero",
            stacklevel=2,
        )
    return fit


# -- parameters ---------------------------------------------------------------------------------------------------


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _fraction(name: str, value: float, upper_open: bool = False) -> None:
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    _check(ok, f"{name} must be a fraction in [0, {'1)' if upper_open else '1]'}, got {value}")


@dataclass
class NoConfig:
    """A detector without parameters."""


@dataclass
class TemperatureConfig:
    temperature: float = 1.0

    def __post_init__(self) -> None:
        _check(self.temperature > 0, f"temperature must be positive, got {self.temperature}")


@dataclass
class GENConfig:
    gamma: float = 0.1  # the paper's value
    M: int | None = None  # the M largest probabilities; None = every class (7 or 8 here)

    def __post_init__(self) -> None:
        _check(self.gamma > 0, f"gamma must be positive, got {self.gamma}")
        _check(self.M is None or self.M >= 1, f"M must be at least 1 (or None for every class), got {self.M}")


@dataclass
class KNNConfig:
    k: int = 50
    normalize: bool = True

    def __post_init__(self) -> None:
        _check(self.k >= 1, f"k must be at least 1, got {self.k}")


@dataclass
class HeadConfig:
    """Parameters of every detector built around the recovered last layer (fDBD, SHE and KL
    matching have no other)."""

    max_residual: float = MAX_RESIDUAL  # relative RMS residual up to which logits count as affine in the features

    def __post_init__(self) -> None:
        _check(self.max_residual >= 0, f"max_residual must be non-negative, got {self.max_residual}")


@dataclass
class ViMConfig(HeadConfig):
    d: int | None = None  # principal-subspace dimension; None = half the feature dimension (256 for ResNet-18)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.d is None or self.d >= 1, f"d must be at least 1 (or None for D // 2), got {self.d}")


@dataclass
class ReActConfig(HeadConfig):
    percentile: float = 0.9  # clip at this quantile of the training activations (the paper's 90th percentile)
    threshold: float | None = None  # a fixed clipping value instead (then nothing is fitted)

    def __post_init__(self) -> None:
        super().__post_init__()
        _fraction("percentile", self.percentile)


@dataclass
class ASHConfig(HeadConfig):
    variant: str = "ash-s"
    percentile: float = 0.65  # fraction of each row's activations pruned

    def __post_init__(self) -> None:
        super().__post_init__()
        variants = ("ash-p", "ash-b", "ash-s")
        _check(self.variant in variants, f"variant must be one of {variants}, got {self.variant!r}")
        _fraction("percentile", self.percentile, upper_open=True)


@dataclass
class SCALEConfig(HeadConfig):
    percentile: float = 0.65  # fraction of activations left out of the scaling factor's denominator

    def __post_init__(self) -> None:
        super().__post_init__()
        _fraction("percentile", self.percentile, upper_open=True)


@dataclass
class VRAConfig(HeadConfig):
    lower_percentile: float = 0.01
    upper_percentile: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        _fraction("lower_percentile", self.lower_percentile)
        _fraction("upper_percentile", self.upper_percentile)
        _check(self.lower_percentile < self.upper_percentile, "lower_percentile must be below upper_percentile")


@dataclass
class NNGuideConfig(HeadConfig):
    k: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.k >= 1, f"k must be at least 1, got {self.k}")


@dataclass
class DICEConfig(HeadConfig):
    p: float = 0.7  # sparsity: the fraction of weight contributions set to zero (the paper's 0.7 on CIFAR)

    def __post_init__(self) -> None:
        super().__post_init__()
        _fraction("p", self.p, upper_open=True)


@dataclass
class NCIConfig(HeadConfig):
    alpha: float = 0.0  # weight of the feature-norm term

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.alpha >= 0, f"alpha must be non-negative, got {self.alpha}")


@dataclass
class OpenMaxConfig(HeadConfig):
    tailsize: int = 25
    alpha: int = 10  # number of top classes revised (at most the number of classes)
    euclid_weight: float = 1.0  # Euclidean vs cosine distance to the class mean logit vector
    correct_only: bool = True  # fit on correctly classified training rows only, as the paper

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.tailsize >= 2, f"tailsize must be at least 2, got {self.tailsize}")
        _check(self.alpha >= 1, f"alpha must be at least 1, got {self.alpha}")
        _fraction("euclid_weight", self.euclid_weight)


# -- the adapter --------------------------------------------------------------------------------------------------


class PoodDetector(Detector):
    """One pytorch-ood detector, fitted on the close-set training rows and scored from the
    saved logits / features; higher = more likely open.

    A subclass sets ``name``, ``library`` (the ``pytorch_ood.detector`` class), ``reads``
    (``"logits"``, ``"features"`` or ``"feature_maps"``: which ``fit_*``/``predict_*`` pair it
    calls), ``needs_head`` (built around the recovered last layer) and ``config_cls``, and
    implements :meth:`build`. :meth:`score` on an unfitted detector fits it on ``data``
    first (a logits-only one fits nothing).
    """

    reads_model_outputs = True
    config_cls: ClassVar[type] = NoConfig
    library: ClassVar[str] = ""
    reads: ClassVar[str] = "logits"
    needs_head: ClassVar[bool] = False

    def __init__(self, config: Any = None):
        self.config = self.config_cls() if config is None else config
        if not isinstance(self.config, self.config_cls):
            raise TypeError(f"{self.name}: config must be a {self.config_cls.__name__}, got {config!r}")
        self.head_: LinearFit | None = None
        self.detector_: Any = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    # what a subclass provides
    def build(self, lib, head: nn.Module | None) -> Any:
        """The library's detector; ``lib`` is ``pytorch_ood.detector``, ``head`` the recovered
        last layer (``None`` unless ``needs_head``), taking ``B x D`` features (``B x D x 1 x 1``
        maps for ``reads == "feature_maps"``)."""
        raise NotImplementedError

    def needs_fit(self, detector: Any) -> bool:
        return bool(getattr(detector, "requires_fit", False))

    def fit_rows(self, features: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Which training rows the library fits on (all by default)."""
        return np.ones(len(targets), bool)

    # the contract
    def fit(self, data: OpenSetData) -> PoodDetector:
        lib = _library()
        head = None
        if self.needs_head:
            self.head_ = recover_linear_head(data.features, data.logits, self.config.max_residual)
            head = self.head_.module()
            if self.reads == "feature_maps":
                head = nn.Sequential(nn.Flatten(1), head)
        detector = self.build(lib, head)
        if self.needs_fit(detector):
            features, targets = self._training_rows(data)
            keep = self.fit_rows(features, targets)
            x, y = torch.from_numpy(features[keep]), torch.from_numpy(targets[keep])
            if len(y) == 0:
                raise ValueError(f"{self.name}: no training rows to fit on")
            with torch.no_grad():
                if self.reads == "logits":
                    dtype = _logits_tensor(data.logits).dtype  # scored in the saved logits' precision
                    detector.fit_logits(torch.from_numpy(self._train_logits(features[keep])).to(dtype), y)
                elif self.reads == "features":
                    detector.fit_features(x, y)
                else:
                    detector.fit_feature_maps(x[:, :, None, None], y)
        self.detector_ = detector
        return self

    def score(self, data: OpenSetData) -> np.ndarray:
        if self.detector_ is None:
            self.fit(data)
        if self.head_ is not None:  # scoring other rows than it was fitted on: they must obey the same layer
            residual = self.head_.residual_on(data.features, data.logits)
            if not residual <= self.config.max_residual:
                raise ValueError(
                    f"{self.name}: these rows' logits do not follow the last layer recovered in fit "
                    f"(relative residual {residual:.3g})"
                )
        with torch.no_grad():
            if self.reads == "logits":
                out = self.detector_.predict_logits(_logits_tensor(data.logits))  # their own precision
            else:
                x = torch.from_numpy(np.asarray(data.features, np.float32))
                if self.reads == "features":
                    out = self.detector_.predict_features(x)
                else:
                    out = self.detector_.predict_feature_maps(x[:, :, None, None])
        return SIGN * out.detach().cpu().numpy().astype(np.float64).reshape(len(data))

    # helpers
    def _training_rows(self, data: OpenSetData) -> tuple[np.ndarray, np.ndarray]:
        if data.train_features is None or len(data.train_features) == 0:
            raise ValueError(f"the {self.name} detector needs the close training features (OpenSetData.train_features)")
        features = np.ascontiguousarray(data.train_features, np.float32)
        targets = np.asarray(data.train_targets, np.int64)
        if features.ndim != 2 or features.shape[1] != np.shape(data.features)[1]:
            raise ValueError(
                f"{self.name}: training features {features.shape} do not match the evaluation features "
                f"{np.shape(data.features)}"
            )
        return features, targets

    def _train_logits(self, features: np.ndarray) -> np.ndarray:
        if self.head_ is None:
            raise ValueError(f"{self.name} fits on training logits, which OpenSetData has only as W f + b")
        return self.head_.logits(features)


def _logits_tensor(logits: np.ndarray) -> torch.Tensor:
    x = np.asarray(logits)
    return torch.from_numpy(np.ascontiguousarray(x if x.dtype.kind == "f" else x.astype(np.float64)))


def _contiguous_classes(name: str, targets: np.ndarray) -> None:
    """The library's Gaussian detectors assert that the classes are exactly 0..K-1."""
    classes = np.unique(targets)
    if len(classes) == 0 or not np.array_equal(classes, np.arange(classes.max() + 1)):
        raise ValueError(f"{name}: the training targets must cover the classes 0..K-1, got {classes.tolist()}")


# -- logits ---------------------------------------------------------------------------------------------------------


class PoodMaxSoftmax(PoodDetector):
    """pytorch-ood ``MaxSoftmax``: negative maximum softmax probability (Hendrycks & Gimpel 2017)."""

    name = "pood_msp"
    library = "MaxSoftmax"
    config_cls = TemperatureConfig

    def build(self, lib, head):
        return lib.MaxSoftmax(None, t=self.config.temperature)


class PoodMaxLogit(PoodDetector):
    """pytorch-ood ``MaxLogit``: negative maximum logit (Hendrycks et al. 2022)."""

    name = "pood_max_logit"
    library = "MaxLogit"

    def build(self, lib, head):
        return lib.MaxLogit(None)


class PoodEnergy(PoodDetector):
    """pytorch-ood ``EnergyBased``: ``-T logsumexp(logits / T)`` (Liu et al. 2020)."""

    name = "pood_energy"
    library = "EnergyBased"
    config_cls = TemperatureConfig

    def build(self, lib, head):
        return lib.EnergyBased(None, t=self.config.temperature)


class PoodEntropy(PoodDetector):
    """pytorch-ood ``Entropy`` of the softmax (probabilities clipped at 1e-7)."""

    name = "pood_entropy"
    library = "Entropy"

    def build(self, lib, head):
        return lib.Entropy(None)


class PoodGEN(PoodDetector):
    """pytorch-ood ``GEN``: generalised entropy of the top-M softmax probabilities (Liu et al. 2023)."""

    name = "gen"
    library = "GEN"
    config_cls = GENConfig

    def build(self, lib, head):
        return lib.GEN(None, gamma=self.config.gamma, M=self.config.M)


class PoodKLMatching(PoodDetector):
    """pytorch-ood ``KLMatching``: KL divergence of the softmax from the mean softmax of the
    training rows predicted as the same class (Hendrycks et al. 2022); fits on the training
    logits ``W f + b``."""

    name = "kl_matching"
    library = "KLMatching"
    config_cls = HeadConfig
    needs_head = True

    def build(self, lib, head):
        return lib.KLMatching(None)


class PoodOpenMax(PoodDetector):
    """pytorch-ood ``OpenMax`` (Bendale & Boult 2016): probability of the unknown class after
    Weibull recalibration of the logits; class means and tails from the training logits
    ``W f + b`` (correctly classified rows only by default, as the paper)."""

    name = "openmax"
    library = "OpenMax"
    config_cls = OpenMaxConfig
    needs_head = True

    def build(self, lib, head):
        c = self.config
        return lib.OpenMax(None, tailsize=c.tailsize, alpha=c.alpha, euclid_weight=c.euclid_weight)

    def fit_rows(self, features, targets):
        if not self.config.correct_only:
            return super().fit_rows(features, targets)
        return self._train_logits(features).argmax(1) == targets


# -- pooled features ------------------------------------------------------------------------------------------------


class PoodKNN(PoodDetector):
    """pytorch-ood ``KNN``: Euclidean distance of the L2-normalised feature to its k-th nearest
    normalised training feature (Sun et al. 2022)."""

    name = "pood_knn"
    library = "KNN"
    reads = "features"
    config_cls = KNNConfig

    def build(self, lib, head):
        return lib.KNN(None, k=self.config.k, normalize=self.config.normalize)


class PoodMahalanobis(PoodDetector):
    """pytorch-ood ``Mahalanobis`` without input perturbation (Lee et al. 2018): half the squared
    distance to the nearest class mean under the shared covariance."""

    name = "pood_mahalanobis"
    library = "Mahalanobis"
    reads = "features"

    def build(self, lib, head):
        return lib.Mahalanobis(None)

    def fit_rows(self, features, targets):
        _contiguous_classes(self.name, targets)
        return super().fit_rows(features, targets)


class PoodRMD(PoodMahalanobis):
    """pytorch-ood ``RMD``: relative Mahalanobis distance (Ren et al. 2021), the class distance
    minus the distance under one Gaussian fitted to every training row."""

    name = "rmd"
    library = "RMD"

    def build(self, lib, head):
        return lib.RMD(None)


class PoodViM(PoodDetector):
    """pytorch-ood ``ViM`` (Wang et al. 2022): the feature's residual outside the training
    features' principal subspace, as a virtual logit, against the energy."""

    name = "vim"
    library = "ViM"
    reads = "features"
    config_cls = ViMConfig
    needs_head = True

    def build(self, lib, head):
        dim = head.in_features
        d = dim // 2 if self.config.d is None else self.config.d
        if not 1 <= d < dim:
            raise ValueError(f"vim: d must be in [1, {dim}) for {dim}-dimensional features, got {d}")
        return lib.ViM(None, d=d, w=head.weight, b=head.bias)


class PoodFDBD(PoodDetector):
    """pytorch-ood ``fDBD`` (Liu & Qin 2024): mean distance to the decision boundaries over the
    distance to the training feature mean."""

    name = "fdbd"
    library = "fDBD"
    reads = "features"
    config_cls = HeadConfig
    needs_head = True

    def build(self, lib, head):
        return lib.fDBD(None, head)


class PoodNNGuide(PoodDetector):
    """pytorch-ood ``NNGuide`` (Park et al. 2023): energy guided by the similarity to the
    energy-scaled training features."""

    name = "nnguide"
    library = "NNGuide"
    reads = "features"
    config_cls = NNGuideConfig
    needs_head = True

    def build(self, lib, head):
        return lib.NNGuide(None, head, k=self.config.k)


class PoodDICE(PoodDetector):
    """pytorch-ood ``DICE`` (Sun & Li 2022): energy of a last layer sparsified to its largest
    mean contributions on the training features."""

    name = "dice"
    library = "DICE"
    reads = "features"
    config_cls = DICEConfig
    needs_head = True

    def build(self, lib, head):
        return lib.DICE(None, w=head.weight, b=head.bias, p=self.config.p)


class PoodNCI(PoodDetector):
    """pytorch-ood ``NCI`` (Liu & Qin 2025): alignment of the centred feature with the
    predicted class's weight vector, plus ``alpha`` times the feature norm."""

    name = "nci"
    library = "NCI"
    reads = "features"
    config_cls = NCIConfig
    needs_head = True

    def build(self, lib, head):
        return lib.NCI(None, head, alpha=self.config.alpha)


class PoodSHE(PoodDetector):
    """pytorch-ood ``SHE`` (Zhang et al. 2023): similarity to the mean feature of the correctly
    classified training rows of the predicted class."""

    name = "she"
    library = "SHE"
    reads = "features"
    config_cls = HeadConfig
    needs_head = True

    def build(self, lib, head):
        return lib.SHE(None, head)

    def fit_rows(self, features, targets):
        _contiguous_classes(self.name, targets)
        return super().fit_rows(features, targets)


# -- penultimate activations, shaped before the last layer ------------------------------------------------------------


class PoodReAct(PoodDetector):
    """pytorch-ood ``ReAct`` (Sun et al. 2021): energy after clipping the penultimate
    activations at a percentile of the training activations."""

    name = "react"
    library = "ReAct"
    reads = "feature_maps"
    config_cls = ReActConfig
    needs_head = True

    def build(self, lib, head):
        c = self.config
        return lib.ReAct(nn.Identity(), head, threshold=c.threshold, percentile=c.percentile)

    def needs_fit(self, detector):
        return self.config.threshold is None


class PoodASH(PoodDetector):
    """pytorch-ood ``ASH`` (Djurisic et al. 2023): energy after pruning each row's smallest
    penultimate activations (and binarising / rescaling the rest: ``variant``)."""

    name = "ash"
    library = "ASH"
    reads = "feature_maps"
    config_cls = ASHConfig
    needs_head = True

    def build(self, lib, head):
        return lib.ASH(nn.Identity(), head, variant=self.config.variant, percentile=self.config.percentile)


class PoodSCALE(PoodDetector):
    """pytorch-ood ``SCALE`` (Xu et al. 2024): energy after scaling the penultimate activations
    by ``exp(sum / sum of the top ones)``."""

    name = "scale"
    library = "SCALE"
    reads = "feature_maps"
    config_cls = SCALEConfig
    needs_head = True

    def build(self, lib, head):
        return lib.SCALE(nn.Identity(), head, percentile=self.config.percentile)


class PoodVRA(PoodDetector):
    """pytorch-ood ``VRA`` (Xu et al. 2023): energy after rectifying each penultimate unit to
    per-unit quantiles of the training activations."""

    name = "vra"
    library = "VRA"
    reads = "feature_maps"
    config_cls = VRAConfig
    needs_head = True

    def build(self, lib, head):
        c = self.config
        return lib.VRA(nn.Identity(), head, lower_percentile=c.lower_percentile, upper_percentile=c.upper_percentile)
