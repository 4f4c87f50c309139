"""The objective interface that :func:`ferlib.train.fit` calls.

An objective is a small callable ``(model, x, y, index) -> (scalar loss, logits)``; the
training loop stays the same for every method. Its :meth:`~BaseObjective.config` (name +
parameters) goes into the training result key, so changing a loss weight retrains
instead of reusing a checkpoint trained with the old weight.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Objective(Protocol):
    """A loss plug-in: ``(model, x, y, index) -> (scalar loss, logits)``.

    ``x`` is the augmented float batch, ``index`` the rows of the training data in the
    batch (for objectives that keep per-sample state).
    """

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class BaseObjective:
    """Shared plumbing of the registered objectives.

    Parameters are the keyword arguments of ``__init__`` and are stored under the same
    attribute names, so :meth:`config` and the registry's validation read them from the
    signature: an objective declares its parameters once.
    """

    name: ClassVar[str] = ""

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        sig = inspect.signature(cls.__init__)
        return tuple(
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )

    def config(self) -> dict[str, Any]:
        """``{"name": ..., <param>: value, ...}``: what identifies this objective in result keys."""
        return {"name": self.name, **{p: getattr(self, p) for p in self.param_names()}}

    def check(self, model: nn.Module) -> None:
        """Raise ``ValueError`` before the first batch if ``model`` cannot serve this objective."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({params})"


def objective_config(objective: object) -> dict[str, Any]:
    """The config of any objective: its ``config()`` when it has one, else its class's
    qualified name and its public attributes (for ad-hoc callables passed to ``fit``)."""
    if hasattr(objective, "config") and callable(objective.config):
        return dict(objective.config())
    cls = type(objective)
    public = vars(objective) if hasattr(objective, "__dict__") else {}
    attrs = {k: v for k, v in public.items() if not k.startswith("_")}
    return {"name": f"{cls.__module__}.{cls.__qualname__}", **attrs}
