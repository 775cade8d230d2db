"""DICOM series as volumes: find the image series under a path, check them, read one with MONAI's ITK reader.

A DICOM input is a folder of slices (with or without ``.dcm``), a study folder holding several series (flat or
one sub-folder each), or one multi-frame file. :func:`find_series` reads the headers only (pydicom), groups the
images by ``SeriesInstanceUID`` and sorts each series along its slice normal. What is not part of an image
volume is skipped with one log line each: non-image objects (SEG, SR, presentation states, RT, PDF, DICOMDIR),
parametric maps, secondary captures without patient position (screenshots, dose reports; ITK and SimpleITK
write volumes as secondary captures with position and orientation, and those are read), localizers, scouts and
derived reformats, and images whose orientation differs from their series' (a localizer filed under its UID).
A broken series raises a :class:`DicomSeriesError` naming it and the fix: slices of different sizes, missing
slices (uneven spacing), two slices at one position (acquisitions mixed in one series), a single slice, a
transfer syntax no installed decoder reads.

:class:`DicomSeriesReader` is a :class:`monai.data.ITKReader` that reads exactly the files of one checked series
(ITK's GDCM decodes the pixels, applies rescale slope and intercept, and takes position, orientation and
spacing from the headers). Register it on ``LoadImage(d)`` (:func:`register_dicom_reader`) and DICOM inputs go
through it while every other file keeps MONAI's own readers.

pydicom and itk come with the ``dicom`` extra (``pip install "multiad-monai[dicom]"``); without it a DICOM input
is a clear error naming the extra.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from monai.data import ITKReader

__all__ = [
    "DicomSeries",
    "DicomSeriesError",
    "DicomSeriesReader",
    "NoImageSeries",
    "SEG_CLASS",
    "find_series",
    "is_dicom_file",
    "is_dicom_input",
    "register_dicom_reader",
    "require_dicom_extra",
    "segmentation_label",
]

logger = logging.getLogger(__name__)

DICOM_EXTRA = 'pip install "multiad-monai[dicom]"'

# transfer syntaxes ITK's GDCM decodes: uncompressed, deflate, RLE, JPEG (baseline, extended, lossless),
# JPEG-LS and JPEG 2000
DECODABLE_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.5": "RLE Lossless",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
}
# syntaxes seen in archives that no installed decoder reads, with the decoder that does
UNDECODABLE_SYNTAXES = {
    "1.2.840.10008.1.2.4.201": ("HTJ2K Lossless", "OpenJPEG >= 2.5 (pylibjpeg-openjpeg >= 2 with pydicom >= 3)"),
    "1.2.840.10008.1.2.4.202": ("HTJ2K Lossless RPCL", "OpenJPEG >= 2.5 (pylibjpeg-openjpeg >= 2 with pydicom >= 3)"),
    "1.2.840.10008.1.2.4.203": ("HTJ2K", "OpenJPEG >= 2.5 (pylibjpeg-openjpeg >= 2 with pydicom >= 3)"),
    "1.2.840.10008.1.2.4.110": ("JPEG XL Lossless", "libjxl"),
    "1.2.840.10008.1.2.4.111": ("JPEG XL JPEG Recompression", "libjxl"),
    "1.2.840.10008.1.2.4.112": ("JPEG XL", "libjxl"),
    "1.2.840.10008.1.2.4.100": ("MPEG2 video", "a video decoder (ffmpeg)"),
    "1.2.840.10008.1.2.4.102": ("MPEG-4 AVC/H.264 video", "a video decoder (ffmpeg)"),
    "1.2.840.10008.1.2.4.107": ("HEVC/H.265 video", "a video decoder (ffmpeg)"),
}

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
# SOP classes that hold pixels but are no slice of an acquired volume
NOT_VOLUME_CLASSES = {
    SEG_CLASS: "a segmentation (SEG)",
    "1.2.840.10008.5.1.4.1.1.30": "a parametric map",
    "1.2.840.10008.5.1.4.1.1.7": "a secondary capture",
    "1.2.840.10008.5.1.4.1.1.7.1": "a secondary capture",
    "1.2.840.10008.5.1.4.1.1.7.2": "a secondary capture",
    "1.2.840.10008.5.1.4.1.1.7.3": "a secondary capture",
    "1.2.840.10008.5.1.4.1.1.7.4": "a secondary capture",
    "1.2.840.10008.1.3.10": "a DICOMDIR",
}
SECONDARY_CAPTURE_CLASSES = {uid for uid, what in NOT_VOLUME_CLASSES.items() if what == "a secondary capture"}
NOT_VOLUME_IMAGE_TYPES = {
    "LOCALIZER": "a localizer",
    "SCOUT": "a scout",
    "REFORMATTED": "a reformat",
    "MPR": "a reformat",
}

POSITION_TOLERANCE_MM = 1e-3  # two slices closer than this along the normal are at one position
SPACING_TOLERANCE = 0.05  # a gap more than 5 % off the series' usual spacing means slices are missing


class DicomSeriesError(ValueError):
    """A DICOM input that cannot be read as one volume; the message names the series and the fix."""


class NoImageSeries(DicomSeriesError):
    """DICOM files, but none that is a slice of an image volume (only SEG, SR, ... or earlier results)."""


def require_dicom_extra(what: str = "reading DICOM") -> None:
    """Raise ``ImportError`` naming the ``dicom`` extra when pydicom or itk is missing."""
    missing = [name for name in ("pydicom", "itk") if not _importable(name)]
    if missing:
        raise ImportError(f"{what} needs {' and '.join(missing)}, which come with the dicom extra: {DICOM_EXTRA}")


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def is_dicom_file(path: str) -> bool:
    """A file with the DICOM part-10 preamble (``DICM`` at byte 128), whatever its name."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _candidate_files(folder: str) -> list[str]:
    return sorted(
        os.path.join(root, name) for root, _, names in os.walk(folder) for name in names if not name.startswith(".")
    )


