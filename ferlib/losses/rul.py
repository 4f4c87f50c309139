"""``rul``: Relative Uncertainty Learning's mixup and add-up loss (NeurIPS 2021).

The ``uncertainty`` head gives each sample an embedding ``mu_i``, a log-variance and the
scalar uncertainty ``u_i = mean_d exp(log_var_id)``. RUL learns ``u`` without any
uncertainty label by making it *relative*: samples are paired inside the batch by a
random permutation ``p``, their embeddings are mixed with the weight
``w_i = u_i / (u_i + u_p(i))``, ``m_i = w_i mu_i + (1 - w_i) mu_p(i)``, and the mixture is
classified against both labels with the add-up loss
``0.5 CE(fc(m_i), y_i) + 0.5 CE(fc(m_i), y_p(i))`` (METHODS.md part 2). At inference the
logits are ``fc(mu)`` (the head's own logits), and those are what this objective returns
beside the loss, so the training accuracy means what it means for every other objective.

Training recipe differences from the paper: the kit's one loop uses one learning rate for
every parameter (the paper gives ``fc`` ten times the rest's) and its own augmentation.
Label smoothing is refused (``ferlib.train`` only smooths objectives whose loss is one
cross-entropy on the returned logits, which this one is not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ferlib.losses.base import BaseObjective


def relative_mixup(
    mu: torch.Tensor, log_var: torch.Tensor, permutation: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m, w)``: the mixed embeddings (B, D) and the weights ``w_i`` (B,) of the own sample.

    ``w_i = u_i / (u_i + u_p(i))`` with ``u = mean_d exp(log_var)``; the uncertainty gets its
    gradient only through ``w``, which is how RUL learns it.
    """
    u = torch.exp(log_var).mean(dim=1)
    w = u / (u + u[permutation])
    mixed = w[:, None] * mu + (1 - w[:, None]) * mu[permutation]
    return mixed, w


class RelativeUncertaintyMixup(BaseObjective):
    """RUL's uncertainty-weighted mixup with the add-up loss; no parameters.

    Needs a head that returns ``mu`` and ``log_var`` in its extras and classifies an
    embedding with ``classify`` (the ``uncertainty`` head); :meth:`check` refuses any other
    before the first batch.
    """

    name = "rul"

    def check(self, model: nn.Module) -> None:
        head = getattr(model, "head", None)
        if head is None or not callable(getattr(head, "classify", None)):
            name = getattr(getattr(model, "cfg", None), "head", type(model).__name__)
            raise ValueError(
                f"objective 'rul' mixes the embeddings 'mu' and log-variances 'log_var' of the "
                f"'uncertainty' head, but head {name!r} produces none; use head='uncertainty'"
            )

    def permutation(self, n: int, device: torch.device | str) -> torch.Tensor:
        """The batch's pairing ``p``, drawn from torch's global generator (seeded by ``fit``).
        A method so that a test can fix it."""
        return torch.randperm(n, device=device)

    def __call__(self, model, x, y, index):
        out = model.forward_all(x)
        missing = [k for k in ("mu", "log_var") if k not in out.extras]
        if missing:
            raise ValueError(f"objective 'rul' needs extras {missing} from the model; use head='uncertainty'")
        perm = self.permutation(len(x), x.device)
        mixed, _ = relative_mixup(out.extras["mu"], out.extras["log_var"], perm)
        mixed_logits = model.head.classify(mixed)
        loss = 0.5 * F.cross_entropy(mixed_logits, y) + 0.5 * F.cross_entropy(mixed_logits, y[perm])
        return loss, out.logits
