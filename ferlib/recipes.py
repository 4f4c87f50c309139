"""Named training recipes: documented sets of :class:`ferlib.train.TrainConfig` settings.

A recipe names the optimisation settings that belong together, so that a run says
``recipe="fast"`` instead of eight numbers, and a single setting can still be changed
(``recipe_params={"ema_decay": 0}``) to measure what it contributes. Stage 01 takes
``recipe`` and ``recipe_params``; :func:`recipe_settings` validates both before any data
is decoded, naming the choices. Epochs, batch size, seed and device stay the stage's own
parameters: they are not part of a recipe.

Recipes
-------
``reference``
    Today's defaults, the close-set recipe of METHODS.md: Adam, lr 1e-3, weight decay
    1e-4, lr * 0.9 ** epoch, no warm-up, no label smoothing, no weight averaging, no
    test-time augmentation. The baseline row of ``benchmarks/time_to_accuracy.py``.
``fast``
    The small-face recipe (for ``arch="smallface"``), in the spirit of the CIFAR-10 speed
    runs (airbench, hlb-CIFAR10). Its values are those runs' starting points, checked on the
    synthetic set; tuning them is to be done on FERPlus's *validation* split only, never its
    test split (``benchmarks/time_to_accuracy.py`` reports both). SGD with Nesterov momentum
    0.9 at lr 0.05 and weight decay 5e-4 (BatchNorm networks train fast and stably at a high
    SGD rate), a linear warm-up over the first half epoch (the high rate would otherwise
    blow up the first steps), then a linear decay to zero at the last epoch (one-cycle: a
    short run spends its last steps annealing instead of stopping at a high rate), label
    smoothing 0.1 (FERPlus's majority labels come from ten
    crowd votes that often disagree), an EMA of the weights with decay 0.99 (a smoother model to validate and
    select without extra epochs), and flip test-time augmentation (faces are left-right
    symmetric; the mirror is a free second view).

``face``
    Fine-tuning from face-recognition weights (``arch="dlibface"``, ``pretrained="dlibface"``;
    112 px): AdamW (decoupled weight decay 0.01) at lr 1e-3 for the new head and a tenth of it
    for the pretrained trunk (``trunk_lr_mult`` 0.1: pretrained features need small steps, a
    random head large ones), cosine decay to zero after a half-epoch warm-up, label smoothing
    0.1, flip test-time augmentation, and ``fast_affine``'s warp on top of the papers' flip,
    noise and erasing. Its starting point was the first fine-tuning trial that reached .80
    FERPlus test accuracy in 4 epochs (AdamW 1e-4 trunk / 1e-3 head, cosine with warm-up,
    smoothing .1); docs/RESULTS.md, "Starting from face weights", says what it reaches.
``face_frozen``
    ``face`` with the trunk frozen (``trunk_lr_mult`` 0): the head alone learns, on the face
    features. For small sets (a few hundred images), where fine-tuning the whole trunk
    overfits.

``cutmix_p`` (CutMix on that share of batches, :mod:`ferlib.data.mix`) is off in every recipe:
a switch to measure on FERPlus's validation split (docs/RESULTS.md) before a recipe adopts it.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping

from ferlib.train import TrainConfig

#: the TrainConfig fields a recipe may set (and recipe_params may override); the others
#: (epochs, batch_size, seed, device, ...) are the stage's own parameters
RECIPE_FIELDS: tuple[str, ...] = (
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "lr_gamma",
    "cycle_epochs",
    "lr_min",
    "warmup_epochs",
    "label_smoothing",
    "ema_decay",
    "flip_tta",
    "cutmix_p",
    "trunk_lr_mult",
    "frozen_stages",
    "freeze_norm",
    "augment",
)

_DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.name in RECIPE_FIELDS and f.name != "augment"}
#: the augmentation as overrides of :class:`~ferlib.data.augment.AugmentConfig` (JSON-friendly);
#: ``{}`` is the papers' policy
_DEFAULTS["augment"] = {}

#: ``fast_affine``'s warp: rotation, shift and zoom as in the FER repositories' ``RandomAffine``
#: (about 10 degrees, 10% shift, 10% zoom), on every training image
AFFINE = {"affine_p": 1.0, "rotate_deg": 10.0, "translate": 0.1, "scale": [0.9, 1.1]}

#: name -> complete settings (every RECIPE_FIELDS entry)
RECIPES: dict[str, dict[str, Any]] = {
    "reference": dict(_DEFAULTS),
    "fast": {
        **_DEFAULTS,
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "onecycle",
        "warmup_epochs": 0.5,
        "label_smoothing": 0.1,
        "ema_decay": 0.99,
        "flip_tta": True,
    },
}
RECIPES["fast_affine"] = {**RECIPES["fast"], "augment": dict(AFFINE)}
RECIPES["face"] = {
    **_DEFAULTS,
    "optimizer": "adamw",
    "lr": 1e-3,
    "trunk_lr_mult": 0.1,
    "weight_decay": 0.01,
    "schedule": "cosine",
    "warmup_epochs": 0.5,
    "label_smoothing": 0.1,
    "flip_tta": True,
    "augment": dict(AFFINE),
}
RECIPES["face_frozen"] = {**RECIPES["face"], "trunk_lr_mult": 0.0, "label_smoothing": 0.0}


def available_recipes() -> tuple[str, ...]:
    """Registered recipe names, sorted."""
    return tuple(sorted(RECIPES))


def recipe_settings(name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings of recipe ``name`` with ``params`` overriding single fields.

    Raises ``ValueError`` naming the recipes for an unknown name, the accepted fields for an
    unknown field, and the field for a value the training loop refuses (checked by building
    a :class:`TrainConfig`, which costs nothing).
    """
    if not isinstance(name, str) or name not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(available_recipes())}; got {name!r}")
    params = dict(params or {})
    if isinstance(params.get("augment"), dict):  # merged into the recipe's, field by field
        params["augment"] = {**RECIPES.get(name, {}).get("augment", {}), **params["augment"]}
    unknown = sorted(set(params) - set(RECIPE_FIELDS))
    if unknown:
        raise ValueError(
            f"recipe {name!r} has no field {', '.join(map(repr, unknown))}; "
            f"recipe_params accepted: {', '.join(RECIPE_FIELDS)}"
        )
    settings = {**RECIPES[name], **params}
    for key, value in params.items():
        default = _DEFAULTS[key]
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric
            else isinstance(value, type(default))
        )
        if not ok:
            raise ValueError(f"recipe_params {key}={value!r}: expected {type(default).__name__}")
    try:
        TrainConfig(**settings)
    except ValueError as exc:
        raise ValueError(f"recipe {name!r}: {exc}") from None
    return settings


def train_config(name: str, params: Mapping[str, Any] | None = None, **stage: Any) -> TrainConfig:
    """A :class:`TrainConfig` from recipe ``name`` (+ ``params``) and the stage's own
    settings (``epochs``, ``batch_size``, ``seed``, ``device``, ...), which a recipe never sets."""
    clash = sorted(set(stage) & set(RECIPE_FIELDS))
    if clash:
        raise ValueError(f"{', '.join(clash)} belong(s) to the recipe: pass them in recipe_params")
    return TrainConfig(**recipe_settings(name, params), **stage)