def is_dicom_input(path: str) -> bool:
    """A DICOM file, or a folder with a DICOM file somewhere inside (a series or a study)."""
    if os.path.isfile(path):
        return is_dicom_file(path)
    return os.path.isdir(path) and any(is_dicom_file(f) for f in _candidate_files(path))


@dataclass(eq=False)  # hashable by identity: inference keys its outputs by input
class DicomSeries:
    """One image series: its files sorted along the slice normal (or one multi-frame file)."""

    uid: str
    files: list[str]
    description: str = ""
    number: int | None = None
    modality: str = ""
    frames: int = 0
    skipped: list[str] = field(default_factory=list)
    transfer_syntaxes: set[str] = field(default_factory=set)
    study_uid: str = ""

    @property
    def name(self) -> str:
        """``<number>_<description>`` (or ``<number>_<modality>``) in file-name-safe characters, else ``series``."""
        text = "_".join(str(v) for v in (self.number, self.description or self.modality) if v not in (None, ""))
        return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "series"

    @property
    def label(self) -> str:
        """How messages name the series: number, description and UID."""
        number = f" {self.number}" if self.number is not None else ""
        description = f" '{self.description}'" if self.description else ""
        return f"series{number}{description} ({self.uid})"


def _header(path: str):
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:  # pydicom raises several types for broken files
        logger.warning(f"skipping {path}: not a readable DICOM file ({e})")
        return None


def _not_volume(ds) -> str | None:
    """Why a header is no slice of an image volume, or None."""
    sop_class = str(getattr(ds, "SOPClassUID", ""))
    if sop_class in SECONDARY_CAPTURE_CLASSES and _has_geometry(ds):
        return None  # a slice as ITK and SimpleITK export volumes: it carries its position and orientation
    if sop_class in NOT_VOLUME_CLASSES:
        return NOT_VOLUME_CLASSES[sop_class]
    if "Rows" not in ds:
        name = getattr(getattr(ds, "SOPClassUID", None), "name", sop_class or "unknown SOP class")
        return f"a non-image object ({name})"
    if not _has_geometry(ds):
        return "an image without patient position and orientation (a projection image)"
    image_type = {str(v).upper() for v in getattr(ds, "ImageType", [])}
    for value, what in NOT_VOLUME_IMAGE_TYPES.items():
        if value in image_type:
            return what
    return None


def _has_geometry(ds) -> bool:
    if "PerFrameFunctionalGroupsSequence" in ds:  # enhanced multi-frame: geometry per frame
        return True
    return "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds


