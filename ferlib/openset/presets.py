"""Named detector settings: the kit's chosen hyper-parameters for one data set, as one argument.

A detector's defaults are the synthetic set's choices; on a real data set the kit chose other
values on data it never reports (FERPlus's tuning set: the validation split's close and open
rows; docs/RESULTS.md, "Where the hyper-parameters come from"). Passing those values by hand as
``detector_params`` is how a user gets a setting wrong without noticing, so each data set's
choices live here, once, under a name: ``detect_open_set(detector_preset="ferplus")`` or
``-p detector_preset=ferplus``. A preset is a ``detector_params`` dict; the user's own
``detector_params`` are laid over it key by key (the user wins), and the merged parameters are
what the run's manifest records and its result keys hash, so a preset changed later never
passes for the old one.

A new preset is one entry of :data:`DETECTOR_PRESETS`, with the place it was chosen in
docs/RESULTS.md beside it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

#: preset name -> {detector: {parameter: value}}; every value chosen on rows never reported
DETECTOR_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # FERPlus's tuning set: top 20%, 3 rounds, tknn k 200 and the mlp head on seed-0 runs
    # (sections "Choosing pseudo_oe's settings on the tuning set", "The binary head's ceiling");
    # features and candidate share by the rule declared before seeds 6-8 existed, on their
    # tuning rows at the reported open share ("the second declared rule's result"); three
    # averaged MLP heads by a third rule, declared before seeds 9-11 were scored, on their
    # matched tuning rows ("the third declared rule's result")
    "ferplus": {
        "pseudo_oe": {
            "top_fraction": 0.2,
            "rounds": 3,
            "first_params": {"k": 200},
            "head": "mlp",
            "features": "pyramid",
            "share_multiplier": 1.0,
            "head_params": {"members": 3},
        },
    },
}


#: presets that are frozen: their settings' digest (:func:`ferlib.digest.json_digest`) as of the
#: day they were frozen. ``ferplus`` was frozen on 2026-12-07, before its one confirmation on fresh
#: seeds (12-14, duplicates removed; ``tools/confirm_ferplus.sh``): after that, no choice reads
#: FERPlus's test rows, and a new idea is a new preset, screened on the synthetic set, the tuning
#: rows or another data set. ``tests/openset/test_presets.py`` fails if a frozen preset changes.
FROZEN_PRESETS: dict[str, str] = {"ferplus": "8a465dab797be670"}


def available_presets() -> tuple[str, ...]:
    """Preset names, in table order."""
    return tuple(DETECTOR_PRESETS)


def preset_params(
    preset: str | None, detector_params: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, dict[str, Any]] | None:
    """``detector_params`` laid over preset ``preset``'s, key by key within each detector.

    ``preset`` None returns ``detector_params`` as given (None stays None). An unknown name
    raises ``ValueError`` naming the presets. The result is a fresh dict: the table is never
    changed by a caller.
    """
    if preset is None:
        return None if detector_params is None else {k: dict(v) for k, v in detector_params.items()}
    if not isinstance(preset, str) or preset not in DETECTOR_PRESETS:
        raise ValueError(f"unknown detector_preset {preset!r}; choose from {list(DETECTOR_PRESETS)} or None")
    merged = copy.deepcopy(DETECTOR_PRESETS[preset])
    if detector_params is not None:
        if not isinstance(detector_params, Mapping):
            raise ValueError(
                f"detector_params must be a dict {{detector: {{parameter: value}}}}, got {detector_params!r}"
            )
        for name, params in detector_params.items():
            if not isinstance(params, Mapping):
                raise ValueError(f"detector_params[{name!r}] must be a dict of parameters, got {params!r}")
            merged[name] = {**merged.get(name, {}), **params}
    return merged
