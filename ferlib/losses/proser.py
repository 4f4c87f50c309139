"""``proser``: PROSER's placeholder losses (Zhou, Ye, Zhan, "Learning Placeholders for
Open-Set Recognition", CVPR 2021), for a head with a dummy classifier (head ``dummy``).

With ``z`` the K close-class logits and ``d`` the dummy logit (the maximum of the head's
``dummy_logits``), every sample gets the K+1 logits ``[z, d]`` and the loss is

    lamb0 * CE([z, d], y)                                     the known class first
  + lamb1 * CE([z with z_y masked to -inf, d], K)             classifier placeholders
  + lamb2 * CE([z~, d~], K)                                   data placeholders

- classifier placeholders: once the true class is taken out, the dummy must be the top
  class, so the dummy ranks second: a per-sample boundary between "this class" and "not
  any known class" (paper Eq. 2, ``beta``; official code ``lamda2``);
- data placeholders: manifold mixup of two samples *of different classes* at an
  intermediate trunk stage, ``h~ = lam h_i + (1 - lam) h_j`` with ``lam ~ Beta(alpha,
  alpha)``, continued through the rest of the network to ``[z~, d~]`` and labelled as the
  dummy class: interpolations between known classes stand in for open data (paper Eq. 4,
  ``gamma``). Pairs are drawn by :func:`different_class_pairs`; a sample whose batch holds
  no other class is not mixed.

Values, and where they come from (the official code, ``proser_unknown_detection.py`` of
zhoudw-zdw/CVPR21-Proser): ``lamb0 = 1`` (``lamda1``), ``lamb1 = 1`` (``lamda2``), ``lamb2
= 0.01`` (hard-coded ``0.01 * loss1``), ``alpha = 1``, one ``lam`` per batch, the mixup
before the trunk's last stage (WRN-28-10's ``layer3`` there; ``mix_at = -1`` here: the
last stage of any trunk). Deviations from that code: (1) it splits every batch into two
halves, mixing the first and classifying the second; here every sample enters both terms
(the same expected loss, less gradient noise); (2) its permutation pairs samples of the
same class too, which the paper's ``y_i != y_j`` rules out and this objective never does;
(3) with ``dummies > 1`` it trains the mixtures against the *first* dummy and the
placeholder term against the max; here every term uses the max (the paper's ``f_hat``).

The returned logits are the K close-class logits of the unmixed batch (training accuracy).
Label smoothing and soft targets are refused by the loop (not one cross-entropy on them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ferlib.losses.base import BaseObjective


def different_class_pairs(
    y: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(i, j)``: every row ``i`` of the batch whose batch holds another class, paired with a
    row ``j`` drawn uniformly among the rows of *other* classes (``y[i] != y[j]`` always).

    Rows of a class alone in the batch (every row, when the batch has one class) are left
    out; ``generator`` (or torch's global one, which :func:`ferlib.train.fit` seeds) draws
    the partners.
    """
    y = torch.as_tensor(y).reshape(-1)
    n = len(y)
    if n < 2:
        empty = torch.zeros(0, dtype=torch.long, device=y.device)
        return empty, empty
    other = y[:, None] != y[None, :]
    draw = torch.rand((n, n), generator=generator, device="cpu").to(y.device)
    draw = draw.masked_fill(~other, -1.0)
    j = draw.argmax(dim=1)
    i = torch.nonzero(other.any(dim=1)).squeeze(1)
    return i, j[i]


def with_dummy(logits: torch.Tensor, dummy_logits: torch.Tensor) -> torch.Tensor:
    """The K+1 logits ``[z, max_d dummy]`` (B, K + 1): the dummy class last."""
    return torch.cat([logits, dummy_logits.max(dim=1, keepdim=True).values], dim=1)


