"""Objectives that plug into :func:`ferlib.train.fit`, by name.

Where things live: :mod:`~ferlib.losses.base` (the ``Objective`` interface and
``BaseObjective``), one file per objective (:mod:`~ferlib.losses.ce`,
:mod:`~ferlib.losses.cam_flip`, :mod:`~ferlib.losses.rul`,
:mod:`~ferlib.losses.ensemble` with :mod:`~ferlib.losses.diversity`,
:mod:`~ferlib.losses.proser`), :mod:`~ferlib.losses.registry` (names -> classes,
``make_objective``, ``validate_objective``). This package imports nothing of the training
loop: ``ferlib.train`` imports it, never the other way round.
"""

from ferlib.losses.base import BaseObjective, Objective, objective_config
from ferlib.losses.cam_flip import CamFlipConsistency, flip_cam
from ferlib.losses.ce import CrossEntropy
from ferlib.losses.diversity import dpp_diversity, dpp_kernel
from ferlib.losses.ensemble import EnsembleObjective
from ferlib.losses.proser import ProserPlaceholders, different_class_pairs
from ferlib.losses.registry import OBJECTIVES, available_objectives, make_objective, validate_objective
from ferlib.losses.rul import RelativeUncertaintyMixup, relative_mixup

__all__ = [
    "OBJECTIVES",
    "BaseObjective",
    "CamFlipConsistency",
    "CrossEntropy",
    "EnsembleObjective",
    "Objective",
    "ProserPlaceholders",
    "RelativeUncertaintyMixup",
    "available_objectives",
    "different_class_pairs",
    "dpp_diversity",
    "dpp_kernel",
    "flip_cam",
    "make_objective",
    "objective_config",
    "relative_mixup",
    "validate_objective",
]
