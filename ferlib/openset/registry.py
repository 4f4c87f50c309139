"""The one registry of open-set detectors: name -> class, parameters, validation.

Every detector, post-hoc or trained, is one line of :data:`DETECTORS` (``"module:Class"``)
and one file. Classes are imported on first use, so this module imports no detector and
``cycle``/``contrast`` (which import :mod:`ferlib.openset.base`) never import it back:
that is what breaks the old ``detect`` <-> ``cycle`` import circle.

Parameters reach a detector as ``detector_params={name: {key: value}}`` (stage 03,
``ablate_cycle``, ``-p "detector_params={'tknn': {'k': 10}}"``). The stage-level settings
that every network detector shares (:data:`SHARED_SETTINGS`) are merged in from the stage's
own arguments, only for detectors whose parameters have those fields; a key given in
``detector_params`` wins over the stage's value.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from ferlib.openset.base import Detector

#: every detector by name: "module:Class" (imported lazily)
DETECTORS: dict[str, str] = {
    "msp": "ferlib.openset.posthoc:MaxSoftmax",
    "max_logit": "ferlib.openset.posthoc:MaxLogit",
    "energy": "ferlib.openset.posthoc:Energy",
    "entropy": "ferlib.openset.posthoc:Entropy",
    "mahalanobis": "ferlib.openset.posthoc:Mahalanobis",
    "knn": "ferlib.openset.posthoc:KNN",
    "tknn": "ferlib.openset.tknn:TransductiveKNN",
    "cycle": "ferlib.openset.cycle:CycleDetector",
    "released": "ferlib.openset.released:ReleasedDetector",
    "contrast": "ferlib.openset.contrast:ContrastDetector",
    "uncertainty": "ferlib.openset.uncertainty:UncertaintyScore",
    "small_loss": "ferlib.openset.small_loss:SmallLoss",
    "disagreement": "ferlib.openset.disagreement:BranchDisagreement",
    "proser": "ferlib.openset.proser:ProserDetector",
    "sal_filter": "ferlib.openset.sal:SALFilter",
    "sal": "ferlib.openset.sal:SAL",
    "pseudo_oe": "ferlib.openset.pseudo_oe:PseudoOutlierExposure",
    "erd": "ferlib.openset.erd:ErdDetector",
    # pytorch-ood's post-hoc detectors through one adapter (ferlib/openset/pood.py)
    "pood_msp": "ferlib.openset.pood:PoodMaxSoftmax",
    "pood_max_logit": "ferlib.openset.pood:PoodMaxLogit",
    "pood_energy": "ferlib.openset.pood:PoodEnergy",
    "pood_entropy": "ferlib.openset.pood:PoodEntropy",
    "gen": "ferlib.openset.pood:PoodGEN",
    "kl_matching": "ferlib.openset.pood:PoodKLMatching",
    "openmax": "ferlib.openset.pood:PoodOpenMax",
    "pood_knn": "ferlib.openset.pood:PoodKNN",
    "pood_mahalanobis": "ferlib.openset.pood:PoodMahalanobis",
    "rmd": "ferlib.openset.pood:PoodRMD",
    "vim": "ferlib.openset.pood:PoodViM",
    "fdbd": "ferlib.openset.pood:PoodFDBD",
    "nnguide": "ferlib.openset.pood:PoodNNGuide",
    "dice": "ferlib.openset.pood:PoodDICE",
    "nci": "ferlib.openset.pood:PoodNCI",
    "she": "ferlib.openset.pood:PoodSHE",
    "react": "ferlib.openset.pood:PoodReAct",
    "ash": "ferlib.openset.pood:PoodASH",
    "scale": "ferlib.openset.pood:PoodSCALE",
    "vra": "ferlib.openset.pood:PoodVRA",
}

#: stage 03 arguments passed to every detector whose parameters include them
SHARED_SETTINGS = ("input_size", "stem", "seed", "device", "amp", "progress")
#: parameters set by stage 03 itself (the keyed checkpoint folder), never by the user
STAGE_OWNED = ("out_dir",)


def available_detectors() -> tuple[str, ...]:
    """Registered detector names, in registry order."""
    return tuple(DETECTORS)


def detector_class(name: str) -> type[Detector]:
    """The class registered as ``name``; ``ValueError`` naming the choices when unknown."""
    if not isinstance(name, str) or name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose from {list(DETECTORS)}")
    module, attr = DETECTORS[name].split(":")
    cls = getattr(importlib.import_module(module), attr)
    if cls.name != name:  # a registry line pointing at the wrong class
        raise RuntimeError(f"registry line {name!r} -> {DETECTORS[name]} names a class whose name is {cls.name!r}")
    return cls


def detector_parameters(name: str) -> dict[str, Any]:
    """Every parameter ``name`` accepts, with its default (stage-owned ones excluded).

    From the fields of its ``config_cls``, or from its ``__init__`` signature when it takes
    keyword arguments.
    """
    cls = detector_class(name)
    if cls.config_cls is not None:
        defaults = {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls.config_cls)
        }
    elif cls.__init__ is Detector.__init__:
        defaults = {}  # the base class's __init__ takes only a config, and there is none
    else:
        defaults = {
            p.name: p.default
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
    return {k: v for k, v in defaults.items() if k not in STAGE_OWNED}


def _check_keys(name: str, params: Mapping[str, Any]) -> None:
    if not isinstance(params, Mapping):
        raise ValueError(f"detector_params[{name!r}] must be a dict of parameters, got {params!r}")
    accepted = detector_parameters(name)
    for key in params:
        if key in STAGE_OWNED:
            raise ValueError(
                f"detector_params[{name!r}]: {key!r} is set by stage 03 (the detector's keyed "
                "checkpoint folder), not by a parameter"
            )
        if key not in accepted:
            raise ValueError(
                f"detector_params[{name!r}]: unknown parameter {key!r}; {name} accepts "
                f"{sorted(accepted) or 'no parameters'}"
            )


def resolve_params(
    name: str, params: Mapping[str, Any] | None = None, shared: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Every parameter of detector ``name`` as it will run: defaults, then the ``shared``
    stage settings it has fields for, then ``params`` (keys checked). The result is what a
    result key hashes (:func:`ferlib.openset.keys.result_key`)."""
    params = {} if params is None else params
    _check_keys(name, params)
    resolved = detector_parameters(name)
    resolved.update({k: v for k, v in (shared or {}).items() if k in resolved and k in SHARED_SETTINGS})
    resolved.update(params)
    return resolved


