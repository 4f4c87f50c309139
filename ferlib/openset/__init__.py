"""Open-set detection: pseudo labels, one detector interface, one registry of detectors.

Every detector follows one contract: ``fit(data) -> self`` then ``score(data) -> ndarray``,
one value per evaluation sample, **higher = more likely open**. Metrics flip the sign
themselves when the close set is the positive class.

Layout: :mod:`~ferlib.openset.base` (the :class:`Detector` contract and its capability
attributes, :class:`NetworkConfig`), :mod:`~ferlib.openset.posthoc` (baselines on the
close-set model's outputs), :mod:`~ferlib.openset.tknn`, :mod:`~ferlib.openset.cycle` (the
paper's method), :mod:`~ferlib.openset.released` (the paper's method as its released code
runs it: one network, no cycle training), :mod:`~ferlib.openset.contrast`,
:mod:`~ferlib.openset.proser` (PROSER, fine-tuned from stage 01's network),
:mod:`~ferlib.openset.registry` (every detector by name, parameter validation),
:mod:`~ferlib.openset.keys` (result keys) and :mod:`~ferlib.openset.scoring` (what stage 03
runs: the label-free view, keyed folders).
A new detector is one file and one line in ``registry.DETECTORS``.
"""

from ferlib.openset.base import Detector, NetworkConfig
from ferlib.openset.contrast import ContrastConfig, ContrastDetector
from ferlib.openset.cycle import CycleConfig, CycleDetector
from ferlib.openset.data import PROTOCOLS, OpenSetData, apply_protocol
from ferlib.openset.posthoc import KNN, Energy, Entropy, Mahalanobis, MaxLogit, MaxSoftmax
from ferlib.openset.registry import (
    DETECTORS,
    available_detectors,
    detector_class,
    detector_parameters,
    make_detector,
    validate_detectors,
)
from ferlib.openset.released import ReleasedConfig, ReleasedDetector
from ferlib.openset.scoring import DetectorResult, run_detectors
from ferlib.openset.tknn import TransductiveKNN

__all__ = [
    "OpenSetData",
    "PROTOCOLS",
    "apply_protocol",
    "DETECTORS",
    "Detector",
    "NetworkConfig",
    "Energy",
    "Entropy",
    "KNN",
    "Mahalanobis",
    "MaxLogit",
    "MaxSoftmax",
    "TransductiveKNN",
    "make_detector",
    "available_detectors",
    "detector_class",
    "detector_parameters",
    "validate_detectors",
    "run_detectors",
    "DetectorResult",
    "CycleConfig",
    "CycleDetector",
    "ReleasedConfig",
    "ReleasedDetector",
    "ContrastConfig",
    "ContrastDetector",
]
