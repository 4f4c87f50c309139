"""Stage 05: the noisy-label benchmark (RUL and diversified ensembles under label noise).

For every (seed, noise setting, method) it trains stage 01's close-set model
(:func:`ferlib.stages.train_close_set` with ``open_class=None``: a close-set benchmark over
every class of the data set) in a run folder of its own, then asks the trained model which
training labels were flipped:

    run_dir/05_noisy_labels/
      <method>/<noise-tag>/seed<k>/   a stage 01 run (01_close_set/: best.pt, last.pt, history.csv,
                                      results.json, label_noise.npz; manifest.json) and the
                                      benchmark's files: flip_scores.npz (per training row: flipped,
                                      noisy and clean target, each detector's score), attention.npz
                                      (per-branch spatial attention of a few test images) and
                                      combination.json, written last: the combination is finished
      results.csv            one row per (method, noise, seed)
      summary.csv            mean and std over seeds per (method, noise)
      detection.csv          AUROC of each noisy-label detector per (method, noise, seed)
      detection_summary.csv  its mean and std over seeds
      memorisation.csv       per (method, noise, seed, epoch): the shares of sampled flipped training
                             rows predicted as their given label (flipped_given) and as their true
                             one (flipped_true), and of clean rows fit (clean_fit)
      figures/               accuracy_vs_noise, memorisation, flip_<detector>_<method>,
                             attention_<method>_<noise-tag>

Methods are one registry (:data:`METHODS`): a name is a stage 01 head and objective with
their parameters. Noise settings are stage 01 ``label_noise`` dicts (:mod:`ferlib.data.noise`);
the noise has its own seed, so every method and every run seed trains on the *same* noisy
labels and the standard deviation over seeds is over initialisation and batch order.

Resuming: a combination is finished when its ``combination.json`` holds the key of its
stage 01 arguments and analysis settings (:attr:`Combination.key`); a re-run skips it without
loading a model. A combination killed half-way has no record and runs again: stage 01's
keyed checkpoints (:func:`ferlib.train.fit`) resume its training where it stopped. Changing a
combination's settings (``epochs``, say) changes its key; it runs again and ``fit`` decides
what to reuse (more epochs of the exponential schedule extend the run). To retrain a finished
combination from scratch, delete its folder.

Records that outlive the machine: ``records_dir`` (for example ``docs/results/noisy_face10k``,
committed) receives each finished combination's small files (:data:`RECORD_FILES`: its record,
stage 01's ``results.json`` and ``history.csv``, the flip scores and attention maps; no weights),
and a combination whose record there holds this plan's key is restored from it instead of
trained. A grid too long for one machine's life is spread over several: each one trains what no
record has and adds its own. Tables and figures read only these files, so a restored
combination reports exactly what it reported where it ran.

Noisy-label detection: the trained model predicts its own *training* rows (the rows of
``label_noise.npz``, with stage 01's flip test-time augmentation when its recipe has it) and
every selected detector of the open-set registry scores them, higher = more likely a flipped
label: ``small_loss`` (the cross-entropy at the row's given label: the small-loss criterion, the
field's baseline) for every method, ``uncertainty`` (RUL's learnt ``u``) where the head gives it
and ``disagreement`` (the branches' mean KL from their mean) where it gives branch logits. Max
softmax (``msp``, which can be asked for) ignores the given label, so it is no baseline here.

Memorisation: under label noise stage 01 measures at every epoch's end how many of (up to 1000)
flipped training rows the network predicts as their given, wrong label
(:func:`ferlib.stages._memorisation_probe`); ``results.csv`` keeps that share at the kept epoch
(``memorised_best``) and the last (``memorised_last``), ``memorisation.csv`` and the
``memorisation`` figure the whole curve. A method robust to noise keeps it low while
cross-entropy's climbs; a schedule too short for cross-entropy to start memorising cannot show
the difference. The AUROC is :func:`ferlib.metrics.openset_metrics` with the flipped rows in the role
of the open class.

Label smoothing: the ``fast`` recipe smooths labels, which ``rul`` and ``ensemble`` refuse (their
loss is not one cross-entropy on the returned logits), and which is itself a remedy for noisy
labels. So the benchmark turns it off for *every* method (recorded in the manifest and in each
run's results.json), so that all methods compare under one recipe; a ``label_smoothing`` given
in ``recipe_params`` is kept, and refused up front if a selected method cannot take it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ferlib.data.noise import LabelNoise
from ferlib.data.prepare import VOTED_DATASETS, check_labels, close_rows, load_splits, loader_name
from ferlib.digest import json_digest
from ferlib.io import read_json, write_csv, write_json, write_npz, write_text
from ferlib.manifest import modify_manifest
from ferlib.metrics import openset_metrics
from ferlib.params import UNHASHED_PARAMS, applied_arguments, checked, inherit_parameter_docs, validate_arguments
from ferlib.records import copy_files
from ferlib.stages import _close_model, _recipe, train_close_set
from ferlib.tables import plain_markdown, settings_label

#: the benchmark's folder under ``run_dir`` (the runner's stage name)
FOLDER = "05_noisy_labels"
#: written last in a combination's folder: its key and results (the combination is finished)
RECORD = "combination.json"
FLIP_SCORES = "flip_scores.npz"
ATTENTION = "attention.npz"
#: bump when the analysis (detection, attention) changes, so finished combinations redo it
ANALYSIS_VERSION = 1
# a finished combination's files that its tables and figures read (relative to its folder)
RECORD_FILES = (RECORD, "01_close_set/results.json", "01_close_set/history.csv", FLIP_SCORES, ATTENTION)

#: Weight of the diversity term in ``esr_div`` and ``manet_div``. Each of the ensemble
#: objective's terms (spatial attention, channel attention, branch features) is ``-det S``,
#: in [-1, 0]; at 1.0 each weighs as much as a cross-entropy of about one nat (a model part-way
#: through training). The paper's weight was not retrieved (METHODS.md part 3): change it with
#: ``method_params={'esr_div': {'objective_params': {'diversity': 0.5}}}``.
DIVERSITY_WEIGHT = 1.0


def _method(head: str, objective: str, **objective_params: Any) -> dict[str, Any]:
    return {"head": head, "head_params": {}, "objective": objective, "objective_params": objective_params}


#: name -> stage 01's head, head_params, objective and objective_params (each head's and
#: objective's own defaults otherwise; ``method_params`` overrides them per run). The ensembles
#: train every branch from the first epoch (``progressive_epochs=0``), so that every method
#: trains for the same epochs.
METHODS: dict[str, dict[str, Any]] = {
    "ce": _method("linear", "ce"),
    "rul": _method("uncertainty", "rul"),
    "esr": _method("branches", "ensemble", diversity=0.0),
    "esr_div": _method("branches", "ensemble", diversity=DIVERSITY_WEIGHT),
    "manet": _method("manet", "ensemble", diversity=0.0),
    "manet_div": _method("manet", "ensemble", diversity=DIVERSITY_WEIGHT),
}
#: the keys ``method_params`` may override
METHOD_KEYS = ("head_params", "objective_params")

#: the noise settings for every data set (stage 01 ``label_noise`` dicts; None: clean labels)
DEFAULT_NOISE: tuple[dict | None, ...] = (
    None,
    {"kind": "symmetric", "rate": 0.1},
    {"kind": "symmetric", "rate": 0.2},
    {"kind": "symmetric", "rate": 0.3},
    {"kind": "pair", "rate": 0.2},
)
#: added to :data:`DEFAULT_NOISE` for data sets with annotator votes (``VOTED_DATASETS``: ferplus)
VOTE_NOISE: tuple[dict, ...] = ({"kind": "annotator"},)
#: the detectors scored as noisy-label detectors by default (each where the head gives what it reads)
DEFAULT_DETECTORS = ("small_loss", "uncertainty", "disagreement")
#: the stage's parameters handed to stage 01 unchanged
PASSED_TO_STAGE_01 = (
    "dataset",
    "data_root",
    "class_map",
    "data_options",
    "device",
    "arch",
    "pretrained",
    "input_size",
    "epochs",
    "batch_size",
    "recipe",
    "cache_dir",
    "amp",
    "progress",
)
#: column names of results.csv
RESULT_COLUMNS = (
    "method",
    "noise",
    "kind",
    "rate",
    "measured_rate",
    "seed",
    "test_acc",
    "best_epoch",
    "train_seconds",
    "memorised_best",
    "memorised_last",
    "head",
    "objective",
    "folder",
)
#: names of MA-Net's four patches, in the order of its attention extras
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


# ----------------------------------------------------------------------------- the plan
def default_noise(dataset: str) -> list[dict | None]:
    """:data:`DEFAULT_NOISE`, plus :data:`VOTE_NOISE` when ``dataset`` has annotator votes."""
    voted = loader_name(dataset) in VOTED_DATASETS
    return [None if n is None else dict(n) for n in DEFAULT_NOISE] + ([dict(n) for n in VOTE_NOISE] if voted else [])


def noise_tag(noise: Mapping[str, Any] | None) -> str:
    """Folder name of a noise setting: ``clean``, ``symmetric-0.2``, ``pair-0.2``, ``annotator``;
    a non-default noise seed, chosen pairs or a clean validation split are appended
    (``symmetric-0.2-nseed1``, ``pair-0.2-pairs-<hash>``, ``...-cleanval``)."""
    if noise is None:
        return "clean"
    cfg = LabelNoise.from_params(noise)
    parts = [cfg.kind]
    if cfg.rate is not None:
        parts.append(f"{cfg.rate:g}")
    if cfg.seed:
        parts.append(f"nseed{cfg.seed}")
    if cfg.pairs:
        parts.append("pairs-" + json_digest(dict(cfg.pairs))[:6])
    if not cfg.validation:
        parts.append("cleanval")
    return "-".join(parts)


@dataclass
class Combination:
    """One (method, noise, seed): stage 01's arguments and the key of its result."""

    method: str
    noise: dict | None
    tag: str
    seed: int
    folder: Path
    stage01: dict[str, Any]
    key: str

    @property
    def label(self) -> str:
        return f"{self.method} / {self.tag} / seed {self.seed}"


