"""Heads by name: one line per head. Adding a head = one file + one line here.

A head's parameters are the keyword-only arguments of its ``__init__``; the names are
read from the signature, so :func:`validate_head` can refuse a misspelt key (naming the
accepted ones) before any data is decoded or any epoch is run.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch

from ferlib.models.base import Head
from ferlib.models.branches import BranchesHead
from ferlib.models.dummy import DummyHead
from ferlib.models.linear import LinearHead
from ferlib.models.manet import MANetHead
from ferlib.models.uncertainty import UncertaintyHead

HEADS: dict[str, type[Head]] = {
    "linear": LinearHead,
    "uncertainty": UncertaintyHead,
    "branches": BranchesHead,
    "manet": MANetHead,
    "dummy": DummyHead,
}


def available_heads() -> tuple[str, ...]:
    """Registered head names, sorted."""
    return tuple(sorted(HEADS))


def head_class(name: str) -> type[Head]:
    """The head class registered as ``name``; a ValueError names the choices."""
    if name not in HEADS:
        raise ValueError(f"head must be one of {list(available_heads())}, got {name!r}")
    return HEADS[name]


def head_defaults(name: str) -> dict[str, Any]:
    """``{parameter: default}`` of head ``name`` (its keyword-only ``__init__`` arguments)."""
    sig = inspect.signature(head_class(name).__init__)
    return {p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check_keys(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(name, str):
        raise ValueError(f"head must be a name, one of {list(available_heads())}; got {name!r}")
    defaults = head_defaults(name)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        accepted = ", ".join(sorted(defaults)) or "none"
        raise ValueError(
            f"head {name!r} has no parameter {', '.join(map(repr, unknown))}; head_params accepted: {accepted}"
        )
    return defaults


def validate_head(name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check a head name and its parameters without building a network.

    Returns the complete parameters (defaults filled in), which is what results record.
    Raises ``ValueError`` naming the head and the accepted keys for an unknown key, and
    the head's own message for a bad value (checked by building the head on a tiny
    feature width, which costs microseconds, inside ``fork_rng`` so that checking draws
    nothing from the global generator and leaves seeded initialisations unchanged).
    """
    params = dict(params or {})
    defaults = _check_keys(name, params)
    with torch.random.fork_rng(devices=[]):
        HEADS[name](8, 2, **params)  # runs the head's own value checks
    return {**defaults, **params}


def make_head(
    name: str, in_features: int, num_classes: int, dropout: float = 0.0, params: Mapping[str, Any] | None = None
) -> Head:
    """Build head ``name`` for ``in_features`` trunk channels and ``num_classes`` outputs."""
    params = dict(params or {})
    _check_keys(name, params)
    return HEADS[name](in_features, num_classes, dropout, **params)
