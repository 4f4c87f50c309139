"""benchmarks/small_data.py: the per-class subsample and the epochs rule (the runs themselves
are measured by the script, never asserted)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.scripts import load_script

small_data = load_script("benchmarks/small_data.py")


def _targets() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.choice(7, size=5000, p=[0.35, 0.27, 0.12, 0.12, 0.08, 0.01, 0.05])


@pytest.mark.parametrize("size", [20, 200, 1000])
def test_stratified_rows_keep_each_class_share_and_the_size(size):
    targets = _targets()
    rows = small_data.stratified_rows(targets, size, seed=3)
    assert len(rows) == size and len(np.unique(rows)) == size
    share = np.bincount(targets, minlength=7) / len(targets)
    got = np.bincount(targets[rows], minlength=7) / size
    assert np.all(np.bincount(targets[rows], minlength=7) >= 2)  # every class is present
    assert np.abs(got - share).max() <= max(2.5 / size, 0.01) + 2 / size


def test_stratified_rows_are_seeded_and_nested_sizes_differ_by_seed():
    targets = _targets()
    a = small_data.stratified_rows(targets, 200, seed=1)
    assert np.array_equal(a, small_data.stratified_rows(targets, 200, seed=1))
    assert not np.array_equal(a, small_data.stratified_rows(targets, 200, seed=2))


def test_size_zero_or_larger_than_the_set_keeps_every_row():
    targets = _targets()
    assert np.array_equal(small_data.stratified_rows(targets, 0, seed=0), np.arange(len(targets)))
    assert len(small_data.stratified_rows(targets, 10_000, seed=0)) == len(targets)


def test_epochs_rule_gives_fewer_images_more_epochs():
    table = small_data.DEFAULT_EPOCHS
    assert small_data.epochs_for(200, table) > small_data.epochs_for(1000, table) > small_data.epochs_for(5000, table)
    assert small_data.epochs_for(300, table) == table[1000]  # the next larger size's schedule
