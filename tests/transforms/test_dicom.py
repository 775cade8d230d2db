"""DICOM series as volumes: geometry and HU as ITK reads them, what is skipped, and every bad series' message."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("pydicom")
pytest.importorskip("itk")

import pydicom  # noqa: E402
from monai.data import ITKReader  # noqa: E402
from monai.transforms import LoadImage  # noqa: E402

from multiad_monai.transforms import dicom  # noqa: E402
from multiad_monai.transforms.dicom import DicomSeriesError, find_series, register_dicom_reader  # noqa: E402
from tests.dicom import ct_volume, series_affine, write_series  # noqa: E402

OBLIQUE = (0.9950042, 0.0998334, 0.0, -0.0998334, 0.9950042, 0.0)


def _load(path):
    loader = LoadImage(image_only=True)
    register_dicom_reader(loader)
    return loader(path)


@pytest.mark.parametrize(
    "modality, extension, orientation, slope, intercept",
    [
        ("CT", "", OBLIQUE, 1.0, -1024.0),  # a PACS export: no extension, oblique gantry
        ("CT", ".dcm", (1, 0, 0, 0, 1, 0), 2.0, -2048.0),
        ("MR", ".dcm", (0, 1, 0, 0, 0, -1), 1.0, 0.0),  # sagittal
    ],
)
def test_series_geometry_and_values_are_itks(tmp_path, modality, extension, orientation, slope, intercept):
    stored = ct_volume()
    write_series(
        str(tmp_path / "s"),
        stored,
        modality=modality,
        extension=extension,
        orientation=orientation,
        slope=slope,
        intercept=intercept,
    )
    volume = _load(str(tmp_path / "s"))
    itk_volume = LoadImage(image_only=True, reader=ITKReader())(str(tmp_path / "s"))  # what ITK itself reads
    np.testing.assert_allclose(volume.affine.numpy(), itk_volume.affine.numpy(), atol=1e-4)
    np.testing.assert_allclose(
        volume.affine.numpy(), series_affine((-20, -30, 10), orientation, (0.8, 0.7), 2.5), atol=1e-4
    )
    expected = stored.astype(float) * (slope if modality == "CT" else 1) + (intercept if modality == "CT" else 0)
    np.testing.assert_allclose(volume.numpy(), expected.transpose(2, 1, 0))  # (columns, rows, slices), in HU


def test_study_folder_gives_each_series_and_skips_what_is_no_volume(tmp_path, caplog):
    study = tmp_path / "study"
    first = write_series(str(study / "ct"), ct_volume(), series_number=2, description="AX 5mm")
    # a localizer filed under the series' own UID (another orientation), and a separate scout series
    series_uid = pydicom.dcmread(first[0]).SeriesInstanceUID
    write_series(
        str(study / "ct"),
        ct_volume((1, 20, 24)),
        orientation=(1, 0, 0, 0, 0, -1),
        names="loc{i}",
        series_uid=series_uid,
        series_number=2,
    )
    write_series(
        str(study / "scout"),
        ct_volume((2, 20, 24)),
        series_number=1,
        names="scout{i}",
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    write_series(str(study), ct_volume(seed=1), series_number=5, description="AX bone", extension=".dcm")
    (study / "notes.txt").write_text("not DICOM")
    segmentation = pydicom.dcmread(first[0])
    segmentation.SOPClassUID = segmentation.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    segmentation.save_as(str(study / "seg.dcm"))
    report = pydicom.Dataset()
    report.file_meta = pydicom.dataset.FileMetaDataset()
    report.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    report.file_meta.MediaStorageSOPClassUID = report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID = pydicom.uid.generate_uid()
    report.SeriesInstanceUID = pydicom.uid.generate_uid()
    pydicom.dcmwrite(str(study / "report"), report, write_like_original=False)
    with caplog.at_level(logging.INFO, logger=dicom.__name__):
        series = find_series(str(study))
    assert [(s.number, s.description, len(s.files)) for s in series] == [(2, "AX 5mm", 6), (5, "AX bone", 6)]
    assert series[0].files == first and series[0].name == "2_AX_5mm"
    skipped = "\n".join(r.getMessage() for r in caplog.records)
    for reason in ("orientation differs", "a localizer", "a segmentation (SEG)", "non-image object"):
        assert reason in skipped
    assert "notes.txt" not in skipped  # not DICOM: not even looked at
    with pytest.raises(DicomSeriesError, match=r"holds 2 series .*2 'AX 5mm'.*5 'AX bone'.*its own folder"):
        _load(str(study))
    assert _load(str(study / "ct")).shape == (24, 20, 6)  # the localizer is not stacked in


def _relabel_syntax(files, uid):
    """Claim another transfer syntax in the file meta (pydicom 2 refuses to write syntaxes it does not know)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    for f in files:
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = uid
        meta, body = DicomBytesIO(), DicomBytesIO()
        meta.is_little_endian, meta.is_implicit_VR = True, False
        body.is_little_endian, body.is_implicit_VR = True, False
        write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
        write_dataset(body, ds)
        with open(f, "wb") as out:
            out.write(b"\0" * 128 + b"DICM" + meta.getvalue() + body.getvalue())