@dataclass
class Plan:
    """Everything :func:`noisy_label_benchmark` will do, checked before any work."""

    methods: dict[str, dict[str, Any]]
    noise: list[tuple[str, dict | None]]
    seeds: list[int]
    recipe_params: dict | None
    smoothing_note: str | None
    combinations: list[Combination] = field(default_factory=list)


def _names(value: Any, what: str, choices: Sequence[str]) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{what} must be a non-empty list of names; choose from {', '.join(choices)}; got {value!r}")
    unknown = [n for n in names if n not in choices]
    if unknown:
        raise ValueError(f"{what}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(choices)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{what} names {', '.join(twice)} more than once")
    return list(names)


def method_settings(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The head, objective and their complete parameters of method ``name`` (registry
    values, ``overrides`` merged over them, defaults filled in); ``ValueError`` naming the
    method and the problem for an unknown name, key or value."""
    from ferlib.losses import validate_objective
    from ferlib.models import validate_head

    _names([name], "methods", list(METHODS))
    settings = {k: dict(v) if isinstance(v, dict) else v for k, v in METHODS[name].items()}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(METHOD_KEYS))
    if unknown:
        raise ValueError(
            f"method_params[{name!r}] has no key {', '.join(map(repr, unknown))}; keys: {', '.join(METHOD_KEYS)}"
        )
    for key, value in overrides.items():
        if not isinstance(value, Mapping):
            raise ValueError(f"method_params[{name!r}][{key!r}] must be a dict, got {value!r}")
        settings[key] = {**settings[key], **value}
    try:
        settings["head_params"] = validate_head(settings["head"], settings["head_params"])
        config = validate_objective(settings["objective"], settings["objective_params"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"method {name!r}: {exc.args[0] if exc.args else exc}") from None
    settings["objective_params"] = {k: v for k, v in config.items() if k != "name"}
    return settings


def _check_detector(name: str) -> None:
    """A detector usable on the training rows: it scores the model's outputs as they are
    (no fitting on other rows, no images, no networks of its own)."""
    from ferlib.openset.base import Detector
    from ferlib.openset.registry import detector_class

    cls = detector_class(name)
    if cls.needs_images or cls.needs_train_images or cls.trains_networks or cls.fit is not Detector.fit:
        raise ValueError(
            f"detectors: {name!r} fits on data or trains networks; the benchmark scores every training row "
            "with the trained model's outputs alone (e.g. small_loss, msp, energy, entropy, uncertainty, disagreement)"
        )


def _seeds(value: Any) -> list[int]:
    seeds = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    ok = isinstance(seeds, (list, tuple)) and seeds
    ok = ok and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    if not ok:
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {value!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {list(seeds)} repeat a seed")
    return list(seeds)


def _benchmark_recipe(
    recipe: str, recipe_params: dict | None, methods: Mapping[str, Mapping[str, Any]]
) -> tuple[dict | None, str | None]:
    """``recipe_params`` for stage 01 and a note when the benchmark turned label smoothing off
    (see the module docstring)."""
    from ferlib.train import SMOOTHABLE_OBJECTIVES

    settings = _recipe(recipe, recipe_params)
    if settings["label_smoothing"] == 0:
        return recipe_params, None
    if recipe_params and "label_smoothing" in recipe_params:
        refused = [n for n, m in methods.items() if m["objective"] not in SMOOTHABLE_OBJECTIVES]
        if refused:
            raise ValueError(
                f"recipe_params label_smoothing={recipe_params['label_smoothing']}: methods {', '.join(refused)} "
                f"train objectives that refuse label smoothing (only {', '.join(SMOOTHABLE_OBJECTIVES)} take it); "
                "leave label_smoothing out (the benchmark turns it off for every method) or drop those methods"
            )
        return recipe_params, None
    note = (
        f"recipe {recipe!r} smooths labels ({settings['label_smoothing']}), which objectives rul and ensemble refuse "
        "and which is a noisy-label remedy of its own: label_smoothing=0 for every method"
    )
    return {**(recipe_params or {}), "label_smoothing": 0.0}, note


def _check_compared(compare_with: Sequence[str] | None, run_dir: str) -> None:
    """Refuse, before any training, a ``compare_with`` entry that is not a finished benchmark."""
    if compare_with is None:
        return
    if isinstance(compare_with, (str, Path)) or not isinstance(compare_with, Sequence):
        raise ValueError(f"compare_with must be a list of benchmark folders, got {compare_with!r}")
    for other in compare_with:
        summary = Path(other) / FOLDER / "summary.csv"
        if Path(other).resolve() == Path(run_dir).resolve():
            raise ValueError(f"compare_with names this benchmark's own run_dir {str(other)!r}")
        if not summary.is_file():
            raise ValueError(
                f"compare_with: {other} is not a finished noisy-label benchmark ({summary} is missing); "
                "run stage 05 there first"
            )


def plan_benchmark(arguments: Mapping[str, Any]) -> Plan:
    """Check every name and value of a benchmark call and list its combinations (cheap:
    builds no network, reads no image). ``arguments``: the values
    :func:`noisy_label_benchmark` runs with (every parameter). Raises ``ValueError`` naming
    the parameter, the bad value and the choices: an unknown method, method_params key,
    noise key or kind, a noise kind the data set cannot have (annotator without votes), a
    repeated setting, a detector that cannot score training rows, a recipe setting a method
    refuses, or anything stage 01 would refuse."""
    from ferlib.openset.registry import validate_detectors

    names = _names(arguments["methods"], "methods", list(METHODS))
    method_params = arguments.get("method_params") or {}
    if not isinstance(method_params, Mapping):
        raise ValueError(f"method_params must be a dict {{method: {{'head_params': ..., ...}}}}, got {method_params!r}")
    unknown = [n for n in method_params if n not in METHODS]
    if unknown:
        raise ValueError(
            f"method_params names unknown method {', '.join(map(repr, unknown))}; choose from {', '.join(METHODS)}"
        )
    for name, overrides in method_params.items():  # checked even for a method not selected
        method_settings(name, overrides)
    methods = {n: method_settings(n, method_params.get(n)) for n in names}

    dataset = arguments["dataset"]
    settings = default_noise(dataset) if arguments["noise"] is None else arguments["noise"]
    if not isinstance(settings, (list, tuple)) or not settings:
        raise ValueError(f"noise must be a non-empty list of label_noise dicts (None: clean labels), got {settings!r}")
    noise: list[tuple[str, dict | None]] = []
    for entry in settings:
        if entry is not None and not isinstance(entry, Mapping):
            raise ValueError(f"noise: each setting is a label_noise dict or None (clean labels), got {entry!r}")
        try:
            check_labels(dataset, "majority", entry)
        except ValueError as exc:
            raise ValueError(f"noise setting {entry!r}: {exc}") from None
        noise.append((noise_tag(entry), None if entry is None else dict(entry)))
    tags = [t for t, _ in noise]
    twice = sorted({t for t in tags if tags.count(t) > 1})
    if twice:
        raise ValueError(f"noise repeats the setting(s) {', '.join(twice)}")
    seeds = _seeds(arguments["seeds"])

    validate_detectors(arguments["detectors"], arguments.get("detector_params"))
    detectors = list(arguments["detectors"])
    for name in detectors:
        _check_detector(name)
    n_images = arguments["attention_images"]
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 0:
        raise ValueError(f"attention_images must be an integer >= 0, got {n_images!r}")

    _check_compared(arguments.get("compare_with"), arguments["run_dir"])
    recipe_params, note = _benchmark_recipe(arguments["recipe"], arguments.get("recipe_params"), methods)
    plan = Plan(methods, noise, seeds, recipe_params, note)
    analysis = {
        "version": ANALYSIS_VERSION,
        "detectors": detectors,
        "detector_params": arguments.get("detector_params") or {},
        "attention_images": n_images,
    }
    out = Path(arguments["run_dir"]) / FOLDER
    for seed in seeds:  # seed outermost: after the first seed, every (method, noise) has a result
        for tag, entry in noise:
            for name, method in methods.items():
                stage01 = {k: arguments[k] for k in PASSED_TO_STAGE_01}
                stage01.update(
                    open_class=None,
                    seed=seed,
                    run_dir=str(out / name / tag / f"seed{seed}"),
                    recipe_params=recipe_params,
                    head=method["head"],
                    head_params=method["head_params"],
                    objective=method["objective"],
                    objective_params=method["objective_params"],
                    label_noise=entry,
                )
                applied = applied_arguments(train_close_set, stage01)
                if seed == seeds[0]:  # what stage 01 would refuse, before any epoch (seeds change nothing here)
                    validate_arguments(train_close_set, applied, where=f"method {name!r}, noise {tag}")
                hashed = {k: v for k, v in applied.items() if k not in UNHASHED_PARAMS}
                key = json_digest({"stage01": hashed, "analysis": analysis})
                plan.combinations.append(
                    Combination(name, entry, tag, seed, out / name / tag / f"seed{seed}", stage01, key)
                )
    return plan


def check_models(plan: Plan, arch: str, input_size: int) -> None:
    """Build each method's network once (no data) and run its objective's check and a
    forward pass on a blank batch: a head the objective cannot train, or a feature map too
    small for MA-Net's quadrants, fails here, before the first epoch of any method. The
    global random generator is left as it was."""
    from ferlib.losses import make_objective
    from ferlib.models import ModelConfig, build_model

    for name, method in plan.methods.items():
        try:
            with torch.random.fork_rng(devices=[]):
                cfg = ModelConfig(arch, 7, input_size, head=method["head"], head_params=method["head_params"])
                model = build_model(cfg, verbose=False).eval()
                objective = make_objective(method["objective"], **method["objective_params"])
                check = getattr(objective, "check", None)
                if callable(check):
                    check(model)
                with torch.no_grad():
                    model.forward_all(torch.zeros(2, 3, input_size, input_size))
        except ValueError as exc:
            raise ValueError(f"method {name!r} with arch={arch!r}, input_size={input_size}: {exc}") from None


# ----------------------------------------------------------------------------- analysis
def _finished(combo: Combination) -> dict | None:
    """The combination's record when it was written for this key, else None."""
    path = combo.folder / RECORD
    if not path.is_file() or not (combo.folder / "01_close_set" / "results.json").is_file():
        return None
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("key") == combo.key else None


def _record_folder(combo: Combination, records_dir: str | Path) -> Path:
    """Where ``combo``'s record files go under ``records_dir``: ``<method>/<noise-tag>/seed<k>``."""
    return Path(records_dir) / combo.method / combo.tag / f"seed{combo.seed}"


def save_record(combo: Combination, records_dir: str | Path) -> list[Path]:
    """Copy a finished ``combo``'s :data:`RECORD_FILES` that exist to ``records_dir`` (atomic;
    ``.npz`` files compressed, read back identically by ``np.load``). Returns the written paths."""
    return copy_files(combo.folder, _record_folder(combo, records_dir), RECORD_FILES, compress=True)


def restore_record(combo: Combination, records_dir: str | Path) -> bool:
    """Copy ``combo``'s files from ``records_dir`` into its folder when the record there holds
    ``combo.key`` (the same stage 01 arguments and analysis settings); an unreadable record or
    one of another key restores nothing. Returns whether it restored."""
    src = _record_folder(combo, records_dir)
    try:
        record = read_json(src / RECORD)
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("key") != combo.key or not (src / RECORD_FILES[1]).is_file():
        return False
    for name in RECORD_FILES[1:]:  # a file of an older, unfinished attempt must not be read as this record's
        if not (src / name).is_file():
            (combo.folder / name).unlink(missing_ok=True)
    copy_files(src, combo.folder, RECORD_FILES[1:])
    copy_files(src, combo.folder, [RECORD])  # the record last: a copy killed half-way does not look finished
    return True


def flip_scores(
    logits: np.ndarray,
    features: np.ndarray,
    extras: Mapping[str, np.ndarray],
    noisy_targets: np.ndarray,
    detectors: Sequence[str],
    detector_params: Mapping[str, Mapping] | None = None,
) -> dict[str, np.ndarray]:
    """Each detector's score of the training rows (higher = more likely flipped), from the
    trained model's outputs on them; a detector whose extras the head does not give (the
    uncertainty of a linear head) is left out. The rows' table holds the noisy targets as
    its pseudo labels (what the model was trained on)."""
    from ferlib.openset.data import OpenSetData
    from ferlib.openset.registry import detector_class, make_detector

    n = len(logits)
    data = OpenSetData(
        table=pd.DataFrame({"index": np.arange(n), "pseudo": np.asarray(noisy_targets, dtype=np.int64)}),
        logits=np.asarray(logits),
        features=np.asarray(features),
        train_features=np.empty((0, np.asarray(features).shape[1]), dtype=np.float32),
        train_targets=np.empty(0, dtype=np.int64),
        extras={k: np.asarray(v) for k, v in extras.items()},
    )
    scores = {}
    for name in detectors:
        if not set(detector_class(name).reads_extras) <= set(data.extras):
            continue
        scores[name] = np.asarray(make_detector(name, **dict((detector_params or {}).get(name, {}))).score(data))
    return scores


def attention_rows(targets: np.ndarray, n: int) -> np.ndarray:
    """``n`` rows of a split showing as many classes as possible: the first row of each class
    in target order, then the next rows of the split."""
    targets = np.asarray(targets)
    first = [int(np.flatnonzero(targets == c)[0]) for c in np.unique(targets)]
    taken = set(first)
    rest = [i for i in range(len(targets)) if i not in taken]
    return np.asarray((first + rest)[:n], dtype=np.int64)


def _heads(model: torch.nn.Module, heads: int, map_size: tuple[int, int]) -> tuple[list[str], np.ndarray]:
    """Names of the attention maps' heads and the part of the image each covers, ``(H, 4)``
    fractions (top, bottom, left, right): the whole image for ESR's branches, its quadrant of
    the trunk's map for each of MA-Net's patches."""
    if getattr(model.head, "per_branch_attention", True):
        return [f"branch {i + 1}" for i in range(heads)], np.tile([0.0, 1.0, 0.0, 1.0], (heads, 1))
    from ferlib.models.manet import quadrant_slices

    height, width = map_size
    slices = quadrant_slices(height, width)
    extents = np.array([[r.start / height, r.stop / height, c.start / width, c.stop / width] for r, c in slices])
    return list(QUADRANTS), extents


class _Splits:
    """The data set's splits (open_class None), loaded on first use and then kept."""

    def __init__(self, loader: Callable[[], Any]):
        self._loader = loader
        self._splits = None

    def __call__(self):
        if self._splits is None:
            self._splits = self._loader()
        return self._splits


def _memorised(close: Path, best_epoch: int) -> dict[str, float | None]:
    """The share of (sampled) flipped training rows the model predicts as their given label
    at the kept (best) epoch and at the last one, from stage 01's history (its
    ``flipped_given`` column, :func:`ferlib.stages._memorisation_probe`); None without it."""
    path = close / "history.csv"
    history = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    if "flipped_given" not in history or history["flipped_given"].isna().all():
        return {"memorised_best": None, "memorised_last": None}
    at_best = history.loc[history["epoch"] == best_epoch, "flipped_given"]
    return {
        "memorised_best": float(at_best.iloc[0]) if len(at_best) else None,
        "memorised_last": float(history["flipped_given"].iloc[-1]),
    }


def memorisation_table(run_dir: str | Path, results: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, noise, seed, epoch) of the combinations whose stage 01 history
    holds the memorisation probe's columns (``flipped_given``, ``flipped_true``,
    ``clean_fit``); empty when none does."""
    frames = []
    for _, row in results.iterrows():
        path = Path(run_dir) / row["folder"] / "01_close_set" / "history.csv"
        if not path.is_file():
            continue
        history = pd.read_csv(path)
        if "flipped_given" not in history:
            continue
        part = history[["epoch", "flipped_given", "flipped_true", "clean_fit"]].copy()
        part.insert(0, "seed", row["seed"])
        part.insert(0, "noise", row["noise"])
        part.insert(0, "method", row["method"])
        frames.append(part)
    columns = ["method", "noise", "seed", "epoch", "flipped_given", "flipped_true", "clean_fit"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _analyse(
    combo: Combination,
    splits: _Splits,
    detectors: Sequence[str],
    detector_params: Mapping[str, Mapping] | None,
    attention_images: int,
) -> dict[str, Any]:
    """Score the training rows and save the attention maps of a finished stage 01 run;
    return the combination's record (written by the caller)."""
    from ferlib.data.augment import to_float
    from ferlib.train import predict

    device, amp, progress = combo.stage01["device"], combo.stage01["amp"], combo.stage01["progress"]
    close = combo.folder / "01_close_set"
    results = read_json(close / "results.json")
    names = results["class_names"]
    noise = results.get("label_noise") or {}
    record: dict[str, Any] = {
        "key": combo.key,
        "method": combo.method,
        "noise": combo.tag,
        "kind": noise.get("kind", "clean"),
        "rate": noise.get("rate", 0.0) if noise else 0.0,
        "measured_rate": noise.get("measured_rate_train", 0.0) if noise else 0.0,
        "seed": combo.seed,
        "test_acc": results["test_acc"],
        "best_epoch": results["best_epoch"],
        "train_seconds": results["train_seconds"],
        "head": results["head"],
        "objective": results["objective"],
        "label_smoothing": (results.get("recipe_settings") or {}).get("label_smoothing"),
        **_memorised(close, results["best_epoch"]),
        "detection": {},
        "attention": False,
    }
    for name in (FLIP_SCORES, ATTENTION):  # an older analysis never describes this one
        (combo.folder / name).unlink(missing_ok=True)
    model = _close_model(
        str(combo.folder), results["arch"], results["input_size"], len(names), device, results.get("stem", "auto")
    )
    model.eval()
    tta = bool((results.get("recipe_settings") or {}).get("flip_tta", False))

    noise_file = close / "label_noise.npz"
    if noise_file.is_file():
        z = np.load(noise_file)
        rows, flipped, noisy = z["train_rows"], z["train_flipped"].astype(bool), z["train_noisy"]
        if flipped.any() and not flipped.all():
            pred = predict(
                model,
                splits().train.rows(rows),
                device=device,
                progress=progress,
                desc="training rows",
                amp=amp,
                tta=tta,
            )
            extras = {k: v.numpy() for k, v in pred.extras.items()}
            scores = flip_scores(pred.logits.numpy(), pred.features.numpy(), extras, noisy, detectors, detector_params)
            arrays = {"train_rows": rows, "flipped": flipped, "noisy": noisy, "clean": z["train_clean"]}
            write_npz(combo.folder / FLIP_SCORES, {**arrays, **{f"score_{k}": v for k, v in scores.items()}})
            for name, score in scores.items():
                m = openset_metrics(score, flipped)  # flipped rows in the open class's role
                record["detection"][name] = {
                    "auroc": m["auroc"],
                    "aupr_flipped": m["aupr_out"],
                    "n_flipped": m["n_open"],
                    "n_clean": m["n_close"],
                }
            shown = ", ".join(f"{k} {v['auroc']:.3f}" for k, v in record["detection"].items())
            print(f"{combo.label}: {int(flipped.sum())} of {len(flipped)} training labels flipped; AUROC {shown}")
        else:
            print(f"{combo.label}: no training label (or every one) flipped: no noisy-label detection")

    if attention_images > 0:
        with torch.no_grad():
            probe = model.forward_all(torch.zeros(2, 3, results["input_size"], results["input_size"], device=device))
        if "spatial_attention" in probe.extras:
            s = splits()
            test_rows, targets = close_rows(s.test, s.label_map)
            chosen = attention_rows(targets, attention_images)
            images = s.test.rows(test_rows[chosen])
            with torch.no_grad():
                out = model.forward_all(to_float(torch.as_tensor(images).to(device)))
            attention = out.extras["spatial_attention"].float().cpu().numpy()
            head_names, extents = _heads(model, attention.shape[1], tuple(out.feature_map.shape[-2:]))
            write_npz(
                combo.folder / ATTENTION,
                {
                    "images": torch.as_tensor(images).numpy(),
                    "attention": attention,
                    "target": targets[chosen],
                    "predicted": out.logits.argmax(1).cpu().numpy(),
                    "test_rows": test_rows[chosen],
                    "class_names": np.array(names),
                    "head_names": np.array(head_names),
                    "extents": extents,
                },
            )
            record["attention"] = True
    return record


