"""Bad input gets a message that names the file or key and the fix, and never silently wrong data."""

from __future__ import annotations

import os
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from multiad_monai.data import load_datasets
from multiad_monai.inference import AnomalyInferer
from multiad_monai.networks import MultiAD
from multiad_monai.recipe import Recipe
from multiad_monai.transforms import image_transform
from multiad_monai.utils import check_writable, readable_errors, root_message
from tests.bundles.helpers import bundle_command, error_chain, run, run_in_process
from tests.conftest import write_mvtec, write_volumes


@pytest.fixture(scope="module")
def inferer() -> AnomalyInferer:
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32, intensity="dtype"))
    network.normalizer.fit_thresholds(torch.rand(4) + 1, torch.rand(4, 1, 32, 32))
    return AnomalyInferer(network, batch_size=2)


def test_palette_png_is_decoded_through_its_palette(tmp_path):
    rng = np.random.default_rng(0)
    grey = (rng.random((24, 24)) * 255).astype(np.uint8)
    rgb = Image.fromarray(grey).convert("RGB")
    palette = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT)  # indices in a random order of greys
    rgb.save(tmp_path / "rgb.png")
    palette.save(tmp_path / "palette.png")
    recipe = Recipe(image_size=24, intensity="dtype")
    chain = image_transform(recipe, resize=False)
    decoded = chain({"image": str(tmp_path / "palette.png")})["image"][:3].numpy()
    reference = chain({"image": str(tmp_path / "rgb.png")})["image"][:3].numpy()
    assert np.corrcoef(decoded.ravel(), reference.ravel())[0, 1] > 0.99  # indices would correlate with nothing


def test_palette_mask_marks_its_coloured_pixels(tmp_path):
    write_mvtec(str(tmp_path / "set"), n_train=4, n_good=1, n_bad=1)
    mask_path = next((tmp_path / "set" / "ground_truth" / "scratch").iterdir())
    mask = np.asarray(Image.open(mask_path)) > 0
    palette = Image.fromarray(mask.astype(np.uint8), mode="L").convert("P")
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)  # index 1 is green: its red channel is 0
    palette.save(mask_path)
    data = load_datasets(str(tmp_path / "set"), Recipe(image_size=48, intensity="dtype"), calibration_fraction=0.5)
    (anomalous,) = [s for s in data.test.data if s["label"]]
    assert anomalous["mask"].sum() == mask.sum()


def test_non_finite_volume_is_refused_naming_the_file_and_nothing_is_written(inferer, tmp_path):
    volume = np.random.default_rng(1).random((16, 16, 4)).astype(np.float32)
    volume[3, 3, 1] = np.nan
    path = str(tmp_path / "in" / "nan_scan.nii.gz")
    os.makedirs(os.path.dirname(path))
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    with pytest.raises(ValueError, match=r"nan_scan\.nii\.gz holds 1 non-finite value"):
        inferer(path, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_all_zero_image_is_named_in_a_warning(inferer, tmp_path):
    path = tmp_path / "blank.png"
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(path)
    with pytest.warns(UserWarning, match=r"blank\.png is all zero"):
        inferer(str(path), str(tmp_path / "out"))


def test_inputs_that_share_a_stem_get_their_own_outputs(inferer, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, value in (("scan.png", 40), ("scan.jpg", 200)):
        Image.fromarray(np.full((20, 20), value, dtype=np.uint8)).save(folder / name)
    rows = inferer(str(folder), str(tmp_path / "out"))
    assert len(rows) == 2
    assert {"scan_png_map.npy", "scan_jpg_map.npy", "scan_png_overlay.png", "scan_jpg_overlay.png"} <= set(
        os.listdir(tmp_path / "out")
    )
    with pytest.raises(ValueError, match="is the input folder"):
        inferer(str(folder), str(folder))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epochs": 0}, "epochs must be a whole number >= 1 or null (stop when learned), got 0"),
        ({"category": 1}, "/1 does not exist"),
        ({"dataset_dir": "/data/run#2"}, "dataset_dir '/data/run::2' does not exist and holds '::'"),
        ({"keep_aspect": "false", "resume": "False"}, "resume='False', keep_aspect='false': on/off keys take True"),
    ],
)
def test_cheap_checks_name_the_key(mvtec_dir, tmp_path, overrides, message):
    args = {"dataset_dir": mvtec_dir, "output_dir": str(tmp_path / "out"), "image_size": 32, **overrides}
    with pytest.raises(Exception) as error:
        run_in_process("brain", "training", **args)
    assert message in error_chain(error.value)
    assert not os.path.exists(tmp_path / "out" / "model.pt")


def test_output_dir_that_is_a_file_is_refused(mvtec_dir, tmp_path):
    (tmp_path / "out").write_text("not a folder", encoding="utf-8")
    with pytest.raises(Exception) as error:
        run_in_process("brain", "training", dataset_dir=mvtec_dir, output_dir=str(tmp_path / "out"), image_size=32)
    assert "is a file, not a folder" in error_chain(error.value)
    assert (tmp_path / "out").read_text(encoding="utf-8") == "not a folder"


def test_too_few_training_images_names_the_minimum(tmp_path, caplog):
    root = write_mvtec(str(tmp_path / "tiny"), n_train=2)
    with pytest.raises(ValueError, match="has 2 normal training images; at least 3 are needed"):
        load_datasets(root, Recipe(image_size=32))
    load_datasets(write_mvtec(str(tmp_path / "small"), n_train=5), Recipe(image_size=32))
    assert "only 3 of the 5 normal images" in caplog.text


