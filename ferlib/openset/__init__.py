"""Open-set detection: pseudo labels, one detector interface, the paper's cycle method.

Every detector follows one contract: ``fit(data) -> self`` then ``score(data) -> ndarray``,
one value per evaluation sample, **higher = more likely open**. Metrics flip the sign
themselves when the close set is the positive class.
"""

from ferlib.openset.data import OpenSetData, PROTOCOLS, apply_protocol
from ferlib.openset.detect import (
    DETECTORS,
    Detector,
    Energy,
    Entropy,
    KNN,
    Mahalanobis,
    MaxLogit,
    MaxSoftmax,
    make_detector,
)
from ferlib.openset.contrast import ContrastConfig, ContrastDetector
from ferlib.openset.cycle import CycleConfig, CycleDetector

__all__ = [
    "OpenSetData", "PROTOCOLS", "apply_protocol", "DETECTORS", "Detector", "Energy", "Entropy",
    "KNN", "Mahalanobis", "MaxLogit", "MaxSoftmax", "make_detector", "CycleConfig", "CycleDetector",
    "ContrastConfig", "ContrastDetector",
]
