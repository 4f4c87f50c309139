"""The memory-mapped, channel-aware uint8 cache: same tensors as in memory, one channel for
gray sets, reuse by key, never a torn file; gray batches expand to three channels exactly;
on-device resizing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ferlib.data import build_cache, load_folders, to_float
from ferlib.data import cache as cache_module
from ferlib.data.augment import resize
from ferlib.train import predict

LAYOUT = {"train": {"happiness": 5, "sadness": 4, "fear": 4}}  # 13 images


def _raise(*args, **kwargs):
    raise RuntimeError("decode_image must not be called")


def _same(a, b) -> None:
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    assert a.paths == b.paths and a.fingerprint == b.fingerprint
    assert np.array_equal(a.source_index, b.source_index)
    assert a.classes == b.classes and a.skipped == b.skipped


def _add_colour(root, name: str = "zz_colour.png") -> None:
    """One RGB image in an otherwise gray set."""
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 30
    Image.fromarray(rgb).save(root / "train" / "fear" / name)


@pytest.mark.parametrize("colour", [False, True])
def test_memmap_cache_equals_the_in_memory_one(make_folders, tmp_path, colour):
    root = make_folders(LAYOUT)
    if colour:
        _add_colour(root)
    ds = load_folders(root, "train")
    memory = build_cache(ds, 8, progress=False)
    mapped = build_cache(ds, 8, cache_dir=tmp_path / "c", memmap=True, chunk=3, progress=False, workers=2)
    _same(mapped, memory)
    assert mapped.channels == (3 if colour else 1)
    data = tmp_path / "c" / f"{mapped.fingerprint}.u8"
    assert data.stat().st_size == mapped.images.numel()  # the rows live in the file
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == sorted([data.name, f"{mapped.fingerprint}.meta.pt"])  # no temp files left
    # reloaded from the file: same tensors again, and indexing gathers only the rows asked
    again = build_cache(ds, 8, cache_dir=tmp_path / "c", memmap=True, progress=False)
    _same(again, memory)
    rows = torch.tensor([12, 0, 5])
    assert torch.equal(again.images[rows], memory.images[rows])
    assert torch.equal(again.subset(rows).images, memory.subset(rows).images)


def test_gray_set_widens_to_three_channels_at_the_first_colour_image(make_folders, tmp_path):
    root = make_folders(LAYOUT)
    gray = build_cache(load_folders(root, "train"), 8, progress=False)
    assert gray.channels == 1
    _add_colour(root)
    ds = load_folders(root, "train")
    for kwargs in ({}, {"cache_dir": tmp_path / "c", "memmap": True}):
        mixed = build_cache(ds, 8, progress=False, chunk=4, **kwargs)
        assert mixed.images.shape == (14, 3, 8, 8)
        k = next(i for i, p in enumerate(mixed.paths) if p.endswith("zz_colour.png"))
        assert 0 < k < 13  # gray rows on both sides of the colour one
        # the gray rows decoded before the colour one are replicated, not lost
        others = torch.as_tensor([i for i in range(14) if i != k])
        assert torch.equal(mixed.images[others], gray.images.expand(-1, 3, -1, -1))
        colour = mixed.images[k]
        assert (colour[0] == 200).all() and (colour[1] == 0).all() and (colour[2] == 30).all()


def test_rgb_files_of_gray_faces_are_stored_with_one_channel(make_folders):
    root = make_folders(LAYOUT, mode="RGB")
    ds = load_folders(root, "train")
    files = [np.array(Image.open(p)) for p in ds.paths]
    cache = build_cache(ds, 8, progress=False)
    if all((f[..., 0] == f[..., 1]).all() and (f[..., 0] == f[..., 2]).all() for f in files):
        assert cache.channels == 1
    else:
        assert cache.channels == 3
    for k, f in enumerate(files):
        assert torch.equal(cache.images[k].expand(3, -1, -1), torch.from_numpy(f).permute(2, 0, 1))


def test_memmap_is_reused_and_a_changed_set_rebuilds(make_folders, tmp_path, monkeypatch):
    root = make_folders(LAYOUT)
    ds = load_folders(root, "train")
    cache_dir = tmp_path / "c"
    first = build_cache(ds, 8, cache_dir=cache_dir, memmap=True, progress=False)
    monkeypatch.setattr(cache_module, "decode_image", _raise)
    second = build_cache(load_folders(root, "train"), 8, cache_dir=cache_dir, memmap=True, progress=False)
    _same(second, first)
    # another size, or other data, is another key: decoding again
    with pytest.raises(RuntimeError, match="must not be called"):
        build_cache(ds, 12, cache_dir=cache_dir, memmap=True, progress=False)
    _add_colour(root)
    with pytest.raises(RuntimeError, match="must not be called"):
        build_cache(load_folders(root, "train"), 8, cache_dir=cache_dir, memmap=True, progress=False)


@pytest.mark.parametrize("damage", ["truncate", "no_meta", "grow"])
def test_torn_memmap_file_is_never_used(make_folders, tmp_path, damage):
    ds = load_folders(make_folders(LAYOUT), "train")
    cache_dir = tmp_path / "c"
    first = build_cache(ds, 8, cache_dir=cache_dir, memmap=True, progress=False)
    expected = first.images.clone()
    del first
    data = cache_dir / f"{ds.fingerprint()}_8.u8"
    meta = cache_dir / f"{ds.fingerprint()}_8.meta.pt"
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "grow":
        data.write_bytes(data.read_bytes() + b"\0" * 64)
    else:  # the build died after the data file, before its metadata was committed
        meta.unlink()
    decoded = []
    real = cache_module.decode_image
    with warnings.catch_warnings(), pytest.MonkeyPatch.context() as mp:
        warnings.simplefilter("ignore")
        mp.setattr(cache_module, "decode_image", lambda p, s: decoded.append(p) or real(p, s))
        again = build_cache(ds, 8, cache_dir=cache_dir, memmap=True, progress=False)
    assert len(decoded) == len(ds)  # rebuilt from the images, not read from the torn file
    assert torch.equal(again.images, expected)
    assert data.stat().st_size == expected.numel() and meta.is_file()


def test_a_build_that_dies_leaves_nothing_usable(make_folders, tmp_path, monkeypatch):
    ds = load_folders(make_folders(LAYOUT), "train")
    cache_dir = tmp_path / "c"
    real = cache_module.decode_image
    calls = []

    def dies_halfway(path, size):
        calls.append(path)
        if len(calls) > 7:
            raise KeyboardInterrupt
        return real(path, size)

    monkeypatch.setattr(cache_module, "decode_image", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        build_cache(ds, 8, cache_dir=cache_dir, memmap=True, chunk=4, workers=1, progress=False)
    assert list(cache_dir.iterdir()) == []  # no temp file, no metadata: nothing to misread
    monkeypatch.setattr(cache_module, "decode_image", real)
    cache = build_cache(ds, 8, cache_dir=cache_dir, memmap=True, progress=False)
    _same(cache, build_cache(ds, 8, progress=False))


def test_memmap_with_unreadable_images_compacts_like_memory(make_folders, tmp_path):
    ds = load_folders(make_folders({"train": {"happiness": 30, "fear": 30}}), "train")
    for k in (2, 33):
        ds.paths[k].write_bytes(b"garbage" * 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        memory = build_cache(ds, 8, max_bad_fraction=0.05, progress=False)
        mapped = build_cache(
            ds, 8, cache_dir=tmp_path / "c", memmap=True, chunk=7, max_bad_fraction=0.05, progress=False
        )
        again = build_cache(ds, 8, cache_dir=tmp_path / "c", memmap=True, max_bad_fraction=0.05, progress=False)
    assert len(memory) == 58
    _same(mapped, memory)
    _same(again, memory)


def test_memmap_needs_a_cache_dir(make_folders):
    ds = load_folders(make_folders(LAYOUT), "train")
    with pytest.raises(ValueError, match="cache_dir"):
        build_cache(ds, 8, memmap=True, progress=False)


# ----------------------------------------------------------------------------- float path


def test_gray_batches_equal_those_of_a_three_channel_copy():
    g = torch.Generator().manual_seed(0)
    gray = torch.randint(0, 256, (5, 1, 9, 9), dtype=torch.uint8, generator=g)
    rgb = gray.expand(-1, 3, -1, -1).contiguous()
    assert torch.equal(to_float(gray), to_float(rgb))
    assert to_float(gray).shape == (5, 3, 9, 9)
    assert torch.equal(to_float(gray[0]), to_float(rgb[0]))
    assert torch.equal(to_float(gray, size=6), to_float(rgb, size=6))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        to_float(torch.zeros(2, 2, 4, 4, dtype=torch.uint8))


def test_predict_on_a_gray_cache_equals_the_three_channel_copy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    gray = torch.randint(0, 256, (11, 1, 8, 8), dtype=torch.uint8)
    a = predict(model, gray, batch_size=4, progress=False)
    b = predict(model, gray.expand(-1, 3, -1, -1).contiguous(), batch_size=4, progress=False)
    assert torch.equal(a.logits, b.logits)


def test_resize_is_antialiased_deterministic_and_off_by_default():
    x = torch.zeros(2, 1, 32, 32, dtype=torch.uint8)
    x[..., ::2] = 255  # 1-pixel stripes: an antialiased downscale averages them to gray
    small = resize(x.float() / 255, 8)
    assert small.shape == (2, 1, 8, 8)
    assert (small - 0.5).abs().max() < 0.05
    assert torch.equal(small, resize(x.float() / 255, 8))
    up = to_float(x, size=40)
    assert up.shape == (2, 3, 40, 40)
    assert to_float(x).shape == (2, 3, 32, 32)  # no size: the stored size
    same = x.float() / 255
    assert resize(same, 32) is same
    with pytest.raises(ValueError, match="size must be positive"):
        resize(same, 0)


# ----------------------------------------------------------------------------- row views


def test_rows_of_a_memmapped_cache_are_a_lazy_view_with_the_same_content(make_folders, tmp_path):
    from ferlib.data.cache import RowView
    from ferlib.digest import tensor_digest
    from ferlib.train import TensorData

    ds = load_folders(make_folders(LAYOUT), "train")
    memory = build_cache(ds, 8, progress=False)
    mapped = build_cache(ds, 8, cache_dir=tmp_path / "c", memmap=True, progress=False)
    rows = np.array([11, 2, 3, 7, 0, 12])
    view = mapped.rows(rows)
    gathered = memory.rows(rows)
    assert isinstance(view, RowView) and isinstance(gathered, torch.Tensor)
    assert view.base is mapped.images  # nothing copied
    assert len(view) == 6 and view.shape == gathered.shape and view.dtype == torch.uint8 and view.ndim == 4
    assert torch.equal(view.materialize(), gathered)
    assert torch.equal(view[torch.tensor([5, 0])], gathered[torch.tensor([5, 0])])
    assert torch.equal(view[1:3], gathered[1:3]) and torch.equal(view[-1], gathered[-1])
    assert torch.equal(view.view(np.array([1, 2])).materialize(), gathered[1:3])
    mask = np.zeros(13, dtype=bool)
    mask[[1, 4]] = True
    assert torch.equal(mapped.rows(mask).materialize(), memory.images[torch.tensor([1, 4])])
    # result keys do not depend on where the cache lives
    assert tensor_digest(view) == tensor_digest(gathered)
    assert list(view.iter_chunks(4))[1].shape[0] == 2
    # the training loop's data and predict take the view as they take the tensor
    targets = torch.arange(6) % 2
    data = TensorData(view, targets)
    assert len(data) == 6
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    a = predict(model, view, batch_size=4, progress=False)
    b = predict(model, gathered, batch_size=4, progress=False)
    assert torch.equal(a.logits, b.logits)
    with pytest.raises(IndexError, match="out of range"):
        mapped.rows([13])


def test_predict_resizes_on_the_device_when_given_an_input_size():
    from ferlib.train import TrainConfig

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    gray = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    model(to_float(gray, size=12))  # the linear layer takes 12 px inputs only
    resized = predict(model, gray, batch_size=4, progress=False, input_size=12, channels_last=False)
    direct = model.eval()(to_float(gray, size=12))
    assert torch.allclose(resized.logits, direct, atol=1e-6)
    assert TrainConfig(input_size=12).key_fields()["input_size"] == 12  # a different result: keyed


def test_load_splits_with_a_memmapped_cache_gives_the_same_splits(tmp_path):
    from ferlib.data.prepare import load_splits
    from ferlib.data.synthetic import SyntheticConfig, write_synthetic

    root = tmp_path / "syn"
    write_synthetic(root, SyntheticConfig(n_train=70, n_valid=14, n_test=28, image_size=16))
    args = ("synthetic", str(root), "fear", 16)
    memory = load_splits(*args, cache_dir=None, val_fraction=0.25)
    mapped = load_splits(*args, cache_dir=str(tmp_path / "c"), memmap=True, val_fraction=0.25)
    assert memory.fingerprint == mapped.fingerprint
    assert mapped.train.channels == 1  # the synthetic set is gray: one channel
    assert mapped.train.file is not None and memory.train.file is None
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(mapped, split).images, getattr(memory, split).images), split
    rows, _ = mapped.training()
    assert torch.equal(mapped.train.rows(rows).materialize(), memory.train.rows(rows))


def test_every_data_stage_takes_cache_memmap_and_no_key_depends_on_it():
    import inspect

    from ferlib import stages
    from ferlib.run import params_hash

    for stage in (stages.train_close_set, stages.predict_pseudo_labels, stages.detect_open_set, stages.ablate_cycle):
        assert inspect.signature(stage).parameters["cache_memmap"].default is False, stage.__name__
    # where the cache lives changes no result: a run with it reuses the finished stages
    assert params_hash({"epochs": 1, "cache_memmap": True}) == params_hash({"epochs": 1, "cache_memmap": False})


def test_stage_01_on_a_memmapped_cache_trains_the_same_model(tmp_path):
    from ferlib import stages
    from ferlib.data.synthetic import SyntheticConfig, write_synthetic
    from ferlib.io import read_json

    root = write_synthetic(tmp_path / "syn", SyntheticConfig(n_train=70, n_valid=14, n_test=28, image_size=32))
    common = dict(
        dataset="synthetic",
        data_root=str(root),
        open_class="surprise",
        input_size=32,
        epochs=1,
        batch_size=16,
        cache_dir=str(tmp_path / "cache"),
        progress=False,
    )
    for name, memmap in (("memory", False), ("mapped", True)):
        stages.train_close_set(**common, run_dir=str(tmp_path / name), cache_memmap=memmap)
    assert list((tmp_path / "cache").glob("*.u8"))  # the second run really read memory-mapped files
    folder = {name: tmp_path / name / "01_close_set" for name in ("memory", "mapped")}
    assert read_json(folder["memory"] / "key.json") == read_json(folder["mapped"] / "key.json")
    a, b = (torch.load(folder[name] / "best.pt") for name in ("memory", "mapped"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cache_memmap_without_a_cache_dir_is_refused_before_any_work(tmp_path):
    from ferlib import stages
    from ferlib.params import ParameterError

    with pytest.raises(ParameterError, match="cache_memmap=True needs a cache_dir"):
        stages.train_close_set(data_root=str(tmp_path / "absent"), cache_dir=None, cache_memmap=True)
    assert not (tmp_path / "absent").exists()