def _normal(orientation: Sequence[float]) -> np.ndarray:
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return np.cross(row, column)


def _orientation_key(ds) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in ds.ImageOrientationPatient)


def find_series(path: str | Sequence[str]) -> list[DicomSeries]:
    """The image series under ``path``, checked, in series number order.

    Args:
        path: a file, a folder (searched recursively), or a list of files.

    Raises:
        ImportError: without the ``dicom`` extra.
        DicomSeriesError: no DICOM image series under ``path``, or a series that is no volume (see the module).
    """
    require_dicom_extra()
    if not isinstance(path, (str, os.PathLike)):
        files, path = [str(f) for f in path], os.path.dirname(str(path[0])) if len(path) else "[]"
    else:
        path = str(path)
        files = [path] if os.path.isfile(path) else _candidate_files(path) if os.path.isdir(path) else []
    if not files:
        raise DicomSeriesError(f"{path} is an empty folder or does not exist: expected a DICOM series or study")
    dicom_files = [f for f in files if is_dicom_file(f)]
    if not dicom_files:
        raise DicomSeriesError(
            f"no DICOM files in {path}: {len(files)} files, none with the DICOM preamble ('DICM' at byte 128)"
        )
    groups: dict[str, list[tuple[str, object]]] = {}
    multi_frame: list[DicomSeries] = []
    for file in dicom_files:
        ds = _header(file)
        if ds is None:
            continue
        reason = _not_volume(ds)
        if reason:
            logger.info(f"skipping {file}: {reason}, not a slice of an image volume")
            continue
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            single = _series(ds, [file], frames=int(ds.NumberOfFrames))
            single.transfer_syntaxes = {_syntax(ds)}
            multi_frame.append(single)
        else:
            groups.setdefault(str(ds.SeriesInstanceUID), []).append((file, ds))
    series = multi_frame + [_check_slices(slices) for slices in groups.values()]
    if not series:
        raise NoImageSeries(f"no DICOM image series in {path}: every DICOM file there was skipped (see the log)")
    for s in series:
        _check_syntax(s)
    return sorted(series, key=lambda s: (s.number if s.number is not None else 1 << 30, s.description, s.uid))


def _syntax(ds) -> str:
    return str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "1.2.840.10008.1.2"))


def _series(ds, files: list[str], frames: int = 0, skipped: list[str] | None = None) -> DicomSeries:
    number = getattr(ds, "SeriesNumber", None)
    return DicomSeries(
        uid=str(ds.SeriesInstanceUID),
        files=files,
        description=str(getattr(ds, "SeriesDescription", "") or ""),
        number=int(number) if number not in (None, "") else None,
        modality=str(getattr(ds, "Modality", "") or ""),
        study_uid=str(getattr(ds, "StudyInstanceUID", "") or ""),
        frames=frames,
        skipped=skipped or [],
    )