def make_detector(name: str, **params: Any) -> Detector:
    """Build detector ``name`` with ``params`` (its config fields or keyword arguments).

    Unknown names and keys raise ``ValueError`` naming the choices; out-of-range values
    raise the detector's own ``ValueError``.
    """
    cls = detector_class(name)
    own = {k: v for k, v in params.items() if k not in STAGE_OWNED}
    _check_keys(name, own)
    if cls.config_cls is not None:
        return cls(cls.config_cls(**params))
    return cls(**params)


def _as_names(detectors: Sequence[str] | str, what: str = "detectors") -> list[str]:
    if isinstance(detectors, str) or not isinstance(detectors, Sequence):
        raise ValueError(f"{what} must be a list of detector names, got {detectors!r}; choose from {list(DETECTORS)}")
    names = list(detectors)
    if not names:
        raise ValueError(f"{what} is empty; choose from {list(DETECTORS)}")
    for name in names:
        detector_class(name)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what} names {dupes} more than once")
    return names


def validate_detectors(detectors: Sequence[str], detector_params: Mapping[str, Mapping] | None = None) -> None:
    """Check detector names and their parameters before any work (cheap: builds no network).

    ``detectors``: a list of registered names. ``detector_params``: ``{name: {key: value}}``
    for any registered detector (an entry for one that is not selected is allowed, so that
    one parameter set serves several detector selections); every key must be a parameter
    of that detector, and the values must pass its own checks (e.g. ``select_ratio`` in
    (0, 1], ``k >= 1``). Raises ``ValueError`` naming the detector, the key and the choices.
    """
    _as_names(detectors)
    if detector_params is None:
        return
    if not isinstance(detector_params, Mapping):
        raise ValueError(f"detector_params must be a dict {{detector: {{parameter: value}}}}, got {detector_params!r}")
    for name, params in detector_params.items():
        if not isinstance(name, str) or name not in DETECTORS:
            raise ValueError(f"detector_params names unknown detector {name!r}; choose from {list(DETECTORS)}")
        resolved = resolve_params(name, params)
        try:
            make_detector(name, **resolved)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"detector_params[{name!r}]: {exc}") from None
