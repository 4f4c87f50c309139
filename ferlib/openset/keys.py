"""Result keys: a detector's result is reused only when everything that determines it is the same.

A trained detector's checkpoint folder is named ``<name>-<key>``, ``key`` a hash of: its
resolved parameters except those that do not change the result (:data:`NON_RESULT_PARAMS`:
``device``, ``progress``, ``out_dir``), the content of the pretrained file it starts from,
``eval_subset``, and the content of every input its class attributes say it reads: the
pseudo labels and the protocol (``reads_pseudo_labels``), the close-set outputs and the
protocol (``reads_model_outputs``), the close-set model's per-sample extras it reads
(``reads_extras``) and the feature space it reads (a ``features`` parameter other than
``penultimate``), the held-out close reference rows (``reads_reference``), the evaluation
images (``needs_images``), the close
training images (``needs_train_images``), stage 01's network and its training and
validation rows (``needs_close_set``: the weights file's content, not its path). So
re-running stage 03 with ``lam=0`` or after stage 02 produced new pseudo labels lands in a
fresh folder and trains, while moving the run from GPU to CPU lands in the same folder and
resumes. The ingredients are written
beside the checkpoints (``key.json``) for debugging.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from ferlib.digest import file_digest, tensor_digest
from ferlib.openset.base import Detector
from ferlib.openset.data import OpenSetData

#: parameters that do not change a detector's result
NON_RESULT_PARAMS = ("device", "progress", "out_dir")


class FingerprintCache:
    """Fingerprints of arrays that stay alive during one stage call, computed once each.

    Stage 03 hashes the same image tensor for several detectors and protocols; the cache
    holds a reference to each array it hashed, so an ``id`` is never reused for another one.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[int, ...], tuple[tuple[Any, ...], str]] = {}

    def __call__(self, *arrays: Any) -> str:
        ident = tuple(id(a) for a in arrays)
        if ident not in self._seen:
            self._seen[ident] = (arrays, tensor_digest(*arrays))
        return self._seen[ident][1]


def result_ingredients(
    cls: type[Detector],
    params: dict[str, Any],
    view: OpenSetData,
    protocol: str,
    eval_subset: str,
    fingerprint: FingerprintCache | None = None,
) -> dict[str, Any]:
    """Everything that determines detector ``cls``'s scores on ``view`` (see module docstring)."""
    fp = fingerprint or tensor_digest
    ingredients: dict[str, Any] = {
        "detector": cls.name,
        "params": {k: v for k, v in sorted(params.items()) if k not in NON_RESULT_PARAMS},
        "eval_subset": eval_subset,
        "n_rows": len(view),
    }
    pretrained = params.get("pretrained")
    if pretrained:
        if not Path(pretrained).is_file():
            raise FileNotFoundError(f"detector_params[{cls.name!r}]['pretrained']: {pretrained} is not a file")
        ingredients["pretrained_file"] = file_digest(pretrained)
    if cls.depends_on_protocol():
        ingredients["protocol"] = protocol
    if cls.reads_pseudo_labels:
        ingredients["pseudo_labels"] = tensor_digest(view.pseudo)
    if cls.reads_model_outputs:
        ingredients["model_outputs"] = fp(view.logits, view.features, view.train_features, view.train_targets)
    if cls.reads_extras:  # only then: the keys of detectors that read no extra stay as they were
        ingredients["model_extras"] = fp(*(view.extras.get(name) for name in sorted(cls.reads_extras)))
    space = params.get("features", "penultimate")
    if cls.reads_model_outputs and isinstance(space, str) and space != "penultimate":
        # a detector reading another feature space (OpenSetData.in_feature_space) reads those arrays too
        ingredients["feature_space"] = fp(view.extras.get(space), view.train_extras.get(space))
    if cls.reads_reference and view.reference_features is not None:
        ref = view.in_feature_space(space).reference_features if isinstance(space, str) else view.reference_features
        ingredients["reference"] = fp(ref)
    if cls.needs_images:
        ingredients["images"] = fp(view.images)
    if cls.needs_train_images:
        ingredients["train_images"] = fp(view.train_images)
    if cls.needs_close_set:
        ingredients["close_set"] = close_set_ingredients(view, fp)
    return ingredients


def close_set_ingredients(view: OpenSetData, fp: Any = tensor_digest) -> dict[str, Any]:
    """Stage 01's network (architecture, head, the content of its weights file) and the
    content of its training and validation rows (images and targets)."""
    close = view.close_set
    if close is None:
        raise ValueError(
            "this detector fine-tunes stage 01's close-set network, but OpenSetData.close_set is None "
            "(stage 03 loads it from run_dir/01_close_set; run stage 01 first)"
        )
    model = {k: v for k, v in dataclasses.asdict(close.model).items() if k != "pretrained"}
    weights = close.model.pretrained
    return {
        "model": model,
        "weights": file_digest(weights) if weights else None,
        "data": fp(close.train_images, close.train_targets, close.val_images, close.val_targets),
    }


def result_key(ingredients: dict[str, Any]) -> str:
    """16 hex digits over the ingredients' canonical JSON."""
    text = json.dumps(ingredients, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
