"""Loading weights: face-recognition checkpoints onto the trunk, and the kit's own older
state dicts (before the trunk/head split) onto today's layout."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

_TRUNK = re.compile(r"^(stem|layer[1-4])\.")
_TORCHVISION_STEM = {"conv1.": "trunk.stem.0.", "bn1.": "trunk.stem.1."}


def canonical_key(key: str) -> str:
    """Today's name for a state-dict key written by torchvision, a wrapper or the old kit.

    Strips wrapper prefixes (``module.``, ``backbone.``...), maps torchvision's ``conv1``/
    ``bn1`` onto the stem, ``layerN``/``stem`` onto the trunk and ``fc`` onto the linear
    head, and leaves keys already in the trunk/head layout alone.
    """
    for prefix in ("module.", "backbone.", "base.", "features."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    if key.startswith(("trunk.", "head.")):
        return key
    for old, new in _TORCHVISION_STEM.items():
        if key.startswith(old):
            return new + key[len(old) :]
    if _TRUNK.match(key):
        return "trunk." + key
    if key.startswith("fc."):
        return "head." + key
    return key


def upgrade_legacy_state_dict(module: nn.Module, state_dict: dict, prefix: str, *_: object) -> None:
    """Load-state-dict pre-hook: rename the flat keys of checkpoints saved before the
    trunk/head split (``stem.*``, ``layerN.*``, ``fc.*``) in place, so stage 02 can still
    read a stage 01 ``best.pt`` written by an earlier version of the kit."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        local = key[len(prefix) :]
        new = canonical_key(local)
        if new != local and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(key)


def _unwrap_state_dict(obj) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if key in obj and isinstance(obj[key], dict):
                return _unwrap_state_dict(obj[key])
        return obj
    raise ValueError("file holds no state dict")


@dataclass
class LoadReport:
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        for name in ("missing", "unexpected", "mismatched"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"{name} ({len(keys)}): {', '.join(keys[:8])}" + (" ..." if len(keys) > 8 else ""))
        return "; ".join(lines)


def load_pretrained(model: nn.Module, path: str | Path, verbose: bool = True) -> LoadReport:
    """Load a face-recognition state dict (e.g. MS-Celeb ``resnet18_msceleb.pth``) non-strictly.

    Tensors whose shapes differ (the classifier, a 3x3 small stem against a 7x7 checkpoint)
    are skipped and reported rather than failing, because the useful part of such weights
    is the trunk.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretrained weights not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
        state = {canonical_key(k): v for k, v in _unwrap_state_dict(raw).items() if torch.is_tensor(v)}
    except Exception as exc:  # noqa: BLE001 - name the file, whatever torch says
        raise ValueError(f"{path}: not a readable PyTorch state dict ({exc})") from exc
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    report = LoadReport(
        loaded=sorted(usable),
        missing=sorted(k for k in own if k not in usable and not k.endswith("num_batches_tracked")),
        unexpected=sorted(k for k in state if k not in own),
        mismatched=sorted(k for k in state if k in own and own[k].shape != state[k].shape),
    )
    if not usable:
        arch = getattr(getattr(model, "cfg", None), "arch", type(model).__name__)
        raise ValueError(f"{path}: no tensor matches the {arch} architecture ({report})")
    model.load_state_dict(usable, strict=False)
    if verbose:
        print(f"pretrained weights from {path}: {report}")
    return report
