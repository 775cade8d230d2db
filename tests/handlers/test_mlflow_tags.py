"""Tags that make runs comparable: the dataset fingerprint, the tag set, the tracker's argument checks."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from multiad_monai.handlers import RunTracker, dataset_fingerprint, run_tags
from tests.conftest import write_mvtec


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return write_mvtec(str(tmp_path_factory.mktemp("fingerprint") / "root" / "bottle"), n_train=3, n_good=1, n_bad=1)


def test_fingerprint_ignores_the_location_and_counts_files(data, tmp_path):
    copy = shutil.copytree(data, tmp_path / "elsewhere" / "renamed_root")
    assert dataset_fingerprint(str(copy)) == dataset_fingerprint(data)
    assert dataset_fingerprint(data)[1] == 6 and len(dataset_fingerprint(data)[0]) == 16


@pytest.mark.parametrize(
    "change",
    [
        lambda root: open(os.path.join(root, "train", "good", "000.png"), "ab").write(b"x"),  # a size
        lambda root: os.rename(
            os.path.join(root, "train", "good", "000.png"), os.path.join(root, "train", "good", "9.png")
        ),
        lambda root: open(os.path.join(root, "test", "good", "extra.png"), "wb").write(b"x"),  # a new file
    ],
)
def test_fingerprint_changes_with_the_files(data, tmp_path, change):
    copy = str(shutil.copytree(data, tmp_path / "copy"))
    change(copy)
    assert dataset_fingerprint(copy)[0] != dataset_fingerprint(data)[0]


def test_fingerprint_of_a_missing_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        dataset_fingerprint(str(tmp_path / "nope"))


@pytest.mark.parametrize(
    "bundle, category, domain, expected_domain, expected_dataset",
    [
        ("bundles/brain", None, None, "medical", "bottle"),
        ("bundles/mvtec/", None, None, "industrial", "bottle"),
        ("mvtec", "bottle", "medical", "medical", "root/bottle"),
        ("custom", None, None, "unknown", "bottle"),
    ],
)
def test_run_tags(data, bundle, category, domain, expected_domain, expected_dataset):
    root = os.path.dirname(data) if category else data
    tags = run_tags(bundle, root, category, "cpu", domain)
    assert tags["bundle"] == os.path.basename(os.path.normpath(bundle))
    assert tags["domain"] == expected_domain and tags["dataset"] == expected_dataset
    assert tags["dataset_fingerprint"] == dataset_fingerprint(data)[0]
    assert tags["torch_version"] == torch.__version__ and tags["device"] == "cpu"
    assert {"monai_version", "multiad_monai_version", "python_version", "device_name"} <= set(tags)


def test_run_tags_without_data():
    assert "dataset" not in run_tags("brain", None)


def test_tracker_checks_its_arguments():
    with pytest.raises(ValueError, match="needs log_model=True"):
        RunTracker(None, "brain", register_model="m", log_model=False)
    with pytest.raises(ValueError, match="needs ckpt_path"):
        RunTracker(None, "brain", register_model="m")