def _missing_slice(folder):
    write_series(folder, ct_volume((8, 20, 24)), skip=(3,))


def _odd_size(folder):
    write_series(folder, ct_volume())
    write_series(
        folder,
        ct_volume((1, 16, 24)),
        names="odd{i}",
        series_uid=pydicom.dcmread(os.path.join(folder, "image_0")).SeriesInstanceUID,
        origin=(-20.0, -30.0, 25.0),
    )


def _two_echoes(folder):
    files = write_series(folder, ct_volume(), modality="MR")
    write_series(
        folder,
        ct_volume(seed=3),
        modality="MR",
        names="echo2_{i}",
        series_uid=pydicom.dcmread(files[0]).SeriesInstanceUID,
    )


def _htj2k(folder):
    _relabel_syntax(write_series(folder, ct_volume()), "1.2.840.10008.1.2.4.202")


def _one_slice(folder):
    write_series(folder, ct_volume((1, 20, 24)))


def _not_dicom(folder):
    os.makedirs(folder)
    with open(os.path.join(folder, "image_0"), "w") as f:
        f.write("hello")


@pytest.mark.parametrize(
    "make, message",
    [
        (
            _missing_slice,
            r"uneven slice spacing: 2.5 mm between most slices but 5 mm between .*image_.*about 1 slices "
            r"missing: export the complete series again",
        ),
        (_odd_size, r"mixes slice sizes: 20x24 and 16x24 \(1 slices, e.g. .*odd0\)"),
        (_two_echoes, r"slices at one position .*mixed in one series; put each acquisition in its own folder"),
        (
            _htj2k,
            r"HTJ2K Lossless RPCL \(1.2.840.10008.1.2.4.202\), which the installed decoders cannot read .* needs "
            r"OpenJPEG >= 2.5",
        ),
        (_one_slice, r"has a single slice .*image_0\): a volume needs the whole series"),
        (_not_dicom, r"no DICOM files in .*: 1 files, none with the DICOM preamble"),
        (os.makedirs, r"is an empty folder or does not exist"),
    ],
)
def test_bad_series_are_named_with_the_fix(tmp_path, make, message):
    folder = str(tmp_path / "PATIENT_DICOM")
    make(folder)
    with pytest.raises(DicomSeriesError, match=message):
        find_series(folder)
    with pytest.raises(DicomSeriesError, match=message):  # the same through LoadImage: never a wrong volume
        _load(folder)


def test_without_the_extra_the_error_names_it(tmp_path, monkeypatch):
    write_series(str(tmp_path / "s"), ct_volume())
    monkeypatch.setattr(dicom, "_importable", lambda name: name != "itk")
    with pytest.raises(
        ImportError,
        match=r"needs itk, which come with the dicom extra: pip install "
        r"\"multiad-monai\[dicom\]\"",
    ):
        _load(str(tmp_path / "s"))


@pytest.mark.skipif(shutil.which("dcmcjpeg") is None, reason="dcmtk is not installed (.ci/run installs it)")
@pytest.mark.parametrize("tool, args", [("dcmcjpeg", []), ("dcmcjpls", []), ("dcmcrle", [])])
def test_compressed_series_read_like_uncompressed(tmp_path, tool, args):
    stored = ct_volume()
    files = write_series(str(tmp_path / "raw"), stored)
    os.makedirs(tmp_path / "packed")
    for f in files:
        subprocess.run([tool, *args, f, str(tmp_path / "packed" / os.path.basename(f))], check=True)
    syntax = pydicom.dcmread(str(tmp_path / "packed" / "image_0")).file_meta.TransferSyntaxUID
    assert syntax != pydicom.uid.ExplicitVRLittleEndian
    np.testing.assert_array_equal(_load(str(tmp_path / "packed")).numpy(), _load(str(tmp_path / "raw")).numpy())


def test_multi_frame_file_is_the_same_volume(tmp_path):
    highdicom = pytest.importorskip("highdicom")
    files = write_series(str(tmp_path / "s"), ct_volume())
    sources = [pydicom.dcmread(f) for f in files]
    enhanced = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        sources,
        series_instance_uid=highdicom.UID(),
        series_number=9,
        sop_instance_uid=highdicom.UID(),
        instance_number=1,
    )
    enhanced.save_as(str(tmp_path / "enhanced.dcm"))
    (series,) = find_series(str(tmp_path / "enhanced.dcm"))
    assert series.frames == 6
    single, multi = _load(str(tmp_path / "s")), _load(str(tmp_path / "enhanced.dcm"))
    np.testing.assert_allclose(multi.numpy(), single.numpy())
    np.testing.assert_allclose(multi.affine.numpy(), single.affine.numpy(), atol=1e-4)
