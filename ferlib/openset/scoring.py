"""Running detectors on an evaluation set: the label-free view, result keys, reuse.

Stage 03 and the cycle ablation call :func:`run_detectors` once per protocol with the full
:class:`OpenSetData` (protocol and subset already applied). It hands every detector only
:meth:`OpenSetData.detector_view`, gives each network-training detector a checkpoint
folder named by its result key, stores that detector's scores there once it finished, and
reuses a result whose key matches: across protocols for a detector that reads nothing the
protocol changes, and across calls for a finished trained detector (a re-run, or the same
run moved to another device).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ferlib.io import write_json, write_npy
from ferlib.openset.data import OpenSetData
from ferlib.openset.keys import FingerprintCache, result_ingredients, result_key
from ferlib.openset.registry import detector_class, make_detector, resolve_params, validate_detectors

#: the folder of detectors that give the same scores under every protocol
ANY_PROTOCOL = "any_protocol"


@dataclass
class DetectorResult:
    """One detector's scores on one evaluation set (higher = more likely open)."""

    name: str
    scores: np.ndarray
    key: str
    folder: Path | None  # keyed checkpoint folder (trained detectors), else None
    embedding: np.ndarray | None  # per-row features it learnt, if any (embedding plots)
    seconds: float
    reused: bool  # taken from a finished result with the same key, nothing fitted


def detector_folder(
    root: Path, eval_subset: str, protocol: str, name: str, key: str, depends_on_protocol: bool
) -> Path:
    """``<root>/<eval_subset>/<protocol | any_protocol>/<name>-<key>``."""
    return Path(root) / eval_subset / (protocol if depends_on_protocol else ANY_PROTOCOL) / f"{name}-{key}"


def _load_finished(folder: Path, n_rows: int) -> tuple[np.ndarray, np.ndarray | None] | None:
    path = folder / "scores.npy"
    if not path.is_file():
        return None
    scores = np.load(path)
    if len(scores) != n_rows:  # cannot happen with an honest key; never trust it blindly
        return None
    emb = folder / "features.npy"
    return scores, (np.load(emb) if emb.is_file() else None)


def shuffled_view(data: OpenSetData, seed: int = 0) -> tuple[OpenSetData, np.ndarray]:
    """The label-free view of ``data`` in a seeded random row order, and that order.

    Why. The evaluation table lists the test split first and the open class's training
    images after it, so a row's position alone says "probably open". Detectors see the rows
    shuffled (``view`` row ``i`` is ``data`` row ``order[i]``) and renumbered; their scores are
    put back in ``data``'s order with ``scores[order] = view_scores``. The order depends only
    on the number of rows and ``seed``, so result keys stay stable between calls.
    """
    order = np.random.default_rng([seed, len(data)]).permutation(len(data))
    return data.subset(order).detector_view(), order


def _unshuffle(values: np.ndarray | None, order: np.ndarray) -> np.ndarray | None:
    if values is None:
        return None
    out = np.empty_like(values)
    out[order] = values
    return out


def run_detectors(
    data: OpenSetData,
    detectors: Sequence[str],
    detector_params: Mapping[str, Mapping[str, Any]] | None = None,
    shared: Mapping[str, Any] | None = None,
    out_root: str | Path | None = None,
    protocol: str = "honest",
    eval_subset: str = "all",
    reuse: dict[str, DetectorResult] | None = None,
    fingerprint: FingerprintCache | None = None,
    log: bool = True,
) -> dict[str, DetectorResult]:
    """Score ``data`` with every detector in ``detectors``; results by name, in that order.

    ``data`` is the full evaluation set (table with labels); detectors receive its
    label-free :meth:`~OpenSetData.detector_view`, rows shuffled (:func:`shuffled_view`, seeded
    by ``shared["seed"]``); scores come back in ``data``'s row order. ``detector_params`` is
    ``{name: {parameter: value}}``; ``shared`` the stage settings merged into detectors that
    have those fields (:func:`ferlib.openset.registry.resolve_params`). Trained detectors
    checkpoint under ``out_root/<eval_subset>/<protocol|any_protocol>/<name>-<key>/`` and
    their finished scores are stored there (``scores.npy``, ``features.npy``); without
    ``out_root`` they train in memory. ``reuse`` maps result keys to results already
    computed in this stage call (pass the same dict for every protocol). Names and keys
    are validated before any detector runs.
    """
    validate_detectors(detectors, detector_params)
    detector_params = detector_params or {}
    view, order = shuffled_view(data, int((shared or {}).get("seed", 0)))
    fingerprint = fingerprint or FingerprintCache()
    reuse = {} if reuse is None else reuse
    results: dict[str, DetectorResult] = {}
    for name in detectors:
        t0 = time.perf_counter()
        cls = detector_class(name)
        params = resolve_params(name, detector_params.get(name), shared)
        ingredients = result_ingredients(cls, params, view, protocol, eval_subset, fingerprint)
        key = result_key(ingredients)
        if key in reuse:
            results[name] = reuse[key]
            if log:
                print(f"[{protocol}] {name}: same inputs as already scored in this call (key {key}), result reused")
            continue
        folder = None
        if cls.trains_networks and out_root is not None:
            folder = detector_folder(Path(out_root), eval_subset, protocol, name, key, cls.depends_on_protocol())
            finished = _load_finished(folder, len(view))
            if finished is not None:
                result = DetectorResult(name, finished[0], key, folder, finished[1], 0.0, True)
                reuse[key] = results[name] = result
                if log:
                    print(f"[{protocol}] {name}: resuming: {folder} holds this detector's finished result")
                continue
            write_json(folder / "key.json", {"key": key, "ingredients": ingredients})
            params = {**params, "out_dir": str(folder)}
        detector = make_detector(name, **params)
        scores = np.asarray(detector.fit_score(view))
        if scores.shape != (len(view),):
            raise RuntimeError(f"detector {name} returned scores of shape {scores.shape} for {len(view)} rows")
        scores = _unshuffle(scores, order)
        embedding = _unshuffle(detector.embedding_features(), order)
        if folder is not None:  # features first: scores.npy marks the result finished
            if embedding is not None:
                write_npy(folder / "features.npy", embedding)
            write_npy(folder / "scores.npy", scores)
        result = DetectorResult(name, scores, key, folder, embedding, time.perf_counter() - t0, False)
        reuse[key] = results[name] = result
        if log:
            print(f"[{protocol}] {name}: {result.seconds:.1f} s")
    return results
