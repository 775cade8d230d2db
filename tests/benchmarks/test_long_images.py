"""benchmarks/long_images.py: long-image variants of a set keep every defect, at the right place, and fit
``aspect_preserving_size``."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from multiad_monai.data import aspect_preserving_size, index_dataset
from tests.bundles.helpers import load_benchmark
from tests.conftest import write_mvtec

long_images = load_benchmark("long_images")


def test_long_variant_places_each_defect_in_its_tile(tmp_path):
    source = write_mvtec(str(tmp_path / "src"), n_train=5, n_good=2, n_bad=3, size=32)
    output = long_images.build(source, str(tmp_path / "long"), tiles=3)
    _, splits = index_dataset(output)
    assert len(splits["train"]) == 5 and len(splits["test"]) == 5
    bad = [item for item in splits["test"] if item["label"]]
    originals = [item for item in index_dataset(source)[1]["test"] if item["label"]]
    for position, (item, original) in enumerate(zip(bad, originals)):
        mask = np.asarray(Image.open(item["mask"])) > 0
        assert mask.shape == (32, 96)
        expected = np.asarray(Image.open(original["mask"])) > 127
        assert expected.any()
        tile = slice(position * 32, (position + 1) * 32)
        assert np.array_equal(mask[:, tile], expected) and mask.sum() == expected.sum()
        assert np.array_equal(np.asarray(Image.open(item["image"]))[:, tile], np.asarray(Image.open(original["image"])))
    assert aspect_preserving_size(output, 64) == [64, 192]


def test_mask_of_another_size_is_named(tmp_path):
    source = write_mvtec(str(tmp_path / "src"), n_train=2, n_good=1, n_bad=1, size=32)
    mask = os.path.join(source, "ground_truth", "scratch", "000_mask.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(mask)
    with pytest.raises(ValueError, match="000_mask.png"):
        long_images.build(source, str(tmp_path / "long"))


def test_long_variant_resizes_and_draws_training_strips(tmp_path):
    source = write_mvtec(str(tmp_path / "src"), n_train=5, n_good=2, n_bad=3, size=32)
    output = long_images.build(source, str(tmp_path / "scan"), tiles=3, size=(40, 100), train_images=7)
    _, splits = index_dataset(output)
    assert len(splits["train"]) == 7 and len(splits["test"]) == 5
    for item in splits["train"] + splits["test"]:
        assert Image.open(item["image"]).size == (100, 40)  # PIL: (width, height)
    for item in splits["test"]:
        if item["label"]:
            assert set(np.unique(np.asarray(Image.open(item["mask"])))) <= {0, 255}  # still binary
