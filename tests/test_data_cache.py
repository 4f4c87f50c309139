"""The image cache (decode once, reuse from disk, skip a few broken files) and batch
augmentation (deterministic, torchvision-equivalent erasing, exact flips)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ferlib.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    DataError,
    ImageCache,
    UnreadableImageWarning,
    augment_batch,
    build_cache,
    hflip,
    load_folders,
    to_float,
)
from ferlib.data import cache as cache_module
from ferlib.emotions import Emotion

LAYOUT = {"train": {"happiness": 4, "sadness": 3, "fear": 3}}


def _raise(*args, **kwargs):
    raise RuntimeError("decode_image must not be called")


# ----------------------------------------------------------------------------- cache


def test_cache_shapes_dtypes_and_pixels(make_folders):
    ds = load_folders(make_folders(LAYOUT, size=8), "train")
    cache = build_cache(ds, 8, progress=False)
    # a grayscale set is stored with one channel
    assert cache.images.shape == (10, 1, 8, 8) and cache.images.dtype == torch.uint8
    assert cache.channels == 1
    assert cache.labels.dtype == torch.int64
    assert cache.labels.tolist() == ds.labels.tolist()
    assert cache.paths == ds.relpaths()
    assert cache.source_index.tolist() == list(range(10))
    assert cache.classes == ds.classes and len(cache) == 10
    # native size: exact pixels
    for k in (0, 9):
        expected = torch.from_numpy(np.array(Image.open(ds.paths[k])))
        assert torch.equal(cache.images[k, 0], expected)
    # same pixels as the per-item decoder of the data set (which replicates gray to RGB)
    assert torch.equal(cache.images[3].expand(3, -1, -1), ds[3][0])


def test_cache_resizes_with_antialias_and_keeps_rgb_order(tmp_path):
    root = tmp_path / "rgb"
    path = root / "train" / "anger" / "a.png"
    path.parent.mkdir(parents=True)
    stripes = np.zeros((32, 32, 3), dtype=np.uint8)
    stripes[:, ::2, 0] = 255  # 1-pixel red stripes: antialiased downscale averages them
    stripes[..., 2] = 40
    Image.fromarray(stripes).save(path)
    cache = build_cache(load_folders(root, "train"), 8, progress=False)
    assert cache.images.shape == (1, 3, 8, 8) and cache.channels == 3  # colour keeps three
    red, green, blue = cache.images[0].int()
    # antialiased: stripes average to ~128 (point sampling would give 0 or 255 columns)
    assert (red[:, 1:-1] - 128).abs().max() <= 2 and (red - 128).abs().max() <= 12
    assert green.max() == 0 and (blue == 40).all()


def test_cache_saved_and_reused_without_decoding(make_folders, tmp_path, monkeypatch):
    ds = load_folders(make_folders(LAYOUT), "train")
    cache_dir = tmp_path / "cache"
    first = build_cache(ds, 12, cache_dir=cache_dir, progress=False)
    file = cache_dir / f"{ds.fingerprint()}_12.pt"
    assert file.is_file() and first.fingerprint == f"{ds.fingerprint()}_12"
    assert sorted(p.name for p in cache_dir.iterdir()) == [file.name]  # no temp files left

    monkeypatch.setattr(cache_module, "decode_image", _raise)
    second = build_cache(load_folders(ds.root, "train"), 12, cache_dir=cache_dir, progress=False)
    assert torch.equal(second.images, first.images)
    assert torch.equal(second.labels, first.labels)
    assert second.paths == first.paths and second.fingerprint == first.fingerprint
    assert np.array_equal(second.source_index, first.source_index)
    assert second.classes == first.classes

    # the key includes the size and the data: either change means decoding again
    with pytest.raises(RuntimeError, match="must not be called"):
        build_cache(ds, 16, cache_dir=cache_dir, progress=False)
    with pytest.raises(RuntimeError, match="must not be called"):
        build_cache(ds.subset(range(5)), 12, cache_dir=cache_dir, progress=False)


def test_corrupt_cache_file_is_rebuilt(make_folders, tmp_path):
    ds = load_folders(make_folders(LAYOUT), "train")
    cache_dir = tmp_path / "cache"
    first = build_cache(ds, 8, cache_dir=cache_dir, progress=False)
    (cache_dir / f"{first.fingerprint}.pt").write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="rebuilding"):
        again = build_cache(ds, 8, cache_dir=cache_dir, progress=False)
    assert torch.equal(again.images, first.images)


def _corrupt(ds, k: int, how: str) -> str:
    path = ds.paths[k]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncate" else b"garbage" * 10)
    return ds.relpaths()[k]


def test_few_unreadable_images_warn_and_are_skipped(make_folders, tmp_path):
    ds = load_folders(make_folders({"train": {"happiness": 30, "sadness": 30}}), "train")
    bad = [_corrupt(ds, 7, "garbage"), _corrupt(ds, 40, "truncate")]
    cache_dir = tmp_path / "cache"
    with pytest.warns(UnreadableImageWarning, match="skipped 2 unreadable image") as record:
        cache = build_cache(ds, 8, cache_dir=cache_dir, max_bad_fraction=0.05, progress=False)
    message = str(record[0].message)
    assert bad[0] in message and bad[1] in message
    keep = [i for i in range(60) if i not in (7, 40)]
    assert cache.source_index.tolist() == keep
    assert cache.labels.tolist() == ds.labels[keep].tolist()
    assert cache.paths == [ds.relpaths()[i] for i in keep]
    assert cache.skipped == bad
    assert torch.equal(cache.images[7].expand(3, -1, -1), ds[8][0])  # rows after a skip shift by one
    # reloading from disk warns again (the data set is still broken)
    with pytest.warns(UnreadableImageWarning, match="skipped 2"):
        again = build_cache(ds, 8, cache_dir=cache_dir, max_bad_fraction=0.05, progress=False)
    assert again.source_index.tolist() == keep
    # and re-applies the threshold the caller asks for now
    with pytest.raises(DataError, match="2 of 60 images"):
        build_cache(ds, 8, cache_dir=cache_dir, max_bad_fraction=0.01, progress=False)


def test_skipped_images_are_recorded_for_the_manifest(make_folders, tmp_path):
    """The count and the first few paths of the files skipped are data, not only a warning:
    a stage writes them into the manifest (unreadable_summary)."""
    ds = load_folders(make_folders({"train": {"happiness": 40, "sadness": 40}}), "train")
    bad = [_corrupt(ds, k, "garbage") for k in (3, 11, 20, 41, 50, 66, 79)]
    expected = {"count": 7, "of": 80, "examples": bad[:5]}
    for kwargs in ({"cache_dir": tmp_path / "pt"}, {"cache_dir": tmp_path / "mm", "memmap": True}):
        for _ in range(2):  # built, then reloaded from disk
            with pytest.warns(UnreadableImageWarning, match="skipped 7"):
                cache = build_cache(ds, 8, max_bad_fraction=0.1, progress=False, **kwargs)
            assert cache.skipped == bad and cache.n_total == 80
            assert cache.unreadable() == expected
            assert cache.unreadable(examples=2)["examples"] == bad[:2]
    clean = build_cache(load_folders(make_folders(LAYOUT, root=tmp_path / "clean"), "train"), 8, progress=False)
    summary = cache_module.unreadable_summary({"train": cache, "test": clean, "valid": cache.subset([0, 1])})
    assert summary == {
        "train": expected,
        "test": {"count": 0, "of": 10, "examples": []},
        "valid": expected,  # a subset keeps its source's record
    }
    assert json.loads(json.dumps(summary)) == summary  # plain JSON for the manifest


def test_unreadable_summary_of_the_stages_splits(make_folders):
    """What stage 01 would write into manifest["data"]["unreadable"] from load_splits."""
    from ferlib.data.prepare import load_splits

    root = make_folders({"train": {"happiness": 60, "sadness": 60}, "test": {"happiness": 5, "sadness": 5}})
    ds = load_folders(root, "train")
    bad = _corrupt(ds, 4, "garbage")
    with pytest.warns(UnreadableImageWarning, match="skipped 1"):
        s = load_splits("folders", str(root), "sadness", 8, cache_dir=None, val_fraction=0.2, seed=0)
    caches = {"train": s.train, "test": s.test, **({} if s.valid_carved else {"valid": s.valid})}
    assert cache_module.unreadable_summary(caches) == {
        "train": {"count": 1, "of": 120, "examples": [bad]},
        "test": {"count": 0, "of": 10, "examples": []},
    }


def test_many_unreadable_images_raise(make_folders):
    ds = load_folders(make_folders({"train": {"happiness": 20}}), "train")
    for k in range(3):
        _corrupt(ds, k, "garbage")
    with pytest.raises(DataError, match="3 of 20 images .* unreadable") as info:
        build_cache(ds, 8, progress=False)  # 3/20 > 1%
    assert "img000.png" in str(info.value)


def test_cache_without_bad_images_does_not_warn(make_folders):
    ds = load_folders(make_folders(LAYOUT), "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_cache(ds, 8, progress=False, workers=2)


def test_cache_subset(make_folders):
    ds = load_folders(make_folders(LAYOUT), "train")
    cache = build_cache(ds, 8, progress=False)
    sub = cache.subset(np.array([9, 2]))
    assert isinstance(sub, ImageCache) and len(sub) == 2
    assert torch.equal(sub.images[0], cache.images[9])
    assert sub.labels.tolist() == [cache.labels[9].item(), cache.labels[2].item()]
    assert sub.paths == [cache.paths[9], cache.paths[2]]
    assert sub.source_index.tolist() == [9, 2]
    assert sub.fingerprint != cache.fingerprint
    masked = cache.subset(cache.labels == int(Emotion.FEAR))
    assert masked.labels.tolist() == [int(Emotion.FEAR)] * 3


# ----------------------------------------------------------------------------- augment


def _batch(b: int = 16, s: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return to_float(torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, generator=g))


def test_to_float_normalises_and_refuses_floats():
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    y = to_float(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    for c in range(3):
        assert torch.allclose(y[:, c], torch.tensor((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))
    assert to_float(x[0]).shape == (3, 4, 4)
    with pytest.raises(TypeError, match="uint8"):
        to_float(y)


def test_augment_deterministic_given_generator():
    x = _batch()
    cfg = AugmentConfig()
    a = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    c = augment_batch(x, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(x, _batch())  # input untouched


def test_augment_identity_when_disabled():
    x = _batch()
    cfg = AugmentConfig(flip_or_noise_p=0.0, erasing_p=0.0)
    assert torch.equal(augment_batch(x, cfg, torch.Generator().manual_seed(0)), x)


def test_hflip_equals_torch_flip_and_flip_branch_is_exact():
    x = _batch(b=200)
    assert torch.equal(hflip(x), torch.flip(x, dims=[3]))
    cfg = AugmentConfig(flip_or_noise_p=1.0, noise_std=0.5, erasing_p=0.0)
    y = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    flipped = (y == torch.flip(x, dims=[3])).flatten(1).all(1)
    assert 70 < int(flipped.sum()) < 130  # 50/50 of 200 samples
    noise = (y - x)[~flipped]  # the others got noise: every pixel moved, std as configured
    assert (noise != 0).all()
    assert abs(noise.std().item() - 0.5) < 0.02  # noise_std is in normalised units
    assert abs(noise.mean().item()) < 0.02
    cfg_half = AugmentConfig(flip_or_noise_p=0.5, noise_std=0.5, erasing_p=0.0)
    y = augment_batch(x, cfg_half, torch.Generator().manual_seed(2))
    untouched = (y == x).flatten(1).all(1)
    assert 70 < int(untouched.sum()) < 130


def test_erasing_zeroes_one_rectangle_within_scale():
    b, s = 300, 32
    x = torch.ones(b, 3, s, s)
    cfg = AugmentConfig(flip_or_noise_p=0.0, erasing_p=1.0)
    y = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    zero = y == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])
    assert ((y == 0) | (y == 1)).all()
    fractions = []
    for k in range(b):
        rows = torch.nonzero(zero[k, 0].any(1)).flatten()
        cols = torch.nonzero(zero[k, 0].any(0)).flatten()
        assert rows.numel() and cols.numel(), "every sample erased with erasing_p=1"
        box = zero[k, 0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all(), "the zeros form a filled rectangle"
        assert int(zero[k, 0].sum()) == box.numel(), "nothing zeroed outside it"
        assert rows.numel() < s and cols.numel() < s
        fractions.append(box.numel() / s**2)
    fractions = np.asarray(fractions)
    assert fractions.min() >= 0.01 and fractions.max() <= 0.30  # scale (0.02, 0.25) + rounding
    assert 0.10 < fractions.mean() < 0.16  # uniform area: mean scale 0.135


def test_erasing_skipped_when_no_rectangle_fits():
    # torchvision: a rectangle must be strictly smaller than the image; after 10 failed
    # attempts the image is returned untouched.
    x = torch.ones(8, 3, 16, 16)
    cfg = AugmentConfig(flip_or_noise_p=0.0, erasing_p=1.0, erasing_scale=(1.0, 1.0), erasing_ratio=(1.0, 1.0))
    assert torch.equal(augment_batch(x, cfg, torch.Generator().manual_seed(0)), x)


def test_erasing_matches_torchvision_statistics():
    from torchvision.transforms import RandomErasing

    b, s = 600, 24
    torch.manual_seed(0)
    reference = RandomErasing(p=0.5, scale=(0.02, 0.25), ratio=(0.3, 3.3), value=0)
    ref_area = np.asarray([(reference(torch.ones(3, s, s)) == 0).float().mean().item() for _ in range(b)])
    ours = augment_batch(torch.ones(b, 3, s, s), AugmentConfig(flip_or_noise_p=0.0), torch.Generator().manual_seed(0))
    our_area = (ours == 0).float().mean(dim=(1, 2, 3)).numpy()
    assert abs((our_area > 0).mean() - (ref_area > 0).mean()) < 0.06
    assert abs(our_area[our_area > 0].mean() - ref_area[ref_area > 0].mean()) < 0.015


def test_augment_config_validates():
    with pytest.raises(ValueError, match="erasing_p"):
        AugmentConfig(erasing_p=1.5)
    with pytest.raises(ValueError, match="erasing_scale"):
        AugmentConfig(erasing_scale=(0.3, 0.2))
    with pytest.raises(ValueError, match="float"):
        augment_batch(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), AugmentConfig())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_on_cuda_matches_cpu_generator_draws():
    x = _batch(b=32)
    cfg = AugmentConfig(noise_std=0.0)
    cpu = augment_batch(x, cfg, torch.Generator().manual_seed(5))
    gpu = augment_batch(x.cuda(), cfg, torch.Generator().manual_seed(5))
    assert gpu.device.type == "cuda"
    assert torch.equal(gpu.cpu(), cpu)  # same draws (CPU generator), only placement differs
    # with noise (drawn on the GPU, seeded from the generator): still deterministic
    cfg = AugmentConfig(flip_or_noise_p=1.0)
    for make in (lambda: torch.Generator().manual_seed(5), lambda: torch.Generator(device="cuda").manual_seed(5)):
        a = augment_batch(x.cuda(), cfg, make())
        assert torch.equal(a, augment_batch(x.cuda(), cfg, make()))


def test_affine_warp_moves_a_dot_as_drawn_and_leaves_undrawn_samples_exact():
    """A single bright pixel must land where the drawn shift puts it (a broken sign or unit
    convention moves it elsewhere); with affine_p 0.5 about half the batch is untouched."""
    b, s = 200, 33
    x = torch.zeros(b, 1, s, s)
    x[:, :, 16, 16] = 1.0  # the centre: rotation and zoom keep it, a shift moves it
    shift_only = AugmentConfig(flip_or_noise_p=0.0, erasing_p=0.0, affine_p=1.0, translate=0.15)
    y = augment_batch(x, shift_only, torch.Generator().manual_seed(0))
    peak = y.flatten(1).argmax(1)
    rows, cols = peak // s, peak % s
    assert (rows - 16).abs().max() <= round(0.15 * s) + 1 and (cols - 16).abs().max() <= round(0.15 * s) + 1
    assert (rows != 16).float().mean() > 0.5 and (cols != 16).float().mean() > 0.5  # it does move them
    turn_only = AugmentConfig(flip_or_noise_p=0.0, erasing_p=0.0, affine_p=1.0, rotate_deg=30.0, scale=(0.8, 1.2))
    z = augment_batch(x, turn_only, torch.Generator().manual_seed(0)).flatten(1).argmax(1)
    assert torch.equal(z, torch.full_like(z, 16 * s + 16))  # the centre stays the centre
    half = AugmentConfig(flip_or_noise_p=0.0, erasing_p=0.0, affine_p=0.5, translate=0.15)
    img = torch.rand(b, 3, s, s, generator=torch.Generator().manual_seed(5))
    w = augment_batch(img, half, torch.Generator().manual_seed(1))
    untouched = (w == img).flatten(1).all(1)
    assert 70 < int(untouched.sum()) < 130
    a = augment_batch(img, half, torch.Generator().manual_seed(1))
    assert torch.equal(a, w)  # deterministic given the generator


def test_affine_rotation_turns_a_dot_by_the_drawn_angle_at_most():
    s = 65
    x = torch.zeros(300, 1, s, s)
    x[:, :, 32, 56] = 1.0  # 24 px right of the centre
    cfg = AugmentConfig(flip_or_noise_p=0.0, erasing_p=0.0, affine_p=1.0, rotate_deg=20.0)
    peak = augment_batch(x, cfg, torch.Generator().manual_seed(0)).flatten(1).argmax(1)
    dy, dx = (peak // s - 32).float(), (peak % s - 32).float()
    radius, angle = torch.hypot(dy, dx), torch.rad2deg(torch.atan2(dy, dx)).abs()
    assert ((radius - 24).abs() <= 1.5).all()  # rotation keeps the distance to the centre
    assert angle.max() <= 21.5 and angle.max() > 15  # within +-20 degrees, and it uses the range


def test_augment_config_refuses_bad_affine_settings():
    for kwargs, word in [
        ({"affine_p": 1.5}, "affine_p"),
        ({"translate": 1.0}, "translate"),
        ({"scale": (1.2, 0.9)}, "scale"),
    ]:
        with pytest.raises(ValueError, match=word):
            AugmentConfig(**kwargs)
