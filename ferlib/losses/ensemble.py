"""``ensemble``: weighted cross-entropy of every branch plus the DPP diversity of their attention.

For a head with several classifiers (``branches``: ESR's branches with CBAM; ``manet``:
MA-Net's global and local branches) the loss is

    sum_b w_b CE(branch_logits_b, y)
      + diversity * ( L_div(spatial attention maps, flattened)
                    + L_div(channel attention vectors)
                    + L_div(branch features) )

with :func:`~ferlib.losses.diversity.dpp_diversity` (``-det`` or ``-log det`` of the heads'
kernel with a unit diagonal) over whichever of the extras ``spatial_attention`` (B, H, h, w),
``channel_attention`` (B, H, C) and ``branch_features`` (B, H, D) the head returns, H being
its heads (ESR: the branches; MA-Net: the four patches for the attention maps, the two
branches for the features, as the reference). ``diversity=0`` is the ablation without the
term. The objective returns the head's own logits (mean of the branches, or MA-Net's
weighted mean), which training accuracy and validation read.

Weights: ``weights=None`` takes the head's ``branch_weights``, the weights of its own
inference mean: ``1 / branches`` each for ``branches`` (the mean CE; ESR sums the branch
losses, which is the same up to the factor ``branches``, i.e. a learning-rate scale; pass
``weights=[1.0] * branches`` for the sum), MA-Net's ``[1 - local_weight, local_weight]``
(0.4 global, 0.6 local, the reference's ``beta``).

ESR's progressive training (``progressive_epochs``): ESR (Siqueira et al., AAAI 2020,
``main_affectnet_discrete.py`` of the authors' code) trains the base with one branch, then
repeatedly reloads the best ensemble, appends a freshly initialised branch and trains the
base and every branch so far on the sum of their losses (fewer epochs per later stage;
base and old branches at a tenth of the new branch's learning rate); validation votes
with the branches added so far. The kit's simplification: all branches exist from the
start, and with ``progressive_epochs = E > 0`` only the first ``1 + epoch // E`` branches
receive loss (cross-entropy, and the diversity among them); the others are kept out of
the autograd graph (no gradient, so no optimiser step and no weight decay either), so a
branch joins as ESR's new branch does, at its initialisation on a trained base. Its
weights are renormalised over the active branches (ESR sums over them). What is not
reproduced: one learning rate for every parameter (no 10x for the newest branch), no
reload of the best weights between stages, one stage length E for every branch, and
validation (:func:`ferlib.train.fit`) averaging *all* branches, untrained ones included,
until every branch is active; choose ``epochs >= branches * E`` so that the model kept
has trained every branch. The epoch comes from :func:`ferlib.train.fit`, which calls
:meth:`EnsembleObjective.on_epoch_start` before each epoch (also after a resume).
Progressive training needs branches of one kind (``branches``); ``check`` refuses it for
``manet``, whose attention maps are per patch, not per branch.

Label smoothing is refused by the loop (the loss is not one cross-entropy on the returned
logits). Targets may be class indices or class probabilities (``F.cross_entropy`` takes
either).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ferlib.losses.base import BaseObjective
from ferlib.losses.diversity import FORMS, dpp_diversity

#: extras that hold one descriptor per head and sample, in the order they enter the loss
DIVERSITY_EXTRAS = ("spatial_attention", "channel_attention", "branch_features")


def _head(model: nn.Module) -> Any:
    return getattr(model, "head", model)


def _head_name(model: nn.Module) -> str:
    return getattr(getattr(model, "cfg", None), "head", type(_head(model)).__name__)


def _finite_number(name: str, value: object, minimum: float, strict: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"objective 'ensemble': {name} must be a finite number {bound}, got {value!r}")
    return float(value)


class EnsembleObjective(BaseObjective):
    """Weighted per-branch cross-entropy plus DPP diversity (see the module docstring).

    Parameters
    ----------
    diversity : float
        Weight of the diversity terms (>= 0; 0 = the ablation without them).
    gamma : float
        Kernel width of the diversity loss (> 0; 10 in the reference, on L2-normalised
        descriptors here, see :mod:`ferlib.losses.diversity`).
    form : str
        ``"det"`` (the reference's ``-det S``) or ``"logdet"`` (``-log det S``).
    weights : list of float or None
        Loss weight of each branch (>= 0, one per branch); None: the head's ``branch_weights``.
    progressive_epochs : int
        ESR's progressive training: with E > 0 only the first ``1 + epoch // E`` branches
        receive loss; 0 trains all branches from the first epoch.
    """

    name = "ensemble"

    def __init__(
        self,
        diversity: float = 0.0,
        gamma: float = 10.0,
        form: str = "det",
        weights: list[float] | None = None,
        progressive_epochs: int = 0,
    ):
        self.diversity = _finite_number("diversity", diversity, 0.0)
        self.gamma = _finite_number("gamma", gamma, 0.0, strict=True)
        if form not in FORMS:
            raise ValueError(f"objective 'ensemble': form must be one of {list(FORMS)}, got {form!r}")
        self.form = form
        if weights is not None:
            if not isinstance(weights, (list, tuple)) or not weights:
                raise ValueError(f"objective 'ensemble': weights must be a non-empty list of numbers, got {weights!r}")
            weights = [_finite_number("every weight", w, 0.0) for w in weights]
            if sum(weights) == 0:
                raise ValueError("objective 'ensemble': weights must not all be 0")
        self.weights = weights
        if isinstance(progressive_epochs, bool) or not isinstance(progressive_epochs, int) or progressive_epochs < 0:
            raise ValueError(
                f"objective 'ensemble': progressive_epochs must be an integer >= 0, got {progressive_epochs!r}"
            )
        self.progressive_epochs = progressive_epochs
        self._epoch = 0  # set by fit through on_epoch_start; not a parameter (not in config())

    def on_epoch_start(self, epoch: int) -> None:
        """Called by :func:`ferlib.train.fit` before epoch ``epoch`` (0-based), also after a resume."""
        self._epoch = int(epoch)

    def active_branches(self, total: int) -> int:
        """How many of ``total`` branches receive loss in the current epoch."""
        if self.progressive_epochs == 0:
            return total
        return min(total, 1 + self._epoch // self.progressive_epochs)

    def check(self, model: nn.Module) -> None:
        head = _head(model)
        declared = getattr(head, "branch_weights", None)
        if declared is None:
            raise ValueError(
                f"objective 'ensemble' trains every branch of a multi-branch head from its "
                f"'branch_logits', but head {_head_name(model)!r} has no branches; "
                "use head='branches' or head='manet'"
            )
        if self.weights is not None and len(self.weights) != len(declared):
            raise ValueError(
                f"objective 'ensemble': weights has {len(self.weights)} entries, but head "
                f"{_head_name(model)!r} has {len(declared)} branches"
            )
        progressive_ok = getattr(head, "per_branch_attention", False) and isinstance(
            getattr(head, "branches", None), nn.ModuleList
        )
        if self.progressive_epochs > 0 and not progressive_ok:
            raise ValueError(
                f"objective 'ensemble': progressive_epochs adds ESR's branches one by one, but head "
                f"{_head_name(model)!r} has branches of different kinds; use head='branches' or progressive_epochs=0"
            )

    def branch_weights(self, model: nn.Module, total: int) -> torch.Tensor:
        """The loss weight of each of ``total`` branches, 0 for the inactive ones; renormalised
        to the active branches' share of the full weights when progressive."""
        weights = self.weights if self.weights is not None else getattr(_head(model), "branch_weights", None)
        if weights is None:
            weights = [1.0 / total] * total
        if len(weights) != total:
            raise ValueError(f"objective 'ensemble': {len(weights)} weights for {total} branches")
        w = torch.tensor(weights, dtype=torch.float32)
        active = self.active_branches(total)
        if active < total:
            w[active:] = 0
            w = w * (sum(weights) / w.sum().clamp_min(1e-12))
        return w

    def _forward(self, model: nn.Module, x: torch.Tensor):
        """``model.forward_all(x)`` with the inactive branches' parameters out of the graph.

        Slicing the stacked branch outputs would still send *zero* gradients into the
        inactive branches, and an optimiser with weight decay (Adam's L2 term) would then
        move them every step; recording the forward with their ``requires_grad`` off leaves
        their ``.grad`` at None, so the optimiser skips them and they keep their
        initialisation until they join, as ESR's freshly added branch."""
        head = _head(model)
        branches = getattr(head, "branches", None)
        if self.progressive_epochs == 0 or not isinstance(branches, nn.ModuleList):
            return model.forward_all(x)
        frozen = [
            p
            for branch in branches[self.active_branches(len(branches)) :]
            for p in branch.parameters()
            if p.requires_grad
        ]
        for p in frozen:
            p.requires_grad_(False)
        try:
            return model.forward_all(x)
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def __call__(self, model, x, y, index):
        out = self._forward(model, x)
        branch_logits = out.extras.get("branch_logits")
        if branch_logits is None:
            raise ValueError(
                f"objective 'ensemble' needs extras['branch_logits'] from the model; head {_head_name(model)!r} "
                "returns none (use head='branches' or head='manet')"
            )
        total = branch_logits.shape[1]
        weights = self.branch_weights(model, total)
        active = self.active_branches(total)
        loss = sum(weights[b].item() * F.cross_entropy(branch_logits[:, b], y) for b in range(active))
        if self.diversity > 0:
            per_branch = getattr(_head(model), "per_branch_attention", False)
            present = [key for key in DIVERSITY_EXTRAS if key in out.extras]
            if not present:
                raise ValueError(
                    f"objective 'ensemble': diversity={self.diversity} compares the heads' attention or features, "
                    f"but head {_head_name(model)!r} returns none of {list(DIVERSITY_EXTRAS)} "
                    "(head 'branches' with attention=False?); use diversity=0 or a head with attention"
                )
            terms = []
            for key in present:
                value = out.extras[key]
                if key == "branch_features" or per_branch:
                    value = value[:, :active]
                if value.shape[1] >= 2:
                    terms.append(dpp_diversity(value.flatten(2), self.gamma, self.form))
            if terms:
                loss = loss + self.diversity * torch.stack(terms).sum()
        return loss, out.logits