# ----------------------------------------------------------------------------- tables
def results_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """results.csv: one row per combination record (:data:`RESULT_COLUMNS`); ``rate`` is the
    nominal rate (NaN for annotator noise, whose rate is only measured), ``folder`` the
    combination's folder relative to the benchmark's ``run_dir``."""
    rows = []
    for r in records:
        row = {k: r.get(k) for k in RESULT_COLUMNS if k != "folder"}
        row["rate"] = np.nan if row["rate"] is None else row["rate"]
        row["folder"] = str(Path(FOLDER) / r["method"] / r["noise"] / f"seed{r['seed']}")
        rows.append(row)
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def detection_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """detection.csv: one row per (combination, detector) with the AUROC of the detector's
    score as a detector of flipped training labels."""
    columns = ["method", "noise", "kind", "rate", "measured_rate", "seed", "detector"]
    rows = [
        {**{k: r[k] for k in columns if k != "detector"}, "detector": name, **values}
        for r in records
        for name, values in (r.get("detection") or {}).items()
    ]
    frame = pd.DataFrame(rows, columns=columns + ["auroc", "aupr_flipped", "n_flipped", "n_clean"])
    frame["rate"] = frame["rate"].astype(float)
    return frame


def summarise(table: pd.DataFrame, by: Sequence[str], values: Sequence[str]) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds (``<value>_mean``, ``<value>_std``; std
    NaN for one seed) per group of ``by``, groups in their order of first appearance, and
    ``n_seeds``."""
    if table.empty:
        return pd.DataFrame(columns=[*by, *(f"{v}_{s}" for v in values for s in ("mean", "std")), "n_seeds"])
    grouped = table.groupby(list(by), sort=False, dropna=False)
    out = grouped[list(values)].agg(["mean", "std"])
    out.columns = [f"{v}_{s}" for v, s in out.columns]
    out["n_seeds"] = grouped["seed"].nunique()
    return out.reset_index()


SUMMARY_BY = ("method", "noise", "kind", "rate")
SUMMARY_VALUES = ("test_acc", "measured_rate", "best_epoch", "train_seconds", "memorised_best", "memorised_last")


# ----------------------------------------------------------------------------- paper tables
#: what the papers published for each method (clean labels; the noisy-label numbers of RUL's
#: paper were not retrieved): METHODS.md parts 2 and 3
PUBLISHED_CLEAN: dict[str, str] = {
    "rul": "88.98% RAF-DB (ResNet-18 from face weights, 224 px, 60 epochs)",
    "esr_div": "89.34% FERPlus, 89.99% RAF-DB (which of ESR / MA-Net gave which: not retrieved)",
    "manet_div": "89.34% FERPlus, 89.99% RAF-DB (which of ESR / MA-Net gave which: not retrieved)",
}


def is_benchmark(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a stage 05 benchmark's tables."""
    return (Path(run_dir) / FOLDER / "summary.csv").is_file()


