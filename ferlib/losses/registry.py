"""Objectives by name: one line per objective. Adding a loss = one file + one line here.

Stage 01 takes ``objective="cam_flip", objective_params={"lam": 5}``; the names and keys
are checked here before any data is decoded, and errors name the accepted choices.
"""

from __future__ import annotations

from typing import Any, Mapping

from ferlib.losses.base import BaseObjective
from ferlib.losses.cam_flip import CamFlipConsistency
from ferlib.losses.ce import CrossEntropy
from ferlib.losses.ensemble import EnsembleObjective
from ferlib.losses.proser import ProserPlaceholders
from ferlib.losses.rul import RelativeUncertaintyMixup

OBJECTIVES: dict[str, type[BaseObjective]] = {
    "ce": CrossEntropy,
    "cam_flip": CamFlipConsistency,
    "rul": RelativeUncertaintyMixup,
    "ensemble": EnsembleObjective,
    "proser": ProserPlaceholders,
}


def available_objectives() -> tuple[str, ...]:
    """Registered objective names, sorted."""
    return tuple(sorted(OBJECTIVES))


def make_objective(name: str, **params: Any) -> BaseObjective:
    """Build objective ``name`` with ``params``.

    Raises ``ValueError`` for an unknown name (naming the choices), an unknown parameter
    key (naming the accepted keys) or a bad value (the objective's own message).
    """
    if not isinstance(name, str) or name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {list(available_objectives())}, got {name!r}")
    cls = OBJECTIVES[name]
    accepted = cls.param_names()
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"objective {name!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"objective_params accepted: {', '.join(accepted) or 'none'}"
        )
    return cls(**params)


def validate_objective(name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check an objective name and its parameters; returns its full ``config()``
    (defaults filled in). Objectives hold no tensors, so building one is the check."""
    return make_objective(name, **dict(params or {})).config()