def test_uncalibrated_or_corrupt_checkpoint_is_refused_before_evaluation(mvtec_dir, tmp_path):
    uncalibrated = str(tmp_path / "uncalibrated.pt")
    torch.save(MultiAD(Recipe.paper(image_size=32)).state_dict(), uncalibrated)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\0" * 100)
    for ckpt, message in ((uncalibrated, "is not calibrated"), (str(corrupt), "cannot be read as a weights-only")):
        with pytest.raises(Exception) as error:
            run_in_process(
                "brain", None, ("train.json", "evaluate.json"), dataset_dir=mvtec_dir, ckpt_path=ckpt,
                output_dir=str(tmp_path / "eval"),
            )  # fmt: skip
        assert f"{ckpt} {message}" in error_chain(error.value)
        assert not os.path.exists(tmp_path / "eval" / "metrics.json")


@pytest.mark.slow
def test_the_last_lines_a_user_sees_say_what_is_wrong(tmp_path):
    """A failing command line ends with the real message, not the bundle parser's expression dump."""
    volumes = write_volumes(str(tmp_path / "vols"), n_train=3, n_test=1)
    bad = os.path.join(volumes, "imagesTr", "case1.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2, 3), dtype=np.float32), np.eye(4)), bad)
    os.remove(os.path.join(volumes, "labelsTr", "case1.nii.gz"))
    result = run(bundle_command("brain", "training", str(tmp_path / "out"), "--dataset_dir", volumes))
    last = result.stderr.strip().splitlines()[-3:]
    assert result.returncode != 0 and last[0].startswith("error: ValueError: cannot load")
    assert "case1.nii.gz" in last[0] and "3D volume" in last[0]
    assert "Traceback" in result.stderr  # the full traceback is still there, above


@pytest.mark.slow
def test_a_path_starting_with_dollar_gets_a_hint(tmp_path):
    command = bundle_command("brain", "training", str(tmp_path / "out"), "--dataset_dir", "$HOME/data")
    result = run(command, timeout=300)
    assert result.returncode != 0
    assert (
        "starts with '$' is Python" in result.stderr.strip().splitlines()[-3] + result.stderr.strip().splitlines()[-2]
    )


def test_the_last_lines_repeat_the_package_s_own_error(monkeypatch, capsys):
    """Between the bundle parser's wrapper (outermost) and the OS error (innermost), the hook repeats the error
    this package raised, which names the key and the fix."""
    with pytest.raises(ValueError) as raised:
        check_writable("/proc/nonexistent/scores.csv", "--output")  # a ValueError from the OS's FileNotFoundError
    assert isinstance(raised.value.__cause__, FileNotFoundError)
    parser_error = RuntimeError("Failed to evaluate ConfigExpression: ...")
    parser_error.__cause__ = raised.value
    expected = f"ValueError: {raised.value}"
    assert root_message(parser_error) == expected and "--output /proc/nonexistent/scores.csv" in expected

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # put back after the test
    readable_errors()
    sys.excepthook(RuntimeError, parser_error, None)
    last = capsys.readouterr().err.strip().splitlines()
    assert last[-3] == f"error: {expected}" and "Failed to evaluate ConfigExpression" in "\n".join(last[:-3])


def test_a_large_image_is_reduced_on_reading_and_its_map_has_the_file_s_size(inferer, tmp_path):
    """Memory follows the model, not the file: a 2000 x 1500 image is read at less than 4 x the input size (the
    reduction factor is the whole number of times twice the input size fits)."""
    path = tmp_path / "large.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (1500, 2000), dtype=np.uint8)).save(path)
    loaded = inferer.image_chain({"image": str(path)})["image"]
    assert loaded.shape[1:] == (49, 65)  # factor 2000 // 64 = 31, sizes rounded up
    (_, image, anomaly_map, _) = next(inferer.predict_images([str(path)]))
    assert anomaly_map.shape == (1500, 2000) and image.shape == (3, 49, 65)
    inferer(str(path), str(tmp_path / "out"))
    saved = np.load(tmp_path / "out" / "large_map.npy")
    assert saved.shape == (1500, 2000) and saved.dtype == np.float16


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing checkpoint", "nope.pt"),
        ("bad file", "garbage.nii.gz"),
        ("unwritable output", "output_dir /proc/multiad-out cannot be written"),
    ],
)
def test_the_inference_bundle_ends_with_one_line_naming_the_file(tmp_path, case, expected):
    """The inference command line: its last lines name the user's file or key and nothing is written."""
    torch.manual_seed(0)
    network = MultiAD(Recipe.paper(image_size=32))
    network.normalizer.fit_thresholds(torch.rand(8) + 1.0, torch.rand(8, 1, 32, 32))
    ckpt = str(tmp_path / "model.pt")
    torch.save(network.state_dict(), ckpt)
    inputs = write_volumes(str(tmp_path / "vols"), n_train=1, n_test=1)
    input_path, out = os.path.join(inputs, "imagesTs"), str(tmp_path / "out")
    if case == "missing checkpoint":
        ckpt = str(tmp_path / "nope.pt")
    elif case == "bad file":
        input_path = str(tmp_path / "garbage.nii.gz")
        open(input_path, "wb").write(b"not a volume" * 10)
    else:
        out = "/proc/multiad-out"
    command = bundle_command(
        "brain", None, out, "--input_path", input_path, "--ckpt_path", ckpt, configs=("inference.json",)
    )
    result = run(command, timeout=300)
    error = [line for line in result.stderr.strip().splitlines()[-3:] if line.startswith("error: ")]
    assert result.returncode != 0 and error and expected in error[0], result.stderr[-2000:]
    assert not os.path.exists(out) or not os.listdir(out)