def placeholder_loss(extended: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE of the K+1 logits with the true class masked out, against the dummy class (last):
    minimised when the dummy is the top class among the others, i.e. second overall."""
    mask = F.one_hot(y, extended.shape[1]).bool()
    dummy = torch.full_like(y, extended.shape[1] - 1)
    return F.cross_entropy(extended.masked_fill(mask, float("-inf")), dummy)


def _weight(name: str, value: object, strict: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < 0 or (strict and value == 0):
        bound = "> 0" if strict else ">= 0"
        raise ValueError(f"objective 'proser': {name} must be a finite number {bound}, got {value!r}")
    return float(value)


class ProserPlaceholders(BaseObjective):
    """PROSER's three terms (see the module docstring).

    Parameters
    ----------
    lamb0 : float
        Weight of the cross-entropy of the K+1 logits against the true class (1).
    lamb1 : float
        Weight of the classifier placeholders, dummy second (paper beta; 1).
    lamb2 : float
        Weight of the data placeholders, mixtures of two classes labelled dummy (paper
        gamma; 0.01 in the official code). 0 skips the mixup.
    alpha : float
        Beta(alpha, alpha) of the mixing coefficient (> 0; 1: uniform).
    mix_at : int
        Trunk stage the mixed maps enter (0: mix the input images; negative counts from the
        end: -1 = before the last stage).
    """

    name = "proser"

    def __init__(
        self, lamb0: float = 1.0, lamb1: float = 1.0, lamb2: float = 0.01, alpha: float = 1.0, mix_at: int = -1
    ):
        self.lamb0 = _weight("lamb0", lamb0)
        self.lamb1 = _weight("lamb1", lamb1)
        self.lamb2 = _weight("lamb2", lamb2)
        self.alpha = _weight("alpha", alpha, strict=True)
        if isinstance(mix_at, bool) or not isinstance(mix_at, int):
            raise ValueError(f"objective 'proser': mix_at must be an integer, got {mix_at!r}")
        self.mix_at = mix_at
        if self.lamb0 + self.lamb1 + self.lamb2 == 0:
            raise ValueError("objective 'proser': lamb0, lamb1 and lamb2 must not all be 0")

    def stage(self, model: nn.Module) -> int:
        """``mix_at`` as a stage index of ``model``'s trunk (0..num_stages)."""
        n = model.trunk.num_stages
        at = self.mix_at + n if self.mix_at < 0 else self.mix_at
        if not 0 <= at <= n:
            raise ValueError(f"objective 'proser': mix_at={self.mix_at} is outside the trunk's {n} stages")
        return at

    def check(self, model: nn.Module) -> None:
        head = getattr(model, "head", None)
        if not isinstance(getattr(head, "dummies", None), int):
            name = getattr(getattr(model, "cfg", None), "head", type(model).__name__)
            raise ValueError(
                f"objective 'proser' trains a dummy classifier beside the close classes, but head {name!r} "
                "has none; use head='dummy'"
            )
        if self.lamb2 > 0:
            if not callable(getattr(model, "forward_from", None)):
                raise ValueError("objective 'proser' mixes an intermediate map: the model needs forward_until/from")
            self.stage(model)

    def mix_coefficient(self) -> float:
        """The batch's ``lam ~ Beta(alpha, alpha)``, drawn from torch's global generator."""
        a = torch.tensor(self.alpha)
        return float(torch.distributions.Beta(a, a).sample())

    def __call__(self, model, x, y, index):
        lamb2 = self.lamb2 > 0
        if lamb2:
            at = self.stage(model)
            h = model.forward_until(x, at)
            out = model.forward_from(h, at)
        else:
            out = model.forward_all(x)
        if "dummy_logits" not in out.extras:
            raise ValueError("objective 'proser' needs extras['dummy_logits'] from the model; use head='dummy'")
        extended = with_dummy(out.logits, out.extras["dummy_logits"])
        loss = self.lamb0 * F.cross_entropy(extended, y) + self.lamb1 * placeholder_loss(extended, y)
        if lamb2:
            i, j = different_class_pairs(y)
            if len(i):
                lam = self.mix_coefficient()
                mixed = model.forward_from(lam * h[i] + (1 - lam) * h[j], at)
                mixed_ext = with_dummy(mixed.logits, mixed.extras["dummy_logits"])
                dummy = torch.full((len(i),), mixed_ext.shape[1] - 1, dtype=torch.long, device=mixed_ext.device)
                loss = loss + self.lamb2 * F.cross_entropy(mixed_ext, dummy)
        return loss, out.logits
