"""The one training loop, and the one inference function.

Every method in the kit trains through :func:`fit`. Methods differ by the *objective*
they pass in (cross-entropy, CAM flip consistency, RUL mixup, diversity...) and by the
rows they train on, never by a copied loop. The loop owns what every method needs and
none should re-implement: seeding, whole-batch augmentation on tensors (no image decoding
inside an epoch), the recipe's optimiser (Adam or SGD-Nesterov), learning-rate schedule
with warm-up, label smoothing and weight EMA (:class:`TrainConfig`; named settings in
:mod:`ferlib.recipes`), selection of the best epoch on a
validation split, a checkpoint every epoch so that a killed run resumes, per-epoch metrics
as CSV and JSON, tqdm progress, and a ``device`` parameter (CPU by default).

A checkpoint is resumed only when every input that determines the result is the same
(:func:`training_key`): settings, the content of the training and validation images and
targets, the objective's parameters and the model's initial weights. What does not change
the result (device, progress, evaluation batch size) is left out, so a run moved from a GPU
to a CPU resumes.

Under ``torchrun`` the same :func:`fit` and :func:`predict` run data-parallel
(DistributedDataParallel; :mod:`ferlib.distributed`); see :func:`fit` for what is and is
not the single-process computation.
"""

from __future__ import annotations

import copy
import gc
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ferlib import distributed
from ferlib.data.augment import AugmentConfig, augment_batch, augment_config, to_float
from ferlib.data.mix import cutmix_batch
from ferlib.digest import json_digest, state_dict_digest, tensor_digest
from ferlib.io import read_json, torch_save, write_csv, write_json
from ferlib.losses import CrossEntropy, Objective, objective_config
from ferlib.progress import progress_bar

__all__ = [
    "AgreementProbe",
    "EpochInfo",
    "FitResult",
    "Objective",
    "Prediction",
    "TensorData",
    "TrainConfig",
    "fit",
    "load_history",
    "predict",
    "training_key",
]

#: fields of TrainConfig that do not change what training computes: left out of the key.
#: ``epochs`` is left out on purpose: a finished run can be extended by asking for more
#: epochs, and resumes.
NOT_IN_KEY = ("epochs", "device", "progress", "eval_batch_size", "compile")
#: bump when the loop's arithmetic changes so old checkpoints are not resumed
LOOP_VERSION = 2
#: schedules that run to zero over ``epochs``: for these ``epochs`` enters the key
RUN_LENGTH_SCHEDULES = ("cosine", "onecycle")
SCHEDULES = ("exponential", "cyclic", "constant", *RUN_LENGTH_SCHEDULES)
OPTIMIZERS = ("adam", "adamw", "sgd")
#: objectives whose loss is ``CE(logits, y) + terms that do not involve the targets``:
#: label smoothing is applied to their cross-entropy term (see :func:`_smoothed`)
SMOOTHABLE_OBJECTIVES = ("ce", "cam_flip")