def benchmark_label(run_dir: str | Path) -> str:
    """A column heading for a benchmark: its folder's name and its network, input, epochs and
    training-set cap, from its manifest (:func:`ferlib.tables.settings_label`)."""
    run_dir = Path(run_dir)
    manifest = read_json(run_dir / "manifest.json") if (run_dir / "manifest.json").is_file() else {}
    return settings_label(run_dir.name, (manifest.get("noisy_labels") or {}).get("settings") or {})


def _cell(mean: float, std: float, n: int, digits: int = 3) -> str:
    if not np.isfinite(mean):
        return ""
    spread = f" ± {std:.{digits}f}" if n > 1 and np.isfinite(std) else ""
    return f"{mean:.{digits}f}{spread} ({n})"


def paper_tables(benchmarks: Sequence[str | Path]) -> dict[str, pd.DataFrame]:
    """The noisy-label tables in the papers' layout, benchmarks side by side (e.g. from scratch
    and from face weights): ``accuracy`` (rows: methods; columns: benchmark x noise setting;
    clean test accuracy, mean ± std over seeds (seeds); the published clean-label accuracy
    last), ``detection`` (rows: method x detector; the flipped-label AUROC likewise) and
    ``memorisation`` (rows: methods; the share of sampled flipped training rows predicted as
    their given label at the kept epoch, where measured)."""
    acc, det, mem = {}, {}, {}
    for run_dir in benchmarks:
        label = benchmark_label(run_dir)
        folder = Path(run_dir) / FOLDER
        summary = pd.read_csv(folder / "summary.csv")
        for _, r in summary.iterrows():
            column = f"{label}: {r['noise']}"
            acc.setdefault(column, {})[r["method"]] = _cell(r["test_acc_mean"], r["test_acc_std"], int(r["n_seeds"]))
            if "memorised_best_mean" in summary and np.isfinite(r["memorised_best_mean"]):
                mem.setdefault(column, {})[r["method"]] = _cell(
                    r["memorised_best_mean"], r["memorised_best_std"], int(r["n_seeds"]), 2
                )
        path = folder / "detection_summary.csv"
        if path.is_file():
            for _, r in pd.read_csv(path).iterrows():
                column = f"{label}: {r['noise']}"
                det.setdefault(column, {})[(r["method"], r["detector"])] = _cell(
                    r["auroc_mean"], r["auroc_std"], int(r["n_seeds"])
                )
    accuracy = pd.DataFrame(acc)
    accuracy["published (clean labels)"] = [PUBLISHED_CLEAN.get(m, "") for m in accuracy.index]
    detection = pd.DataFrame(det)
    if len(detection):
        detection.index = pd.MultiIndex.from_tuples(detection.index, names=["method", "detector"])
    return {
        "accuracy": accuracy.rename_axis("method").fillna(""),
        "detection": detection.fillna(""),
        "memorisation": pd.DataFrame(mem).rename_axis("method").fillna(""),
    }


