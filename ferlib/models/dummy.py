"""``dummy``: the ``linear`` head plus PROSER's dummy classifier (classifier placeholders).

PROSER (Zhou, Ye, Zhan, CVPR 2021) augments a close-set classifier ``W`` (K classes) with
``dummies`` extra linear outputs ``w_hat`` on the same pooled features; the open score and
the placeholder losses read their maximum, one "dummy class" beside the K known ones
(:mod:`ferlib.losses.proser`, :mod:`ferlib.openset.proser`).

``logits`` stay the K close-class logits, so training accuracy, validation, stage 02 and
every detector read what they read for the ``linear`` head; the dummy logits go in
``extras["dummy_logits"]`` (B, dummies). The close-class classifier keeps the ``linear``
head's name (``head.fc``), so a stage 01 ``best.pt`` trained with the ``linear`` head
loads onto this head as it is, only ``head.dummy`` missing (freshly initialised): that is
how the PROSER detector fine-tunes a copy of the close-set network. Class-activation maps
are the ``linear`` head's (close classes only).
"""

from __future__ import annotations

import torch
from torch import nn

from ferlib.models.base import HeadOutput, check_positive_int
from ferlib.models.linear import LinearHead


class DummyHead(LinearHead):
    """GAP + (dropout) + Linear to the K classes, and a Linear to ``dummies`` dummy logits."""

    name = "dummy"

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0, *, dummies: int = 1):
        super().__init__(in_features, num_classes, dropout)
        self.dummies = check_positive_int(self.name, "dummies", dummies)
        self.dummy = nn.Linear(in_features, self.dummies)

    def forward(self, feature_map: torch.Tensor) -> HeadOutput:
        pooled = feature_map.mean(dim=(2, 3))
        dropped = self.dropout(pooled)
        return HeadOutput(self.fc(dropped), pooled, {"dummy_logits": self.dummy(dropped)})