@dataclass
class TrainConfig:
    """Optimisation settings. Defaults follow the reference close-set recipe (METHODS.md)
    except batch size and epochs, which are sized for a CPU; :mod:`ferlib.recipes` names
    tuned sets of them. Each recipe switch is off at its default, so its contribution can
    be measured by turning it on alone:

    - ``optimizer``: ``adam`` or ``sgd`` (Nesterov momentum ``momentum``; coupled weight decay).
    - ``schedule``: ``exponential`` / ``cyclic`` / ``constant`` (per epoch, extendable), or
      ``cosine`` / ``onecycle`` (cosine or linear decay to zero at the end of ``epochs``,
      so ``epochs`` then enters the key); ``warmup_epochs`` ramps any schedule up linearly
      from zero. All of it is the stateless :meth:`lr_at`, so resuming is exact.
    - ``label_smoothing``: targets ``(1 - eps) * onehot + eps / K`` in the cross-entropy.
    - ``ema_decay``: exponential moving average of the weights (and BatchNorm statistics)
      after every step; validation, selection, ``best.pt`` and the returned model use the
      EMA copy; 0 turns it off.
    - ``flip_tta``: validation (and the stages' predictions) average the logits of each
      image and its mirror (:func:`predict` ``tta=True``).
    - ``cutmix_p``: the share of batches cut-mixed after the augmentation (CutMix,
      :mod:`ferlib.data.mix`); their targets become area-weighted label mixtures, so the
      objective must take soft targets (``ce``, ``cam_flip``). 0 turns it off.
    - Fine-tuning a pretrained trunk (``model.trunk``; :func:`trainable_groups`):
      ``trunk_lr_mult`` scales the trunk's learning rate against the new head's (pretrained
      features need smaller steps than a head drawn at random; 0 freezes the trunk, training
      the head alone, for small data sets where full fine-tuning overfits); ``frozen_stages``
      holds the trunk's first stages fixed (their BatchNorm statistics too), so that only
      the last levels adapt; ``freeze_norm`` holds the trunk's normalisation layers fixed
      (BatchNorm, dlib's ``affine``). ``adamw`` is Adam with decoupled weight decay.

    ``compile`` runs the training step (the objective's forward and loss) through
    ``torch.compile`` (inductor). Like ``device`` it is left out of the key: it computes the
    same step up to floating-point rounding, so a run may switch it and resume. Whether it
    pays depends on the device and model: ``benchmarks/train_throughput.py --compile``
    measures it; the first epoch also pays the compilation (tens of seconds on a CPU).
    Validation and :func:`predict` stay eager.
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "exponential"  # "exponential" | "cyclic" | "constant" | "cosine" | "onecycle"
    lr_gamma: float = 0.9  # exponential: lr * gamma**epoch (ExponentialLR)
    cycle_epochs: int = 5  # cyclic: cosine from lr to lr_min over each cycle, then restart
    lr_min: float = 1e-5
    optimizer: str = "adam"  # "adam" | "sgd" (Nesterov)
    momentum: float = 0.9  # sgd only
    warmup_epochs: float = 0.0  # linear ramp from 0 to lr over this many epochs
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # 0: off; e.g. 0.999
    flip_tta: bool = False
    cutmix_p: float = 0.0  # 0: off; the CutMix paper's CIFAR setting is 0.5
    trunk_lr_mult: float = 1.0  # the trunk's lr = lr * this (0: trunk frozen)
    frozen_stages: int = 0  # the trunk's first stages held fixed
    freeze_norm: bool = False  # the trunk's BatchNorm / affine layers held fixed
    seed: int = 0
    device: str = "cpu"
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    eval_batch_size: int = 512
    channels_last: bool = True
    #: resize each batch to this size on the device (antialiased) when the cache is stored
    #: at another size; None: the stored size (ferlib.data.augment.to_float)
    input_size: int | None = None
    #: bfloat16 autocast, on CUDA and on the CPU (see :func:`cpu_has_native_bf16`)
    amp: bool = False
    compile: bool = False  # torch.compile the training step (not in the key; measure before use)
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):  # a recipe's overrides of the papers' policy
            self.augment = augment_config(self.augment)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field for a setting the loop cannot run."""
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        checks = {
            "momentum": 0 <= self.momentum < 1,
            "warmup_epochs": self.warmup_epochs >= 0,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "ema_decay": 0 <= self.ema_decay < 1,
            "cutmix_p": 0 <= self.cutmix_p <= 1,
            "trunk_lr_mult": 0 <= self.trunk_lr_mult <= 10,
            "frozen_stages": isinstance(self.frozen_stages, int) and self.frozen_stages >= 0,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is out of range")

    def lr_at(self, epoch_float: float) -> float:
        """Learning rate at a fractional epoch; stateless, so resuming needs no scheduler state.

        Warm-up multiplies the schedule by ``epoch_float / warmup_epochs`` until it reaches
        1; ``cosine`` and ``onecycle`` decay from ``lr`` at the end of the warm-up to zero
        at ``epochs`` (cosine, or linearly as the speed runs' one-cycle triangle)."""
        warm = min(1.0, epoch_float / self.warmup_epochs) if self.warmup_epochs > 0 else 1.0
        if self.schedule == "exponential":
            return warm * self.lr * self.lr_gamma ** math.floor(epoch_float)
        if self.schedule == "cyclic":
            t = (epoch_float % self.cycle_epochs) / self.cycle_epochs
            return warm * (self.lr_min + 0.5 * (self.lr - self.lr_min) * (1 + math.cos(math.pi * t)))
        if self.schedule == "constant":
            return warm * self.lr
        if self.schedule in RUN_LENGTH_SCHEDULES:
            span = max(self.epochs - self.warmup_epochs, 1e-12)
            t = min(1.0, max(0.0, (epoch_float - self.warmup_epochs) / span))
            decay = 0.5 * (1 + math.cos(math.pi * t)) if self.schedule == "cosine" else 1.0 - t
            return warm * self.lr * decay
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")

    def key_fields(self) -> dict:
        """The settings that change the trajectory (all but :data:`NOT_IN_KEY`; ``epochs``
        too when the schedule runs to zero over them). Recipe fields at their off value are
        left out, so checkpoints written before they existed still resume."""
        fields = {k: v for k, v in asdict(self).items() if k not in NOT_IN_KEY}
        if self.augment is not None:
            fields["augment"] = self.augment.key_fields()
        if self.schedule in RUN_LENGTH_SCHEDULES:
            fields["epochs"] = self.epochs
        for name, off in _RECIPE_OFF.items():
            if fields.get(name) == off:
                del fields[name]
        if self.optimizer != "sgd":
            del fields["momentum"]  # Adam does not read it
        if self.amp:
            # Until 2026-11-27 ``amp`` was ignored on the CPU (fp32 arithmetic); a checkpoint
            # keyed ``amp: True`` then may hold fp32 CPU training, so the bf16 loop gets a
            # new value here and such checkpoints are not resumed under bf16.
            fields["amp"] = AMP_DTYPE
        return fields


#: the value at which each recipe switch changes nothing (the loop as it was before them)
_RECIPE_OFF: dict[str, object] = {
    "optimizer": "adam",
    "warmup_epochs": 0.0,
    "label_smoothing": 0.0,
    "ema_decay": 0.0,
    "flip_tta": False,
    "cutmix_p": 0.0,
    "trunk_lr_mult": 1.0,
    "frozen_stages": 0,
    "freeze_norm": False,
}


#: how :func:`fit` uses :attr:`TensorData.soft_targets` (FERPlus's training modes):
#: ``crossentropy`` trains on the distributions as soft targets; ``probability`` draws a hard
#: target from each row's distribution every time the row is used (per batch, seeded).
SOFT_MODES = ("crossentropy", "probability")


@dataclass
class TensorData:
    """Decoded images (uint8, N x C x S x S, C = 1 for a gray cache or 3; a tensor or a lazy
    :class:`~ferlib.data.cache.RowView` of a memory-mapped cache) and contiguous int64
    targets, side by side.

    ``soft_targets`` (optional, float32 ``(N, K)``, rows summing to one): what the loss
    trains on instead of ``targets`` (e.g. the annotators' vote distribution), used as
    ``soft_mode`` says (:data:`SOFT_MODES`). ``targets`` stay the hard labels that training
    accuracy is counted against."""

    images: torch.Tensor
    targets: torch.Tensor
    soft_targets: torch.Tensor | None = None
    soft_mode: str = "crossentropy"

    def __post_init__(self) -> None:
        self.targets = torch.as_tensor(self.targets, dtype=torch.long)
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.targets):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} targets")
        if self.soft_mode not in SOFT_MODES:
            raise ValueError(f"soft_mode must be one of {', '.join(SOFT_MODES)}, got {self.soft_mode!r}")
        if self.soft_targets is not None:
            soft = torch.as_tensor(np.asarray(self.soft_targets), dtype=torch.float32)
            if soft.ndim != 2 or len(soft) != len(self.targets):
                raise ValueError(f"soft_targets must be (N={len(self.targets)}, K), got {tuple(soft.shape)}")
            if len(soft) and (soft.min() < 0 or not torch.allclose(soft.sum(1), torch.ones(len(soft)), atol=1e-4)):
                raise ValueError("soft_targets rows must be probabilities (>= 0, summing to 1)")
            self.soft_targets = soft

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, index: np.ndarray | torch.Tensor) -> TensorData:
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        soft = None if self.soft_targets is None else self.soft_targets[index]
        return TensorData(self.images[index], self.targets[index], soft, self.soft_mode)

    def loss_targets(self, index: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """What the loss of rows ``index`` trains on (on the CPU): the hard targets, the soft
        targets (``crossentropy``), or hard targets drawn from them (``probability``, with
        ``generator``)."""
        if self.soft_targets is None:
            return self.targets[index]
        soft = self.soft_targets[index]
        if self.soft_mode == "probability":
            return torch.multinomial(soft, 1, generator=generator).squeeze(1)
        return soft


@dataclass
class EpochInfo:
    epoch: int
    model: nn.Module
    row: dict


#: a measurement of the model at each epoch's end: name -> value, added to the epoch's history
#: row (so it is checkpointed and resumed with the history); called on every rank under torchrun
Probe = Callable[[nn.Module], Mapping[str, float]]


@dataclass
class FitResult:
    history: pd.DataFrame
    best_epoch: int
    out_dir: Path | None


def _to_device(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    model = model.to(cfg.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


#: the autocast precision of ``TrainConfig.amp`` (recorded in the key when it is on)
AMP_DTYPE = "bfloat16"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bfloat16 convolutions and matrix products natively (AVX-512
    BF16 or AMX, as oneDNN reports it). Where it does, ``amp`` on the CPU trains the small
    networks about 1.9 times as fast as fp32 (``benchmarks/train_throughput.py --amp``;
    docs/journal/time_to_accuracy.md, "bf16 on the CPU"); where it does not, oneDNN emulates bf16 and the
    same setting is slower than fp32, which :func:`fit` says."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def _autocast(cfg: TrainConfig):
    """bfloat16 autocast on the config's device when ``cfg.amp``; a disabled context otherwise.

    bf16 keeps fp32's exponent range, so no loss scaling is needed (unlike fp16), and the
    same setting means the same arithmetic on CUDA and on the CPU. Devices other than
    ``cuda*`` and ``cpu`` run without autocast."""
    kind = "cuda" if cfg.device.startswith("cuda") else "cpu" if cfg.device == "cpu" else None
    if not cfg.amp or kind is None:
        return torch.autocast("cpu", enabled=False)
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=True)


def _batch(images: torch.Tensor, index: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    x = to_float(images[index].to(cfg.device, non_blocking=True), size=cfg.input_size)
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x


_NORM_LAYERS = (nn.modules.batchnorm._BatchNorm,)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_LAYERS) or type(module).__name__ == "Affine"  # dlib's affine_


def frozen_modules(model: nn.Module, cfg: TrainConfig) -> list[nn.Module]:
    """The trunk modules that ``cfg`` holds fixed (``trunk_lr_mult=0``: the whole trunk;
    ``frozen_stages``: its first stages; ``freeze_norm``: its normalisation layers)."""
    if cfg.trunk_lr_mult == 1.0 and cfg.frozen_stages == 0 and not cfg.freeze_norm:
        return []
    trunk = getattr(model, "trunk", None)
    if trunk is None or not callable(getattr(trunk, "stages", None)):
        raise ValueError(
            f"trunk_lr_mult / frozen_stages / freeze_norm need a network with a trunk (ferlib.models.FERNet); "
            f"got {type(model).__name__}"
        )
    stages = trunk.stages()
    if cfg.frozen_stages > len(stages):
        raise ValueError(f"frozen_stages={cfg.frozen_stages}, but the trunk has {len(stages)} stages")
    if cfg.trunk_lr_mult == 0:
        return [trunk]
    out = list(stages[: cfg.frozen_stages])
    if cfg.freeze_norm:
        out += [m for m in trunk.modules() if _is_norm(m)]
    return out


def trainable_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Optimiser parameter groups: the trunk's at ``lr * trunk_lr_mult`` (``lr_mult`` in the
    group, applied by the loop's schedule), everything else at ``lr``; frozen parameters
    (:func:`frozen_modules`) get ``requires_grad=False`` and no group."""
    for module in frozen_modules(model, cfg):
        module.requires_grad_(False)
    trunk = getattr(model, "trunk", None)
    in_trunk = {id(p) for p in trunk.parameters()} if trunk is not None and cfg.trunk_lr_mult != 1.0 else set()
    trunk_params = [p for p in model.parameters() if p.requires_grad and id(p) in in_trunk]
    other = [p for p in model.parameters() if p.requires_grad and id(p) not in in_trunk]
    groups = [{"params": other, "lr_mult": 1.0, "lr": cfg.lr}]
    if trunk_params:
        groups.append({"params": trunk_params, "lr_mult": cfg.trunk_lr_mult, "lr": cfg.lr * cfg.trunk_lr_mult})
    return [g for g in groups if g["params"]]


def _hold_frozen(model: nn.Module, cfg: TrainConfig) -> None:
    """Frozen modules stay in evaluation mode (BatchNorm keeps its pretrained statistics)."""
    for module in frozen_modules(model, cfg):
        module.eval()


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = trainable_groups(model, cfg)
    if not groups:
        raise ValueError("every parameter is frozen: nothing to train (check trunk_lr_mult / frozen_stages)")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def check_smoothing(objective: object, label_smoothing: float, cutmix_p: float = 0.0) -> None:
    """Refuse label smoothing (and CutMix's mixed targets) for an objective whose loss is not
    one cross-entropy on the returned logits plus target-free terms (``rul``'s mixup,
    ``ensemble``'s per-branch sum): smoothing or mixing the returned logits' targets would
    change a different loss than the one trained. Stages call it before decoding any data;
    :func:`fit` again."""
    name = objective_config(objective).get("name")
    for setting, value in (("label_smoothing", label_smoothing), ("cutmix_p", cutmix_p)):
        if value > 0 and name not in SMOOTHABLE_OBJECTIVES:
            raise ValueError(
                f"{setting}={value} needs an objective whose loss is cross-entropy plus "
                f"target-free terms ({', '.join(SMOOTHABLE_OBJECTIVES)}); objective {name!r} is not one "
                f"(e.g. recipe_params={{'{setting}': 0.0}})"
            )


def _check_smoothing(objective: object, cfg: TrainConfig) -> None:
    check_smoothing(objective, cfg.label_smoothing, cfg.cutmix_p)


def _num_classes(model: nn.Module, train: TensorData) -> int:
    """The number of classes the logits have (CutMix's one-hot width): the model's config
    when it has one, else the soft targets' width, else the largest label + 1."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and getattr(cfg, "num_classes", None):
        return int(cfg.num_classes)
    if train.soft_targets is not None:
        return int(train.soft_targets.shape[1])
    return int(train.targets.max()) + 1


def _smoothed(loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """The objective's loss with its cross-entropy term label-smoothed.

    For the objectives of :data:`SMOOTHABLE_OBJECTIVES` the loss is ``CE(logits, y) + R``
    with ``R`` free of targets, and smoothed CE is ``(1 - eps) CE + eps * mean_k(-log p_k)``,
    so adding ``eps * (mean_k(-log p_k) - CE)`` gives exactly the smoothed loss; doing it
    here keeps one implementation for every such objective. ``y`` may be soft targets
    ``(B, K)`` (``CE = -sum_k y_k log p_k``): the result is the cross-entropy against
    ``(1 - eps) y + eps / K``, the same smoothing of a vote distribution."""
    logp = F.log_softmax(logits.float(), dim=1)
    ce = -(y.float() * logp).sum(dim=1).mean() if y.is_floating_point() else F.nll_loss(logp, y)
    return loss + eps * (-logp.mean(dim=1).mean() - ce)


def _check_soft_targets(objective: object, train: TensorData) -> None:
    """Soft targets reach the objective as ``y``; only objectives whose loss is
    ``F.cross_entropy(logits, y)`` plus target-free terms read them right (cross-entropy
    takes class probabilities as well as indices). Drawn targets (``probability``) are hard
    and suit every objective."""
    if train.soft_targets is None or train.soft_mode != "crossentropy":
        return
    name = objective_config(objective).get("name")
    if name not in SMOOTHABLE_OBJECTIVES:
        raise ValueError(
            f"soft targets (crossentropy label mode) need an objective whose loss is cross-entropy plus "
            f"target-free terms ({', '.join(SMOOTHABLE_OBJECTIVES)}); objective {name!r} is not one"
        )


def _label_generator(cfg: TrainConfig, epoch: int) -> torch.Generator:
    """The stream that draws the ``probability`` mode's targets in ``epoch``: seeded by
    (seed, epoch), so a resumed run draws what an uninterrupted one would, with no state to
    checkpoint."""
    return torch.Generator().manual_seed((cfg.seed + 2) * 1_000_003 + epoch)


class WeightEMA:
    """Exponential moving average of a model's floating-point state (weights and BatchNorm
    running statistics; integer buffers are copied).

    The decay warms up as ``min(decay, (1 + t) / (10 + t))`` over the global step ``t``, so
    early averages are not dominated by the random initialisation; ``t`` is derived from
    (epoch, step), so a resumed run continues the same sequence."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        src = model.state_dict()
        floats_e, floats_s = [], []
        for name, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                floats_e.append(value)
                floats_s.append(src[name].to(value.dtype))
            else:
                value.copy_(src[name])
        torch._foreach_lerp_(floats_e, floats_s, 1.0 - d)


def training_key(
    model: nn.Module, train: TensorData, val: TensorData | None, cfg: TrainConfig, objective: object
) -> tuple[str, dict]:
    """``(key, ingredients)``: a hash of everything that determines what :func:`fit` computes.

    Ingredients: the loop's version, the settings (:meth:`TrainConfig.key_fields`: not the
    device, progress, evaluation batch size or epochs), the content of the training and
    validation images and targets (so new pseudo labels retrain), the objective's
    ``config()`` (so a new loss weight retrains), and the model's *initial* state dict and
    module structure (architecture, head, pretrained weights, init seed and dropout in
    one go). Call it before training: ``model`` must hold its initial weights. Noisy
    targets change the targets' digest; soft targets and their mode enter only when
    present, so the keys of runs without them stay as they were. Under ``torchrun`` the world
    size enters too (see :func:`fit`); a single process's key has no such entry.
    """
    ingredients = {
        "loop_version": LOOP_VERSION,
        "train_config": cfg.key_fields(),
        "train_data": tensor_digest(train.images, train.targets),
        "n_train": len(train),
        "val_data": tensor_digest(val.images, val.targets) if val is not None else None,
        "n_val": len(val) if val is not None else 0,
        "objective": objective_config(objective),
        "initial_model": state_dict_digest(model),
        "model_structure": json_digest({"repr": repr(model)}),
    }
    if train.soft_targets is not None:
        ingredients["soft_targets"] = {"mode": train.soft_mode, "data": tensor_digest(train.soft_targets)}
    if distributed.is_distributed():
        # not the single-process computation (BatchNorm statistics per shard, batch-level
        # objectives): a checkpoint resumes only under the same world size (see fit)
        ingredients["world_size"] = distributed.world_size()
    return json_digest(ingredients), ingredients


def _device_type(device: str) -> str:
    return torch.device(device).type


def _restore_aug_generator(aug_gen: torch.Generator, ckpt: dict, cfg: TrainConfig, desc: str) -> None:
    """Continue the augmentation stream where the checkpoint left it. A generator's state
    is device-specific (CPU and CUDA states have different formats), so a run resumed on
    another kind of device reseeds from (seed, epoch) instead and says so: the result is
    not bit-identical to an uninterrupted run there, as no cross-device run is."""
    saved_on = ckpt.get("aug_device_type", "cpu")
    if saved_on == _device_type(cfg.device):
        aug_gen.set_state(ckpt["aug_generator"])
        return
    aug_gen.manual_seed((cfg.seed + 1) * 1_000_003 + ckpt["epoch"] + 1)
    if cfg.progress:
        print(
            f"{desc}: checkpoint written on {saved_on}, resuming on {cfg.device}: "
            "the augmentation stream is reseeded for the remaining epochs"
        )


def _resume_point(path: Path, key: str, cfg: TrainConfig, desc: str) -> dict | None:
    """The checkpoint at ``path`` when it was written for ``key``, else None (and a stale
    ``best.pt`` beside it is removed, so it can never be loaded for this run)."""
    ckpt = None
    if path.exists():
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)  # load_state_dict moves it
        except Exception as exc:  # noqa: BLE001 - a torn or foreign file: start over, say why
            print(f"{desc}: {path} is not a readable checkpoint ({type(exc).__name__}: {exc}); starting over")
        if ckpt is not None and (not isinstance(ckpt, dict) or ckpt.get("key") != key):
            if cfg.progress:
                print(
                    f"{desc}: {path} belongs to other inputs (settings, data, targets, objective or "
                    f"initial weights; see {path.parent / 'key.json'}); starting over"
                )
            ckpt = None
    if ckpt is None and (path.parent / "best.pt").exists():
        (path.parent / "best.pt").unlink()
    return ckpt


def _load_best(out: Path) -> dict | None:
    """The best-on-validation weights written by :func:`fit`, or None when there are none."""
    return torch.load(out / "best.pt", map_location="cpu") if (out / "best.pt").exists() else None


class _ObjectiveStep(nn.Module):
    """What DistributedDataParallel wraps: one call of the objective on the model.

    DDP synchronises gradients of what runs inside its ``forward``; objectives call more
    than ``model(x)`` (``forward_all``, ``cam``, ``head.classify``), so the whole objective
    call is the wrapped forward. The objective is kept out of the module tree (it is not
    trained)."""

    def __init__(self, model: nn.Module, objective: Objective, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self._objective = [objective]
        self._cfg = cfg

    def forward(self, x: torch.Tensor, t: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with _autocast(self._cfg):
            return self._objective[0](self.model, x, t, index)


def _check_same_key(key: str, desc: str) -> None:
    """Under torchrun: refuse to train when the ranks' inputs differ (data, targets, initial
    weights...): DDP would silently train rank 0's model on a mixture."""
    keys = distributed.all_gather_objects(key)
    if len(set(keys)) > 1:
        raise RuntimeError(
            f"{desc}: the ranks' training inputs differ (keys {keys}); every rank must build the same "
            "data, targets, settings and initial model"
        )


def fit(
    model: nn.Module,
    train: TensorData,
    val: TensorData | None,
    cfg: TrainConfig,
    objective: Objective | None = None,
    out_dir: str | Path | None = None,
    callbacks: Sequence[Callable[[EpochInfo], None]] = (),
    desc: str = "train",
    probes: Sequence[Probe] = (),
) -> FitResult:
    """Train ``model`` in place and leave it holding the best-on-validation weights.

    With ``out_dir`` the loop writes ``last.pt`` (model, optimiser, generator state,
    history) after every epoch and ``best.pt`` (weights) when validation accuracy improves;
    a later call with the same inputs resumes from ``last.pt``. Different inputs (see
    :func:`training_key`, whose ingredients are written to ``key.json`` beside the
    checkpoint) start over, so stale checkpoints never leak into a changed run.
    Without ``val`` the last epoch is kept.

    ``probes`` measure the model (the one validated) at each epoch's end, e.g. how many
    flipped training labels it already fits (:class:`AgreementProbe`); their values become
    columns of the history (``history.csv``), outside the epoch's ``seconds``. They change no
    weight, so they are not part of the key: a run resumed with other probes has gaps (NaN).

    **Under torchrun** (``WORLD_SIZE`` > 1; nothing to pass: :mod:`ferlib.distributed`
    initialises the process group, gloo on CPU, NCCL for CUDA tensors, and a CUDA device
    becomes ``cuda:LOCAL_RANK``) the loop runs data-parallel with DistributedDataParallel:

    - ``batch_size`` stays the *global* batch. Every rank draws the same permutation from
      the seeded generator, so the same global batches in the same order, and trains on its
      contiguous slice of each (:func:`ferlib.distributed.shard`; sizes differ by at most
      one). A global batch is skipped when a slice would hold fewer than 2 samples
      (BatchNorm), i.e. a last partial batch of fewer than ``2 * world_size`` samples (one
      process skips only fewer than 2).
    - Augmentation: each rank augments the whole global batch with the shared generator and
      keeps its slice, so every sample gets exactly the augmentation it gets in one process
      (the draws depend on the batch's size and order, so augmenting only the slice could
      not be). Cost: every rank decodes, normalises and augments the global batch (tensor
      operations, small beside the forward and backward passes, which run on the slice
      only); without augmentation only the slice is loaded. ``probability`` targets are
      drawn the same way.
    - Gradients: DDP averages the ranks' gradients; each rank's loss is the mean over its
      slice, scaled by ``world_size * slice / global batch`` (1 for equal slices), so the
      average is the gradient of the global batch's mean loss for any loss that is a mean
      of per-sample terms (cross-entropy, label smoothing, soft targets, CAM flip).
      ``find_unused_parameters`` is on (heads whose extras a loss leaves unused, ensemble's
      frozen branches keep ``grad`` None as in one process).
    - Not the single-process computation: BatchNorm normalises each slice with the slice's
      statistics (torch's SyncBatchNorm refuses CPU tensors, so it is not used: the CPU
      test could not check it), and running statistics are rank 0's (broadcast every
      epoch); losses over batch-level quantities (RUL's mixup pairs, the ensemble's
      diversity kernel) see the slice; torch's global generator (dropout, RUL's pairing) is
      seeded per rank, so ranks draw different masks. Hence the world size enters the
      key (:func:`training_key`): a checkpoint resumes only under the same world size, and
      a single-process checkpoint never resumes under DDP, or the reverse.
    - Validation runs :func:`predict` on each rank's slice of the rows, gathered to every
      rank, so every rank computes the same metrics and picks the same best epoch.
      Training loss and accuracy are summed over the ranks.
    - Files (checkpoints, history, ``key.json``) are written by rank 0 only, the others
      waiting (:mod:`ferlib.io`). On a resume rank 0 reads ``last.pt`` and sends it to every
      rank; the ranks' keys must agree (else ``RuntimeError``). At the end every rank holds
      rank 0's best (or last) weights. Progress and messages come from rank 0 only.
    """
    objective = objective or CrossEntropy()
    if len(train) < 2:
        raise ValueError(f"need at least 2 training samples, got {len(train)}")
    check = getattr(objective, "check", None)
    if callable(check):
        check(model)  # e.g. cam_flip on a head without CAM: fail before any epoch
    _check_smoothing(objective, cfg)
    _check_soft_targets(objective, train)
    distributed.init(cfg.device)  # no-op in a single process
    parallel = distributed.is_distributed()
    n_ranks = distributed.world_size() if parallel else 1
    if parallel:
        if cfg.batch_size < 2 * n_ranks:
            raise ValueError(f"batch_size={cfg.batch_size} is the global batch: at least 2 per rank ({n_ranks} ranks)")
        local = distributed.local_device(cfg.device)
        cfg = replace(cfg, device=local, progress=cfg.progress and distributed.is_main())
    key, ingredients = training_key(model, train, val, cfg, objective)
    if parallel:
        _check_same_key(key, desc)
    torch.manual_seed(cfg.seed)
    if parallel and distributed.rank() > 0:
        torch.manual_seed(cfg.seed + 1_000_003 * distributed.rank())  # dropout masks differ per rank
    if cfg.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    if cfg.amp and cfg.device == "cpu" and cfg.progress and not cpu_has_native_bf16():
        print(
            f"{desc}: amp on a CPU without native bfloat16 (no AVX-512 BF16 or AMX): "
            "oneDNN emulates it, slower than fp32"
        )
    model = _to_device(model, cfg)
    opt = _make_optimizer(model, cfg)
    ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    evaluated = ema.model if ema is not None else model  # validated, selected and saved as best
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed + 1)
    out = Path(out_dir) if out_dir is not None else None
    history: list[dict] = []
    best_acc, best_epoch, start = -1.0, -1, 0

    if out is not None:
        # under torchrun: rank 0 reads it (and drops a stale best.pt), every rank gets it
        ckpt = distributed.run_on_main(lambda: _resume_point(out / "last.pt", key, cfg, desc))
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            if ema is not None:
                ema.model.load_state_dict(ckpt["ema"])
            gen.set_state(ckpt["generator"])
            _restore_aug_generator(aug_gen, ckpt, cfg, desc)
            history, best_acc, best_epoch = ckpt["history"], ckpt["best_acc"], ckpt["best_epoch"]
            start = ckpt["epoch"] + 1
            if cfg.progress:
                print(f"{desc}: resuming from {out / 'last.pt'} after epoch {ckpt['epoch'] + 1}")
        write_json(out / "key.json", {"key": key, **ingredients})
    trainer = (
        nn.parallel.DistributedDataParallel(_ObjectiveStep(model, objective, cfg), find_unused_parameters=True)
        if parallel
        else None
    )
    if cfg.compile:  # the objective's whole step, so losses that call more than model(x) compile too
        trainer = torch.compile(trainer if trainer is not None else _ObjectiveStep(model, objective, cfg))
    synced = list(model.buffers()) + (list(ema.model.buffers()) if ema is not None else [])

    n = len(train)
    n_classes = _num_classes(model, train) if cfg.cutmix_p > 0 else 0
    n_batches = max(1, n // cfg.batch_size + (1 if n % cfg.batch_size >= 2 else 0))
    for epoch in range(start, cfg.epochs):
        if callable(getattr(objective, "on_epoch_start", None)):
            objective.on_epoch_start(epoch)  # 0-based, also after a resume (e.g. ESR's progressive branches)
        t0 = time.perf_counter()
        model.train()
        _hold_frozen(model, cfg)
        perm = torch.randperm(n, generator=gen)
        label_gen = _label_generator(cfg, epoch) if train.soft_targets is not None else None
        total_loss, correct, seen = 0.0, 0, 0
        bar = progress_bar(
            range(n_batches), desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False, disable=not cfg.progress
        )
        for step in bar:
            index = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]  # the global batch
            if len(index) < 2 * n_ranks:  # BatchNorm cannot train on a single sample (per rank)
                continue
            lr = cfg.lr_at(epoch + step / n_batches)
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
            lo, hi = distributed.shard(len(index)) if parallel else (0, len(index))
            rows = index[lo:hi]  # this rank's slice: the whole batch in one process
            y = train.targets[rows].to(cfg.device)  # hard labels: training accuracy
            if cfg.cutmix_p > 0:  # mixed as a whole batch (pairs across ranks), as in one process
                xg = _batch(train.images, index, cfg)
                if cfg.augment is not None:
                    xg = augment_batch(xg, cfg.augment, aug_gen)
                tg = train.targets[index] if train.soft_targets is None else train.loss_targets(index, label_gen)
                xg, tg = cutmix_batch(xg, tg.to(cfg.device), n_classes, cfg.cutmix_p, aug_gen)
                x, t = xg[lo:hi], tg[lo:hi]
            else:
                if cfg.augment is not None:  # augmented as a whole batch, as in one process
                    x = augment_batch(_batch(train.images, index, cfg), cfg.augment, aug_gen)[lo:hi]
                else:
                    x = _batch(train.images, rows, cfg)
                t = y if train.soft_targets is None else train.loss_targets(index, label_gen)[lo:hi].to(cfg.device)
            if trainer is not None:
                loss, logits = trainer(x, t, rows)
            else:
                with _autocast(cfg):
                    loss, logits = objective(model, x, t, rows)
            if cfg.label_smoothing > 0:
                loss = _smoothed(loss, logits, t, cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {loss.item()} at epoch {epoch + 1}, step {step}")
            opt.zero_grad(set_to_none=True)
            if len(rows) * n_ranks != len(index):  # unequal slices: DDP's average = global mean
                (loss * (len(rows) * n_ranks / len(index))).backward()
            else:
                loss.backward()
            opt.step()
            if ema is not None:
                ema.update(model, epoch * n_batches + step)
            total_loss += loss.item() * len(rows)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(rows)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", refresh=False)  # redraw on tqdm's clock
        if parallel:
            total_loss, correct, seen = distributed.all_reduce_sum([total_loss, correct, seen])
            distributed.broadcast_tensors(synced)  # rank 0's BatchNorm statistics: what it saves
        row = {
            "epoch": epoch + 1,
            "train_loss": total_loss / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            # the rate of the epoch's last step: the epoch's start is 0 under a warm-up
            "lr": cfg.lr_at(epoch + (n_batches - 1) / n_batches),
        }
        if val is not None and len(val):
            pred = _predict_under(evaluated, val.images, cfg, tta=cfg.flip_tta)
            row["val_loss"] = F.cross_entropy(pred.logits, val.targets).item()
            row["val_acc"] = (pred.logits.argmax(1) == val.targets).float().mean().item()
            improved = row["val_acc"] > best_acc
        else:
            improved = True
        row["seconds"] = time.perf_counter() - t0
        if parallel:
            row["seconds"] = distributed.broadcast_object(row["seconds"])  # rank 0's, as saved
        for probe in probes:
            row.update({str(k): float(v) for k, v in probe(evaluated).items()})
        history.append(row)
        if improved:
            best_acc, best_epoch = row.get("val_acc", 0.0), epoch + 1
            if out is not None:
                torch_save(out / "best.pt", evaluated.state_dict())
        if out is not None:
            torch_save(
                out / "last.pt",
                {
                    "key": key,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    **({"ema": ema.model.state_dict()} if ema is not None else {}),
                    "generator": gen.get_state(),
                    "aug_generator": aug_gen.get_state(),
                    "aug_device_type": _device_type(cfg.device),
                    "history": history,
                    "best_acc": best_acc,
                    "best_epoch": best_epoch,
                    "config": asdict(cfg),
                },
            )
            write_csv(out / "history.csv", pd.DataFrame(history))
            write_json(out / "history.json", history)
        if cfg.progress:
            msg = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch")
            print(f"{desc} epoch {epoch + 1}/{cfg.epochs}: {msg}")
        for callback in callbacks:
            callback(EpochInfo(epoch + 1, evaluated, row))

    if trainer is not None:
        # DDP sits in reference cycles: free its gradient buckets now, not at some later
        # collection (see also ferlib.distributed._destroy for the process group at exit)
        del trainer
        gc.collect()
    best = distributed.run_on_main(lambda: _load_best(out)) if out is not None and val is not None else None
    if best is not None:
        model.load_state_dict(best)
    elif ema is not None:
        model.load_state_dict(ema.model.state_dict())  # the averaged weights are the result
    if parallel:
        torch.manual_seed(cfg.seed)  # the ranks leave with the same global generator
    return FitResult(pd.DataFrame(history), best_epoch, out)


#: extras of more dimensions than this (spatial maps such as attention, (B, C, h, w)) are
#: not kept by :func:`predict`: a map per image of a whole split would not fit in memory
MAX_EXTRA_DIMS = 3


@dataclass
class Prediction:
    """Per-image outputs in row order, on the CPU, float32.

    ``extras``: the head's per-sample extras (``ForwardOutput.extras`` whose first
    dimension is the batch and that have at most :data:`MAX_EXTRA_DIMS` dimensions, e.g.
    ``uncertainty`` (N,), ``mu`` (N, D), ``branch_logits`` (N, branches, K)); empty for a
    head without extras."""

    logits: torch.Tensor  # (N, K) float32, CPU
    features: torch.Tensor  # (N, C) pooled features, CPU
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 512,
    device: str = "cpu",
    flip: bool = False,
    progress: bool = True,
    channels_last: bool = True,
    desc: str = "predict",
    amp: bool = False,
    tta: bool = False,
    input_size: int | None = None,
    pyramid: bool = False,
) -> Prediction:
    """Logits, pooled features and per-sample extras in eval mode with deterministic
    transforms, in row order.

    ``flip`` predicts the mirrored images instead; ``tta`` (flip test-time augmentation)
    averages the logits, the pooled features and the extras of each image and its mirror,
    which a face's left-right symmetry makes a free second opinion. Extras are kept when
    they are per sample and small (see :class:`Prediction`); spatial maps are dropped.
    ``input_size``: resize each batch on the device (as :attr:`TrainConfig.input_size`);
    ``None`` keeps the stored size. ``pyramid``: also keep ``extras["pyramid"]``, every trunk
    stage's pooled output (:meth:`ferlib.models.net.FERNet.forward_all`).

    Outputs are indexed exactly like ``images``: there is no shuffling anywhere on this
    path, which is what makes pseudo labels index-aligned (the reference code's loader
    shuffled and then indexed by position).

    Under ``torchrun`` every rank must call it (with the same model and rows): each rank
    predicts its contiguous slice of the rows (:func:`ferlib.distributed.shard`) on its own
    device, and the slices are gathered in rank order, so every rank returns the whole
    :class:`Prediction`, the same on all ranks (W times faster than one rank predicting
    alone, at the cost of pickling the outputs once between processes). A CUDA ``device``
    becomes this rank's GPU (:func:`ferlib.distributed.local_device`).
    """
    was_training = model.training
    model.eval()
    parallel = distributed.is_distributed()
    device = distributed.local_device(device)
    lo, hi = distributed.shard(len(images)) if parallel else (0, len(images))
    progress = progress and distributed.is_main()
    cfg = TrainConfig(device=device, channels_last=channels_last, amp=amp, input_size=input_size)
    logits, feats, extras = [], [], {}
    for start in progress_bar(range(lo, hi, batch_size), desc=desc, leave=False, disable=not progress):
        index = torch.arange(start, min(start + batch_size, hi))
        x = _batch(images, index, cfg)
        if flip:
            x = torch.flip(x, dims=[3])
        lg, ft, ex = _forward_eval(model, x, cfg, pyramid)
        if tta:
            lg2, ft2, ex2 = _forward_eval(model, torch.flip(x, dims=[3]), cfg, pyramid)
            lg, ft = (lg + lg2) / 2, (ft + ft2) / 2
            ex = {k: (v + ex2[k]) / 2 for k, v in ex.items()}
        logits.append(lg.cpu())
        feats.append(ft.cpu())
        for k, v in ex.items():
            extras.setdefault(k, []).append(v.cpu())
    model.train(was_training)
    if parallel:  # every rank's batches, in rank (so row) order
        parts = distributed.all_gather_objects((logits, feats, extras))
        logits = [lg for part in parts for lg in part[0]]
        feats = [ft for part in parts for ft in part[1]]
        extras = {}
        for part in parts:
            for k, v in part[2].items():
                extras.setdefault(k, []).extend(v)
    if not logits:
        return Prediction(torch.empty(0, 0), torch.empty(0, 0))
    # an extra that looked per-sample in some batches only (a per-batch tensor whose length
    # happened to equal a batch's) would be misaligned with the rows: only those of every batch
    kept = {k: torch.cat(v) for k, v in extras.items() if len(v) == len(logits)}
    return Prediction(torch.cat(logits), torch.cat(feats), kept)


def _predict_under(model: nn.Module, images: torch.Tensor, cfg: TrainConfig, tta: bool) -> Prediction:
    """:func:`predict` with a run's settings, quietly: what the loop measures at an epoch's end."""
    return predict(
        model,
        images,
        cfg.eval_batch_size,
        cfg.device,
        progress=False,
        channels_last=cfg.channels_last,
        amp=cfg.amp,
        tta=tta,
        input_size=cfg.input_size,
    )


@dataclass
class AgreementProbe:
    """At each epoch's end, the share of ``images``'s rows the model predicts as each named
    target vector (a :data:`Probe` for :func:`fit`). A target of -1 leaves the row out of that
    share. Under label noise (stage 01 with ``label_noise``) it tracks memorisation: on the
    flipped rows, the share predicted as their *given* label rises when the network memorises
    the noise, the share predicted as their true label falls; the clean rows' share is beside.
    No augmentation, no test-time flip: the network's fit of the rows as they are."""

    images: torch.Tensor
    targets: Mapping[str, torch.Tensor]
    #: the run's settings: device, evaluation batch size, bf16, input size, memory format
    cfg: TrainConfig = field(default_factory=lambda: TrainConfig(progress=False))

    def __post_init__(self) -> None:
        for name, t in self.targets.items():
            if t.shape != (len(self.images),):
                n = len(self.images)
                raise ValueError(f"AgreementProbe: targets {name!r} have shape {tuple(t.shape)}, not ({n},)")

    def __call__(self, model: nn.Module) -> dict[str, float]:
        pred = _predict_under(model, self.images, self.cfg, tta=False).logits.argmax(1)
        out = {}
        for name, t in self.targets.items():
            counted = t >= 0
            out[name] = float((pred[counted] == t[counted]).float().mean()) if counted.any() else float("nan")
        return out


def _forward_eval(
    model: nn.Module, x: torch.Tensor, cfg: TrainConfig, pyramid: bool = False
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(float logits, float pooled features, float per-sample extras) of one batch.

    Features are empty (B, 0) and extras empty for a plain module without ``forward_all``;
    extras keep the floating-point tensors whose first dimension is the batch, of at most
    :data:`MAX_EXTRA_DIMS` dimensions."""
    with _autocast(cfg):
        if hasattr(model, "forward_all"):
            out = model.forward_all(x, pyramid=True) if pyramid else model.forward_all(x)
            extras = {
                k: v.float()
                for k, v in out.extras.items()
                if isinstance(v, torch.Tensor)
                and v.is_floating_point()
                and 1 <= v.ndim <= MAX_EXTRA_DIMS
                and v.shape[0] == len(x)
            }
            return out.logits.float(), out.features.float(), extras
        return model(x).float(), torch.empty(len(x), 0, device=x.device), {}


def load_history(out_dir: str | Path) -> pd.DataFrame:
    """Per-epoch metrics written by :func:`fit`."""
    out = Path(out_dir)
    if (out / "history.csv").exists():
        return pd.read_csv(out / "history.csv")
    return pd.DataFrame(read_json(out / "history.json"))