def write_paper_tables(benchmarks: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """:func:`paper_tables` as ``noisy_<table>.csv`` and one Markdown file ``noisy_tables.md``
    in ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    tables = paper_tables(benchmarks)
    titles = {
        "accuracy": "Test accuracy on clean labels, mean ± std over seeds (seeds)",
        "detection": "Flipped-label detection on the training rows, AUROC (flipped rows positive)",
        "memorisation": "Flipped training rows fit to their given label at the kept epoch (memorisation)",
    }
    written, text = [], []
    for name, frame in tables.items():
        if frame.empty:
            continue
        written.append(write_csv(out_dir / f"noisy_{name}.csv", frame.reset_index()))
        text += [f"## {titles[name]}", "", plain_markdown(frame.reset_index()), ""]
    written.append(write_text(out_dir / "noisy_tables.md", "\n".join(text)))
    if len(benchmarks) > 1:  # the accuracy table as bars: which benchmark is higher, per method
        from ferlib import plots

        fig = plots.grouped_bars(
            accuracy_long(benchmarks),
            x="setting",
            series="benchmark",
            ylabel="test accuracy (clean labels)",
            title="mean ± std over seeds",
        )
        written += plots.save_figure(fig, out_dir / "noisy_accuracy_compared")
    return written


def accuracy_long(benchmarks: Sequence[str | Path]) -> pd.DataFrame:
    """Test accuracy of several benchmarks in long form for :func:`ferlib.plots.grouped_bars`:
    columns ``setting`` ("method, noise"; the method alone when every benchmark has one noise
    setting), ``benchmark`` (:func:`benchmark_label`), ``mean``, ``std`` (over seeds)."""
    rows = []
    for run_dir in benchmarks:
        summary = pd.read_csv(Path(run_dir) / FOLDER / "summary.csv")
        for _, r in summary.iterrows():
            rows.append(
                {
                    "method": r["method"],
                    "noise": r["noise"],
                    "benchmark": benchmark_label(run_dir),
                    "mean": r["test_acc_mean"],
                    "std": r["test_acc_std"],
                }
            )
    frame = pd.DataFrame(rows, columns=["method", "noise", "benchmark", "mean", "std"])
    one_noise = frame["noise"].nunique() <= 1
    frame.insert(0, "setting", frame["method"] if one_noise else frame["method"] + ", " + frame["noise"])
    return frame.drop(columns=["method", "noise"])


# ----------------------------------------------------------------------------- figures
def draw_figures(run_dir: str | Path) -> dict[str, list[Path]]:
    """Every figure of a finished benchmark from its files alone (no model, no data set), into
    ``run_dir/05_noisy_labels/figures/`` (PNG + PDF): ``accuracy_vs_noise`` (test accuracy
    against the noise rate, one panel per noise kind, mean and std over seeds),
    ``flip_<detector>_<method>`` (the detector's score on flipped vs clean training rows, one
    panel per noise setting, AUROC under each; ``uncertainty`` for rul, ``disagreement`` for
    the ensembles) and ``attention_<method>_<noise-tag>`` (each branch's or patch's spatial
    attention on a few test images); per-sample figures show the smallest seed."""
    from ferlib import plots

    out = Path(run_dir) / FOLDER
    figures = out / "figures"
    results = pd.read_csv(out / "results.csv")
    summary = pd.read_csv(out / "summary.csv")
    written: dict[str, list[Path]] = {}

    def save(fig, name: str) -> None:
        written[name] = plots.save_figure(fig, figures / name)

    if len(summary):
        seeds = int(summary["n_seeds"].max())
        title = f"mean and std over {seeds} seeds" if seeds > 1 else "one seed"
        save(plots.accuracy_vs_noise(summary, title=title), "accuracy_vs_noise")
    curves = memorisation_table(run_dir, results)
    if len(curves):
        write_csv(out / "memorisation.csv", curves)
        seeds = int(curves["seed"].nunique())
        title = f"mean and std over {seeds} seeds" if seeds > 1 else "one seed"
        save(plots.memorisation_curves(curves, title=title), "memorisation")
    seed = int(results["seed"].min()) if len(results) else 0
    first = results[results["seed"] == seed]
    for method in dict.fromkeys(first["method"]):
        rows = first[first["method"] == method]
        panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        for _, row in rows.iterrows():
            path = Path(run_dir) / row["folder"] / FLIP_SCORES
            if path.is_file():
                z = np.load(path)
                for key in z.files:
                    if key.startswith("score_") and key != "score_msp":  # msp: in detection.csv only
                        panels.setdefault(key[len("score_") :], {})[row["noise"]] = (z[key], z["flipped"])
            path = Path(run_dir) / row["folder"] / ATTENTION
            if path.is_file():
                z = np.load(path)
                fig = plots.attention_maps(
                    z["images"],
                    z["attention"],
                    [str(h) for h in z["head_names"]],
                    [
                        f"{z['class_names'][t]}\npredicted {z['class_names'][p]}"
                        for t, p in zip(z["target"], z["predicted"])
                    ],
                    extents=z["extents"],
                )
                plots.suptitle(fig, f"{method}, {row['noise']} labels, seed {seed}")
                save(fig, f"attention_{method}_{row['noise']}")
        for detector, by_noise in panels.items():
            title = f"{method}: {detector} on its training rows, seed {seed}"
            save(
                plots.flip_histograms(by_noise, xlabel=f"{detector} (higher = flipped?)", title=title),
                f"flip_{detector}_{method}",
            )
    return written


# ----------------------------------------------------------------------------- stage 05
@checked
@inherit_parameter_docs(train_close_set)
def noisy_label_benchmark(
    dataset: str = "synthetic",
    data_root: str | None = None,
    class_map: dict[str, str] | None = None,
    data_options: dict | None = None,
    device: str = "cpu",
    run_dir: str = "outputs/lab_noisy",
    methods: Sequence[str] = tuple(METHODS),
    method_params: dict[str, dict] | None = None,
    noise: list[dict | None] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    arch: str = "smallface",
    pretrained: str | None = None,
    input_size: int = 48,
    epochs: int = 10,
    batch_size: int = 128,
    recipe: str = "reference",
    recipe_params: dict | None = None,
    cache_dir: str | None = "outputs/cache",
    detectors: Sequence[str] = DEFAULT_DETECTORS,
    detector_params: dict[str, dict] | None = None,
    attention_images: int = 4,
    amp: bool = False,
    progress: bool = True,
    compare_with: Sequence[str] | None = None,
    records_dir: str | None = None,
) -> pd.DataFrame:
    """Train every method under every label-noise setting and seed; tabulate and plot.

    Each (seed, noise, method) is one stage 01 run over every class of the data set
    (``open_class=None``) in ``run_dir/05_noisy_labels/<method>/<noise-tag>/seed<k>/``; a
    finished one is skipped and a killed one resumes (:mod:`ferlib.noisy`). Every name and
    value, and each method's network on a blank batch, is checked before the first epoch.
    Writes ``results.csv``, ``summary.csv`` (mean and std over seeds), ``detection.csv``,
    ``detection_summary.csv`` and ``figures/`` under ``run_dir/05_noisy_labels/``, and the
    ``noisy_labels`` section of ``run_dir/manifest.json``. Returns the summary. Not part of
    the default pipeline: ``python -m ferlib.run stage 05 ...`` runs it.

    Defaults that differ from stage 01's: ``arch="smallface"`` (the benchmark trains
    methods x noise settings x seeds models); ``recipe`` "fast" runs with label smoothing off
    for every method (see :mod:`ferlib.noisy`).

    Parameters
    ----------
    run_dir : str
        Folder of the benchmark: its files go to run_dir/05_noisy_labels/.
    methods : list[str]
        Methods (ferlib.noisy.METHODS): ce (linear head, cross-entropy), rul (uncertainty head, RUL), esr
        and esr_div (ESR branches with CBAM, ensemble loss without / with diversity), manet and manet_div.

        A method is a stage 01 head and objective with their parameters; the _div variants weigh the
        DPP diversity of the attention by ferlib.noisy.DIVERSITY_WEIGHT (1.0).
    method_params : dict[str, dict] or None
        Per-method overrides of head_params and objective_params, e.g. {'esr_div': {'objective_params':
        {'diversity': 0.5}}, 'esr': {'head_params': {'branches': 3}}}; None: the registry's.
    noise : list[dict or None] or None
        Label-noise settings, each a stage 01 label_noise dict or None (clean labels), e.g. [None, {'kind':
        'symmetric', 'rate': 0.2}]; None: clean, symmetric 10/20/30%, pair 20%, and annotator votes where
        the data set has them (ferplus).

        An explicit annotator setting on a data set without votes is refused. The noise has its own
        seed (the dict's 'seed', 0 by default): every method and run seed trains on the same noisy labels.
    seeds : list[int]
        Run seeds (initialisation, batch order); results.csv has one row per seed, summary.csv their mean
        and standard deviation.
    detectors : list[str]
        Detectors of the open-set registry scored as noisy-label detectors on the training rows (higher =
        flipped): small_loss (the loss at the given label) for every method, uncertainty and disagreement
        where the head gives them.

        Only detectors that score the model's outputs without fitting qualify (small_loss, msp, max_logit,
        energy, entropy, uncertainty, disagreement); the AUROC takes the flipped rows as the positive class.
    detector_params : dict[str, dict] or None
        Parameters per detector, as in stage 03, e.g. {'disagreement': {'measure': 'vote'}}.
    attention_images : int
        Test images whose per-branch spatial attention is saved and drawn for esr and manet (0: none).
    compare_with : list[str] or None
        Finished benchmarks (their run_dir) set beside this one in the papers' tables and the
        noisy_accuracy_compared figure, e.g. the same grid from scratch beside one from face weights; read only.
    records_dir : str or None
        Folder of committed combination records (no weights), e.g. 'docs/results/noisy_face10k': a
        combination whose record there holds its key is restored instead of trained, and every finished
        one is copied there, so a grid longer than one machine's life goes on elsewhere; None: none.
    """
    t0 = time.perf_counter()
    arguments = dict(locals())
    arguments.pop("t0")
    plan = plan_benchmark(arguments)
    check_models(plan, arch, input_size)
    if plan.smoothing_note:
        print(plan.smoothing_note)
    out = Path(run_dir) / FOLDER
    n = len(plan.combinations)
    print(
        f"noisy-label benchmark: {len(plan.methods)} methods x {len(plan.noise)} noise settings x "
        f"{len(plan.seeds)} seeds = {n} runs -> {out}"
    )
    splits = _Splits(
        lambda: load_splits(
            dataset,
            data_root,
            None,
            input_size,
            cache_dir,
            class_map=class_map,
            data_options=data_options,
            seed=plan.seeds[0],
        )
    )
    records, ran, skipped, restored = [], [], [], []
    for i, combo in enumerate(plan.combinations, 1):
        record = _finished(combo)
        if record is None and records_dir is not None and restore_record(combo, records_dir):
            record = _finished(combo)
            print(f"[{i}/{n}] {combo.label}: restored from {_record_folder(combo, records_dir)}")
            restored.append(combo.label)
        elif record is not None:
            print(f"[{i}/{n}] {combo.label}: finished, skipped ({combo.folder})")
            skipped.append(combo.label)
        else:
            print(f"[{i}/{n}] {combo.label}: training -> {combo.folder}")
            (combo.folder / RECORD).unlink(missing_ok=True)  # a run killed from here on must not look finished
            train_close_set(**combo.stage01)
            record = _analyse(combo, splits, detectors, detector_params, attention_images)
            write_json(combo.folder / RECORD, record)
            ran.append(combo.label)
        if records_dir is not None:
            save_record(combo, records_dir)
        records.append(record)

    results = results_table(records)
    write_csv(out / "results.csv", results)
    summary = summarise(results, SUMMARY_BY, SUMMARY_VALUES)
    write_csv(out / "summary.csv", summary)
    detection = detection_table(records)
    write_csv(out / "detection.csv", detection)
    detection_summary = summarise(detection, (*SUMMARY_BY, "detector"), ("auroc",))
    write_csv(out / "detection_summary.csv", detection_summary)
    figures = draw_figures(run_dir)
    first = plan.combinations[0].folder / "01_close_set" / "results.json" if plan.combinations else None
    section = {
        "settings": {
            "arch": arch,
            "pretrained": pretrained,
            "input_size": input_size,
            "epochs": epochs,
            "recipe": recipe,
            "data_options": data_options,
            "n_train": read_json(first).get("n_train") if first is not None and first.is_file() else None,
        },
        "methods": plan.methods,
        "noise": {tag: entry for tag, entry in plan.noise},
        "seeds": plan.seeds,
        "recipe": recipe,
        "recipe_params": plan.recipe_params,
        "label_smoothing_note": plan.smoothing_note,
        "runs": n,
        "ran": len(ran),
        "skipped": len(skipped),
        "restored": len(restored),
        "records_dir": records_dir,
        "summary": summary.astype(object).where(summary.notna(), None).to_dict("records"),
        "figures": sorted(figures),
        "wall_seconds": time.perf_counter() - t0,
    }
    modify_manifest(run_dir, lambda m: {**m, "noisy_labels": section})  # replaced whole: no stale keys
    # its headings read the section just written; the compared benchmarks beside it
    write_paper_tables([run_dir, *(compare_with or [])], out)
    print(
        f"{len(ran)} runs trained, {len(skipped)} finished ones skipped, {len(restored)} restored from records; "
        f"tables and figures in {out}"
    )
    return summary
