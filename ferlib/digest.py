"""Content digests for result keys: a result is reused only when every input is the same.

A checkpoint keyed by settings and sample counts alone is silently reused after the
targets (pseudo labels), the loss weights or the pretrained weights change. These helpers
hash the *content* instead: the bytes of tensors (uint8 images, targets) and of a model's
state dict. BLAKE2b over the raw buffers runs at about 1 GB/s on one core: 30,000 x 3 x
48 x 48 uint8 images (207 MB) hash in about 0.2 s, a ResNet-18 state dict in about 0.05 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn


def _update(h: hashlib.blake2b, t: torch.Tensor) -> None:
    if hasattr(t, "iter_chunks"):  # a lazy row view (ferlib.data.cache.RowView): same digest, bounded memory
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        for chunk in t.iter_chunks():
            h.update(chunk.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        return
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # raw bytes, any dtype (bfloat16 too)


def tensor_digest(*tensors: torch.Tensor | np.ndarray | None) -> str:
    """Hex digest of the dtypes, shapes and bytes of ``tensors`` (torch tensors or numpy arrays:
    the same values give the same digest either way) in order (``None`` counts)."""
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        if t is None:
            h.update(b"None\0")
        else:
            direct = isinstance(t, torch.Tensor) or hasattr(t, "iter_chunks")
            if not direct:
                with warnings.catch_warnings():  # a read-only array (np.load, a view) is only read here
                    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                    t = torch.as_tensor(np.ascontiguousarray(t))
            _update(h, t)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """Hex digest of a file's bytes (a pretrained state dict), read in 1 MiB blocks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_dict_digest(model: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """Hex digest of a state dict (names, dtypes, shapes, values), whatever its device or
    memory format: it identifies architecture, head, pretrained weights and init seed."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(state):
        h.update(name.encode() + b"\0")
        _update(h, state[name])
    return h.hexdigest()


def json_digest(ingredients: Mapping[str, Any]) -> str:
    """Short hex digest of JSON-able ``ingredients`` (keys sorted, so order does not matter)."""
    text = json.dumps(ingredients, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