def _check_slices(slices: list[tuple[str, object]]) -> DicomSeries:
    """Keep the series' own orientation, sort along its normal and check sizes, positions and spacing."""
    counts = Counter(_orientation_key(ds) for _, ds in slices)
    orientation = counts.most_common(1)[0][0]
    kept, skipped = [], []
    for file, ds in slices:
        if _orientation_key(ds) == orientation:
            kept.append((file, ds))
        else:
            logger.info(f"skipping {file}: its orientation differs from its series' (a localizer or reformat)")
            skipped.append(file)
    series = _series(kept[0][1], [], skipped=skipped)
    if len(kept) < 2:
        raise DicomSeriesError(
            f"{series.label} has a single slice ({kept[0][0]}): a volume needs the whole series; export every "
            "slice of it"
        )
    sizes = Counter((int(ds.Rows), int(ds.Columns)) for _, ds in kept)
    if len(sizes) > 1:
        (common, _), (odd, n_odd) = sizes.most_common(2)
        example = next(f for f, ds in kept if (int(ds.Rows), int(ds.Columns)) == odd)
        raise DicomSeriesError(
            f"{series.label} mixes slice sizes: {common[0]}x{common[1]} and {odd[0]}x{odd[1]} ({n_odd} slices, e.g. "
            f"{example}): a volume's slices share one size; export the series again or remove the odd slices"
        )
    normal = _normal(orientation)
    positions = np.array([float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))) for _, ds in kept])
    order = np.argsort(positions, kind="stable")
    kept, positions = [kept[i] for i in order], positions[order]
    gaps = np.diff(positions)
    duplicate = np.flatnonzero(gaps < POSITION_TOLERANCE_MM)
    if duplicate.size:
        i = int(duplicate[0])
        raise DicomSeriesError(
            f"{series.label} has {duplicate.size + 1} or more slices at one position ({positions[i]:.2f} mm along "
            f"the normal, e.g. {kept[i][0]} and {kept[i + 1][0]}): several acquisitions (echoes, phases, repeats) "
            "are mixed in one series; put each acquisition in its own folder"
        )
    spacing = float(np.median(gaps))
    uneven = np.flatnonzero(np.abs(gaps - spacing) > SPACING_TOLERANCE * spacing)
    if uneven.size:
        i = int(uneven[0])
        missing = max(int(round(gaps[i] / spacing)) - 1, 0)
        raise DicomSeriesError(
            f"{series.label} has uneven slice spacing: {spacing:.3g} mm between most slices but {gaps[i]:.3g} mm "
            f"between {kept[i][0]} and {kept[i + 1][0]} ({positions[i]:.2f} and {positions[i + 1]:.2f} mm)"
            + (f", about {missing} slices missing" if missing else "")
            + ": export the complete series again"
        )
    series.files = [file for file, _ in kept]
    series.transfer_syntaxes = {_syntax(ds) for _, ds in kept}
    return series


def _check_syntax(series: DicomSeries) -> None:
    for uid in sorted(series.transfer_syntaxes - set(DECODABLE_SYNTAXES)):
        name, decoder = UNDECODABLE_SYNTAXES.get(uid, (uid, "a decoder for it"))
        raise DicomSeriesError(
            f"{series.label} is stored as {name} ({uid}), which the installed decoders cannot read (ITK's GDCM reads "
            f"{', '.join(sorted(set(DECODABLE_SYNTAXES.values())))}); it needs {decoder}, which this installation "
            "lacks: decompress the series first, e.g. with dcmtk's dcmconv +te or gdcmconv --raw"
        )


def _segment_values(seg, labels: Mapping[str, int] | None, path: str) -> dict[int, int]:
    """Segment number -> label value."""
    values = {}
    for description in seg.SegmentSequence:
        name = str(description.SegmentLabel)
        if labels is None:
            values[int(description.SegmentNumber)] = 1
        elif name.casefold() in labels:
            values[int(description.SegmentNumber)] = labels[name.casefold()]
        else:
            known = ", ".join(str(d.SegmentLabel) for d in seg.SegmentSequence)
            raise ValueError(
                f"{path}: segment {name!r} has no label value in --labels {dict(labels)} (the SEG's segments: "
                f'{known}); add it, e.g. --labels "{",".join(f"{k}={v}" for k, v in labels.items())},{name}=N"'
            )
    return values


def _slice_of_frame(frame, uids: Sequence[str], positions: np.ndarray, normal: np.ndarray, path: str, i: int) -> int:
    """The slice a SEG frame lies on: by its referenced source instance, else by its plane position."""
    for derivation in frame.get("DerivationImageSequence", []):
        for source in derivation.get("SourceImageSequence", []):
            if source.ReferencedSOPInstanceUID in uids:
                return uids.index(source.ReferencedSOPInstanceUID)
    plane = frame.get("PlanePositionSequence")
    if not plane:
        raise ValueError(f"{path}: frame {i + 1} references no slice of the series and has no plane position")
    where = float(np.dot(normal, np.asarray(plane[0].ImagePositionPatient, float)))
    k = int(np.argmin(np.abs(positions - where)))
    spacing = float(np.median(np.diff(positions))) if len(positions) > 1 else 1.0
    if abs(positions[k] - where) > spacing / 2:
        raise ValueError(
            f"{path}: frame {i + 1} lies at {where:.2f} mm along the normal, on no slice of the series "
            f"({positions[0]:.2f} to {positions[-1]:.2f} mm): the SEG belongs to another series"
        )
    return k


