"""Result keys: a trained detector's folder is reused only when everything that determines
its result is the same (parameters, pseudo labels, protocol, images, eval_subset), and
never depends on the device."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ferlib.digest import tensor_digest
from ferlib.openset import detector_class, run_detectors
from ferlib.openset.keys import result_ingredients, result_key
from ferlib.openset.registry import resolve_params

SHARED = {"input_size": 32, "progress": False, "seed": 0, "device": "cpu"}


def _key(data, name="cycle", params=None, protocol="honest", subset="all", shared=SHARED):
    resolved = resolve_params(name, params or {}, shared)
    return result_key(result_ingredients(detector_class(name), resolved, data.detector_view(), protocol, subset))


def _new_pseudo(data):
    table = data.table.copy()
    table.loc[0, "pseudo"] = (table.loc[0, "pseudo"] + 1) % data.num_classes
    return replace(data, table=table)


def test_key_covers_every_input_and_excludes_device(make_tiny_image_data, tmp_path):
    data = make_tiny_image_data()
    base = _key(data)
    assert len(base) == 16
    assert _key(data) == base  # deterministic
    assert _key(data, shared={**SHARED, "device": "cpu:0", "progress": True}) == base
    assert _key(data, params={"lam": 0.0}) != base
    assert _key(data, params={"cycles": 2}) != base
    assert _key(_new_pseudo(data)) != base
    assert _key(data, protocol="reference") != base
    assert _key(data, subset="test") != base
    images = data.images.clone()
    images[0, 0, 0, 0] ^= 1
    assert _key(replace(data, images=images)) != base
    # the contrast detector reads no pseudo label and no protocol-dependent output, but the
    # close training images
    c = _key(data, "contrast")
    assert _key(_new_pseudo(data), "contrast") == c and _key(data, "contrast", protocol="reference") == c
    train = data.train_images.clone()
    train[0, 0, 0, 0] ^= 1
    assert _key(replace(data, train_images=train), "contrast") != c
    # the pretrained file's content, not its name
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"one")
    k1 = _key(data, params={"pretrained": str(weights)})
    weights.write_bytes(b"two")
    assert _key(data, params={"pretrained": str(weights)}) != k1


def test_tensor_digest_reads_content_dtype_and_shape():
    x = np.arange(12, dtype=np.uint8)
    assert tensor_digest(x) == tensor_digest(torch.from_numpy(x.copy()))
    assert tensor_digest(x) != tensor_digest(x.reshape(3, 4))
    assert tensor_digest(x) != tensor_digest(x.astype(np.int64))
    assert tensor_digest(x, None) != tensor_digest(x)


def _last_checkpoints(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("last.pt")}


@pytest.mark.slow
def test_changed_inputs_retrain_and_a_device_change_resumes(make_tiny_image_data, tiny_params, tmp_path):
    """Through the scoring path of stage 03, with tiny cycle settings (a few seconds each)."""
    data = make_tiny_image_data()
    params = {"cycle": tiny_params["cycle"]}
    first = run_detectors(data, ["cycle"], params, SHARED, tmp_path, log=False)["cycle"]
    assert first.folder.parent == tmp_path / "all" / "honest" and first.folder.name == f"cycle-{first.key}"
    assert not first.reused and (first.folder / "scores.npy").is_file() and (first.folder / "key.json").is_file()
    stamps = _last_checkpoints(first.folder)
    assert stamps

    # lam=0: another folder, trained from scratch
    lam0 = run_detectors(data, ["cycle"], {"cycle": {**params["cycle"], "lam": 0.0}}, SHARED, tmp_path, log=False)[
        "cycle"
    ]
    assert lam0.folder != first.folder and not lam0.reused and _last_checkpoints(lam0.folder)
    # new pseudo labels (stage 02 re-run): another folder, trained from scratch
    relabelled = run_detectors(_new_pseudo(data), ["cycle"], params, SHARED, tmp_path, log=False)["cycle"]
    assert relabelled.folder not in (first.folder, lam0.folder) and not relabelled.reused

    # another device: the same folder, the finished result, no training
    moved = run_detectors(data, ["cycle"], params, {**SHARED, "device": "cpu:0"}, tmp_path, log=False)["cycle"]
    assert moved.folder == first.folder and moved.reused
    np.testing.assert_array_equal(moved.scores, first.scores)
    assert _last_checkpoints(first.folder) == stamps

    # a run killed after training but before its scores were stored resumes from the
    # checkpoints on the other device: no new epoch is trained (no last.pt rewritten)
    (first.folder / "scores.npy").unlink()
    resumed = run_detectors(data, ["cycle"], params, {**SHARED, "device": "cpu:0"}, tmp_path, log=False)["cycle"]
    assert resumed.folder == first.folder and not resumed.reused
    assert _last_checkpoints(first.folder) == stamps
    np.testing.assert_allclose(resumed.scores, first.scores, rtol=1e-4, atol=1e-4)


def test_protocol_free_detector_is_fitted_once_for_every_protocol(make_tiny_image_data, tiny_params, tmp_path):
    """The contrast detector reads nothing the protocol changes: the second protocol reuses
    the first one's result (same key, ``any_protocol`` folder) instead of training again."""
    data = make_tiny_image_data()
    reuse = {}
    params = {"contrast": tiny_params["contrast"]}
    honest = run_detectors(data, ["contrast"], params, SHARED, tmp_path, "honest", reuse=reuse, log=False)
    ref = run_detectors(
        replace(data, protocol="reference"), ["contrast"], params, SHARED, tmp_path, "reference", reuse=reuse, log=False
    )
    assert honest["contrast"].folder.parent.name == "any_protocol"
    assert ref["contrast"] is honest["contrast"]