def segmentation_label(
    seg_path: str, series: DicomSeries, shape: Sequence[int], labels: Mapping[str, int] | None = None
) -> np.ndarray:
    """A SEG of ``series`` as a label volume ``shape`` = ``(columns, rows, slices)`` (ITK's array order), ``uint8``.

    Each frame goes on the slice whose SOP instance it references (Derivation Image Sequence) or, without
    references, on the slice at its plane position (within half the slice spacing). Segments become label values
    by name (``labels``, compared case-insensitively; ``None``: every segment is 1); overlaps keep the larger.

    Raises:
        ValueError: naming the SEG when it references another series, has frames on no slice, or unknown segments.
    """
    import pydicom

    if series.frames:
        raise ValueError(f"{seg_path}: SEG labels of multi-frame series are not supported; export single-frame slices")
    seg = pydicom.dcmread(seg_path)  # not highdicom's segread: it refuses SEGs whose frames reference no instance
    referenced = {s.SeriesInstanceUID for s in seg.get("ReferencedSeriesSequence", [])}
    if referenced and series.uid not in referenced:
        raise ValueError(f"{seg_path} references series {sorted(referenced)}, not the case's {series.label}")
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.files]
    uids = [str(h.SOPInstanceUID) for h in headers]
    orientation = np.asarray(headers[0].ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([float(np.dot(normal, np.asarray(h.ImagePositionPatient, float))) for h in headers])
    values = _segment_values(seg, labels, seg_path)
    pixels = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    if (int(seg.Rows), int(seg.Columns)) != (int(shape[1]), int(shape[0])):
        raise ValueError(
            f"{seg_path}: frames of {seg.Rows}x{seg.Columns}, the series' slices are {shape[1]}x{shape[0]}"
        )
    fractional = str(seg.SegmentationType) == "FRACTIONAL"
    label = np.zeros(shape, dtype=np.uint8)
    for i, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        segment = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        k = _slice_of_frame(frame, uids, positions, normal, seg_path, i)
        inside = pixels[i] >= (int(seg.MaximumFractionalValue) / 2 if fractional else 1)
        label[:, :, k] = np.maximum(label[:, :, k], np.where(inside.T, values[segment], 0).astype(np.uint8))
    return label


class DicomSeriesReader(ITKReader):
    """MONAI's ITK reader for one checked DICOM series: a series folder, a multi-frame file or a series' files.

    ``read`` finds the series with :func:`find_series` and hands ITK exactly its files, sorted along the normal,
    so skipped objects never enter the volume; ``get_data`` is ITKReader's (RAS affine from the headers).

    Raises:
        DicomSeriesError: the input holds several series (name them; give each its own folder, or pass the
            study folder to inference, which scores every series), or a broken one (see :func:`find_series`).
    """

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        names = [str(filename)] if isinstance(filename, (str, os.PathLike)) else [str(f) for f in filename]
        if len(names) == 1 and os.path.isdir(names[0]):
            return True
        return all(name.lower().endswith(".dcm") or is_dicom_file(name) for name in names)

    def read(self, data: Sequence[str] | str, **kwargs):
        import itk

        names = [str(data)] if isinstance(data, (str, os.PathLike)) else [str(f) for f in data]
        path = names[0] if len(names) == 1 else os.path.dirname(names[0])
        series = find_series(names[0] if len(names) == 1 else names)
        if len(series) > 1:
            names = ", ".join(s.label for s in series)
            raise DicomSeriesError(
                f"{path} holds {len(series)} series ({names}), expected one volume: put each series in its own "
                "folder (the inference bundle and AnomalyInferer take a study folder and score every series)"
            )
        return read_series(series[0], itk, **{**self.kwargs, **kwargs})


def read_series(series: DicomSeries, itk_module=None, **kwargs):
    """Read one checked series with ITK (GDCM): a multi-frame file, or the slice files in their sorted order."""
    itk = itk_module or __import__("itk")
    files = series.files
    try:
        return itk.imread(files[0] if len(files) == 1 else files, **kwargs)
    except Exception as e:  # ITK raises RuntimeError with its whole exception text
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DicomSeriesError(f"ITK cannot read {series.label} ({files[0]} ...): {first}") from e


def register_dicom_reader(loader) -> None:
    """Give ``LoadImage`` / ``LoadImaged`` the DICOM series reader first; other files keep MONAI's readers."""
    loader.register(DicomSeriesReader())
